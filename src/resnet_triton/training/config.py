"""Training configuration: a frozen dataclass built from defaults, YAML and flags.

Precedence: dataclass defaults < `--config file.yaml` < command-line flags.
The resolved configuration is written to `<out>/config.yaml`, which is itself
a valid `--config` file, and stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from resnet_triton.data import Augmentation
from resnet_triton.spec import (
    ARCHITECTURES,
    ModelSpec,
    Preprocessing,
    SpecError,
    check_choice,
    head_hidden,
    read_yaml,
)

STRATEGIES = ("linear-probe", "layer4", "staged", "full")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "cosine-restarts", "step", "milestones", "plateau")
LOSSES = ("cross-entropy", "focal")
CLASS_BALANCE = ("none", "loss", "sampler")
AUTO_AUGMENT = ("none", "autoaugment", "randaugment")
ON_BAD_IMAGE = ("fail", "skip")
NORMALIZE = ("imagenet", "data")
MONITORS = ("val_top1", "val_loss")


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str
    out: str = "artifacts/train"
    val_split: float = 0.2
    test_split: float = 0.0  # of data split by ratio: read by the final evaluation only
    label_pattern: str | None = None  # labels from file names (listing.py)
    normalize: str = "imagenet"  # or "data": the training split's mean and std, in the spec
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
    head: str = ModelSpec.head
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
    milestones: tuple[int, ...] = ()
    restart_epochs: int = 5
    restart_mult: int = 1
    gamma: float = 0.1
    plateau_patience: int = 2
    label_smoothing: float = 0.0
    loss: str = "cross-entropy"
    focal_gamma: float = 2.0
    layer_decay: float = 1.0
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
            ("loss", self.loss, LOSSES),
            ("schedule", self.schedule, SCHEDULES),
            ("class balance", self.class_balance, CLASS_BALANCE),
            ("auto augment", self.auto_augment, AUTO_AUGMENT),
            ("on_bad_image", self.on_bad_image, ON_BAD_IMAGE),
            ("normalization", self.normalize, NORMALIZE),
            ("monitor", self.monitor, MONITORS),
        ):
            check_choice(what, value, choices)
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{flag_of(name)} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.val_split < 1.0:
            raise SpecError(f"--val-split must lie in (0, 1), got {self.val_split}")
        if not 0.0 <= self.test_split < 1.0 - self.val_split:
            raise SpecError(f"--test-split must lie in [0, 1 - --val-split), got {self.test_split}")
        if self.strategy == "staged" and (
            len(self.stage_epochs) != 2 or sum(self.stage_epochs) >= self.epochs
        ):
            raise SpecError(
                f"--stage-epochs takes 2 numbers (epochs training layer4, then layer3+layer4) "
                f"that leave epochs for the last stage (all layers): got "
                f"{list(self.stage_epochs)} with --epochs {self.epochs}"
            )
        self._validate_recipe()
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

    def _validate_recipe(self) -> None:
        head_hidden(self.head)
        if not 0.0 < self.layer_decay <= 1.0:
            raise SpecError(f"--layer-decay must lie in (0, 1], got {self.layer_decay}")
        if self.focal_gamma < 0:
            raise SpecError(f"--focal-gamma must be >= 0, got {self.focal_gamma}")
        if self.restart_epochs < 1 or self.restart_mult < 1:
            raise SpecError(
                f"--restart-epochs and --restart-mult must be >= 1, got {self.restart_epochs} "
                f"and {self.restart_mult}"
            )
        if self.schedule == "milestones" and (
            not self.milestones or list(self.milestones) != sorted(set(self.milestones))
            or self.milestones[0] < 1 or self.milestones[-1] >= self.epochs
        ):  # fmt: skip
            raise SpecError(
                f"--schedule milestones needs --milestones: increasing epochs in [1, "
                f"{self.epochs - 1}] (--epochs {self.epochs}) after which the rate is x "
                f"--gamma, got {list(self.milestones)}"
            )

    def to_yaml(self) -> str:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in self.as_dict().items()}
        return yaml.safe_dump(data, sort_keys=False)

    def as_dict(self) -> dict:
        """The resolved config as the checkpoint records it: the data folder absolute, so
        that build and calibrate find the same images from any working folder."""
        data = str(Path(self.data).resolve()) if self.data else self.data
        extra = tuple(str(Path(folder).resolve()) for folder in self.extra)
        return {**dataclasses.asdict(self), "data": data, "extra": extra}


def flag_of(name: str) -> str:
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
