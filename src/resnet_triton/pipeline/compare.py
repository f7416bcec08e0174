"""`resnet-triton compare`: two store versions on captured live traffic, side by side.

    resnet-triton compare --versions 3 4 --captured artifacts/capture

Each version's kept copy in the model store (`pipeline publish` keeps them) is served in
turn by the real Triton server on this machine, on free loopback ports, one after the
other (so they never compete for the CPUs, and their latencies compare), and every
captured image (serving/capture.py) is sent to it as it was received, one request at a
time. An image a version cannot answer (bad bytes) is that version's error, not the
end of the comparison.

The report, in --out (artifacts/compare/<A>-vs-<B>): report.md, to read in a minute
(agreement, the confusion between the two versions' answers with "unknown" and "error"
as answers of their own, per-class shifts, the "unknown" rate and mean top-1 score,
latency p50/p95, errors); report.json, the same figures and every capture's two answers;
disagreements.png, the images the versions answered differently, each titled with both
answers. With --labelled (the review's folder: labels.jsonl), also each version's
accuracy on the reviewed images of the model's classes, with a 95% Wilson interval, and
how often each answered "unknown" to the images reviewed as none of them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from google.protobuf import text_format

from resnet_triton.client import Classifier
from resnet_triton.pipeline.compare_report import Answer, Comparison, write_report
from resnet_triton.pipeline.config import PipelineError
from resnet_triton.pipeline.rollout import store_version
from resnet_triton.pipeline.store import published_versions
from resnet_triton.serving import capture
from resnet_triton.serving.model_configs import LABELS_FILE
from resnet_triton.serving.repository import env_path_for, read_config
from resnet_triton.serving.server import Ports, TritonServer, preflight

LOCAL_STORE = Path("artifacts/model_store")  # the Makefile's LOCAL_STORE
ENV_PARAMETER = "EXECUTION_ENV_PATH"


class CompareError(PipelineError):
    """The comparison cannot run as asked; the message says what to change."""


def resolve_versions(store: Path, repository: str, versions: list[str]) -> list[Path]:
    """Each asked version's kept copy (a number, or latest); two different ones."""
    if not published_versions(store, repository):
        raise CompareError(
            f"the model store {store} keeps no version of repository {repository!r} "
            f"(no {store / 'versions' / repository}/<n>): publish with `resnet-triton pipeline`"
        )
    folders = [store_version(store, repository, v) for v in versions]
    if folders[0] == folders[1]:
        raise CompareError(
            f"--versions {' '.join(versions)} name the same version {folders[0].name} twice; "
            f"compare two of {', '.join(map(str, published_versions(store, repository)))}"
        )
    return folders


def read_captures(folder: Path, limit: int | None) -> list[tuple[dict, Path]]:
    """The captures to replay, oldest first: all, or the newest `limit`."""
    found = capture.captured(folder)
    if not found:
        raise CompareError(
            f"the capture folder {folder} holds no capture (a .json record with its .bin "
            f"image): turn capture on where the model serves (serving/capture.py), then "
            f"send it traffic"
        )
    if limit is not None:
        if limit < 1:
            raise CompareError(f"--limit must be 1 or more, got {limit}")
        found = found[-limit:]
    return found


def classes_of(repository: Path) -> list[str]:
    """The classes a repository's models answer with (every labels file of it)."""
    files = sorted(repository.glob(f"*/{LABELS_FILE}"))
    if not files:
        raise CompareError(f"{repository} has no {LABELS_FILE}: not a published repository")
    return sorted({line for f in files for line in f.read_text().splitlines() if line})


def read_labels(labelled: Path | None, ids: list[str], classes: list[str]) -> dict[str, str]:
    """Capture id -> reviewed label (a class or capture.NOT_OURS), for the replayed
    captures; a label naming none of the versions' classes is refused."""
    if labelled is None:
        return {}
    if not labelled.is_dir():
        raise CompareError(f"--labelled {labelled} is not a folder")
    wanted = set(ids)
    labels = {i: d["label"] for i, d in capture.labels_of(labelled).items() if i in wanted}
    strange = sorted({label for label in labels.values()} - {*classes, capture.NOT_OURS})
    if strange:
        raise CompareError(
            f"{labelled / capture.LABELS_LOG} labels captures as {', '.join(map(repr, strange))}, "
            f"which the compared versions do not have; their classes: {', '.join(classes)} "
            f"(or {capture.NOT_OURS!r})"
        )
    return labels


