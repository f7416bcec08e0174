"""Checkpoint -> one self-contained ONNX file with a dynamic batch dimension.

The exported graph takes 8-bit pixels (N, 3, crop, crop), normalizes them
((x / 255 - mean) / std in float32, the arithmetic of
`preprocess.normalize`) and ends in a softmax, so what Triton serves (and
what its classification extension ranks) are probabilities, and what crosses
from the preprocess model is a quarter of float32's bytes. The model spec
and a hash of the source checkpoint travel in the ONNX metadata, so a model
file found on its own still says what it is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from resnet_triton.build.manifest import file_sha256
from resnet_triton.errors import UserError
from resnet_triton.spec import ModelSpec

OPSET = 18  # supported by ONNX Runtime >= 1.14 and TensorRT >= 8.6


class ExportError(UserError, RuntimeError):
    """The ONNX model could not be written or does not check."""


class ServedModel(nn.Module):
    """uint8 pixels -> class probabilities: the network as Triton serves it."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model = model
        prep = spec.preprocessing
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        normalized = (pixels.float() / 255.0 - self.mean) / self.std
        return torch.softmax(self.model(normalized), dim=1)  # (N, num_classes)


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path, checkpoint: Path) -> Path:
    """Write `path`, check it with onnx.checker and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = ServedModel(model.float().eval(), spec)
    example = torch.zeros(2, *spec.preprocessing.input_shape, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=spec.max_batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            input_names=[spec.names.pixels],
            output_names=[spec.names.scores],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(
        proto,
        {
            "resnet_triton.spec": spec.to_json(),
            "resnet_triton.checkpoint_sha256": file_sha256(checkpoint),
        },
    )
    # One file: Triton and ONNX Runtime must not depend on a side `.data` file.
    onnx.save_model(proto, path, save_as_external_data=False)
    check_onnx(path)
    return path


def check_onnx(path: Path) -> onnx.ModelProto:
    """Load and run onnx.checker; the error names the file."""
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError
        raise ExportError(f"{path} is not a valid ONNX model: {exc}") from None
    return model


def spec_from_onnx(path: Path) -> ModelSpec:
    props = {p.key: p.value for p in check_onnx(path).metadata_props}
    if "resnet_triton.spec" not in props:
        raise ExportError(
            f"{path} carries no resnet_triton.spec metadata; export it from a checkpoint"
        )
    return ModelSpec.from_json(props["resnet_triton.spec"])


def copy_metadata(source: Path, target: Path) -> None:
    """Carry the spec and checkpoint hash over to a derived model (quantizers drop them)."""
    props = {p.key: p.value for p in onnx.load(source, load_external_data=False).metadata_props}
    model = onnx.load(target)
    onnx.helper.set_model_props(model, props)
    onnx.save_model(model, target, save_as_external_data=False)


def fold_if_equal(path: Path, pixels: np.ndarray, atol: float = 1e-6) -> str:
    """Shape inference and Polygraphy's constant folding, kept only if outputs stay equal.

    `pixels` are real preprocessed images (uint8). Returns what happened, for the log.
    """
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    original = onnx.load(path)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        folded = onnx.shape_inference.infer_shapes(fold_constants(onnx.load(path)))
    if len(folded.graph.node) == len(original.graph.node):
        return f"constant folding: nothing to fold ({len(original.graph.node)} nodes)"

    def outputs(model: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {session.get_inputs()[0].name: pixels})[0]

    difference = float(np.abs(outputs(folded) - outputs(original)).max())
    if difference > atol:
        return f"constant folding: kept the unfolded model (outputs moved by {difference:.3g})"
    onnx.save_model(folded, path, save_as_external_data=False)
    return (
        f"constant folding: {len(original.graph.node)} -> {len(folded.graph.node)} nodes, "
        f"outputs within {difference:.3g}"
    )
