"""Classify images through the Triton ensemble: one API over gRPC and HTTP, sync and asyncio.

    with Classifier("localhost:8001", "grpc") as classifier:
        results = classifier.classify(["cat.jpg", pil_image, png_bytes], top_k=3)
    for r in results:
        print(r.source, r.top1.label if r.ok else r.error)

- Images are bytes, paths, PIL images or uint8 arrays (H, W[, 3]); PIL images
  and arrays are sent as PNG, the rest as they are.
- The model's metadata and config are read once; long lists are split into
  requests of at most the model's max_batch_size, `concurrency` in flight.
- A request of several images that the server refuses is sent again one
  image at a time, so every image gets its own answer or its own error
  (naming the image); the others are unaffected.
- Only errors that are safe to retry are retried, with exponential backoff:
  the server or connection being unavailable. Invalid input, unknown models
  and timeouts are not.
- Labels come from the server (the ensemble's label file through Triton's
  classification extension): the client holds no copy of them.
- `shared_memory=True` (sync gRPC/HTTP) passes inputs through system shared
  memory when client and server share a host; registering a region is a
  restricted API, so it needs the server's admin key.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from PIL import Image
from tritonclient.utils import (
    InferenceServerException,
    serialize_byte_tensor,
    serialized_byte_size,
)

from resnet_triton.errors import UserError
from resnet_triton.serving.server import ADMIN_HEADER
from resnet_triton.spec import Names

PROTOCOLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
RETRYABLE_STATUS = {"StatusCode.UNAVAILABLE", "503", "502"}
# The connection went away (refused, reset, closed before the answer: a server that
# stops or restarts, a proxy in front of one that is gone); tritonclient's HTTP
# clients raise these unwrapped (geventhttpclient's HTTPConnectionClosed is an
# http.client.HTTPException).
CONNECTION_ERRORS = (OSError, http.client.HTTPException, aiohttp.ClientConnectionError)

ImageLike = bytes | str | Path | Image.Image | np.ndarray


class ClientError(UserError):
    """The server, the model or an image cannot be used as asked."""


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
    def ok(self) -> bool:
        return self.error is None

    @property
    def top1(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_name: str
    output_name: str
    max_batch_size: int


@dataclass
class _Item:
    index: int
    source: str
    data: bytes | None = None
    error: str | None = field(default=None)


def parse_classification(entry: bytes | str) -> Prediction:
    """One "score:index:label" string of the classification extension."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, label = text.split(":", 2)  # a label may itself contain ':'
    return Prediction(label=label, index=int(index), score=float(score))


def encode_image(image: ImageLike) -> tuple[str, bytes]:
    """(a name for messages, encoded bytes); errors name the input."""
    if isinstance(image, bytes):
        return f"<{len(image)} bytes>", image
    if isinstance(image, str | Path):
        try:
            return str(image), Path(image).read_bytes()
        except OSError as exc:
            raise ClientError(f"{image}: cannot read: {exc.strerror}") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ClientError(
                f"arrays must be uint8 (H, W) or (H, W, 3|4), got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless: the server sees these exact pixels
        return f"<PIL {image.mode} {image.width}x{image.height}>", buffer.getvalue()
    raise ClientError(f"cannot classify a {type(image).__name__}; give bytes, a path, a PIL "
                      "image or a uint8 array")  # fmt: skip


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, InferenceServerException):
        return str(exc.status()) in RETRYABLE_STATUS
    return isinstance(exc, CONNECTION_ERRORS)  # the server may be back


