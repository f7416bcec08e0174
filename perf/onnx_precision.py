"""`make bench-precision`: ONNX Runtime INT8 (QDQ) against FP32 on this CPU.

Runs both models that `make build PRECISION=int8` leaves in the work folder
on the same real validation images, at batch 1, 8 and 32, for a fixed time
each after a warm-up, and reports images per second and the INT8/FP32 ratio.
Writes <work-dir>/precision_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.build.images import ImageSet
from resnet_triton.data import image_folder
from resnet_triton.preprocess import pixels_from_files


def images_per_second(path: Path, pixels: np.ndarray, batch: int, seconds: float) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chunk = np.resize(pixels, (batch, *pixels.shape[1:]))  # (batch, 3, crop, crop), real images
    session.run(None, {name: chunk})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: chunk})
        done += batch
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/build"))
    parser.add_argument("--images", type=Path, default=Path("artifacts/demo/digits/val"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    models = {p: args.work_dir / f"model.{p}.onnx" for p in ("fp32", "int8")}
    missing = [str(m) for m in models.values() if not m.is_file()]
    if missing:
        print(f"error: {', '.join(missing)} missing; run `make build PRECISION=int8` first")
        return 1
    spec = spec_from_onnx(models["fp32"])
    images = ImageSet.of(image_folder(args.images, spec.preprocessing)).spread(64)
    pixels = pixels_from_files(images.paths, spec.preprocessing)
    rows = []
    print(f"{spec.arch}, {spec.preprocessing.crop_size} px, ONNX Runtime {ort.__version__}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for batch in args.batches:
        rate = {p: images_per_second(m, pixels, batch, args.seconds) for p, m in models.items()}
        rows.append({"batch": batch, **{f"{p}_img_s": round(r, 1) for p, r in rate.items()},
                     "int8_over_fp32": round(rate["int8"] / rate["fp32"], 2)})  # fmt: skip
        print(f"batch {batch:>3}: fp32 {rate['fp32']:7.1f} img/s, int8 {rate['int8']:7.1f} "
              f"img/s, int8/fp32 {rate['int8'] / rate['fp32']:.2f}x", flush=True)  # fmt: skip
    out = args.work_dir / "precision_bench.json"
    out.write_text(json.dumps({"arch": spec.arch, "onnxruntime": ort.__version__,
                               "cpu_count": os.cpu_count(), "rows": rows}, indent=2))  # fmt: skip
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
