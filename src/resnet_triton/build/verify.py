"""Accuracy gates: a candidate model against its reference, on real images.

Every gate has two parts, both on images passed through the shared
preprocessing (never random noise, which exercises activations a trained
network never sees):

1. Polygraphy's Comparator on `gate_images` (64 by default): every output
   element must satisfy |candidate - reference| <= atol or
   |candidate - reference| / |reference| <= rtol (Polygraphy's elementwise
   rule). Outputs are softmax probabilities.
2. Top-1 over the validation split (up to `agreement_images`): agreement
   with the reference, and the drop in accuracy against the labels.

| gate | candidate vs reference | atol | rtol | top-1 agreement | accuracy drop |
|---|---|---|---|---|---|
| export | ONNX Runtime FP32 vs PyTorch FP32 | 1e-4 | 1e-3 | 100% | 0 |
| fp32 | TensorRT FP32 (TF32 off) vs ONNX Runtime FP32 | 1e-4 | 1e-3 | 100% | 0 |
| fp16 | TensorRT FP16 vs ONNX Runtime FP32 | 5e-3 | 5e-2 | >= 99.5% | <= 0.5 pt |
| int8 | INT8 (ONNX Runtime QDQ or TensorRT) vs ONNX Runtime FP32 | 5e-2 | 5e-1 | >= 98% | <= 1 pt |

FP32 differences come from summation order only (about 1e-6 seen); FP16
keeps about 3 significant digits; INT8 moves probabilities by up to a few
hundredths (0.014 seen on the demo model) without changing the ranking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import version

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.logger import G_LOGGER
from torch import nn

from resnet_triton.build.export import ServedModel
from resnet_triton.spec import ModelSpec

# SimpleCompareFunc, and compare_accuracy's list results, came in Polygraphy 0.53.4; an
# NGC image's older copy (seen through --system-site-packages) must not be used.
POLYGRAPHY_MIN = "0.53.4"


def polygraphy_too_old(installed: str) -> str:
    return (
        f"Polygraphy {installed} is installed; the accuracy gates need {POLYGRAPHY_MIN} or newer "
        f"(pip install 'polygraphy>={POLYGRAPHY_MIN}')"
    )


try:
    from polygraphy.comparator import Comparator, SimpleCompareFunc
except ImportError as exc:
    raise ImportError(polygraphy_too_old(version("polygraphy"))) from exc


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass(frozen=True)
class GatePolicy:
    tolerance: Tolerance
    min_agreement: float
    max_accuracy_drop: float


POLICIES = {
    "export": GatePolicy(Tolerance(atol=1e-4, rtol=1e-3), 1.0, 0.0),
    "fp32": GatePolicy(Tolerance(atol=1e-4, rtol=1e-3), 1.0, 0.0),
    "fp16": GatePolicy(Tolerance(atol=5e-3, rtol=5e-2), 0.995, 0.005),
    "int8": GatePolicy(Tolerance(atol=5e-2, rtol=5e-1), 0.98, 0.01),
}
FP32_TOLERANCE = POLICIES["export"].tolerance


class TorchRunner(BaseRunner):
    """PyTorch on CPU or CUDA (Polygraphy's PytRunner assumes CUDA)."""

    def __init__(self, model: nn.Module, spec: ModelSpec, device: str = "cpu"):
        super().__init__(name="pytorch", prefix="pytorch-runner")
        self.model = ServedModel(model, spec).eval().to(device)
        self.spec = spec
        self.device = device

    def activate_impl(self):
        pass

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        meta.add(self.spec.names.pixels, np.uint8, (-1, *self.spec.preprocessing.input_shape))
        return meta

    @torch.no_grad()
    def infer_impl(self, feed_dict):
        pixels = torch.from_numpy(np.ascontiguousarray(feed_dict[self.spec.names.pixels]))
        start = time.perf_counter()
        scores = self.model(pixels.to(self.device)).float().cpu().numpy()
        self.inference_time = time.perf_counter() - start
        return OrderedDict({self.spec.names.scores: scores})

    def deactivate_impl(self):
        pass


@dataclass
class GateReport:
    gate: str
    candidate: str
    reference: str
    policy: GatePolicy
    images: int
    max_abs_error: float
    max_rel_error: float
    within_tolerance: bool
    agreement_images: int
    top1_agreement: float
    reference_accuracy: float
    candidate_accuracy: float
    worst: list[dict] = field(default_factory=list)

    @property
    def tolerance(self) -> Tolerance:
        return self.policy.tolerance

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.candidate_accuracy

    @property
    def passed(self) -> bool:
        return (
            self.within_tolerance
            and self.top1_agreement >= self.policy.min_agreement
            and self.accuracy_drop <= self.policy.max_accuracy_drop + 1e-12
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "accuracy_drop": self.accuracy_drop}

    def summary(self) -> str:
        p = self.policy
        lines = [
            f"{self.gate} gate {'PASSED' if self.passed else 'FAILED'}: {self.candidate} vs "
            f"{self.reference}",
            f"  {self.images} images (atol={p.tolerance.atol:g}, rtol={p.tolerance.rtol:g}): "
            f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}"
            f"{'' if self.within_tolerance else '  <- outside tolerance'}",
            f"  {self.agreement_images} validation images: top-1 agreement "
            f"{self.top1_agreement:.4f} (needs >= {p.min_agreement:g}), accuracy "
            f"{self.reference_accuracy:.4f} -> {self.candidate_accuracy:.4f} (drop "
            f"{self.accuracy_drop:+.4f}, allowed {p.max_accuracy_drop:g})",
        ]
        if not self.passed:
            lines.append("  worst outputs (image, class, candidate, reference, abs error):")
            lines += [
                f"    {w['image']}  class {w['label']!r}  {w['candidate']:.6f}  "
                f"{w['reference']:.6f}  {w['abs_error']:.3g}"
                for w in self.worst
            ]
        return "\n".join(lines)