def _message(exc: Exception) -> str:
    return exc.message() if isinstance(exc, InferenceServerException) else str(exc)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Protocol:
    """What the sync and async clients share: settings, requests, parsing, retry policy."""

    def __init__(self, url, protocol, model, timeout_s, retries, backoff_s, concurrency):
        if protocol not in PROTOCOLS:
            choices = ", ".join(PROTOCOLS)
            raise ClientError(f"unknown protocol {protocol!r}; choose one of {choices}")
        self.protocol = protocol
        self.url = url or PROTOCOLS[protocol]
        self.model = model
        self.timeout_s = timeout_s
        self.retries, self.backoff_s, self.concurrency = retries, backoff_s, concurrency

    @property
    def grpc(self) -> bool:
        return self.protocol == "grpc"

    def model_info(self, metadata, config, ready: bool) -> ModelInfo:
        if not ready:
            raise ClientError(f"model {self.model!r} at {self.url} is not ready")
        if self.grpc:
            return ModelInfo(
                self.model,
                metadata.inputs[0].name,
                metadata.outputs[0].name,
                config.config.max_batch_size,
            )
        return ModelInfo(
            self.model,
            metadata["inputs"][0]["name"],
            metadata["outputs"][0]["name"],
            config["max_batch_size"],
        )

    def unknown_model(self, exc: Exception) -> ClientError:
        message = _message(exc)
        if "unknown model" in message.lower() or "not found" in message.lower():
            return ClientError(f"unknown model {self.model!r} at {self.url}: {message}")
        return ClientError(f"cannot reach Triton at {self.url} ({self.protocol}): {message}")

    def request(self, module, info: ModelInfo, payloads: list[bytes], top_k: int):
        batch = np.array([[p] for p in payloads], dtype=np.object_)  # (n, 1) BYTES
        infer_input = module.InferInput(info.input_name, list(batch.shape), "BYTES")
        if self.grpc:
            infer_input.set_data_from_numpy(batch)
            output = module.InferRequestedOutput(info.output_name, class_count=top_k)
        else:
            infer_input.set_data_from_numpy(batch, binary_data=True)
            output = module.InferRequestedOutput(
                info.output_name, binary_data=True, class_count=top_k
            )
        return infer_input, output

    @staticmethod
    def parse(result, info: ModelInfo, count: int, top_k: int) -> list[tuple[Prediction, ...]]:
        rows = result.as_numpy(info.output_name).reshape(count, top_k)
        return [tuple(parse_classification(entry) for entry in row) for row in rows]

    def retry_delay(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before retrying a failed request; raises ClientError when it should
        not be retried (the last attempt, or a failure other than an unavailable server)."""
        if attempt == self.retries or not _retryable(exc):
            raise ClientError(_message(exc)) from None
        return self.backoff_s * 2**attempt


class Classifier(_Protocol):
    """Synchronous client; safe to share between threads."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = Names().ensemble,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        concurrency: int = 4,
        shared_memory: bool = False,
        admin_key: str | None = None,
    ):
        super().__init__(url, protocol, model, timeout_s, retries, backoff_s, concurrency)
        self.module = grpcclient if self.grpc else httpclient
        self.shared_memory = shared_memory
        # Triton's gRPC frontend expects restricted-protocol headers with a prefix.
        header = f"triton-grpc-protocol-{ADMIN_HEADER}" if self.grpc else ADMIN_HEADER
        self.headers = {header: admin_key} if admin_key else None
        if shared_memory and not admin_key:
            raise ClientError("shared memory needs the server's admin key (restricted API)")
        self._local = threading.local()
        self._clients = []  # every thread's client, to close them all
        self._lock = threading.Lock()
        client = self._client()
        try:
            ready = client.is_model_ready(model)
            metadata = client.get_model_metadata(model)
            config = client.get_model_config(model)
        except (InferenceServerException, OSError) as exc:
            raise self.unknown_model(exc) from None
        self.info = self.model_info(metadata, config, ready)

    def _client(self):
        # tritonclient's HTTP client is not thread-safe: one client per thread.
        if not hasattr(self._local, "client"):
            if self.grpc:
                client = grpcclient.InferenceServerClient(self.url)
            else:
                client = httpclient.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
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

    def _infer(self, payloads: list[bytes], top_k: int) -> list[tuple[Prediction, ...]]:
        """One request, retried while the server is unavailable; raises ClientError."""
        for attempt in range(self.retries + 1):
            try:
                if self.shared_memory:
                    result = self._infer_shared_memory(payloads, top_k)
                else:
                    infer_input, output = self.request(self.module, self.info, payloads, top_k)
                    options = {"client_timeout": self.timeout_s} if self.grpc else {}
                    result = self._client().infer(
                        self.model, [infer_input], outputs=[output], **options
                    )
                return self.parse(result, self.info, len(payloads), top_k)
            except (InferenceServerException, *CONNECTION_ERRORS) as exc:
                time.sleep(self.retry_delay(exc, attempt))
        raise AssertionError("unreachable")

    def _infer_shared_memory(self, payloads: list[bytes], top_k: int):
        import tritonclient.utils.shared_memory as shm

        batch = np.array([[p] for p in payloads], dtype=np.object_)
        serialized = serialize_byte_tensor(batch)  # length-prefixed elements, one buffer
        size = serialized_byte_size(serialized)
        name = f"resnet_triton_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        client = self._client()
        try:
            shm.set_shared_memory_region(handle, [serialized])
            client.register_system_shared_memory(name, f"/{name}", size, headers=self.headers)
            infer_input, output = self.request(self.module, self.info, payloads, top_k)
            infer_input.set_shared_memory(name, size)
            return client.infer(self.model, [infer_input], outputs=[output])
        finally:
            try:
                client.unregister_system_shared_memory(name, headers=self.headers)
            finally:
                shm.destroy_shared_memory_region(handle)

    def classify_bytes(self, images: list[bytes], top_k: int = 1) -> list[tuple[Prediction, ...]]:
        """Send the images as one request; raises ClientError if the server refuses it."""
        if len(images) > self.info.max_batch_size:
            raise ClientError(
                f"{len(images)} images in one request; {self.model} takes at most "
                f"{self.info.max_batch_size} (classify() splits longer lists)"
            )
        return self._infer(images, top_k)

    def classify(self, images: Sequence[ImageLike], top_k: int = 1, progress=None) -> list[Result]:
        """Every image classified, in order; failures are per image, in Result.error.

        progress: called with the number of images each finished request covered.
        """
        items = _encode_all(images)
        batches = _chunks([i for i in items if i.error is None], self.info.max_batch_size)
        answers: dict[int, Result] = {}

        def run(batch: list[_Item]) -> None:
            try:
                rows = self._infer([i.data for i in batch], top_k)
                answers.update(
                    {i.index: Result(i.source, row) for i, row in zip(batch, rows, strict=True)}
                )
            except ClientError as exc:
                if len(batch) > 1:
                    for item in batch:  # find the image(s) at fault; the rest still answer
                        run([item])
                    return
                answers[batch[0].index] = Result(batch[0].source, error=str(exc))
            if progress:
                progress(len(batch))

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            list(pool.map(run, batches))
        return _in_order(items, answers)


