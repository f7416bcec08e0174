"""The end of a run: the best checkpoint on the test split (val when there is none).

Writes evaluation.json (per-class precision/recall/F1, the extra data's held-out report,
error analysis; distillation's and pruning's comparisons) and confusion_matrix.png. The
test split is read here and nowhere else: never by early stopping, the schedule or the
gates, which see only the validation split.
"""

from __future__ import annotations

import json

import numpy as np

from resnet_triton.resnet import load_checkpoint
from resnet_triton.training import extra_data, gallery, pruning, report, teacher


def final_evaluation(trainer) -> dict:
    """The best checkpoint on the test split (val when there is none)."""
    split = "test" if trainer.splits.test is not None else "val"
    dataset = trainer.splits.test if trainer.splits.test is not None else trainer.splits.val
    _, model, _ = load_checkpoint(trainer.out / "checkpoint.pt")
    model.to(trainer.ctx.device, memory_format=trainer.memory_format)
    probs, targets = trainer.probabilities(model, dataset), np.array(dataset.targets)
    result = report.classification_report(targets, probs.argmax(1), list(trainer.spec.labels))
    result["split"], result["precision"] = split, trainer.precision.name  # fp32, bf16, fp16
    val_probs = probs if split == "val" else trainer.probabilities(model, trainer.splits.val)
    result.update(extra_data.holdout_report(trainer.extra, trainer.splits, val_probs, trainer.log))
    result["error_analysis"] = gallery.error_analysis(
        model, trainer.spec, trainer.splits.val.samples, val_probs, trainer.out
    )
    if trainer.teacher is not None:
        taught = trainer.probabilities(trainer.teacher, dataset)
        result["distillation"] = teacher.comparison(taught, probs, targets, trainer.cfg, split)
        trainer.log(teacher.summary(result["distillation"]))
    if trainer.cfg.prune_from:
        answers = lambda m: trainer.probabilities(m.to(trainer.ctx.device), dataset)  # noqa: E731
        result["pruning"] = pruning.report(trainer.cfg, trainer.spec, targets, probs, answers)
        trainer.log(pruning.summary(result["pruning"]))
    result["figures"] = {
        name: f"{name}.png" for name in ("curves", "confusion_matrix", "mistakes", "examples")
    }
    (trainer.out / "evaluation.json").write_text(json.dumps(result, indent=2))
    report.plot_confusion(
        result["confusion_matrix"],
        list(trainer.spec.labels),
        trainer.out / "confusion_matrix.png",
        f"{split}: top-1 {result['top1']:.4f}, macro F1 {result['macro_f1']:.4f}",
    )
    trainer.log(
        f"best epoch {trainer.state.best['epoch']} on {split}: top-1 {result['top1']:.4f}, "
        f"macro F1 {result['macro_f1']:.4f} -> {trainer.out / 'checkpoint.pt'}"
    )
    return result
