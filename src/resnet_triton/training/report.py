"""What a run reports: its data at the start; at the end per-class precision/recall/F1,
the confusion matrix and the curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no display backend, no global state
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    confusion_matrix,
    precision_recall_fscore_support,
)

from resnet_triton.data import class_counts


def describe_data(splits, cfg, ctx) -> list[str]:
    """The lines a run starts with: model, processes, splits, classes, skipped files."""
    counts = class_counts(splits.train)
    weights = f"pruned from {cfg.prune_from}" if cfg.prune_from else f"weights={cfg.weights}"
    lines = [
        f"training {cfg.arch} ({cfg.strategy}, {weights}) on "
        f"{ctx.world_size} x {ctx.device.type}: {len(splits.train)} train / "
        f"{len(splits.val)} val" + (f" / {len(splits.test)} test" if splits.test else "")
        + f" images, {len(splits.classes)} classes "
        f"({counts.min()}..{counts.max()} train images per class)"
    ]  # fmt: skip
    lines += [f"skipped (does not decode): {line}" for line in splits.bad_images]
    if splits.ignored_files:
        shown = ", ".join(splits.ignored_files[:5])
        lines.append(
            f"ignored {len(splits.ignored_files)} file(s) without an image extension: {shown}"
        )
    return lines


def classification_report(targets: np.ndarray, preds: np.ndarray, labels: list[str]) -> dict:
    indices = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=indices, zero_division=0
    )
    return {
        "images": int(len(targets)),
        "top1": float(np.mean(targets == preds)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(targets, preds, labels=indices).tolist(),
    }


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    size = max(5.0, 0.45 * len(labels) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.array(matrix), display_labels=labels).plot(
        ax=ax, colorbar=False, xticks_rotation=45 if len(labels) > 8 else "horizontal"
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    loss_ax.legend()
    acc_ax.plot(epochs, [r["val_top1"] for r in history], marker="o", color="tab:green")
    acc_ax.set(xlabel="epoch", ylabel="top-1", title="validation accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def augmentation_grid(train, spec, out: Path, count: int = 32) -> Path:
    """<out>/augmentation.png: `count` training images, round-robin over the classes, as
    the training transform produces them (normalization undone): a crop, flip or colour
    setting that destroys the classes shows here before hours of training do."""
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(train.targets):
        by_class.setdefault(target, []).append(index)
    queues = [iter(indices) for indices in by_class.values()]
    picked = []
    while len(picked) < min(count, len(train.targets)):
        picked += [i for i in (next(q, None) for q in queues) if i is not None]
    mean = np.array(spec.preprocessing.mean)[:, None, None]
    std = np.array(spec.preprocessing.std)[:, None, None]
    columns = 8
    rows = -(-len(picked[:count]) // columns)
    figure = Figure(figsize=(columns * 1.4, rows * 1.55))
    for n, index in enumerate(picked[:count]):
        tensor, target = train[index]
        pixels = np.clip(tensor.numpy() * std + mean, 0, 1).transpose(1, 2, 0)
        ax = figure.add_subplot(rows, columns, n + 1)
        ax.imshow(pixels)
        ax.set_title(train.classes[target], fontsize=8)
        ax.axis("off")
    figure.suptitle(f"training augmentation ({spec.preprocessing.crop_size} px)", fontsize=10)
    figure.tight_layout()
    path = out / "augmentation.png"
    figure.savefig(path, dpi=80)
    return path
