"""Offline prediction, no server: every class's probability for image files.

    resnet-triton predict photo.jpg digits/ --checkpoint artifacts/train/checkpoint.pt
    resnet-triton predict photo.jpg --onnx model.onnx --json
    resnet-triton predict photo.jpg --checkpoint checkpoint.pt --gradcam out/

The images go through the server's own steps: the shared decoder and crop
(preprocess.pixels_from_files), then the model as it is served, 8-bit pixels in
and probabilities out (build.export.ServedModel for a checkpoint; an exported
ONNX file is that graph already, run by ONNX Runtime). A model calibrated for
open-set rejection says "unknown" below its threshold, as the server does.

    from resnet_triton.predict import Predictor
    predictor = Predictor.from_checkpoint("checkpoint.pt")
    probabilities = predictor.probabilities(["a.jpg", "b.png"])   # (2, classes)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from resnet_triton.errors import UserError
from resnet_triton.preprocess import ImageDecodeError, image_files, pixels_from_files
from resnet_triton.spec import ModelSpec


class Predictor:
    """A model as it is served (uint8 pixels -> probabilities) and its spec."""

    def __init__(self, spec: ModelSpec, run, source: str):
        self.spec, self.run, self.source = spec, run, source

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Predictor:
        from resnet_triton.build.export import ServedModel
        from resnet_triton.resnet import load_checkpoint

        spec, model, _ = load_checkpoint(path)  # CheckpointError names a bad file
        served = ServedModel(model, spec).eval()

        def run(pixels: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return served(torch.from_numpy(pixels)).numpy()

        return cls(spec, run, str(path))

    @classmethod
    def from_onnx(cls, path: str | Path) -> Predictor:
        import onnxruntime as ort

        from resnet_triton.build.export import spec_from_onnx

        if not Path(path).is_file():
            raise UserError(f"ONNX file {path} does not exist")
        spec = spec_from_onnx(Path(path))  # ExportError names a file without a spec
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(pixels: np.ndarray) -> np.ndarray:
            return session.run([spec.names.scores], {spec.names.pixels: pixels})[0]

        return cls(spec, run, str(path))

    def probabilities(self, paths: list) -> np.ndarray:
        """(N, classes) float32 for image files; ImageDecodeError names a bad file."""
        return self.of_pixels(pixels_from_files(paths, self.spec.preprocessing))

    def of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, crop, crop) uint8 -> (N, classes) float32, in batches the model takes."""
        batch = self.spec.max_batch_size
        parts = [self.run(pixels[start : start + batch]) for start in range(0, len(pixels), batch)]
        return np.concatenate(parts) if parts else np.empty((0, self.spec.num_classes))

    def answer(self, scores: np.ndarray) -> str:
        """The top class, or "unknown" below the calibrated threshold (as served)."""
        top = int(scores.argmax())
        below = self.spec.reject_below is not None and scores[top] < self.spec.reject_below
        return "unknown" if below else self.spec.labels[top]


def record(predictor: Predictor, path: Path, scores: np.ndarray) -> dict:
    order = np.argsort(-scores, kind="stable")
    return {
        "image": str(path),
        "answer": predictor.answer(scores),
        "probabilities": {predictor.spec.labels[i]: float(scores[i]) for i in order},
    }


def text(item: dict) -> str:
    lines = [f"{item['image']}: {item['answer']}"]
    lines += [f"  {label:<16} {p:.4f}" for label, p in item["probabilities"].items()]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton predict",
        description="Every class's probability for image files, without a server, through "
        "the serving preprocessing. A file that does not decode is reported and skipped; "
        "exits 1 if any was.",
    )
    parser.add_argument("paths", nargs="+", help="image files, folders or globs")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint.pt from train")
    model.add_argument("--onnx", help="an ONNX file exported by build (model.onnx)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--gradcam",
        type=Path,
        metavar="DIR",
        help="also write Grad-CAM overlays of each answer there (with --checkpoint)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.gradcam and not args.checkpoint:
        raise UserError("--gradcam needs --checkpoint: an ONNX file has no gradients")
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint)
    else:
        predictor = Predictor.from_onnx(args.onnx)
    good, pixels, failed = [], [], 0
    for path in image_files(args.paths):  # the classify CLI's rules
        try:
            pixels.append(pixels_from_files([path], predictor.spec.preprocessing))
            good.append(path)
        except ImageDecodeError as exc:  # this file fails alone
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    scores = predictor.of_pixels(np.concatenate(pixels)) if pixels else []
    for path, row in zip(good, scores, strict=True):
        item = record(predictor, path, row)
        print(json.dumps(item) if args.json else text(item))
    if args.gradcam and good:
        from resnet_triton import explain

        explanations = explain.Explainer.from_checkpoint(args.checkpoint).explain_files(good)
        overlays = explain.write(explanations, args.gradcam, "gradcam")
        for e, overlay in zip(explanations, overlays, strict=True):
            print(f"{e.source}: Grad-CAM of {e.label} -> {overlay}", file=sys.stderr)
    return 1 if failed else 0
