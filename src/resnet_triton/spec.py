"""The model interface, defined once.

Everything that two stages must agree on lives in `ModelSpec`: the
architecture and labels, the preprocessing, the tensor and model names, and
the largest batch the model takes. Training saves it in the checkpoint, export
copies it into the ONNX metadata, and the model repository, clients and
benchmarks are rendered from it. Nothing else hard-codes these values.

How a deployment serves the model (dynamic batching, instances, threads,
warmup) is not part of it: resnet_triton.serving.config, read at render time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from resnet_triton.errors import UserError

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pillow format names and their file extensions: the one definition of an image file.
# Training, build and `classify` pick files by these extensions (of the spec's
# `formats`), the server decodes only these formats. TIFF, ICO, PSD and the rest are
# refused: rare in photo data sets, and a larger attack surface for a server decoding
# untrusted bytes.
FORMAT_EXTENSIONS = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "GIF": (".gif",),
}
IMAGE_FORMATS = tuple(FORMAT_EXTENSIONS)
IMAGE_EXTENSIONS = tuple(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)
PILLOW_BOMB_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: Pillow warns above, fails at 2x


class SpecError(UserError, ValueError):
    """A spec field holds a value the pipeline cannot use."""


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class Preprocessing:
    """Decoding and the eval transform: shorter side to `resize_size`, center crop, normalize.

    formats: image formats accepted (Pillow names); anything else is refused.
    max_pixels: larger images are refused before they are decoded (Pillow's
        own decompression-bomb limit is 89 million pixels).
    max_bytes: larger encoded images are refused (Triton 2.51 has no HTTP
        input-size flag; this and max_batch_size bound what a request holds).
    jpeg_draft: let libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale when the
        result is still at least twice the resized size; much faster for large
        photos, within the tolerance in tests/test_preprocess.py of a full
        decode. Off: exact torchvision parity for JPEGs too.
    """

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    formats: tuple[str, ...] = IMAGE_FORMATS
    max_pixels: int = 40_000_000
    max_bytes: int = 16 * 1024 * 1024
    jpeg_draft: bool = True

    def validate(self) -> None:
        if self.crop_size < 1 or self.resize_size < self.crop_size:
            raise SpecError(
                f"preprocessing.resize_size ({self.resize_size}) must be >= "
                f"preprocessing.crop_size ({self.crop_size}) >= 1"
            )
        check_choice("preprocessing.interpolation", self.interpolation, INTERPOLATIONS)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3:
                raise SpecError(f"preprocessing.{name} needs 3 values (R, G, B), got {values!r}")
        if min(self.std) <= 0:
            raise SpecError(f"preprocessing.std must be positive, got {self.std!r}")
        if not self.crop_size**2 <= self.max_pixels <= PILLOW_BOMB_PIXELS:
            raise SpecError(
                f"preprocessing.max_pixels {self.max_pixels} must lie between one crop "
                f"({self.crop_size**2}) and Pillow's decompression-bomb limit "
                f"({PILLOW_BOMB_PIXELS})"
            )
        if self.max_bytes < 1:
            raise SpecError(f"preprocessing.max_bytes must be >= 1, got {self.max_bytes}")
        unknown = sorted(set(self.formats) - set(IMAGE_FORMATS))
        if unknown or not self.formats:
            raise SpecError(
                f"preprocessing.formats {unknown or '[]'} not supported; choose from "
                f"{', '.join(IMAGE_FORMATS)}"
            )

    @property
    def extensions(self) -> tuple[str, ...]:
        """The file extensions of the accepted formats: which files are images."""
        return tuple(ext for name in self.formats for ext in FORMAT_EXTENSIONS[name])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.crop_size, self.crop_size)

    def to_params(self) -> dict[str, str]:
        """As Triton model config parameters: strings as they are, the rest JSON."""
        return {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_params(cls, params: dict[str, str]) -> Preprocessing:
        defaults = cls()
        values = {
            f.name: params[f.name]
            if isinstance(getattr(defaults, f.name), str)
            else json.loads(params[f.name])
            for f in dataclasses.fields(cls)
            if f.name in params
        }
        cfg = cls(**fields_of(cls, values, "preprocessing parameters"))
        cfg.validate()
        return cfg


@dataclass(frozen=True)
class Names:
    """Model and tensor names shared by ONNX, config.pbtxt files and clients."""

    ensemble: str = "resnet_ensemble"
    preprocess: str = "preprocess"
    classifier: str = "classifier"
    image: str = "IMAGE"  # encoded image bytes, TYPE_STRING [1]
    pixels: str = "PIXELS"  # preprocessed image, uint8 [3, crop, crop]; the classifier normalizes
    scores: str = "SCORES"  # softmax probabilities, FP32 [num_classes]


# The ensemble's config parameter that carries `ModelSpec.reject_below` to clients.
REJECT_BELOW = "reject_below"
# The classifier's parameter with `ModelSpec.reject_rate` (its metrics export it).
REJECT_RATE = "reject_rate"
# The Python-backend models' config parameters that name, from `Names`, the tensor
# each reads and the one it writes (serving/triton_models.py finds them by these).
INPUT_NAME = "input_name"
OUTPUT_NAME = "output_name"
# The classifier's optional input of encoded images, which only its capture reads.
CAPTURE_INPUT = "capture_input"


@dataclass(frozen=True)
class ModelSpec:
    labels: tuple[str, ...]
    arch: str = "resnet50"
    head_dropout: float = 0.0  # > 0: the head is Dropout + Linear (changes state_dict keys)
    # "linear", or "mlp:N": Linear(features, N), ReLU, Dropout(head_dropout), Linear(N,
    # classes) (head_hidden). Left out of the dict when linear, like widths.
    head: str = "linear"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    # The largest batch of images the exported model, a TensorRT profile and every
    # served model take (Triton's max_batch_size).
    max_batch_size: int = 32
    names: Names = field(default_factory=Names)
    # Open-set rejection (`resnet-triton calibrate`): an image whose top softmax score is
    # below this is "unknown"; calibrated on the validation split for a false-rejection
    # rate. None: every image gets one of the labels.
    reject_below: float | None = None
    # The share of held-out images below reject_below at calibration: the rate of
    # "unknown" answers to expect while the inputs look like the training data (the
    # drift alert fires at twice it).
    reject_rate: float | None = None
    # Structured pruning (`resnet-triton prune`): Conv2d output channels as (module name,
    # channels) pairs, the stock width for a convolution not named (prune names them all);
    # every other shape (BatchNorm, the next layer's inputs, the head's) follows from these.
    # Empty: the stock architecture. resnet.build_model builds it; a mismatch names the layer.
    widths: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def validate(self) -> None:
        check_choice("architecture", self.arch, ARCHITECTURES)
        if not 0.0 <= self.head_dropout < 1.0:
            raise SpecError(f"head_dropout must lie in [0, 1), got {self.head_dropout}")
        head_hidden(self.head)
        if len(self.labels) < 2:
            raise SpecError(f"a classifier needs at least 2 labels, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise SpecError(f"labels must be unique, got {list(self.labels)}")
        bad = [label for label in self.labels if not label or "\n" in label]
        if bad:
            raise SpecError(f"labels must be non-empty single lines, got {bad!r}")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise SpecError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        self.preprocessing.validate()
        if self.reject_below is not None and not 0.0 < self.reject_below < 1.0:
            raise SpecError(f"reject_below must lie in (0, 1), got {self.reject_below}")
        if self.reject_rate is not None and (
            self.reject_below is None or not 0.0 <= self.reject_rate < 1.0
        ):
            raise SpecError(
                f"reject_rate must lie in [0, 1) and comes with reject_below, got "
                f"{self.reject_rate} (reject_below {self.reject_below})"
            )
        for name, channels in self.widths:
            if not isinstance(name, str) or not isinstance(channels, int) or channels < 1:
                raise SpecError(
                    f"widths must map layer names to channel counts >= 1, got {name!r}: "
                    f"{channels!r}"
                )

    def describe(self) -> str:
        pruned = f", pruned ({len(self.widths)} layer widths)" if self.widths else ""
        head = f", {self.head} head" if self.head != "linear" else ""
        return f"{self.arch}{pruned}{head} with classes {list(self.labels)}"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        del data["widths"]  # left out when stock: older specs keep their bytes and hashes
        if self.widths:
            data["widths"] = dict(self.widths)
        if self.head == "linear":
            del data["head"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Rebuild a spec, naming any unknown or malformed field.

        Specs written before the serving settings left it (checkpoints and ONNX
        files up to 2026-11-25) carry `batching` and `instances`: the batch limit is
        kept, the rest is a deployment's choice now (serving.config) and is dropped.
        """
        if isinstance(data, dict) and ("batching" in data or "instances" in data):
            batching = data.get("batching")
            data = {k: v for k, v in data.items() if k not in ("batching", "instances")}
            if isinstance(batching, dict) and "max_batch_size" in batching:
                data.setdefault("max_batch_size", batching["max_batch_size"])
        kwargs = fields_of(cls, data, "spec")
        for key, part in (("preprocessing", Preprocessing), ("names", Names)):
            if key in kwargs:
                kwargs[key] = part(**fields_of(part, kwargs[key], key))
        if "widths" in kwargs:
            if not isinstance(data["widths"], dict):
                raise SpecError(f"widths must be a mapping, got {data['widths']!r}")
            kwargs["widths"] = tuple(data["widths"].items())
        if "labels" not in kwargs:
            raise SpecError("spec has no labels")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))


def head_hidden(head: str) -> int:
    """The hidden width of an "mlp:N" head; 0 for "linear". The error names the value."""
    if head == "linear":
        return 0
    kind, _, width = head.partition(":")
    if kind != "mlp" or not width.isdigit() or int(width) < 1:
        raise SpecError(f"head must be linear or mlp:N with N >= 1 (e.g. mlp:512), got {head!r}")
    return int(width)


def read_yaml(path: Path, what: str, error: type[Exception] = SpecError):
    """The YAML document in `path`; an unreadable or malformed file raises `error`,
    naming `what` and the path."""
    import yaml  # here: the serving images, which never read YAML, have no PyYAML

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None


def fields_of(cls, data, where: str) -> dict:
    """The keyword arguments for `cls`; JSON lists become the tuples frozen fields hold."""
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be a mapping, got {type(data).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise SpecError(f"unknown field(s) {unknown} in {where}; valid: {sorted(valid)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