class AsyncClassifier(_Protocol):
    """asyncio client over tritonclient's aio modules: `await AsyncClassifier.connect(...)`."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = Names().ensemble,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        concurrency: int = 4,
    ):
        super().__init__(url, protocol, model, timeout_s, retries, backoff_s, concurrency)
        self.module = grpcaio if self.grpc else httpaio
        if self.grpc:
            self.client = grpcaio.InferenceServerClient(self.url)
        else:
            self.client = httpaio.InferenceServerClient(self.url, conn_timeout=timeout_s)
        self.info: ModelInfo | None = None

    @classmethod
    async def connect(cls, *args, **kwargs) -> AsyncClassifier:
        self = cls(*args, **kwargs)
        try:
            ready = await self.client.is_model_ready(self.model)
            metadata = await self.client.get_model_metadata(self.model)
            config = await self.client.get_model_config(self.model)
        except (InferenceServerException, OSError) as exc:
            await self.close()
            raise self.unknown_model(exc) from None
        try:
            self.info = self.model_info(metadata, config, ready)
        except ClientError:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncClassifier:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _infer(self, payloads: list[bytes], top_k: int) -> list[tuple[Prediction, ...]]:
        for attempt in range(self.retries + 1):
            try:
                infer_input, output = self.request(self.module, self.info, payloads, top_k)
                options = {"client_timeout": self.timeout_s} if self.grpc else {}
                result = await self.client.infer(
                    self.model, [infer_input], outputs=[output], **options
                )
                return self.parse(result, self.info, len(payloads), top_k)
            except (InferenceServerException, *CONNECTION_ERRORS) as exc:
                await asyncio.sleep(self.retry_delay(exc, attempt))
        raise AssertionError("unreachable")

    async def classify(self, images: Sequence[ImageLike], top_k: int = 1) -> list[Result]:
        """Every image classified, in order; failures are per image, in Result.error."""
        items = _encode_all(images)
        batches = _chunks([i for i in items if i.error is None], self.info.max_batch_size)
        answers: dict[int, Result] = {}
        limit = asyncio.Semaphore(max(1, self.concurrency))

        async def run(batch: list[_Item]) -> None:
            try:
                async with limit:
                    rows = await self._infer([i.data for i in batch], top_k)
                answers.update(
                    {i.index: Result(i.source, row) for i, row in zip(batch, rows, strict=True)}
                )
            except ClientError as exc:
                if len(batch) > 1:
                    await asyncio.gather(*(run([item]) for item in batch))
                else:
                    answers[batch[0].index] = Result(batch[0].source, error=str(exc))

        await asyncio.gather(*(run(batch) for batch in batches))
        return _in_order(items, answers)


def _encode_all(images: Sequence[ImageLike]) -> list[_Item]:
    items = []
    for index, image in enumerate(images):
        try:
            source, data = encode_image(image)
            items.append(_Item(index, source, data))
        except ClientError as exc:
            items.append(_Item(index, str(image)[:80], error=str(exc)))
    return items


def _in_order(items: list[_Item], answers: dict[int, Result]) -> list[Result]:
    return [
        answers.get(item.index) or Result(item.source, error=item.error or "no answer")
        for item in items
    ]
