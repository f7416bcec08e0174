"""Optimizers, learning-rate schedules and the weight EMA."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet_triton.data import class_counts
from resnet_triton.training.config import TrainConfig


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_loss(cfg: TrainConfig, train, device: torch.device) -> nn.Module:
    """Cross-entropy or focal loss; with --class-balance loss, each class weighted by its
    rarity."""
    weights = None
    if cfg.class_balance == "loss":
        counts = class_counts(train)
        weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)))
        weights = weights.float().to(device)
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, weights, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al., 2017): each image's cross-entropy times (1 - p)^gamma,
    p its probability of the true class, so images already answered well count less.
    gamma 0 is cross-entropy; class weights and label smoothing as nn.CrossEntropyLoss's."""

    def __init__(self, gamma: float, weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.smoothing = gamma, smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # (1 - p)^gamma of bf16 probabilities is too coarse
        ce = nn.functional.cross_entropy(
            logits, labels, self.weight, reduction="none", label_smoothing=self.smoothing
        )
        p = torch.softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
        loss = (1.0 - p).clamp(min=0).pow(self.gamma) * ce
        if self.weight is None:
            return loss.mean()
        return loss.sum() / self.weight[labels].sum()  # CrossEntropyLoss's weighted mean


class Schedule:
    """One object for the three schedules, stepped where each one needs it.

    cosine: linear warmup, then cosine decay to 0, per optimizer step.
    cosine-restarts: linear warmup, then cosine decay to 0 over `restart_epochs`, back
             to the peak, over `restart_epochs` x `restart_mult`, ... (SGDR, Loshchilov
             and Hutter 2017), per optimizer step.
    step:   linear warmup, then x gamma every `step_size` epochs, per optimizer step.
    milestones: linear warmup, then x gamma after each epoch of `milestones`.
    plateau: x gamma after `plateau_patience` epochs without improvement of
             the monitored metric, per epoch (no warmup).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.cfg = cfg
        self.per_step = cfg.schedule != "plateau"
        if self.per_step:
            total = cfg.epochs * steps_per_epoch
            warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))  # 0: none

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                epoch = step // steps_per_epoch  # 0-based
                if cfg.schedule == "step":
                    return cfg.gamma ** (epoch // cfg.step_size)
                if cfg.schedule == "milestones":
                    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
                if cfg.schedule == "cosine-restarts":
                    progress = restart_progress(step - warmup, cfg, steps_per_epoch)
                else:
                    progress = (step - warmup) / max(1, total - warmup)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        else:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="max" if cfg.monitor == "val_top1" else "min",
                factor=cfg.gamma,
                patience=cfg.plateau_patience,
            )

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, metrics: dict) -> None:
        if not self.per_step:
            self.scheduler.step(metrics[self.cfg.monitor])

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def restart_progress(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """How far into its cosine cycle (0 to 1) optimizer step `step` after warmup is."""
    cycle = cfg.restart_epochs * steps_per_epoch
    while step >= cycle:
        step -= cycle
        cycle *= cfg.restart_mult
    return step / cycle


def build_ema(model: nn.Module, cfg: TrainConfig) -> AveragedModel | None:
    """EMA of weights and BatchNorm buffers; evaluated and exported instead of the raw model."""
    if not cfg.ema_decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
