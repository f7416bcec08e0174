"""Grad-CAM for a checkpoint: which pixels of the crop an answer rests on.

The maintained `grad-cam` package computes the maps (its hooks, its scaling);
this module feeds it the crop the served model sees (the shared preprocessing)
and names what comes back. The target layer is the last block of layer4, the
usual choice for ResNets: its maps are crop/32 cells (7x7 at 224 px),
upsampled to the crop by bilinear interpolation.

    explainer = Explainer.from_checkpoint("checkpoint.pt", method="gradcam++")
    explanation = explainer.explain_bytes(jpeg_bytes)          # or label="cat"
    explanations = explainer.explain_files(["a.jpg", "b.png"])
    explanation.heatmap   # (crop, crop) float32 in [0, 1]
    explanation.overlay() # (crop, crop, 3) uint8: the heatmap over the crop
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from resnet_triton.errors import UserError
from resnet_triton.preprocess import (
    ImageDecodeError,
    crop,
    decode_image,
    image_files,
    load_image,
    normalize,
    to_pixels,
)
from resnet_triton.resnet import load_checkpoint
from resnet_triton.spec import ModelSpec

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


@dataclass(frozen=True)
class Explanation:
    source: str
    crop: np.ndarray  # (crop, crop, 3) uint8: the pixels the model saw
    heatmap: np.ndarray  # (crop, crop) float32 in [0, 1], for `label`
    label: str  # the class explained: the prediction unless one was asked for
    index: int
    score: float  # softmax probability of `label`
    predicted: str

    def overlay(self, weight: float = 0.5) -> np.ndarray:
        """(crop, crop, 3) uint8: the heatmap (jet colours) blended over the crop."""
        return show_cam_on_image(
            self.crop / np.float32(255), self.heatmap, True, image_weight=weight
        )

    def overlay_png(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.overlay()).save(buffer, format="PNG")
        return buffer.getvalue()


class Explainer:
    """Grad-CAM (or Grad-CAM++) of one model; not thread-safe (hooks hold the last pass)."""

    def __init__(self, model: nn.Module, spec: ModelSpec, method: str = "gradcam"):
        if method not in METHODS:
            raise UserError(f"unknown explanation method {method!r}; choose from {list(METHODS)}")
        self.model, self.spec, self.method = model.eval(), spec, method
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | Path, method: str = "gradcam") -> Explainer:
        spec, model, _ = load_checkpoint(path)  # CheckpointError names a bad file
        return cls(model, spec, method)

    def class_index(self, label: str | None) -> int | None:
        """The index of class `label`; None for None (each image's prediction)."""
        if label is None:
            return None
        if label not in self.spec.labels:
            raise UserError(f"class {label!r} is not one of {list(self.spec.labels)}")
        return self.spec.labels.index(label)

    def explain(
        self, crops: np.ndarray, sources: list[str], label: str | None = None
    ) -> list[Explanation]:
        """(N, crop, crop, 3) uint8 crops -> one Explanation each, for class `label` or
        the predicted class."""
        if len(crops) == 0:
            return []
        inputs = torch.from_numpy(normalize(to_pixels(crops), self.spec.preprocessing))
        fixed = self.class_index(label)
        targets = None if fixed is None else [ClassifierOutputTarget(fixed)] * len(crops)
        layer = self.model.layer4[-1]
        with METHODS[self.method](model=self.model, target_layers=[layer]) as cam:
            # targets None: grad-cam explains each image's top class; its forward pass
            # (cam.outputs) gives the scores too, so the model runs once.
            maps = cam(input_tensor=inputs.to(self.device), targets=targets)
            probs = torch.softmax(cam.outputs.detach().float(), dim=1).cpu().numpy()
        predicted = probs.argmax(1)
        indices = [int(p) if fixed is None else fixed for p in predicted]
        labels = self.spec.labels
        return [
            Explanation(
                source=source,
                crop=crops[n],
                heatmap=maps[n].astype(np.float32),
                label=labels[indices[n]],
                index=indices[n],
                score=float(probs[n, indices[n]]),
                predicted=labels[predicted[n]],
            )
            for n, source in enumerate(sources)
        ]

    def crop_bytes(self, data: bytes) -> np.ndarray:
        prep = self.spec.preprocessing
        return crop(decode_image(data, prep), prep)  # ImageDecodeError names the problem

    def crop_file(self, path: str | Path) -> np.ndarray:
        prep = self.spec.preprocessing
        return crop(load_image(path, prep), prep)

    def explain_bytes(self, data: bytes, source: str = "image", label: str | None = None):
        return self.explain(self.crop_bytes(data)[None], [source], label)[0]

    def explain_files(self, paths, label: str | None = None) -> list[Explanation]:
        paths = [Path(p) for p in paths]
        crops = np.stack([self.crop_file(p) for p in paths])
        return self.explain(crops, [str(p) for p in paths], label)


def write(explanations: list[Explanation], out: Path, method: str) -> list[Path]:
    """<out>/<n>-<stem>.<method>.png overlays, heatmaps.npz (arrays named like the PNGs)
    and explanations.json; returns the overlays' paths."""
    out.mkdir(parents=True, exist_ok=True)
    overlays, arrays, records = [], {}, []
    for n, e in enumerate(explanations):
        name = f"{n:03d}-{Path(e.source).stem}.{method}"
        path = out / f"{name}.png"
        path.write_bytes(e.overlay_png())
        overlays.append(path)
        arrays[name] = e.heatmap
        records.append(
            {"source": e.source, "overlay": path.name, "heatmap": name, "label": e.label,
             "score": e.score, "predicted": e.predicted}
        )  # fmt: skip
    np.savez_compressed(out / "heatmaps.npz", **arrays)
    (out / "explanations.json").write_text(
        json.dumps({"method": method, "images": records}, indent=2)
    )
    return overlays


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton explain",
        description="Grad-CAM overlays (PNG) and heatmaps (heatmaps.npz) for a checkpoint on "
        "image files, folders and globs. A file that does not decode is reported and skipped; "
        "exits 1 if any was.",
    )
    parser.add_argument("paths", nargs="+", help="image files, folders or globs")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt from train")
    parser.add_argument("--method", default="gradcam", choices=list(METHODS))
    parser.add_argument(
        "--class", dest="label", help="class to explain (default: each image's prediction)"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/explain"))
    return parser


def main(args: argparse.Namespace) -> int:
    explainer = Explainer.from_checkpoint(args.checkpoint, args.method)
    explainer.class_index(args.label)  # an unknown class fails before any work
    crops, sources, failed = [], [], 0
    for path in image_files(args.paths):  # the classify CLI's rules
        try:
            crops.append(explainer.crop_file(path))
            sources.append(str(path))
        except ImageDecodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    explanations, batch = [], explainer.spec.max_batch_size
    for start in range(0, len(crops), batch):
        chunk = np.stack(crops[start : start + batch])
        explanations += explainer.explain(chunk, sources[start : start + batch], args.label)
    overlays = write(explanations, args.out, args.method)
    for e, overlay in zip(explanations, overlays, strict=True):
        print(f"{e.source}: {e.label} ({e.score:.4f}, predicted {e.predicted}) -> {overlay}")
    return 1 if failed else 0
