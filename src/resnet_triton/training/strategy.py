"""What trains when: strategies, stages, BatchNorm freezing and parameter groups."""

from __future__ import annotations

from torch import nn

from resnet_triton.training.config import TrainConfig

HEAD = "fc"
# Staged unfreezing: the blocks trained (besides the head) in each stage;
# None means every parameter.
STAGES: tuple[tuple[str, ...] | None, ...] = (("layer4",), ("layer3", "layer4"), None)


def stage_for_epoch(cfg: TrainConfig, epoch: int) -> int:
    """The stage (0-based) that 1-based `epoch` trains in; 0 for one-stage strategies."""
    if cfg.strategy != "staged":
        return 0
    first, second = cfg.stage_epochs
    if epoch <= first:
        return 0
    return 1 if epoch <= first + second else 2


def trainable_blocks(cfg: TrainConfig, stage: int) -> tuple[str, ...] | None:
    """Top-level children that train besides the head; None means all of them."""
    if cfg.strategy == "linear-probe":
        return ()
    if cfg.strategy == "layer4":
        return ("layer4",)
    if cfg.strategy == "staged":
        return STAGES[stage]
    return None


def _trains(cfg: TrainConfig, stage: int, child: str) -> bool:
    blocks = trainable_blocks(cfg, stage)
    return child == HEAD or blocks is None or child in blocks


def apply_stage(model: nn.Module, cfg: TrainConfig, stage: int) -> int:
    """Set requires_grad for the stage; returns the number of trainable parameters."""
    for child_name, child in model.named_children():
        for module in child.modules():
            frozen_bn = cfg.freeze_bn and isinstance(module, nn.BatchNorm2d)
            for param in module.parameters(recurse=False):
                param.requires_grad = _trains(cfg, stage, child_name) and not frozen_bn
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module, cfg: TrainConfig, stage: int) -> None:
    """train() where weights learn; frozen parts keep their BatchNorm statistics."""
    model.train()
    for child_name, child in model.named_children():
        if not _trains(cfg, stage, child_name):
            child.eval()
    if cfg.freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


# The backbone from the top down: layer-wise decay gives each its own rate.
DEPTH = {"layer4": 0, "layer3": 1, "layer2": 2, "layer1": 3}  # anything else: the stem, 4


def part_of(name: str, cfg: TrainConfig) -> tuple[str, float]:
    """(group name, learning rate) of parameter `name`: the head at --head-lr; the backbone
    at --lr, or with --layer-decay d each stage at lr x d^depth (layer4 0 ... the stem 4)."""
    child = name.split(".", 1)[0]
    if child == HEAD:
        return "head", cfg.head_learning_rate
    if cfg.layer_decay == 1.0:
        return "backbone", cfg.lr
    depth = DEPTH.get(child, 4)
    return (child if child in DEPTH else "stem"), cfg.lr * cfg.layer_decay**depth


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Head and backbone (or each backbone stage, with --layer-decay) at their own learning
    rates; no weight decay on norms and biases. Groups run from the head down.

    Every parameter is in a group from the start: frozen ones have no
    gradient, so optimizers skip them until a later stage unfreezes them.
    """
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        part, lr = part_of(name, cfg)
        decay = param.ndim > 1  # conv and linear weights; norm weights and biases are 1-D
        group = groups.setdefault(
            (part, decay), {"params": [], "lr": lr, "weight_decay": cfg.weight_decay * decay}
        )
        group["params"].append(param)
    order = ["head", "backbone", *DEPTH, "stem"]
    return [
        {"name": f"{part}{'' if decay else '_no_decay'}", **groups[(part, decay)]}
        for part in order
        for decay in (True, False)
        if (part, decay) in groups
    ]
