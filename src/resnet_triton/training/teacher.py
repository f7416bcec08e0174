"""Knowledge distillation: a frozen teacher's softened answers as a second target.

loss = (1 - w) * cross_entropy(student, labels)
       + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(Hinton et al., 2015: T^2 keeps the soft term's gradients on the scale of the
hard term's as T changes.) The teacher sees the student's batch, augmentation
included, and runs in eval mode without gradients; the loop is the trainer's own,
so strategies, schedules, AMP, resume and DDP apply unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnet_triton.resnet import CheckpointError, load_checkpoint
from resnet_triton.spec import ModelSpec


def load_teacher(path: str, student: ModelSpec, device: torch.device) -> nn.Module:
    spec, model, _ = load_checkpoint(path)
    if spec.labels != student.labels:
        raise CheckpointError(
            f"--teacher {path} has classes {list(spec.labels)}; the data has {list(student.labels)}"
        )
    ours, theirs = student.preprocessing, spec.preprocessing
    if (theirs.mean, theirs.std) != (ours.mean, ours.std):
        raise CheckpointError(
            f"--teacher {path} normalizes with mean {list(theirs.mean)} std {list(theirs.std)}; "
            f"the student with mean {list(ours.mean)} std {list(ours.std)}"
        )
    model.requires_grad_(False)
    return model.to(device, memory_format=torch.channels_last).eval()


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float):
    """T^2 * KL(teacher || student) at temperature T, averaged over the batch, in float32."""
    t = temperature
    log_student = F.log_softmax(student.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * t * t


def blend(hard: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, cfg) -> torch.Tensor:
    soft = soft_target_loss(student, teacher, cfg.kd_temperature)
    return (1.0 - cfg.kd_weight) * hard + cfg.kd_weight * soft


def comparison(teacher_probs, student_probs, targets, cfg, split: str) -> dict:
    """Teacher and student on the same split: accuracy of each and their agreement."""
    t, s = teacher_probs.argmax(1), student_probs.argmax(1)
    return {
        "teacher": cfg.teacher,
        "split": split,
        "teacher_top1": float((t == targets).mean()),
        "student_top1": float((s == targets).mean()),
        "agreement": float((t == s).mean()),
    }


def summary(d: dict) -> str:
    return (
        f"teacher top-1 {d['teacher_top1']:.4f}, student {d['student_top1']:.4f}, "
        f"agreement {d['agreement']:.4f} on {d['split']}"
    )
