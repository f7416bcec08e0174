"""Accuracy gate: Polygraphy compares ONNX Runtime with PyTorch on real images.

The inputs are validation images passed through the shared preprocessing,
never random noise: noise exercises activations a trained network never
sees and hides errors in the ranges it does. Both sides end in a softmax, so
the compared outputs are probabilities.

Tolerance (FP32 ONNX Runtime vs FP32 PyTorch): an element passes when
|onnx - torch| <= atol or |onnx - torch| / |torch| <= rtol (Polygraphy's
elementwise rule). atol=1e-4 bounds the error of every probability;
rtol=1e-3 lets large probabilities differ by float32 summation order only.
Observed differences on the demo model are around 1e-6.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER
from torch import nn

from resnet_triton.export import WithSoftmax
from resnet_triton.spec import ModelSpec


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


FP32_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)


class TorchRunner(BaseRunner):
    """PyTorch on CPU or CUDA (Polygraphy's PytRunner assumes CUDA)."""

    def __init__(self, model: nn.Module, spec: ModelSpec, device: str = "cpu"):
        super().__init__(name="pytorch", prefix="pytorch-runner")
        self.model = WithSoftmax(model).eval().to(device)
        self.spec = spec
        self.device = device

    def activate_impl(self):
        pass

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        meta.add(self.spec.names.pixels, np.float32, (-1, *self.spec.preprocessing.input_shape))
        return meta

    @torch.no_grad()
    def infer_impl(self, feed_dict):
        pixels = torch.from_numpy(feed_dict[self.spec.names.pixels]).to(self.device)
        start = time.perf_counter()
        scores = self.model(pixels).cpu().numpy()
        self.inference_time = time.perf_counter() - start
        return OrderedDict({self.spec.names.scores: scores})

    def deactivate_impl(self):
        pass


@dataclass
class GateReport:
    passed: bool
    tolerance: Tolerance
    images: int
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float
    worst: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"accuracy gate {verdict} on {self.images} images "
            f"(atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g}): "
            f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}, "
            f"top-1 agreement {self.top1_agreement:.4f}"
        ]
        if not self.passed:
            lines.append("worst outputs (image, class, onnx, pytorch, abs error):")
            lines += [
                f"  {w['image']}  class {w['label']!r}  {w['candidate']:.6f}  "
                f"{w['reference']:.6f}  {w['abs_error']:.3g}"
                for w in self.worst
            ]
        return "\n".join(lines)


def compare_onnx_with_torch(
    onnx_path,
    model: nn.Module,
    spec: ModelSpec,
    pixels: np.ndarray,
    image_names: list[str],
    tolerance: Tolerance = FP32_TOLERANCE,
    batch_size: int = 8,
    worst_count: int = 5,
) -> GateReport:
    """Run both models on `pixels` (N, 3, crop, crop) with Polygraphy and judge them."""
    name = spec.names.pixels
    feeds = [
        OrderedDict({name: pixels[i : i + batch_size]}) for i in range(0, len(pixels), batch_size)
    ]
    # Candidate first: Polygraphy divides by the second runner's output, the reference.
    runners = [
        OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"])),
        TorchRunner(model, spec),
    ]
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR  # the report below says what matters
    try:
        results = Comparator.run(runners, data_loader=feeds)
        accuracy = Comparator.compare_accuracy(
            results,
            compare_func=SimpleCompareFunc(atol=tolerance.atol, rtol=tolerance.rtol),
        )
    finally:
        G_LOGGER.module_severity = severity

    per_iteration = next(iter(accuracy[0].values()))  # one compare func, one runner pair
    output = spec.names.scores
    candidate = np.concatenate([it[output] for it in results[0][1]])
    reference = np.concatenate([it[output] for it in results[1][1]])
    abs_error = np.abs(candidate - reference)  # (N, num_classes)
    worst_flat = np.argsort(abs_error, axis=None)[::-1][:worst_count]
    worst = []
    for flat in worst_flat:
        row, col = np.unravel_index(flat, abs_error.shape)
        worst.append(
            {
                "image": image_names[row],
                "label": spec.labels[col],
                "candidate": float(candidate[row, col]),
                "reference": float(reference[row, col]),
                "abs_error": float(abs_error[row, col]),
            }
        )
    return GateReport(
        passed=bool(accuracy),
        tolerance=tolerance,
        images=len(pixels),
        max_abs_error=max(r[output].max_absdiff for r in per_iteration),
        max_rel_error=max(r[output].max_reldiff for r in per_iteration),
        top1_agreement=float(np.mean(candidate.argmax(1) == reference.argmax(1))),
        worst=worst,
    )
