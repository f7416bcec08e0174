"""Fine-tuning: `resnet-triton train` (config.py and options.py for every option, loop.py
for outputs)."""

from __future__ import annotations

import argparse

from resnet_triton.training.config import TrainConfig
from resnet_triton.training.loaders import predict
from resnet_triton.training.loop import run
from resnet_triton.training.options import config_from_args, get_args_parser

__all__ = ["TrainConfig", "get_args_parser", "main", "predict", "run"]


def main(args: argparse.Namespace) -> int:
    run(config_from_args(args))
    return 0
