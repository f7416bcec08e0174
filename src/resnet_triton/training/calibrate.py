"""`resnet-triton calibrate`: open-set rejection for a trained checkpoint.

A classifier knows only its classes; shown anything else it still names one. The
score used to refuse: the top softmax probability (max softmax), because that is
what the served ensemble returns (SCORES); the energy score, logsumexp of the
logits, is measured beside it when images from outside the classes are given, so
the choice is a measured one (the AUROC of each, in calibration.json).

The threshold is the --frr quantile of the validation split's top scores: that
share of in-class images falls below it and would be answered "unknown". It is
stored in the checkpoint's spec (`reject_below`); `build` publishes it in the
ensemble's config, where the client library reads it and marks an image whose top
score is below it as unknown (the CLI and the web page show that).

    resnet-triton calibrate --checkpoint artifacts/demo/train/checkpoint.pt \\
        --data artifacts/demo/digits --frr 0.05 --outside some/other/photos
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from resnet_triton.data import DataError, held_out_images
from resnet_triton.preprocess import image_files, normalize, pixels_from_files
from resnet_triton.resnet import load_checkpoint, save_checkpoint
from resnet_triton.spec import ModelSpec, SpecError

SCORE = "max_softmax"


def scores(model: torch.nn.Module, spec: ModelSpec, paths: list[Path]) -> dict[str, np.ndarray]:
    """Per image: max softmax and energy (logsumexp of the logits)."""
    out = {"max_softmax": [], "energy": []}
    batch = spec.max_batch_size
    for start in range(0, len(paths), batch):
        pixels = pixels_from_files(paths[start : start + batch], spec.preprocessing)
        with torch.no_grad():
            logits = model(torch.from_numpy(normalize(pixels, spec.preprocessing))).float()
        out["max_softmax"].append(torch.softmax(logits, dim=1).max(1).values.numpy())
        out["energy"].append(torch.logsumexp(logits, dim=1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def validation_images(data: Path, spec: ModelSpec, payload: dict, checkpoint: Path):
    """The held-out images to calibrate on: `data`/val/, or the validation split of the
    run's own flat folder (drawn again from the checkpoint's config), or all of a folder
    the run never trained on."""
    if (data / "val").is_dir():
        data = data / "val"
    config, fingerprint = payload.get("config", {}), payload.get("held_out")
    return held_out_images(data, config, spec.preprocessing, fingerprint, str(checkpoint))


def calibrate(checkpoint: Path, data: Path, frr: float, outside: list[Path]) -> dict:
    """data: the training data's root (its val/ or validation split), or held-out images."""
    if not 0.0 < frr < 0.5:
        raise SpecError(f"--frr must lie in (0, 0.5), got {frr}")
    spec, model, payload = load_checkpoint(checkpoint)
    dataset = validation_images(data, spec, payload, checkpoint)
    val = dataset.root
    if tuple(dataset.classes) != spec.labels:
        raise DataError(
            f"{val} has classes {dataset.classes}; {checkpoint} has {list(spec.labels)}"
        )
    inside = scores(model, spec, [Path(p) for p, _ in dataset.samples])
    threshold = float(np.quantile(inside[SCORE], frr))
    report = {
        "checkpoint": str(checkpoint), "score": SCORE, "target_frr": frr, "threshold": threshold,
        "val": str(val), "val_images": len(dataset.samples),
        "val_frr": float(np.mean(inside[SCORE] < threshold)),
    }  # fmt: skip
    if outside:
        far = scores(model, spec, outside)
        report["outside_images"] = len(outside)
        report["outside_rejected"] = float(np.mean(far[SCORE] < threshold))
        is_inside = np.r_[np.ones(len(inside[SCORE])), np.zeros(len(far[SCORE]))]
        report["auroc"] = {
            name: float(roc_auc_score(is_inside, np.r_[inside[name], far[name]]))
            for name in ("max_softmax", "energy")
        }
    calibrated = dataclasses.replace(spec, reject_below=threshold, reject_rate=report["val_frr"])
    extra = {k: v for k, v in payload.items() if k not in ("format", "spec", "state_dict")}
    save_checkpoint(checkpoint, model, calibrated, **extra)
    (checkpoint.parent / "calibration.json").write_text(json.dumps(report, indent=2))
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton calibrate",
        description="Calibrate open-set rejection: store in the checkpoint the top-score "
        "threshold below which an image is 'unknown', for a false-rejection rate on the "
        "validation split; report the rejection of images from outside the classes.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="rewritten in place")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the training data (its val/, or the validation split of a folder of classes, "
        "drawn again as training drew it) or a folder of held-out images of the classes",
    )
    parser.add_argument("--frr", type=float, default=0.05, help="in-class images rejected")
    parser.add_argument("--outside", nargs="*", default=[], help="images of no class (optional)")
    return parser


def main(args: argparse.Namespace) -> int:
    outside = image_files(args.outside) if args.outside else []
    report = calibrate(args.checkpoint, args.data, args.frr, outside)
    print(f"reject_below {report['threshold']:.4f} ({SCORE}): {report['val_frr']:.1%} of "
          f"{report['val_images']} validation images rejected (target {args.frr:.1%})")  # fmt: skip
    if outside:
        auroc = ", ".join(f"{k} {v:.3f}" for k, v in report["auroc"].items())
        print(f"{report['outside_rejected']:.1%} of {len(outside)} outside images rejected; "
              f"AUROC {auroc}")  # fmt: skip
    print(f"written to {args.checkpoint} and {args.checkpoint.parent / 'calibration.json'}")
    return 0
