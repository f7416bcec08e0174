"""`resnet-triton distill`: train a student (resnet18 unless --arch says otherwise) from a
teacher checkpoint with the knowledge-distillation loss (training/teacher.py).

Every option of `resnet-triton train` applies (strategies, schedules, AMP, resume,
torchrun); the student's checkpoint carries its spec like any other and goes through
`build` and its gates unchanged. evaluation.json gains "distillation": teacher and
student top-1 and their agreement on the evaluation split. `make bench-distill`
measures the student's speed-up (perf/distill.py).
"""

from __future__ import annotations

import argparse

from resnet_triton.spec import SpecError
from resnet_triton.training.config import resolve
from resnet_triton.training.loop import run
from resnet_triton.training.options import get_args_parser as train_parser

STUDENT_ARCH = "resnet18"


def get_args_parser() -> argparse.ArgumentParser:
    return train_parser(
        "resnet-triton distill",
        f"Train a student ({STUDENT_ARCH} by default) from --teacher checkpoint.pt: the "
        "labels' loss blended with the teacher's softened answers (--kd-weight, "
        "--kd-temperature).",
    )


def main(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    cfg = resolve(args.config, overrides, defaults={"arch": STUDENT_ARCH})
    if not cfg.teacher:
        raise SpecError("resnet-triton distill needs --teacher checkpoint.pt (or teacher: in YAML)")
    run(cfg)
    return 0
