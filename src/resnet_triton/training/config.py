"""Training configuration: a frozen dataclass built from defaults, YAML and flags.

Precedence: dataclass defaults < `--config file.yaml` < command-line flags.
The resolved configuration is written to `<out>/config.yaml`, which is itself
a valid `--config` file, and stored in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from resnet_triton.data import Augmentation
from resnet_triton.serving.capture import NOT_OURS
from resnet_triton.spec import (
    ARCHITECTURES,
    ModelSpec,
    Preprocessing,
    SpecError,
    check_choice,
    read_yaml,
)

STRATEGIES = ("linear-probe", "staged", "full")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "plateau")
CLASS_BALANCE = ("none", "loss", "sampler")
AUTO_AUGMENT = ("none", "autoaugment", "randaugment")
ON_BAD_IMAGE = ("fail", "skip")
MONITORS = ("val_top1", "val_loss")


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str
    out: str = "artifacts/train"
    val_split: float = 0.2
    on_bad_image: str = "fail"
    workers: int = 2
    seed: int = 0
    # labelled folders added to the base data (extra_data.py): their classes by name
    extra: tuple[str, ...] = ()
    extra_holdout: float = 0.2
    # model
    arch: str = ModelSpec.arch
    weights: str = "imagenet"
    head_dropout: float = ModelSpec.head_dropout
    resize_size: int = Preprocessing.resize_size  # the spec's defaults, not copies of them
    crop_size: int = Preprocessing.crop_size
    # strategy
    strategy: str = "full"
    stage_epochs: tuple[int, ...] = (2, 2)
    freeze_bn: bool = False
    # optimization
    epochs: int = 10
    batch_size: int = 32
    accumulate: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-3
    head_lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_size: int = 3
    gamma: float = 0.1
    plateau_patience: int = 2
    label_smoothing: float = 0.0
    clip_grad_norm: float = 0.0
    class_balance: str = "none"
    ema_decay: float = 0.0
    amp: bool | None = None  # None: follow the machine (precision.py)
    channels_last: bool = True
    # augmentation: data.Augmentation's fields, flat for YAML and flags (see `augmentation`)
    rrc_scale: tuple[float, float] = Augmentation.rrc_scale
    hflip: bool = Augmentation.hflip
    color_jitter: float = Augmentation.color_jitter
    rotation: float = Augmentation.rotation
    blur: float = Augmentation.blur
    auto_augment: str = Augmentation.auto_augment
    # distillation (resnet-triton distill): the teacher's softened answers as targets too
    teacher: str | None = None
    kd_temperature: float = 4.0
    kd_weight: float = 0.7
    # structured pruning (resnet-triton prune): this checkpoint's model, its channels cut,
    # is where training starts (with its weights: --weights stays none)
    prune_from: str | None = None
    prune_ratio: float = 0.5
    prune_round_to: int = 8
    # early stopping, checkpoints
    monitor: str = "val_top1"
    patience: int = 0
    resume: str | None = None
    stop_after: int | None = None
    # run tracking (tracking.py), from rank 0
    tensorboard: bool = True
    mlflow: str | None = None

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(Augmentation)}
        )

    @property
    def head_learning_rate(self) -> float:
        return self.lr if self.head_lr is None else self.head_lr

    def validate(self) -> None:
        for what, value, choices in (
            ("architecture", self.arch, ARCHITECTURES),
            ("strategy", self.strategy, STRATEGIES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("class balance", self.class_balance, CLASS_BALANCE),
            ("auto augment", self.auto_augment, AUTO_AUGMENT),
            ("on_bad_image", self.on_bad_image, ON_BAD_IMAGE),
            ("monitor", self.monitor, MONITORS),
        ):
            check_choice(what, value, choices)
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.val_split < 1.0:
            raise SpecError(f"--val-split must lie in (0, 1), got {self.val_split}")
        if self.strategy == "staged" and (
            len(self.stage_epochs) != 2 or sum(self.stage_epochs) >= self.epochs
        ):
            raise SpecError(
                f"--stage-epochs takes 2 numbers (epochs training layer4, then layer3+layer4) "
                f"that leave epochs for the last stage (all layers): got "
                f"{list(self.stage_epochs)} with --epochs {self.epochs}"
            )
        if not 0.0 <= self.extra_holdout < 1.0:
            raise SpecError(f"--extra-holdout must lie in [0, 1), got {self.extra_holdout}")
        if not 0.0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1.0:
            raise SpecError(f"--rrc-scale needs 0 < min <= max <= 1, got {list(self.rrc_scale)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise SpecError(f"--ema-decay must lie in [0, 1), got {self.ema_decay}")
        if not self.kd_temperature > 0:
            raise SpecError(f"--kd-temperature must be > 0, got {self.kd_temperature}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise SpecError(f"--kd-weight must lie in [0, 1], got {self.kd_weight}")
        if not 0.0 < self.prune_ratio < 1.0:
            raise SpecError(
                f"the pruning ratio (--ratio, --prune-ratio) must lie in (0, 1), got "
                f"{self.prune_ratio}"
            )
        if self.prune_from and self.weights != "none":
            raise SpecError(
                f"--weights {self.weights} with --prune-from (--checkpoint): a pruned run starts "
                "from the pruned checkpoint's weights; pass --weights none"
            )
        if self.prune_round_to < 1:
            raise SpecError(f"--prune-round-to must be >= 1, got {self.prune_round_to}")

    def to_yaml(self) -> str:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in self.as_dict().items()}
        return yaml.safe_dump(data, sort_keys=False)

    def as_dict(self) -> dict:
        """The resolved config as the checkpoint records it: the data folder absolute, so
        that build and calibrate find the same images from any working folder."""
        data = str(Path(self.data).resolve()) if self.data else self.data
        extra = tuple(str(Path(folder).resolve()) for folder in self.extra)
        return {**dataclasses.asdict(self), "data": data, "extra": extra}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _coerce(name: str, value, hint):
    """A YAML or flag value as the field's type; the error names the field."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            if not isinstance(value, list | tuple):
                value = [value]
            return tuple(args[0](v) for v in value)
        if hint is bool and not isinstance(value, bool):
            raise TypeError("expected true or false")
        return hint(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"config field {name}: cannot use {value!r} ({exc})") from None


