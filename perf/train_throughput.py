"""`make bench-train`: training images per second for resnet18 and resnet50.

Times the trainer's own step (forward, backward, optimizer; channels_last) on one
fixed batch of real images, after warm-up steps, so data loading is not measured, with
--amp forced on (bf16 autocast on CPU, fp16 on CUDA) and off (fp32). On a CPU without
bfloat16 kernels in oneDNN the amp row is emulated bf16, which `train` would not choose
by default: the table says so (training/precision.py). Prints a table and writes
artifacts/bench/train_throughput.json with this CPU's kernel features.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from resnet_triton.build.manifest import cpu_features
from resnet_triton.digits import write_digits
from resnet_triton.training import TrainConfig
from resnet_triton.training.distributed import Context
from resnet_triton.training.loop import Trainer
from resnet_triton.training.precision import native_bf16


def images_per_second(cfg: TrainConfig, warmup: int, steps: int) -> tuple[float, str]:
    """The step's images per second, and the precision it ran in (fp32, bf16, fp16)."""
    trainer = Trainer(
        cfg, Context(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    )
    trainer.set_stage(0)
    images, labels = next(iter(trainer.data.loader))  # (batch, 3, crop, crop)
    for _ in range(warmup):
        trainer.step(images, labels, stepping=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(images, labels, stepping=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * len(images) / (time.perf_counter() - start), trainer.precision.name


def emulated(precision: str) -> str:
    return " (emulated)" if precision == "bf16" and not native_bf16() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    data = args.out / "digits"
    if not (data / "train").is_dir():
        write_digits(data)
    rows = []
    for arch in args.archs:
        for amp in (True, False):
            cfg = TrainConfig(
                data=str(data), out=str(args.out / "train_scratch"), arch=arch,
                weights="none", batch_size=args.batch_size, workers=0, amp=amp,
            )  # fmt: skip
            rate, precision = images_per_second(cfg, args.warmup, args.steps)
            rows.append({"arch": arch, "amp": amp, "precision": precision,
                         "batch_size": args.batch_size, "crop_size": cfg.crop_size,
                         "images_per_s": round(rate, 1)})  # fmt: skip
            print(
                f"{arch:<9} amp={'on ' if amp else 'off'} {precision}{emulated(precision)} "
                f"batch {args.batch_size} {cfg.crop_size}px: {rate:7.1f} img/s",
                flush=True,
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    summary = {"device": device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "cpu_features": cpu_features(),
               "native_bf16": native_bf16(), "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(summary, indent=2))
    print(f"written to {args.out / 'train_throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
