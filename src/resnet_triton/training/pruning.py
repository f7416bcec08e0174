"""Structured channel pruning with Torch-Pruning (DepGraph): what `resnet-triton prune`
(training/prune.py) and the trainer's `prune_from` run.

Whole channels go, from every layer that shares them (a residual stage's
convolutions and shortcut, their BatchNorms, the head's inputs), so the network is
smaller and faster in every runtime; unstructured pruning only zeroes weights that
dense kernels multiply all the same. Channels are ranked by the L2 norm of their
group's weights (Torch-Pruning's GroupMagnitudeImportance); each layer loses
`prune_ratio` of its channels, rounded so that what it keeps is a multiple of
`prune_round_to`; the head keeps its outputs, one per class. Every convolution's
width goes in the spec (ModelSpec.widths), and the model returned is the one that
spec builds, so build, serve, explain and classify take the checkpoint like any
other. Pruning is deterministic: every rank under torchrun, and a resumed run,
prune alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from resnet_triton.resnet import CheckpointError, build_model, load_checkpoint, load_weights
from resnet_triton.spec import ModelSpec, SpecError
from resnet_triton.training.config import TrainConfig


def pruned_start(cfg: TrainConfig, spec: ModelSpec, log: Callable[[str], None]):
    """(the pruned spec, its model): where a run with `prune_from` starts training."""
    source, model, _ = load_checkpoint(cfg.prune_from)
    for what, theirs, ours in (
        ("classes", list(source.labels), list(spec.labels)),
        ("architecture", source.arch, spec.arch),
        ("head dropout", source.head_dropout, spec.head_dropout),
        ("head", source.head, spec.head),
    ):
        if theirs != ours:
            raise CheckpointError(
                f"--checkpoint {cfg.prune_from} has {what} {theirs}; this run has {ours}"
            )
    before = count(model, spec)
    spec, model = prune(model, spec, cfg.prune_ratio, cfg.prune_round_to)
    after = count(model, spec)
    log(
        f"pruned {spec.arch} at ratio {cfg.prune_ratio}: {before['params']:,} -> "
        f"{after['params']:,} parameters, {before['gmacs']} -> {after['gmacs']} GMACs "
        f"per {spec.preprocessing.crop_size} px image ({len(spec.widths)} layers narrowed)"
    )
    return spec, model


def prune(model: nn.Module, spec: ModelSpec, ratio: float, round_to: int):
    """(spec with the widths, the model that spec builds holding the kept weights, in eval
    mode). Torch-Pruning narrows `model` itself in place."""
    tp = _torch_pruning()
    model = model.cpu().eval()
    head = [m for m in model.fc.modules() if isinstance(m, nn.Linear)]  # an MLP's too
    start = dict(_widths(model))
    pruner = tp.pruner.BasePruner(
        model,
        torch.zeros(1, *spec.preprocessing.input_shape),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=head,  # its outputs are the classes; its inputs follow layer4
        round_to=round_to,
    )
    pruner.step()
    widths = _widths(model)
    whole = [name for name, channels in widths if channels == start[name]]
    if whole:
        raise SpecError(
            f"--ratio {ratio} with --round-to {round_to} leaves {whole[0]} "
            f"({start[whole[0]]} channels) and {len(whole) - 1} "
            f"more layers whole: Torch-Pruning removes whole multiples of {round_to} channels "
            f"and never all of them, so a layer of C channels needs a ratio from "
            f"{round_to}/C to 1 - {round_to}/C"
        )
    pruned = dataclasses.replace(spec, widths=widths)
    # What every later stage loads: the model the spec builds, holding the kept weights.
    rebuilt = build_model(pruned)
    load_weights(rebuilt, model.state_dict(), pruned, "the pruned model")
    return pruned, rebuilt.eval()


def count(model: nn.Module, spec: ModelSpec) -> dict:
    """Parameters, and multiply-accumulates of one image at the spec's crop size."""
    tp = _torch_pruning()
    example = torch.zeros(1, *spec.preprocessing.input_shape)
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    model.train(was_training)
    return {"params": int(params), "gmacs": round(float(macs) / 1e9, 4)}


def report(
    cfg: TrainConfig, spec: ModelSpec, targets: np.ndarray, recovered: np.ndarray, answers
) -> dict:
    """evaluation.json's "pruning": the unpruned model, the pruned one before recovery and
    after (`recovered`, its probabilities), on the same split. answers(model) -> probs.
    The pruned model is made again rather than carried in last.pt: pruning is
    deterministic, and a resumed run reports the same without extra state."""
    _, unpruned, _ = load_checkpoint(cfg.prune_from)
    original = answers(unpruned)
    size = count(unpruned, spec)
    _, pruned = prune(unpruned, spec, cfg.prune_ratio, cfg.prune_round_to)
    before = answers(pruned)
    top1 = lambda probs: float((probs.argmax(1) == targets).mean())  # noqa: E731
    return {
        "from": cfg.prune_from,
        "ratio": cfg.prune_ratio,
        "round_to": cfg.prune_round_to,
        "unpruned": {**size, "top1": top1(original)},
        "pruned": {
            **count(pruned, spec),
            "top1_before_recovery": top1(before),
            "top1": top1(recovered),
            "agreement_with_unpruned": float((recovered.argmax(1) == original.argmax(1)).mean()),
        },
    }


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise SpecError(
            "structured pruning needs Torch-Pruning: pip install 'resnet-triton[prune]'"
        ) from None
    return torch_pruning


def _widths(model: nn.Module) -> tuple[tuple[str, int], ...]:
    return tuple((n, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def summary(d: dict) -> str:
    before, after = d["unpruned"], d["pruned"]
    return (
        f"pruning: top-1 {before['top1']:.4f} unpruned, {after['top1_before_recovery']:.4f} "
        f"pruned, {after['top1']:.4f} recovered (agreement {after['agreement_with_unpruned']:.4f});"
        f" {before['params']:,} -> {after['params']:,} parameters, {before['gmacs']} -> "
        f"{after['gmacs']} GMACs"
    )
