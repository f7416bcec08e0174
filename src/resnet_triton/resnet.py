"""torchvision ResNets built from a spec, and checkpoints that carry their spec."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from resnet_triton.errors import UserError
from resnet_triton.spec import ModelSpec, SpecError

CHECKPOINT_FORMAT = "resnet-triton/1"


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be used."""


def build_model(spec: ModelSpec, weights: str = "none") -> nn.Module:
    """A torchvision ResNet with a fresh `num_classes` head.

    weights: "imagenet" (torchvision's weights; downloads once, needs network),
    "none" (random initialisation) or the path of a local state_dict file, for
    example torchvision's resnet50-*.pth copied onto an offline machine.
    """
    model = getattr(torchvision.models, spec.arch)(weights=None)
    if weights == "imagenet":
        _load_backbone(model, _imagenet_state_dict(spec.arch), f"ImageNet {spec.arch}")
    elif weights != "none":
        _load_backbone(model, _local_state_dict(Path(weights)), f"{weights}")
    head = nn.Linear(model.fc.in_features, spec.num_classes)
    model.fc = nn.Sequential(nn.Dropout(spec.head_dropout), head) if spec.head_dropout else head
    return model


def _imagenet_state_dict(arch: str) -> dict:
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return enum.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as exc:
        raise CheckpointError(
            f"could not download ImageNet weights for {arch} ({enum.url}): {exc}. "
            "Offline, pass --weights PATH to a local state_dict file, or --weights none"
        ) from None


def _local_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(
            f"weights file {path} does not exist; --weights takes imagenet, none or a file path"
        )
    state = read_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # one of our checkpoints, or a Lightning-style file
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def _load_backbone(model: nn.Module, state: dict, source: str) -> None:
    """Load everything but the classification head, which is replaced anyway."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {_first_line(exc)}"
        ) from None
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source} is not a state_dict of this architecture: {len(missing)} tensors "
            f"missing (first {missing[:1]}), {len(result.unexpected_keys)} unexpected "
            f"(first {result.unexpected_keys[:1]})"
        )


def save_checkpoint(path: Path, model: nn.Module, spec: ModelSpec, **extra) -> None:
    """Write weights, spec and any extra fields (metrics, config) in one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "state_dict": state, **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[ModelSpec, nn.Module, dict]:
    """(spec, model in eval mode, the whole checkpoint dict); errors name the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a resnet-triton checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            "train one with `resnet-triton train`"
        )
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except (KeyError, SpecError) as exc:
        raise CheckpointError(f"{path} has a bad spec: {exc}") from None
    model = build_model(spec, weights="none")
    try:
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit {spec.arch} with {spec.num_classes} classes "
            f"as its spec says: {_first_line(exc)}"
        ) from None
    return spec, model.eval(), payload


def read_torch_file(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"cannot load {path}: {_first_line(exc)}") from None


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel wraps the model


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