def local_copy(kept: Path, into: Path) -> Path:
    """A copy of a kept version that this machine's server can load: a store's configs
    name the serving image's Python environment, so the copy's name this one."""
    copy = into / "repository"
    shutil.copytree(kept, copy, ignore=shutil.ignore_patterns("__pycache__"))
    env_path = env_path_for(copy)
    for path in sorted(copy.glob("*/config.pbtxt")):
        config = read_config(path)
        if ENV_PARAMETER in config.parameters:
            config.parameters[ENV_PARAMETER].string_value = env_path
            path.write_text(text_format.MessageToString(config))
    return copy


def ask(classifier: Classifier, image: bytes) -> Answer:
    """One image in one request: its top-1, or its error; and how long it took."""
    start = time.perf_counter()
    (result,) = classifier.classify([image], top_k=1)
    latency_ms = (time.perf_counter() - start) * 1000
    if not result.ok or result.top1 is None:
        return Answer(None, None, False, result.error or "no prediction", latency_ms)
    top1 = result.top1
    return Answer(top1.label, top1.score, result.unknown, None, latency_ms)


def replay(
    kept: Path, images: list[Path], protocol: str, work: Path, binary: Path | None = None
) -> list[Answer]:
    """Serve the kept version alone (on `binary`, or the wheel's tritonserver), send it
    every image (as captured), stop it."""
    repository = local_copy(kept, work)
    (ensemble, *_) = preflight(repository)
    server = TritonServer(repository, Ports.free(), log_path=work / "triton.log",
                          exit_timeout_s=5, binary=binary)  # fmt: skip
    with server:
        server.wait_ready([ensemble], timeout=300)
        port = server.ports.grpc if protocol == "grpc" else server.ports.http
        with Classifier(f"{server.host}:{port}", protocol, ensemble) as classifier:
            classifier.classify([images[0].read_bytes()])  # not timed: a first request's warmup
            return [ask(classifier, image.read_bytes()) for image in images]


def snapshot(found: list[tuple[dict, Path]], into: Path) -> list[tuple[str, Path]]:
    """(id, image) of each capture, linked (or copied) into `into`: a live capture folder
    evicts its oldest, and both versions must see the same images."""
    into.mkdir()
    kept = []
    for record, image in found:
        copy = into / image.name
        try:
            try:
                os.link(image, copy)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(image, copy)
        except FileNotFoundError:
            continue  # evicted since it was listed: neither version sees it
        kept.append((record["capture"], copy))
    return kept


def compare(args: argparse.Namespace, work: Path) -> Comparison:
    """Both versions' answers to the captures; the images stay in `work`."""
    if args.tritonserver is not None and not os.access(args.tritonserver, os.X_OK):
        raise CompareError(f"--tritonserver {args.tritonserver} is not an executable file")
    kept = resolve_versions(args.store, args.repository, args.versions)
    found = snapshot(read_captures(args.captured, args.limit), work / "captures")
    ids, images = [i for i, _ in found], [image for _, image in found]
    classes = sorted({c for folder in kept for c in classes_of(folder)})
    labels = read_labels(args.labelled, ids, classes)
    answers = {}
    for folder in kept:
        print(f"version {folder.name}: serving {folder}, sending {len(images)} captures",
              flush=True)  # fmt: skip
        (work / folder.name).mkdir()
        answers[folder.name] = replay(folder, images, args.protocol, work / folder.name,
                                      args.tritonserver)  # fmt: skip
    return Comparison(
        [folder.name for folder in kept], ids, answers, labels, images,
        source={"captured": str(args.captured), "store": str(args.store),
                "repository": args.repository},
    )  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--versions", nargs=2, required=True, metavar=("A", "B"),
                        help="two store versions (numbers, or latest)")  # fmt: skip
    parser.add_argument("--captured", type=Path, required=True,
                        help="a capture folder (serving/capture.py)")  # fmt: skip
    parser.add_argument("--store", type=Path, default=LOCAL_STORE, help="the model store")
    parser.add_argument("--repository", default="cpu", help="the store's repository")
    parser.add_argument("--labelled", type=Path,
                        help="the review's folder (its labels.jsonl): adds accuracies")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="the report's folder (default artifacts/compare/<A>-vs-<B>)"
    )
    parser.add_argument("--limit", type=int, help="replay only the newest N captures")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--tritonserver",
        type=Path,
        help="the tritonserver binary to serve both versions with, as `serve --tritonserver` "
        "(a GPU version's TensorRT plans need NVIDIA's image; default: the wheel's, CPU only)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="resnet-triton-compare-") as work:
        comparison = compare(args, Path(work))
        a, b = comparison.versions
        out = args.out or Path("artifacts/compare") / f"{a}-vs-{b}"
        write_report(comparison, out)  # while the images are there, for the picture
    print(comparison.headline())
    print(f"report: {out / 'report.md'} (and report.json, disagreements.png)")
    return 0
