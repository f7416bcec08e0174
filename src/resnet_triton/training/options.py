"""The `resnet-triton train` command line: every option is a field of TrainConfig
(config.py), grouped and explained here; the flags given override the YAML file's."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_triton.serving.capture import NOT_OURS
from resnet_triton.spec import ARCHITECTURES
from resnet_triton.training.config import (
    AUTO_AUGMENT,
    CLASS_BALANCE,
    LOSSES,
    MONITORS,
    NORMALIZE,
    ON_BAD_IMAGE,
    OPTIMIZERS,
    SCHEDULES,
    STRATEGIES,
    TrainConfig,
    flag_of,
    resolve,
)

FLAG = {"action": argparse.BooleanOptionalAction}
FLOAT, INT = {"type": float}, {"type": int}
# The command line: (option, help, argparse keywords) by group; every option is a field of
# TrainConfig, whose value is the default shown.
OPTIONS = {
    "data": [
        ("data", "ImageFolder root (train/, val/ [, test/] class folders, or class folders split "
         "by --val-split and --test-split; build and calibrate draw it again from the "
         "checkpoint) or a manifest .csv/.jsonl of path,label[,split] (train/README.md)", {}),
        ("out", "output folder", {}),
        ("val_split", "validation fraction when data has no train/ folder (stratified, seeded)",
         FLOAT),
        ("test_split", "test fraction of data split by ratio, drawn first; only the final "
         "evaluation reads it, never early stopping or the gates", FLOAT),
        ("label_pattern", "labels from the file names of a flat folder: a regex whose group "
         "'label' (or first group) is the class", {"metavar": "REGEX"}),
        ("normalize", f"mean and std: {' or '.join(NORMALIZE)} (the training split's, "
         "computed and carried in the spec to the server)", {}),
        ("on_bad_image", f"images that fail to decode: {' or '.join(ON_BAD_IMAGE)}", {}),
        ("workers", "data loader processes", INT),
        ("seed", "seed for initialisation, shuffling, augmentation and splits", INT),
        ("extra", "a labelled ImageFolder added to the data, repeatable: its class folders "
         f"by name onto the data's classes, {NOT_OURS}/ skipped (train/README.md)",
         {"action": "append", "metavar": "DIR"}),
        ("extra_holdout", "share of each --extra folder held out (by file name hash) for "
         "validation and the gates, written to <out>/holdout/", FLOAT),
    ],
    "model": [
        ("arch", f"one of {', '.join(ARCHITECTURES)}", {}),
        ("weights", "imagenet (torchvision, downloads once), none, or a state_dict file", {}),
        ("head_dropout", "dropout before the head's last Linear; 0 = none", FLOAT),
        ("head", "linear, or mlp:N (Linear to N features, ReLU, dropout, Linear)", {}),
        ("resize_size", "eval resize of the shorter side", INT),
        ("crop_size", "model input size", INT),
    ],
    "strategy": [
        ("strategy", f"one of {', '.join(STRATEGIES)} (see below)", {}),
        ("stage_epochs", "staged: epochs for layer4, then layer3+4; the rest trains all",
         {"type": int, "nargs": 2}),
        ("freeze_bn", "keep every BatchNorm's statistics and affine parameters fixed", FLAG),
    ],
    "optimization": [
        ("epochs", "epochs in all", INT),
        ("batch_size", "images per optimizer step and micro-batch, over all processes", INT),
        ("accumulate", "micro-batches per optimizer step (gradient accumulation)", INT),
        ("optimizer", f"one of {', '.join(OPTIMIZERS)}", {}),
        ("lr", "peak learning rate of the backbone", FLOAT),
        ("head_lr", "peak learning rate of the head (default: --lr)", FLOAT),
        ("momentum", "SGD momentum", FLOAT),
        ("nesterov", "SGD with Nesterov momentum", FLAG),
        ("weight_decay", "weight decay; never applied to norm weights and biases", FLOAT),
        ("schedule", f"one of {', '.join(SCHEDULES)}", {}),
        ("warmup_epochs", "linear warmup (every schedule but plateau); 0 = none", FLOAT),
        ("step_size", "step schedule: epochs between decays", INT),
        ("milestones", "milestones schedule: the epochs after which the rate is x gamma",
         {"type": int, "nargs": "+"}),
        ("restart_epochs", "cosine-restarts: epochs of the first cycle (SGDR's T_0)", INT),
        ("restart_mult", "cosine-restarts: each cycle this many times the last (T_mult)", INT),
        ("gamma", "step, milestones and plateau schedules: decay factor", FLOAT),
        ("plateau_patience", "plateau schedule: epochs without improvement", INT),
        ("label_smoothing", "cross-entropy label smoothing", FLOAT),
        ("loss", f"one of {', '.join(LOSSES)} (focal: (1 - p)^gamma x cross-entropy, for "
         "hard or rare classes)", {}),
        ("focal_gamma", "focal loss: gamma; 0 = cross-entropy", FLOAT),
        ("layer_decay", "layer-wise learning-rate decay: layer4 at --lr, layer3 x this, "
         "layer2 x this^2, layer1 x this^3, the stem x this^4; 1 = one backbone rate", FLOAT),
        ("clip_grad_norm", "clip the gradient norm to this; 0 = off", FLOAT),
        ("class_balance", f"imbalanced classes: {', '.join(CLASS_BALANCE)}", {}),
        ("ema_decay", "exponential moving average of weights, e.g. 0.999; 0 = off", FLOAT),
        ("amp", "mixed precision: fp16 + loss scaling on CUDA, bf16 autocast on CPU; unset: "
         "on where it is fast (CUDA, a CPU whose oneDNN has bfloat16 kernels), fp32 elsewhere, "
         "said in one line", FLAG),
        ("channels_last", "channels_last memory format", FLAG),
    ],
    "augmentation (train split only; eval is the serving preprocessing)": [
        ("rrc_scale", "RandomResizedCrop area range", {"type": float, "nargs": 2}),
        ("hflip", "random horizontal flips (off for text, digits, asymmetric classes)", FLAG),
        ("color_jitter", "brightness/contrast/saturation strength; 0 = off", FLOAT),
        ("rotation", "random rotation range in degrees; 0 = off", FLOAT),
        ("blur", "probability of a Gaussian blur", FLOAT),
        ("auto_augment", f"one of {', '.join(AUTO_AUGMENT)}", {}),
    ],
    "distillation (see resnet-triton distill)": [
        ("teacher", "checkpoint.pt of a teacher with the same classes; none = plain training",
         {}),
        ("kd_temperature", "softmax temperature of the soft targets", FLOAT),
        ("kd_weight", "weight of the soft-target loss; the labels' loss gets 1 - this", FLOAT),
    ],
    "structured pruning (see resnet-triton prune)": [
        ("prune_from", "checkpoint.pt whose model is pruned, then trained (recovery); none = "
         "no pruning", {}),
        ("prune_ratio", "share of each layer's channels removed, in (0, 1)", FLOAT),
        ("prune_round_to", "channels kept per layer are a multiple of this (fast kernels)",
         INT),
    ],
    "early stopping and checkpoints": [
        ("monitor", f"metric choosing the best epoch: {', '.join(MONITORS)}", {}),
        ("patience", "stop after this many epochs without improvement; 0 = off", INT),
        ("resume", "continue from this last.pt (same architecture and classes)", {}),
        ("stop_after", "stop after this many epochs of this run (a time slot); resume later",
         INT),
    ],
    "run tracking": [
        ("tensorboard", "TensorBoard event files in the output folder (tensorboard --logdir)",
         FLAG),
        ("mlflow", "also log to MLflow: a folder (e.g. mlruns: an SQLite database and the "
         "artifacts), sqlite:///runs.db, or an http(s):// tracking server; needs "
         "resnet-triton[tracking]", {}),
    ],
}  # fmt: skip


def get_args_parser(
    prog: str = "resnet-triton train", description: str = "", aliases: dict | None = None
) -> argparse.ArgumentParser:
    """aliases: option name -> a second flag for it (prune's --checkpoint for --prune-from)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(description or "Fine-tune a torchvision ResNet on an ImageFolder.")
        + " Options come from the defaults, then --config FILE.yaml (keys are the option "
        "names), then the flags.",
        argument_default=argparse.SUPPRESS,  # only flags actually given override the YAML
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=STRATEGY_HELP,
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of options")
    aliases = aliases or {}
    defaults = TrainConfig(data="")
    for title, options in OPTIONS.items():
        group = parser.add_argument_group(title)
        for name, text, kwargs in options:
            default = getattr(defaults, name)
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            shown = "unset" if default is None or default == () else shown
            flags = [f"--{flag_of(name)}"] + ([f"--{aliases[name]}"] if name in aliases else [])
            group.add_argument(*flags, help=f"{text} (default: {shown})", **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    return resolve(args.config, overrides)


STRATEGY_HELP = """\
strategies:
  linear-probe  only the new head trains; the backbone, BatchNorm statistics
                included, stays frozen. Little data (tens of images per
                class) with ImageNet weights, or a fast baseline.
  layer4        layer4 + head for the whole run; the rest of the backbone,
                BatchNorm statistics included, stays frozen. Between a probe
                and a staged run: fast, and adapts the last features.
  staged        layer4 + head first, then layer3 too, then everything
                (--stage-epochs). A few hundred images per class: the
                pretrained low-level features are kept while the head settles.
  full          everything trains from the start. Plenty of data, data far
                from ImageNet, and always from random weights. --freeze-bn
                keeps BatchNorm fixed, for small batches.
"""
