"""Classify images through the Triton ensemble over gRPC or HTTP.

Labels come from the server: the ensemble's output carries a label file, so
Triton's classification extension (`class_count`) answers
"score:index:label" strings and the client needs no copy of the labels.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from torchvision.datasets.folder import IMG_EXTENSIONS
from tritonclient.utils import InferenceServerException

from resnet_triton.errors import UserError
from resnet_triton.spec import Names

PROTOCOLS = {"grpc": (grpcclient, "localhost:8001"), "http": (httpclient, "localhost:8000")}


class ClientError(UserError):
    """The server or model cannot be used as asked."""


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Result:
    source: str
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None

    @property
    def top1(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None


def parse_classification(entry: bytes | str) -> Prediction:
    """One "score:index:label" string of the classification extension."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, label = text.split(":", 2)  # a label may itself contain ':'
    return Prediction(label=label, index=int(index), score=float(score))


class Classifier:
    """A client for one ensemble; safe to share between threads."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = Names().ensemble,
        timeout_s: float = 60.0,
    ):
        if protocol not in PROTOCOLS:
            choices = ", ".join(PROTOCOLS)
            raise ClientError(f"unknown protocol {protocol!r}; choose one of {choices}")
        self.module, default_url = PROTOCOLS[protocol]
        self.protocol = protocol
        self.url = url or default_url
        self.model = model
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients = []  # every thread's client, to close them all
        self._lock = threading.Lock()
        client = self._client()
        try:
            ready = client.is_model_ready(model)
        except InferenceServerException as exc:
            raise ClientError(f"cannot reach Triton at {self.url} ({protocol}): {exc}") from None
        if not ready:
            raise ClientError(f"model {model!r} is not ready on {self.url}")
        metadata = client.get_model_metadata(model)
        if protocol == "grpc":
            inputs, outputs = metadata.inputs, metadata.outputs
            self.input_name, self.output_name = inputs[0].name, outputs[0].name
        else:
            self.input_name = metadata["inputs"][0]["name"]
            self.output_name = metadata["outputs"][0]["name"]

    def _client(self):
        # tritonclient's HTTP client is not thread-safe: one client per thread.
        if not hasattr(self._local, "client"):
            if self.protocol == "http":
                self._local.client = self.module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            else:
                self._local.client = self.module.InferenceServerClient(self.url)
            with self._lock:
                self._clients.append(self._local.client)
        return self._local.client

    def close(self) -> None:
        """Close every connection (Triton waits for open HTTP connections on shutdown)."""
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
        self._local = threading.local()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def classify_bytes(self, images: list[bytes], top_k: int = 1) -> list[tuple[Prediction, ...]]:
        """Send the images as one request; raises ClientError if the server refuses it."""
        batch = np.array([[image] for image in images], dtype=np.object_)  # (n, 1) BYTES
        infer_input = self.module.InferInput(self.input_name, list(batch.shape), "BYTES")
        if self.protocol == "http":
            infer_input.set_data_from_numpy(batch, binary_data=True)
            output = self.module.InferRequestedOutput(
                self.output_name, binary_data=True, class_count=top_k
            )
            options = {}  # the HTTP client's timeout is set when it is created
        else:
            infer_input.set_data_from_numpy(batch)
            output = self.module.InferRequestedOutput(self.output_name, class_count=top_k)
            options = {"client_timeout": self.timeout_s}
        try:
            result = self._client().infer(self.model, [infer_input], outputs=[output], **options)
        except InferenceServerException as exc:
            raise ClientError(exc.message()) from None
        rows = result.as_numpy(self.output_name).reshape(len(images), top_k)
        return [tuple(parse_classification(entry) for entry in row) for row in rows]

    def classify_files(
        self, paths: list[Path], top_k: int = 1, concurrency: int = 8
    ) -> list[Result]:
        """One request per file, `concurrency` in flight, so Triton batches them.

        A file that cannot be read or classified gets its error in its Result;
        the others are unaffected.
        """

        def one(path: Path) -> Result:
            try:
                return Result(str(path), self.classify_bytes([path.read_bytes()], top_k)[0])
            except (ClientError, OSError) as exc:
                return Result(str(path), error=str(exc))

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, paths))


def expand_paths(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for image files, in sorted order."""
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
            )
        elif path.is_file():
            paths.append(path)
        else:
            raise ClientError(f"{item} is neither a file nor a folder")
    if not paths:
        raise ClientError(f"no image files in {', '.join(inputs)}")
    return paths


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton classify",
        description="Classify image files or folders with the Triton ensemble; prints top-k "
        "labels per file and exits 1 if any file failed.",
    )
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--protocol", default="grpc", choices=sorted(PROTOCOLS))
    parser.add_argument("--url", help="host:port (default localhost:8001 gRPC, :8000 HTTP)")
    parser.add_argument("--model", default=Names().ensemble, help="default %(default)s")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    return parser


def main(args: argparse.Namespace) -> int:
    paths = expand_paths(args.paths)
    with Classifier(args.url, args.protocol, args.model) as classifier:
        results = classifier.classify_files(paths, args.top_k, args.concurrency)
    for result in results:
        if args.json:
            print(json.dumps(asdict(result)))
        elif result.error:
            print(f"{result.source}: ERROR {result.error}")
        else:
            ranked = ", ".join(f"{p.label} ({p.score:.4f})" for p in result.predictions)
            print(f"{result.source}: {ranked}")
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{failed} of {len(results)} images failed", file=sys.stderr)
    return 1 if failed else 0
