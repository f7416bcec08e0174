"""Error analysis for the training report: the validation split's most confident
mistakes and its most confident correct answers per class, each image beside its
Grad-CAM overlay for the predicted class (what the answer rests on).

Validation, not test: looking at the test split's mistakes to decide what to change
next would tune on it. Writes mistakes.png and examples.png; returns what they show
for evaluation.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from resnet_triton.explain import Explainer, Explanation
from resnet_triton.spec import ModelSpec

MISTAKES = 16
EXAMPLES_PER_CLASS = 4
MAX_CLASSES = 20  # rows of examples.png; a larger class set shows its first 20
PAIRS_PER_ROW = 4  # (image, overlay) pairs in a row of mistakes.png


def most_confident(indices: np.ndarray, confidence: np.ndarray, count: int) -> list[int]:
    order = np.argsort(-confidence[indices], kind="stable")
    return [int(i) for i in indices[order][:count]]


def error_analysis(
    model: nn.Module, spec: ModelSpec, samples: list[tuple[str, int]], probs: np.ndarray, out: Path
) -> dict:
    """samples: (path, class index) of the validation split, in the order of probs' rows."""
    targets = np.array([t for _, t in samples])
    preds, confidence = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(preds != targets)
    mistakes = most_confident(wrong, confidence, MISTAKES)
    classes = range(min(len(spec.labels), MAX_CLASSES))
    right = preds == targets
    examples = {
        c: most_confident(np.flatnonzero(right & (targets == c)), confidence, EXAMPLES_PER_CLASS)
        for c in classes
    }
    chosen = sorted(set(mistakes).union(*examples.values()))
    explainer = Explainer(model, spec)
    paths = [samples[i][0] for i in chosen]
    explained = dict(zip(chosen, explainer.explain_files(paths), strict=True)) if chosen else {}

    labels = spec.labels
    title = f"val: the {len(mistakes)} most confident of {len(wrong)} mistakes"
    captions = [
        f"true {labels[targets[i]]}\npred {labels[preds[i]]} {confidence[i]:.2f}" for i in mistakes
    ]
    plot_mistakes([explained[i] for i in mistakes], captions, out / "mistakes.png", title)
    rows = {labels[c]: [explained[i] for i in examples[c]] for c in classes}
    plot_examples(rows, out / "examples.png")
    return {
        "split": "val",
        "mistakes_total": int(len(wrong)),
        "mistakes": [
            {
                "file": samples[i][0],
                "true": labels[targets[i]],
                "predicted": labels[preds[i]],
                "score": float(confidence[i]),
            }
            for i in mistakes
        ],  # fmt: skip
        "examples": {labels[c]: [samples[i][0] for i in examples[c]] for c in classes},
    }


def _pair(axes, e: Explanation, title: str) -> None:
    image_ax, overlay_ax = axes
    image_ax.imshow(e.crop)
    overlay_ax.imshow(e.overlay())
    image_ax.set_title(title, fontsize=8, loc="left")
    for ax in axes:
        ax.set_axis_off()


def plot_mistakes(explained: list[Explanation], captions: list[str], path: Path, title: str):
    rows = max(1, -(-len(explained) // PAIRS_PER_ROW))
    fig = Figure(figsize=(2.4 * PAIRS_PER_ROW, 1.6 * rows + 0.5))
    axes = fig.subplots(rows, 2 * PAIRS_PER_ROW, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for n, (e, caption) in enumerate(zip(explained, captions, strict=True)):
        row, col = divmod(n, PAIRS_PER_ROW)
        _pair(axes[row, 2 * col : 2 * col + 2], e, caption)
    if not explained:
        axes[0, 0].text(0, 0.5, "no mistakes on val", fontsize=12)
    fig.suptitle(title + " (image, Grad-CAM of the prediction)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_examples(rows: dict[str, list[Explanation]], path: Path) -> None:
    fig = Figure(figsize=(2.4 * EXAMPLES_PER_CLASS, 1.5 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), 2 * EXAMPLES_PER_CLASS, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for row, (label, explained) in enumerate(rows.items()):
        for col, e in enumerate(explained):
            _pair(axes[row, 2 * col : 2 * col + 2], e, f"{label} {e.score:.2f}")
        if not explained:
            axes[row, 0].text(0, 0.5, f"{label}: none correct", fontsize=10)
    fig.suptitle("val: the most confident correct answers per class (image, Grad-CAM)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
