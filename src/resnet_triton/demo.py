"""The whole pipeline on real images that ship with scikit-learn.

Writes the 1,797 handwritten digits as an ImageFolder (fixed stratified
split), fine-tunes a ResNet from random weights (nothing can be downloaded
here), exports and gates the ONNX model, publishes it to the model
repository, starts the real Triton server, classifies the whole validation
split through the ensemble over gRPC, stops the server and writes
`<out>/report.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from resnet_triton.build import command as build
from resnet_triton.client import Classifier
from resnet_triton.data import image_folder
from resnet_triton.digits import DEMO_ARCH, write_digits
from resnet_triton.errors import UserError
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.server import Ports, TritonServer
from resnet_triton.spec import Preprocessing
from resnet_triton.training import TrainConfig, predict
from resnet_triton.training import run as train


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-triton demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--concurrency", type=int, default=8, help="client requests in flight")
    sizes = "the model's input; smaller trains and serves faster (the digits are 8x8 px)"
    parser.add_argument("--crop-size", type=int, default=Preprocessing.crop_size, help=sizes)
    parser.add_argument("--resize-size", type=int, default=Preprocessing.resize_size,
                        help="the shorter side before the centre crop")  # fmt: skip
    return parser


class Stages:
    """Times each stage of the demo and says which one runs."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


def served_answers(repository: Path, spec, paths: list[Path], out: Path, concurrency: int, stage):
    """Every image through the ensemble of the real Triton server, started and stopped here."""
    server = None
    try:
        with stage("server_start"):
            server = TritonServer(repository, Ports.free(), log_path=out / "triton.log").start()
            server.wait_ready([spec.names.ensemble])
        with stage("classify"):
            url = f"localhost:{server.ports.grpc}"
            with Classifier(url, "grpc", spec.names.ensemble, concurrency=concurrency) as client:
                return client.classify(paths, top_k=1)
    finally:
        if server is not None:
            with stage("server_stop"):
                server.stop()


def run(out: Path, repository: Path, epochs: int = 5, lr: float = 2e-3, concurrency: int = 8,
        resize_size: int = Preprocessing.resize_size,
        crop_size: int = Preprocessing.crop_size):  # fmt: skip
    stage = Stages()
    data = out / "digits"
    with stage("data"):
        shutil.rmtree(data, ignore_errors=True)
        counts = write_digits(data)
        print(f"wrote {counts['train']} train and {counts['val']} val images to {data}")
    with stage("train"):
        config = TrainConfig(
            data=str(data), out=str(out / "train"), arch=DEMO_ARCH, weights="none",
            epochs=epochs, lr=lr, hflip=False,  # a mirrored digit is another glyph
            resize_size=resize_size, crop_size=crop_size,
        )  # fmt: skip
        evaluation = train(config)["evaluation"]
    checkpoint = out / "train" / "checkpoint.pt"
    with stage("build"):
        options = build.BuildOptions(
            checkpoint, repository, out / "build", target="cpu", images=data / "val", force=True
        )
        gate = build.run(options).reports[0]  # the export gate: ONNX Runtime vs PyTorch
    with stage("pytorch_reference"):
        spec, model, _ = load_checkpoint(checkpoint)
        val_set = image_folder(data / "val", spec.preprocessing, evaluate=True)
        reference = predict(model, DataLoader(val_set, batch_size=32), torch.device("cpu"))
        reference = reference.argmax(1)
    paths = [Path(p) for p, _ in val_set.samples]
    results = served_answers(repository, spec, paths, out, concurrency, stage)
    served = np.array([r.top1.index if r.top1 else -1 for r in results])
    failed = [{"image": r.source, "error": r.error} for r in results if r.error]
    targets = np.array(val_set.targets)
    report = {
        "images": len(paths),
        "failed_requests": len(failed),
        "failures": failed[:10],
        "pytorch_top1_accuracy": float(np.mean(reference == targets)),
        "served_top1_accuracy": float(np.mean(served == targets)),
        "served_vs_pytorch_agreement": float(np.mean(served == reference)),
        "polygraphy_max_abs_error": gate.max_abs_error,
        "polygraphy_max_rel_error": gate.max_rel_error,
        "polygraphy_tolerance": {"atol": gate.tolerance.atol, "rtol": gate.tolerance.rtol},
        # the training report: curves, confusion matrix, and the error analysis (val's most
        # confident mistakes and correct answers per class, with Grad-CAM overlays)
        "training_figures": {k: str(out / "train" / v) for k, v in evaluation["figures"].items()},
        "val_mistakes": evaluation["error_analysis"]["mistakes_total"],
        "stage_seconds": stage.seconds,
        "total_seconds": round(sum(stage.seconds.values()), 2),
        "checkpoint": str(checkpoint),
        "repository": str(repository),
    }
    write_report(report, out / "report.json")
    if failed:
        raise UserError(f"{len(failed)} of {len(paths)} requests failed, first: {failed[0]}")
    return report


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))
    print(f"\nreport: {path}  (total {report['total_seconds']:.0f} s)")
    for key in ("pytorch_top1_accuracy", "served_top1_accuracy", "served_vs_pytorch_agreement"):
        print(f"{key:<28} {report[key]:.4f}")


def main(args: argparse.Namespace) -> int:
    run(args.out, args.repository, args.epochs, args.lr, args.concurrency, args.resize_size,
        args.crop_size)  # fmt: skip
    return 0
