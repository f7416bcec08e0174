"""`make bench-precision`: ONNX Runtime INT8 (QDQ) against FP32 on this CPU.

Quantizes the FP32 model that `make build` leaves in the work folder twice,
with the build's settings (build/quantize.py: u8 activations, 7-bit s8
weights) and with the same but full 8-bit weights (reduce_range off), both
calibrated as the build calibrates (128 training images). For each model,
on the same real held-out images: the scores' max and mean abs error
against FP32 (batches of 16) and the top-1 agreement, and images per second
at batch 1, 8 and 32 for a fixed time each after a warm-up. Without VNNI,
8-bit weights saturate ONNX Runtime's 16-bit sums (quantize.py says why).
Prints the CPU's kernel flags with the table; writes
<work-dir>/precision_bench.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.build.images import ImageSet, pixel_batches
from resnet_triton.build.manifest import cpu_features, cpu_name
from resnet_triton.build.quantize import U8S7, quantize_int8
from resnet_triton.data import image_folder
from resnet_triton.preprocess import pixels_from_files

# What the build quantizes with, and the same with full 8-bit weights (the build before).
SETTINGS = {"u8s7": U8S7, "u8s8": dataclasses.replace(U8S7, reduce_range=False)}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def images_per_second(path: Path, pixels: np.ndarray, batch: int, seconds: float) -> float:
    model = session(path)
    name = model.get_inputs()[0].name
    chunk = np.resize(pixels, (batch, *pixels.shape[1:]))  # (batch, 3, crop, crop), real images
    model.run(None, {name: chunk})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.run(None, {name: chunk})
        done += batch
    return done / (time.perf_counter() - start)


def scores(path: Path, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
    model = session(path)
    name = model.get_inputs()[0].name
    runs = [model.run(None, {name: pixels[i : i + batch]})[0] for i in range(0, len(pixels), batch)]
    return np.concatenate(runs)  # (N, classes)


def errors(path: Path, fp32: np.ndarray, pixels: np.ndarray) -> dict:
    """`path`'s scores against FP32's: what the INT8 gate bounds (verify.py)."""
    got = scores(path, pixels)
    diff = np.abs(got - fp32)
    return {
        "max_abs": round(float(diff.max()), 4),
        "mean_abs": round(float(diff.mean()), 5),
        "top1_agreement": round(float(np.mean(got.argmax(1) == fp32.argmax(1))), 4),
    }


def quantized(fp32: Path, spec, calibration: Path, count: int) -> dict[str, Path]:
    paths = list(ImageSet.of(image_folder(calibration, spec.preprocessing)).spread(count).paths)
    models = {}
    for name, settings in SETTINGS.items():
        models[name] = fp32.with_name(f"model.{name}.onnx")
        batches = pixel_batches(paths, spec, 16)  # as the build calibrates
        quantize_int8(fp32, models[name], spec.names.pixels, batches, settings)
    return models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/build"))
    parser.add_argument("--images", type=Path, default=Path("artifacts/demo/digits/val"))
    parser.add_argument("--calibration", type=Path, default=Path("artifacts/demo/digits/train"))
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    fp32 = args.work_dir / "model.fp32.onnx"
    if not fp32.is_file():
        print(f"error: {fp32} missing; run `make build` (or `make demo`) first")
        return 1
    spec = spec_from_onnx(fp32)
    models = {"fp32": fp32, **quantized(fp32, spec, args.calibration, args.calibration_images)}
    images = ImageSet.of(image_folder(args.images, spec.preprocessing)).spread(64)
    pixels = pixels_from_files(images.paths, spec.preprocessing)
    reference = scores(fp32, pixels)
    features = " ".join(cpu_features()) or "unknown"
    print(f"{spec.arch}, {spec.preprocessing.crop_size} px, ONNX Runtime {ort.__version__}, "
          f"{os.cpu_count()} CPUs ({cpu_name()}; {features}), {len(pixels)} held-out "
          "images")  # fmt: skip
    rows = []
    for name, path in models.items():
        row = {"model": name, **(errors(path, reference, pixels) if name != "fp32" else {})}
        for batch in args.batches:
            row[f"img_s_batch_{batch}"] = round(
                images_per_second(path, pixels, batch, args.seconds), 1
            )
        rows.append(row)
        print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    out = args.work_dir / "precision_bench.json"
    out.write_text(json.dumps({"arch": spec.arch, "onnxruntime": ort.__version__,
                               "cpu": cpu_name(), "cpu_features": cpu_features(),
                               "cpu_count": os.cpu_count(),
                               "settings": {k: dataclasses.asdict(v) for k, v in SETTINGS.items()},
                               "rows": rows}, indent=2))  # fmt: skip
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
