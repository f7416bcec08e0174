"""torchvision ResNets built from a spec, and checkpoints that carry their spec."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from resnet_triton.errors import UserError
from resnet_triton.spec import ModelSpec, SpecError, head_hidden

CHECKPOINT_FORMAT = "resnet-triton/1"


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be used."""


def build_model(spec: ModelSpec, weights: str = "none") -> nn.Module:
    """A torchvision ResNet with a fresh `num_classes` head.

    weights: "imagenet" (torchvision's weights; downloads once, needs network),
    "none" (random initialisation) or the path of a local state_dict file, for
    example torchvision's resnet50-*.pth copied onto an offline machine.
    A pruned spec (`spec.widths`) takes weights from its checkpoint only.
    """
    model = getattr(torchvision.models, spec.arch)(weights=None)
    if spec.widths and weights != "none":
        raise CheckpointError(
            f"a pruned {spec.arch} takes its weights from its own checkpoint, not {weights}"
        )
    if weights == "imagenet":
        _load_backbone(model, _imagenet_state_dict(spec.arch), f"ImageNet {spec.arch}")
    elif weights != "none":
        _load_backbone(model, _local_state_dict(Path(weights)), f"{weights}")
    if spec.widths:
        _narrow(model, dict(spec.widths), spec.arch)
    model.fc = build_head(model.fc.in_features, spec)
    return model


def build_head(features: int, spec: ModelSpec) -> nn.Module:
    """Linear (after Dropout when head_dropout > 0), or an MLP: Linear(features, N), ReLU,
    Dropout, Linear(N, classes) for an "mlp:N" head."""
    hidden = head_hidden(spec.head)
    if hidden:
        return nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(spec.head_dropout),
            nn.Linear(hidden, spec.num_classes),
        )  # fmt: skip
    head = nn.Linear(features, spec.num_classes)
    return nn.Sequential(nn.Dropout(spec.head_dropout), head) if spec.head_dropout else head


def _narrow(model: nn.Module, widths: dict[str, int], arch: str) -> None:
    """Replace the layers of a torchvision ResNet with those of the widths (fresh weights).

    Walks the network in order: each convolution takes the channels its input has and
    gives its width (the stock one where `widths` has none), its BatchNorm follows it,
    and a residual connection needs both branches equally wide.
    """
    convs = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    unknown = sorted(set(widths) - convs)
    if unknown:
        raise SpecError(f"widths name {unknown}, which are not convolutions of {arch}")

    def conv(name: str, channels_in: int) -> int:
        old = model.get_submodule(name)
        out = widths.get(name, old.out_channels)
        model.set_submodule(name, nn.Conv2d(
            channels_in, out, old.kernel_size, old.stride, old.padding, old.dilation,
            old.groups, bias=old.bias is not None,
        ))  # fmt: skip
        model.set_submodule(_norm_of(name), nn.BatchNorm2d(out))
        return out

    channels = conv("conv1", 3)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(model.get_submodule(stage)):
            prefix = f"{stage}.{index}"
            branch = channels
            for k in range(1, 4 if hasattr(block, "conv3") else 3):
                branch = conv(f"{prefix}.conv{k}", branch)
            skip = channels
            if block.downsample is not None:
                skip = conv(f"{prefix}.downsample.0", channels)
            if skip != branch:
                raise SpecError(
                    f"widths: {prefix} adds a shortcut of {skip} channels to a branch of "
                    f"{branch}; a residual connection needs them equal"
                )
            channels = branch
    model.fc = nn.Linear(channels, model.fc.out_features)


def _norm_of(conv: str) -> str:
    """conv1 -> bn1, layer1.0.conv2 -> layer1.0.bn2, layer2.0.downsample.0 -> ...downsample.1"""
    if conv.endswith("downsample.0"):
        return conv.removesuffix("0") + "1"
    return conv.replace("conv", "bn")


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
    payload = read_checkpoint(path)
    spec = checkpoint_spec(payload, path)
    model = build_model(spec, weights="none")
    load_weights(model, payload.get("state_dict"), spec, str(path))
    return spec, model.eval(), payload


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, read once, with no model built; errors name the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a resnet-triton checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            "train one with `resnet-triton train`"
        )
    return payload


def checkpoint_spec(payload: dict, path: str | Path) -> ModelSpec:
    try:
        return ModelSpec.from_dict(payload["spec"])
    except (KeyError, SpecError) as exc:
        raise CheckpointError(f"{path} has a bad spec: {exc}") from None


def load_weights(model: nn.Module, state, spec: ModelSpec, source: str) -> None:
    """Load a whole state_dict into the model its spec builds; a misfit names the tensor."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} has no state_dict")
    said = f"{spec.arch} with {spec.num_classes} classes" + (
        f" and {len(spec.widths)} pruned layer widths" if spec.widths else ""
    )
    for key, expected in model.state_dict().items():
        if key in state and tuple(state[key].shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{source}: {key} is {list(state[key].shape)} in the weights but "
                f"{list(expected.shape)} in {said}, as its spec says"
            )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: weights do not fit {said}, as its spec says: "
            f"{len(result.missing_keys)} tensors missing (first {result.missing_keys[:1]}), "
            f"{len(result.unexpected_keys)} unexpected (first {result.unexpected_keys[:1]})"
        )


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
