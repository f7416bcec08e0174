"""`resnet-triton prune`: structured channel pruning of a trained checkpoint
(training/pruning.py), then recovery training through the trainer.

Recovery is the trainer's own loop, starting from the pruned model: strategies,
schedules, AMP, EMA, --resume and torchrun all apply, and `--teacher` with the
unpruned checkpoint distils from it. The architecture, head and preprocessing
default to the checkpoint's. evaluation.json gains "pruning": parameters and MACs
before and after, and the top-1 of the unpruned model, of the pruned one before
recovery and after it. `make bench-diet` compares pruned, distilled and INT8 models.
"""

from __future__ import annotations

import argparse

from resnet_triton.resnet import checkpoint_spec, read_checkpoint
from resnet_triton.spec import ARCHITECTURES, ModelSpec, SpecError
from resnet_triton.training.config import resolve
from resnet_triton.training.loop import run
from resnet_triton.training.options import get_args_parser as train_parser

# Torch-Pruning traces any network, but the spec can only describe what build_model
# rebuilds from widths: the torchvision ResNets.
PRUNABLE = ARCHITECTURES
ALIASES = {"prune_from": "checkpoint", "prune_ratio": "ratio", "prune_round_to": "round-to"}


def get_args_parser() -> argparse.ArgumentParser:
    return train_parser(
        "resnet-triton prune",
        "Remove --ratio of every layer's channels from --checkpoint's model (Torch-Pruning, "
        "L2 group magnitude), then train it to recover (every train option applies; "
        "--teacher the same checkpoint distils from the unpruned model). Architecture, "
        "head and preprocessing default to the checkpoint's; weights come from it.",
        aliases=ALIASES,
    )


def main(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    cfg = resolve(args.config, overrides, defaults={"weights": "none"})  # for prune_from
    if not cfg.prune_from:
        raise SpecError("resnet-triton prune needs --checkpoint checkpoint.pt to prune")
    source = prunable_spec(cfg.prune_from)
    defaults = {
        "arch": source.arch,
        "head_dropout": source.head_dropout,
        "head": source.head,
        "resize_size": source.preprocessing.resize_size,
        "crop_size": source.preprocessing.crop_size,
        "weights": "none",
    }
    run(resolve(args.config, overrides, defaults=defaults))
    return 0


def prunable_spec(path: str) -> ModelSpec:
    """The spec of the checkpoint to prune, refusing an architecture prune cannot rebuild."""
    payload = read_checkpoint(path)
    spec = payload.get("spec")
    arch = spec.get("arch") if isinstance(spec, dict) else None
    if arch is not None and arch not in PRUNABLE:
        raise SpecError(
            f"cannot prune {arch} (--checkpoint {path}): resnet-triton prune takes "
            f"{', '.join(PRUNABLE)}"
        )
    return checkpoint_spec(payload, path)
