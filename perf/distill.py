"""`make bench-distill`: is a distilled student worth serving? On the digits (the demo's
data): a teacher (resnet50), a student (resnet18) distilled from it, and the same
student trained on the labels alone (same seed, same epochs).

Reports each model's validation top-1, each student's agreement with the teacher,
and the speed of each exported model (`resnet-triton build`'s ONNX export, ONNX
Runtime in-process on the validation pixels, ceilings.onnxruntime_ceiling: the
model ceiling of `make bench`) at batch 1 and 32. Prints a table and saves
artifacts/bench/distill/distill.json. About 6 minutes on 2 CPUs at the default
64 px; --crop-size 224 is the deployment size (a GPU machine trains that in seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ceilings import onnxruntime_ceiling

from resnet_triton.build.export import export_onnx
from resnet_triton.digits import write_digits
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.resnet import load_checkpoint
from resnet_triton.training import TrainConfig, run
from resnet_triton.training.loaders import predict_folder


def train(name: str, args, **options) -> Path:
    """A run on the digits in args.out at args.crop_size; `options` override the rest."""
    out = args.out / name
    settings = {"epochs": args.epochs, "lr": 3e-3, "weights": "none", **options}
    config = TrainConfig(
        data=str(args.out / "digits"), out=str(out), hflip=False, workers=0,
        resize_size=args.crop_size * 9 // 8, crop_size=args.crop_size, **settings,
    )  # fmt: skip
    run(config)
    return out / "checkpoint.pt"


def write_summary(args, rows: dict, path: Path) -> None:
    """The figures with the command's arguments and the machine that trained."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "training_device": device,
               "onnxruntime_threads": "default (all cores)", "models": rows}  # fmt: skip
    path.write_text(json.dumps(summary, indent=2))
    print(f"written to {path}")


def predictions(checkpoint: Path, val: Path) -> tuple[np.ndarray, np.ndarray]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probs, targets = predict_folder(checkpoint, val, device)
    return probs.argmax(1), targets


def speed(checkpoint: Path, pixels: np.ndarray, batches: tuple[int, ...], seconds: float) -> dict:
    spec, model, _ = load_checkpoint(checkpoint)
    onnx_path = export_onnx(model, spec, checkpoint.with_suffix(".onnx"), checkpoint)
    return {f"batch {b}": onnxruntime_ceiling(onnx_path, pixels, b, seconds) for b in batches}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-arch", default="resnet50")
    parser.add_argument("--student-arch", default="resnet18")
    parser.add_argument("--teacher", type=Path, help="a teacher checkpoint (default: train one)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--kd-weight", type=float, default=0.7)
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per speed measurement")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/distill"))
    args = parser.parse_args()

    write_digits(args.out / "digits")
    val = args.out / "digits" / "val"
    teacher = args.teacher or train("teacher", args, arch=args.teacher_arch)
    kd = {"kd_weight": args.kd_weight, "kd_temperature": args.kd_temperature}
    student = {"arch": args.student_arch, "seed": 1}  # another initialisation than the teacher's
    students = {
        "distilled": train("distilled", args, **student, teacher=str(teacher), **kd),
        "labels only": train("labels-only", args, **student),
    }
    taught, targets = predictions(teacher, val)
    paths = sorted(val.rglob("*.png"))[:64]
    spec = load_checkpoint(teacher)[0]
    pixels = pixels_from_files(paths, spec.preprocessing)
    batches = (1, spec.max_batch_size)
    rows = {"teacher": {"checkpoint": str(teacher), "top1": float((taught == targets).mean()),
                        "speed": speed(teacher, pixels, batches, args.seconds)}}  # fmt: skip
    for name, checkpoint in students.items():
        answers, _ = predictions(checkpoint, val)
        rows[name] = {"checkpoint": str(checkpoint), "top1": float((answers == targets).mean()),
                      "agreement_with_teacher": float((answers == taught).mean()),
                      "speed": speed(checkpoint, pixels, batches, args.seconds)}  # fmt: skip
    for row in rows.values():
        for batch, figures in row["speed"].items():
            teacher_rate = rows["teacher"]["speed"][batch]["throughput_img_s"]
            figures["speedup_over_teacher"] = round(figures["throughput_img_s"] / teacher_rate, 2)

    most = spec.max_batch_size
    print(f"\n{'model':<12} {'top-1':>7} {'agrees':>7} {'img/s b1':>9} "
          f"{f'img/s b{most}':>10} {f'x b{most}':>6}")  # fmt: skip
    for name, row in rows.items():
        b1, bmost = row["speed"].values()
        agrees = row.get("agreement_with_teacher")
        print(f"{name:<12} {row['top1']:>7.4f} {'-' if agrees is None else f'{agrees:.4f}':>7} "
              f"{b1['throughput_img_s']:>9.1f} {bmost['throughput_img_s']:>10.1f} "
              f"{bmost['speedup_over_teacher']:>6.2f}")  # fmt: skip
    write_summary(args, rows, args.out / "distill.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
