"""What a GPU host changes, measured where a GPU is lent (no Triton, TensorRT or DALI there).

1. The classifier by batch size on the GPU: the served graph (8-bit pixels in,
   softmax out; `build`'s ServedModel) in PyTorch, FP32 and FP16 autocast,
   channels_last, with the pixels copied from host memory every batch as a
   server's are; and the exported ONNX file in ONNX Runtime's CUDA provider
   where the installed onnxruntime has it. This is the figure behind the advice
   in perf/README.md to give a GPU classifier a queue delay.
2. JPEG decoding and resizing on the GPU (nvJPEG through torchvision, the
   decoder DALI uses too), against the project's CPU preprocessing on the
   host's cores, with the pixel difference between the two.

    python perf/gpu_host.py [--photos DIR] [--out FILE]

Prints and writes JSON; perf/README.md records a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from ceilings import preprocessing_ms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from resnet_triton.build.export import ServedModel, export_onnx
from resnet_triton.digits import demo_spec
from resnet_triton.preprocess import pixels_from_bytes
from resnet_triton.resnet import build_model, save_checkpoint
from resnet_triton.spec import ModelSpec


def timed(run, seconds: float) -> float:
    """Median seconds of `run()` (which ends synchronized) over about `seconds`."""
    run()
    durations, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(durations) < 5:
        tick = time.perf_counter()
        run()
        durations.append(time.perf_counter() - tick)
    return float(np.median(durations))


def torch_by_batch(model, spec: ModelSpec, batches, seconds) -> dict:
    served = ServedModel(model, spec).cuda().eval().to(memory_format=torch.channels_last)
    rows = {}
    for precision in ("fp32", "fp16"):
        for batch in batches:
            host = torch.randint(0, 256, (batch, *spec.preprocessing.input_shape),
                                 dtype=torch.uint8).pin_memory()  # fmt: skip

            def run(host=host, fp16=precision == "fp16"):
                pixels = host.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=fp16):
                    served(pixels).cpu()  # .cpu() waits for the GPU

            s = timed(run, seconds)
            rows[f"pytorch {precision}, batch {batch}"] = per_batch(batch, s)
    return rows


def onnxruntime_by_batch(onnx_path: Path, batches, seconds) -> dict:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"onnxruntime {ort.__version__} has no CUDA provider: not measured")
        return {}
    session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        print(f"ONNX Runtime fell back to {session.get_providers()}: not measured")
        return {}
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    rows = {}
    for batch in batches:
        pixels = np.random.randint(0, 256, (batch, *shape[1:]), dtype=np.uint8)
        s = timed(lambda pixels=pixels: session.run(None, {name: pixels}), seconds)
        rows[f"onnxruntime cuda fp32, batch {batch}"] = per_batch(batch, s)
    return rows


def per_batch(batch: int, seconds: float) -> dict:
    return {"ms_per_batch": round(seconds * 1000, 3), "img_s": round(batch / seconds, 1)}


def gpu_crops(payloads: list[bytes], spec: ModelSpec, device: str = "cuda") -> torch.Tensor:
    """JPEG bytes -> (N, 3, crop, crop) uint8 on the GPU: nvJPEG, antialiased bilinear
    resize of the shorter side, center crop (torchvision's eval transform)."""
    prep = spec.preprocessing
    data = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    crops = [
        F.center_crop(F.resize(image, [prep.resize_size], antialias=True), [prep.crop_size])
        for image in images
    ]
    return torch.stack(crops)


def decoding(photos: list[Path], spec: ModelSpec, batch: int, seconds: float) -> dict:
    jpegs = [p.read_bytes() for p in photos if p.suffix.lower() in (".jpg", ".jpeg")]
    gpu = gpu_crops(jpegs, spec).cpu().numpy().astype(np.int16)
    cpu = pixels_from_bytes(jpegs, spec.preprocessing).astype(np.int16)
    diff = np.abs(gpu - cpu)
    payloads = (jpegs * batch)[:batch]

    def run():
        gpu_crops(payloads, spec)
        torch.cuda.synchronize()

    gpu_ms = timed(run, seconds) * 1000 / batch
    cores = os.cpu_count()
    cpu_ms = {w: preprocessing_ms(jpegs, spec.preprocessing, w, seconds) for w in (1, cores)}
    return {
        "jpeg_photos": len(jpegs),
        "gpu_ms_per_image": round(gpu_ms, 3),
        "gpu_batch": batch,
        "cpu_ms_per_image": {f"{w} processes": round(ms, 3) for w, ms in cpu_ms.items()},
        "gpu_vs_cpu_levels": {
            "mean": round(float(diff.mean()), 3),
            "p99": float(np.percentile(diff, 99)),
            "max": int(diff.max()),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--photos", type=Path, help="a folder of photos (default: the packages')")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/gpu_host.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; this command measures a GPU host")
        return 1
    if args.photos:
        photos = sorted(args.photos.iterdir())
    else:
        from resnet_triton.data import package_photos  # scikit-image and scikit-learn

        photos = package_photos()
    result = {
        "gpu": torch.cuda.get_device_name(),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "onnxruntime": ort.__version__,
        },  # fmt: skip
        "cpu_count": os.cpu_count(),
        "classifier": {},
    }
    for arch in args.archs:
        torch.manual_seed(0)
        spec = dataclasses.replace(demo_spec(), arch=arch)
        model = build_model(spec)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = Path(tmp) / "checkpoint.pt"
            save_checkpoint(checkpoint, model, spec)
            onnx_path = export_onnx(model, spec, Path(tmp) / "model.onnx", checkpoint)
            rows = onnxruntime_by_batch(onnx_path, args.batches, args.seconds)
        rows |= torch_by_batch(model, spec, args.batches, args.seconds)
        result["classifier"][arch] = rows
        for name, row in rows.items():
            print(f"{arch:<9} {name:<36} {row['ms_per_batch']:8.2f} ms {row['img_s']:9.1f} img/s")
    spec = demo_spec()
    result["decoding"] = decoding(photos, spec, spec.max_batch_size, args.seconds)
    print(json.dumps(result["decoding"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
