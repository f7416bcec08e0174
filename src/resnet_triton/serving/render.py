"""`resnet-triton render`: write the model repository's generated files from a spec."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.plans import published_plans
from resnet_triton.serving.repository import DEFAULTS, env_path_for, render, version_dir


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton render",
        description="Write the config.pbtxt files, model.py glue and labels of the model "
        "repository from a model spec (no model file is copied: `build` does that after "
        "the accuracy gate).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="take the spec from this checkpoint")
    source.add_argument("--demo", action="store_true", help="the digits demo's spec")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--env-path", help="EXECUTION_ENV_PATH for the Python-backend models (default: this venv)"
    )
    parser.add_argument(
        "--serving",
        type=Path,
        help="serving configuration (YAML, fields of serving/config.py; default: its defaults)",
    )
    parser.add_argument(
        "--target",
        choices=("cpu", "gpu", "pytorch"),
        default="cpu",
        help="cpu: ONNX Runtime classifier; gpu: TensorRT plans published in the repository; "
        "pytorch: model.pt in Triton's PyTorch backend (hosts whose Triton has it)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.demo:
        from resnet_triton.digits import demo_spec

        spec = demo_spec()
    else:
        from resnet_triton.resnet import load_checkpoint

        spec = load_checkpoint(args.checkpoint)[0]
    env_path = args.env_path or env_path_for(args.repository)
    plans = None
    if args.target == "gpu":
        plans = published_plans(version_dir(args.repository, spec.names.classifier))
    serving = ServingConfig.load(args.serving) if args.serving else DEFAULTS
    for path in render(spec, args.repository, env_path, args.target, plans, serving):
        print(path)
    return 0
