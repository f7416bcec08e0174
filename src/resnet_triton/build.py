"""Build stage: checkpoint -> ONNX -> accuracy gate -> model repository.

The ONNX model is written to the work folder first. Only when Polygraphy
finds ONNX Runtime within tolerance of PyTorch on real validation images is
it installed into the model repository (with freshly rendered configs); a
failed gate exits non-zero and leaves the repository as it was.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from resnet_triton.data import image_folder
from resnet_triton.errors import UserError
from resnet_triton.export import export_onnx, spec_from_onnx
from resnet_triton.preprocess import load_image, preprocess
from resnet_triton.repository import env_path_for, publish
from resnet_triton.resnet import load_checkpoint
from resnet_triton.spec import ModelSpec
from resnet_triton.verify import FP32_TOLERANCE, GateReport, compare_onnx_with_torch


class GateFailed(UserError):
    """The candidate model is outside tolerance; nothing was published."""


def gate_images(folder: Path, spec: ModelSpec, count: int) -> tuple[np.ndarray, list[str]]:
    """`count` images spread evenly over an ImageFolder (all classes), preprocessed."""
    samples = image_folder(folder).samples
    picks = np.unique(np.linspace(0, len(samples) - 1, min(count, len(samples))).astype(int))
    paths = [samples[i][0] for i in picks]
    pixels = np.stack([preprocess(load_image(p), spec.preprocessing) for p in paths])
    return pixels, paths  # (n, 3, crop, crop)


def run(
    checkpoint: Path,
    repository: Path,
    work_dir: Path,
    images: Path | None = None,
    gate_count: int = 64,
    onnx_path: Path | None = None,
    env_path: str | None = None,
) -> GateReport:
    spec, model, payload = load_checkpoint(checkpoint)
    if images is None:
        images = Path(payload.get("config", {}).get("data", "")) / "val"
    if onnx_path is None:
        onnx_path = export_onnx(model, spec, work_dir / "model.onnx", checkpoint)
        print(f"exported {onnx_path}")
    elif spec_from_onnx(onnx_path) != spec:
        raise UserError(f"{onnx_path} was exported from another model spec than {checkpoint}")

    pixels, names = gate_images(images, spec, gate_count)
    report = compare_onnx_with_torch(onnx_path, model, spec, pixels, names, FP32_TOLERANCE)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "gate.json").write_text(json.dumps(asdict(report), indent=2))
    print(report.summary())
    if not report.passed:
        raise GateFailed(f"{onnx_path} failed the accuracy gate; {repository} left unchanged")
    target = publish(onnx_path, spec, repository, env_path or env_path_for(repository))
    print(f"published {target}")
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-triton build", description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--repository", default=Path("model_repository"), type=Path)
    parser.add_argument("--work-dir", default=Path("artifacts/build"), type=Path)
    parser.add_argument(
        "--images",
        type=Path,
        help="ImageFolder of gate images (default: val/ of the data the checkpoint was trained on)",
    )
    parser.add_argument("--gate-images", type=int, default=64, help="images the gate compares on")
    parser.add_argument(
        "--onnx", type=Path, help="gate and publish this ONNX file instead of exporting one"
    )
    parser.add_argument(
        "--env-path",
        help="EXECUTION_ENV_PATH for the Python-backend models (default: this venv)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    run(
        args.checkpoint,
        args.repository,
        args.work_dir,
        args.images,
        args.gate_images,
        args.onnx,
        args.env_path,
    )
    return 0