def resolve(yaml_path: Path | None, overrides: dict, defaults: dict | None = None) -> TrainConfig:
    """Defaults (the dataclass's, then `defaults`) < YAML file < overrides (the flags given
    on the command line)."""
    values = dict(defaults or {})
    if yaml_path is not None:
        loaded = read_yaml(yaml_path, "config") or {}
        if not isinstance(loaded, dict):
            raise SpecError(f"config {yaml_path} must be a mapping of option: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update(overrides)
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise SpecError(f"unknown config field(s) {unknown}; valid: {sorted(hints)}")
    if "data" not in values:
        raise SpecError("no data folder: pass --data or set data: in the config file")
    config = TrainConfig(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    config.validate()
    return config


FLAG = {"action": argparse.BooleanOptionalAction}
FLOAT, INT = {"type": float}, {"type": int}
# The command line: (option, help, argparse keywords) by group; every option is a field of
# TrainConfig, whose value is the default shown.
OPTIONS = {
    "data": [
        ("data", "ImageFolder root: train/ and val/ (and optional test/) class folders, or "
         "class folders directly, split by --val-split (build and calibrate draw the same "
         "split again from the checkpoint)", {}),
        ("out", "output folder", {}),
        ("val_split", "validation fraction when data has no train/ folder (stratified, seeded)",
         FLOAT),
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
        ("head_dropout", "dropout before the linear head; 0 = Linear head only", FLOAT),
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
        ("warmup_epochs", "linear warmup (cosine and step schedules)", FLOAT),
        ("step_size", "step schedule: epochs between decays", INT),
        ("gamma", "step and plateau schedules: decay factor", FLOAT),
        ("plateau_patience", "plateau schedule: epochs without improvement", INT),
        ("label_smoothing", "cross-entropy label smoothing", FLOAT),
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
            flags = [f"--{_flag(name)}"] + ([f"--{aliases[name]}"] if name in aliases else [])
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
  staged        layer4 + head first, then layer3 too, then everything
                (--stage-epochs). A few hundred images per class: the
                pretrained low-level features are kept while the head settles.
  full          everything trains from the start. Plenty of data, data far
                from ImageNet, and always from random weights. --freeze-bn
                keeps BatchNorm fixed, for small batches.
"""
