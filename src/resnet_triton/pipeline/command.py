"""`resnet-triton pipeline <step>`: the command line over the steps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resnet_triton import pipeline
from resnet_triton.pipeline.config import PipelineConfig, PipelineError
from resnet_triton.pipeline.steps import build_step, matrix, publish_step, smoke_step
from resnet_triton.pipeline.store import pull_step, sync_store

STEPS = ("matrix", "pull", "build", "smoke", "publish", "push", "all")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton pipeline",
        description=pipeline.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--config", type=Path, default=Path("build/pipeline.yaml"))
    parser.add_argument(
        "--target", help="a target in the config (needed by build, smoke, publish and all)"
    )
    parser.add_argument(
        "--server",
        default="local",
        help="smoke test server: local (this environment's tritonserver) or docker "
        "(docker-compose.yml's tritonserver container: the CPU image for a cpu target, "
        "the pinned NGC image for a gpu target; built when missing or stale)",
    )
    parser.add_argument("--force", action="store_true", help="build even when unchanged")
    return parser


def main(args: argparse.Namespace) -> int:
    config = PipelineConfig.load(args.config)
    if args.step == "matrix":
        print(json.dumps(matrix(config)))
        return 0
    if not args.target and args.step not in ("pull", "push"):
        raise PipelineError(
            f"`pipeline {args.step}` needs --target, one of: {', '.join(config.targets)}"
        )
    steps = {
        "pull": lambda: pull_step(config, args.target),
        "build": lambda: build_step(config, args.target, args.force),
        "smoke": lambda: smoke_step(config, args.target, args.server),
        "publish": lambda: publish_step(config, args.target),
        "push": lambda: sync_store(config, "push"),
    }
    for step in steps if args.step == "all" else [args.step]:
        steps[step]()
    return 0
