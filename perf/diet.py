"""`make bench-diet`: which smaller model to serve? On the digits (the demo's data), the
three ways to a cheaper model side by side, each also as INT8:

  resnet50                the teacher, trained from random weights
  resnet50 pruned R       `resnet-triton prune` at each --ratios R, recovered for
                          --recovery-epochs with the unpruned teacher distilling
  resnet18 distilled      `resnet-triton distill` from the teacher
  resnet18 pruned R       the distilled resnet18 pruned at the last ratio, recovered
                          with it distilling

Each checkpoint goes through `resnet-triton build` (FP32, and INT8 by static
quantization, behind the build's gates) into its own repository. Per model:
top-1 on the validation split and agreement with the teacher (the published ONNX
file's own answers: INT8's are INT8's), parameters and GMACs per image
(Torch-Pruning's counter), ONNX Runtime images/s in-process at batch 1 and 32
(ceilings.onnxruntime_ceiling), and the served ensemble's images/s under
perf_analyzer at concurrency 8 (gRPC, the digits' PNG files, the repository's
default serving configuration). Prints a table and saves artifacts/bench/diet/diet.json;
about 20 minutes on 2 CPUs at the default 64 px.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ceilings import onnxruntime_ceiling
from distill import train, write_summary
from perf_tools import ensemble_input, published_model, run_perf_analyzer

from resnet_triton.build import command as build
from resnet_triton.data import image_folder
from resnet_triton.digits import write_digits
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.server import Ports, TritonServer
from resnet_triton.training.pruning import count


def pruned(name: str, unpruned: Path, ratio: float, args) -> Path:
    """`resnet-triton prune` at `ratio`, the unpruned model distilling into the recovery."""
    arch = load_checkpoint(unpruned)[0].arch
    return train(
        name, args, arch=arch, prune_from=str(unpruned), prune_ratio=ratio,
        teacher=str(unpruned), epochs=args.recovery_epochs,
    )  # fmt: skip


def publish(checkpoint: Path, precision: str, args) -> Path:
    folder = checkpoint.parent / precision
    digits = args.out / "digits"
    build.run(build.BuildOptions(
        checkpoint, folder / "repo", folder / "work", precision=precision, target="cpu",
        images=digits / "val", calibration=digits / "train",
    ))  # fmt: skip
    return folder / "repo"


def answers(onnx_path: Path, pixels: np.ndarray, batch: int) -> np.ndarray:
    """The ONNX file's top-1 class for each image, `batch` images a run."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    runs = range(0, len(pixels), batch)
    return np.concatenate(
        [session.run(None, {name: pixels[i : i + batch]})[0] for i in runs]
    ).argmax(1)


def served_rate(repo: Path, spec, images: list[Path], args, out: Path) -> float:
    data = ensemble_input(images, spec.names.image, out / "ensemble.json")
    with TritonServer(repo, Ports.free(), log_path=out / "triton.log") as server:
        server.wait_ready([spec.names.ensemble])
        rows = run_perf_analyzer(
            spec.names.ensemble, server.ports, data, "8:8", out / "c8.csv", args.interval_ms
        )
    return rows[0]["throughput_img_s"]


def measure(checkpoint: Path, size: dict, precision: str, val, taught, args) -> dict:
    """One model in one precision; `size` its parameters and GMACs (pruning.count)."""
    try:
        repo = publish(checkpoint, precision, args)
    except build.GateFailed as exc:  # a row of its own: the gate kept it from serving
        return {"checkpoint": str(checkpoint), "precision": precision, "gate_failed": str(exc)}
    onnx_path, spec = published_model(repo)
    paths, targets = val
    pixels = pixels_from_files(paths, spec.preprocessing)  # (n, 3, crop, crop) uint8
    said = answers(onnx_path, pixels, spec.max_batch_size)
    speed = {
        f"batch {b}": onnxruntime_ceiling(onnx_path, pixels[:64], b, args.seconds)
        for b in (1, spec.max_batch_size)
    }
    return {
        "checkpoint": str(checkpoint),
        "precision": precision,
        "arch": spec.arch,
        "pruned_layers": len(spec.widths),
        "top1": float((said == targets).mean()),
        "agreement_with_teacher": None if taught is None else float((said == taught).mean()),
        **size,
        "onnxruntime": speed,
        "served_c8_img_s": served_rate(repo, spec, paths[:32], args, repo.parent),
        "_answers": said,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="teacher and distilled student")
    parser.add_argument("--recovery-epochs", type=int, default=3)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="per ONNX Runtime figure")
    parser.add_argument("--interval-ms", type=int, default=5000, help="perf_analyzer window")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/diet"))
    args = parser.parse_args()

    write_digits(args.out / "digits")
    teacher = train("resnet50", args, arch="resnet50")
    models = {"resnet50": teacher}
    for ratio in args.ratios:
        name = f"resnet50 pruned {ratio}"
        models[name] = pruned(name.replace(" ", "-"), teacher, ratio, args)
    student = train("resnet18-distilled", args, arch="resnet18", seed=1, teacher=str(teacher))
    models["resnet18 distilled"] = student
    last = args.ratios[-1]
    name = f"resnet18 pruned {last}"
    models[name] = pruned(name.replace(" ", "-"), student, last, args)

    # The validation images and their class indices as training read them.
    folder = image_folder(args.out / "digits" / "val", load_checkpoint(teacher)[0].preprocessing)
    val = ([Path(path) for path, _ in folder.samples], np.array(folder.targets))
    rows, taught = {}, None
    for name, checkpoint in models.items():
        spec, model, _ = load_checkpoint(checkpoint)
        size = count(model, spec)
        for precision in ("fp32", "int8"):
            row = measure(checkpoint, size, precision, val, taught, args)
            if taught is None:  # the first row is the teacher in FP32 (its gate is exact)
                taught = row["_answers"]
                row["agreement_with_teacher"] = 1.0
            rows[f"{name} {precision}"] = row
    for row in rows.values():
        row.pop("_answers", None)
    print(table(rows))
    write_summary(args, rows, args.out / "diet.json")
    return 0


def table(rows: dict) -> str:
    lines = [
        "| model | top-1 | agrees with teacher | parameters | GMACs | ORT img/s b1 | "
        "ORT img/s b32 | served img/s c8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "gate_failed" in r:
            lines.append(f"| {name} | failed its build gate, not served | | | | | | |")
            continue
        b1, bmost = r["onnxruntime"].values()
        lines.append(
            f"| {name} | {r['top1']:.4f} | {r['agreement_with_teacher']:.4f} | "
            f"{r['params'] / 1e6:.2f} M | {r['gmacs']:.3f} | {b1['throughput_img_s']:.0f} | "
            f"{bmost['throughput_img_s']:.0f} | {r['served_c8_img_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
