"""The network as PyTorch files, with the ONNX model's contract (export.ServedModel):
uint8 pixels (N, 3, crop, crop) in, softmax probabilities (N, num_classes) out, batch
1..max_batch_size, the spec and the checkpoint's SHA-256 inside the file.

  torchscript   model.pt: traced TorchScript, what Triton's PyTorch backend loads
                (platform pytorch_libtorch; serving/model_configs.py renders its config)
  torch-export  model.pt2: the torch.export program (torch.export.save), TorchScript's
                successor, with a dynamic batch dimension

Each is read back from its file and run by a Polygraphy runner (file_runner), so a gate
measures the file that was written, not the module it was written from.

TorchScript's forward takes one tensor argument named after `spec.names.pixels`: the
PyTorch backend binds a config input to the forward argument of the same name, and the
one output by its position. Triton serves a torch.export program only compiled by
AOTInductor into a package (platform torch_aoti, beta, batch 1 only as of 26.05): the
program written here is its portable source, gated, with no config rendered for it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnet_triton.build.export import ServedModel
from resnet_triton.build.manifest import file_sha256
from resnet_triton.build.verify import TorchRunner
from resnet_triton.errors import UserError
from resnet_triton.spec import ModelSpec

SPEC_KEY = "resnet_triton.spec"  # the keys of export.py's ONNX metadata
CHECKPOINT_KEY = "resnet_triton.checkpoint_sha256"
# torch 2.14 warns on every torch.jit call; Triton's PyTorch backend still loads TorchScript.
JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


def _served(model: nn.Module, spec: ModelSpec) -> ServedModel:
    return ServedModel(model.float().eval(), spec).eval()


def _example(spec: ModelSpec) -> torch.Tensor:
    return torch.zeros(2, *spec.preprocessing.input_shape, dtype=torch.uint8)


def _metadata(spec: ModelSpec, checkpoint: Path) -> dict[str, str]:
    return {SPEC_KEY: spec.to_json(), CHECKPOINT_KEY: file_sha256(checkpoint)}


def _forward_named(served: ServedModel, name: str) -> None:
    """Give `served.forward` one argument called `name`: torch.jit.trace takes the traced
    method's argument names from its signature."""

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return ServedModel.forward(served, pixels)

    argument = inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = inspect.Signature([argument.replace(annotation=torch.Tensor)])
    served.forward = forward


def export_torchscript(model: nn.Module, spec: ModelSpec, path: Path, checkpoint: Path) -> Path:
    """Trace the served network (checked on a second batch size) and save it to `path`."""
    served = _served(model, spec)
    _forward_named(served, spec.names.pixels)
    other = torch.zeros(3, *spec.preprocessing.input_shape, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", JIT_DEPRECATED, FutureWarning)
        traced = torch.jit.trace(served, (_example(spec),), check_inputs=[(other,)])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path), _extra_files=_metadata(spec, checkpoint))
    return path


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, ModelSpec]:
    extra = {SPEC_KEY: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", JIT_DEPRECATED, FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # RuntimeError, ValueError, OSError: a file that is not one
        raise UserError(f"{path} is not a TorchScript model: {exc}") from None
    return module.eval(), _spec(path, extra)


def export_program(model: nn.Module, spec: ModelSpec, path: Path, checkpoint: Path) -> Path:
    """torch.export the served network, batch dimension dynamic, and save it to `path`."""
    batch = torch.export.Dim("batch", min=1, max=spec.max_batch_size)
    program = torch.export.export(
        _served(model, spec), (_example(spec),), dynamic_shapes=({0: batch},)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path), extra_files=_metadata(spec, checkpoint))
    return path


def load_program(path: Path) -> tuple[nn.Module, ModelSpec]:
    extra = {SPEC_KEY: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors
        raise UserError(f"{path} is not a torch.export program: {exc}") from None
    return program.module(), _spec(path, extra)


def _spec(path: Path, extra: dict) -> ModelSpec:
    if not extra[SPEC_KEY]:
        raise UserError(f"{path} carries no {SPEC_KEY}; export it from a checkpoint")
    text = extra[SPEC_KEY]
    return ModelSpec.from_json(text.decode() if isinstance(text, bytes) else text)


@dataclass(frozen=True)
class TorchFormat:
    """One PyTorch file format: its gate's name, file name, writer and reader."""

    name: str
    filename: str
    export: Callable[[nn.Module, ModelSpec, Path, Path], Path]
    load: Callable[[Path], tuple[nn.Module, ModelSpec]]


FORMATS = {
    "torchscript": TorchFormat("torchscript", "model.pt", export_torchscript, load_torchscript),
    "torch-export": TorchFormat("torch-export", "model.pt2", export_program, load_program),
}


def file_runner(path: Path, torch_format: TorchFormat) -> TorchRunner:
    """The file at `path` read back and run on the CPU as it was saved, fed by the spec's
    input name."""
    module, spec = torch_format.load(path)
    return TorchRunner(module, spec, name=torch_format.name, served=True)