def _scores(results, runner_index: int, output: str) -> np.ndarray:
    return np.concatenate([it[output] for it in results[runner_index][1]])


def run_gate(
    gate: str,
    candidate: BaseRunner,
    reference: BaseRunner,
    spec: ModelSpec,
    gate_set: tuple[np.ndarray, list[str]],
    agreement_set: Iterator[tuple[np.ndarray, np.ndarray]],
    batch_size: int = 8,
    worst_count: int = 5,
) -> GateReport:
    """Compare `candidate` with `reference` under the policy named `gate`.

    gate_set: (pixels (N, 3, crop, crop), image names) for Polygraphy.
    agreement_set: batches of (pixels, labels) covering the validation images.
    """
    policy = POLICIES[gate]
    pixels, names = gate_set
    name = spec.names.pixels
    feeds = [
        OrderedDict({name: pixels[i : i + batch_size]}) for i in range(0, len(pixels), batch_size)
    ]
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # the report below says what matters
        # Candidate first: Polygraphy divides by the second runner's output, the reference.
        results = Comparator.run([candidate, reference], data_loader=feeds)
        accuracy = Comparator.compare_accuracy(
            results,
            compare_func=SimpleCompareFunc(atol=policy.tolerance.atol, rtol=policy.tolerance.rtol),
        )
        agreement = _agreement(candidate, reference, spec, agreement_set)
    per_iteration = next(iter(accuracy[0].values()))  # one compare func, one runner pair
    output = spec.names.scores
    got, want = _scores(results, 0, output), _scores(results, 1, output)
    abs_error = np.abs(got - want)  # (N, num_classes)
    worst = []
    for flat in np.argsort(abs_error, axis=None)[::-1][:worst_count]:
        row, col = np.unravel_index(flat, abs_error.shape)
        worst.append(
            {
                "image": names[row],
                "label": spec.labels[col],
                "candidate": float(got[row, col]),
                "reference": float(want[row, col]),
                "abs_error": float(abs_error[row, col]),
            }
        )

    return GateReport(
        gate=gate,
        candidate=candidate.name,
        reference=reference.name,
        policy=policy,
        images=len(pixels),
        max_abs_error=max(r[output].max_absdiff for r in per_iteration),
        max_rel_error=max(r[output].max_reldiff for r in per_iteration),
        within_tolerance=bool(accuracy),
        **agreement,
        worst=worst,
    )


def _agreement(candidate, reference, spec: ModelSpec, agreement_set) -> dict:
    """Top-1 agreement and both accuracies over (pixels, labels) batches."""
    name, output = spec.names.pixels, spec.names.scores
    agree = right_candidate = right_reference = count = 0
    with candidate, reference:
        for batch, labels in agreement_set:
            top_c = candidate.infer({name: batch})[output].argmax(1)
            top_r = reference.infer({name: batch})[output].argmax(1)
            agree += int(np.sum(top_c == top_r))
            right_candidate += int(np.sum(top_c == labels))
            right_reference += int(np.sum(top_r == labels))
            count += len(labels)
    return {
        "agreement_images": count,
        "top1_agreement": agree / max(count, 1),
        "reference_accuracy": right_reference / max(count, 1),
        "candidate_accuracy": right_candidate / max(count, 1),
    }
