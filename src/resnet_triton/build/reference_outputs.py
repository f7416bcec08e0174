"""The INT8 gate's reference outputs, kept beside the published model for the server.

ONNX Runtime picks its INT8 kernels when a session starts, by the CPU it runs on
(AVX2, AVX-512 VNNI, AMX, ...), so a model that passed its gate on the build
machine may score otherwise on a server with another CPU (quantize.py: 16-bit
saturation without VNNI). A published INT8 model therefore carries
`<file>.reference.npz`: some of the gate's held-out images as the pixels the
model takes, the reference (FP32) scores the gate compared against on them, the
gate's tolerance, and the CPU the gate ran on. The CPU classifier scores those
pixels when it loads (serving/triton_models.py) and refuses to serve a model that
breaks the gate on its own CPU; the build runs the same check before publishing.

This module is the file's one owner: the build writes it, `publish` copies it with
its model, the server reads it. It imports numpy only, as it runs in Triton's stub.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from resnet_triton.build.manifest import cpu_features, cpu_name

REFERENCE_IMAGES = 32  # 4.8 MB of pixels at 224 px before compression; 0.4 MB at 64 px
SUFFIX = ".reference.npz"


def reference_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + SUFFIX)


class ReferenceMismatch(RuntimeError):
    """A model's scores on this CPU break the gate it passed where it was built."""


@dataclass(frozen=True)
class Comparison:
    """A model's scores against the reference's, measured as the gate measures them."""

    images: int
    max_abs_error: float
    mean_abs_error: float
    outside: int  # output values beyond both atol and rtol (Polygraphy's elementwise check)
    clear: int  # images whose reference top-1 leads by over 2 atol: the agreement's
    top1_agreement: float
    passed: bool

    def __str__(self) -> str:
        return (
            f"{self.images} held-out images: max abs error {self.max_abs_error:.3g} "
            f"({self.outside} values outside tolerance), mean abs error "
            f"{self.mean_abs_error:.3g}, top-1 agreement {self.top1_agreement:.4f} on the "
            f"{self.clear} clear answers"
        )


@dataclass(frozen=True)
class ReferenceOutputs:
    pixels: np.ndarray  # (N, 3, crop, crop) uint8, as the model takes them
    scores: np.ndarray  # (N, classes) float32: the reference's, on the build machine
    atol: float  # the gate's tolerance, verify.POLICIES
    rtol: float
    mean_atol: float
    mean_rtol: float
    min_agreement: float
    build_cpu: str
    build_features: tuple[str, ...]

    @classmethod
    def of_gate(
        cls, pixels: list[np.ndarray], scores: list[np.ndarray], policy
    ) -> ReferenceOutputs:
        """Whole batches of the gate's (pixels, reference scores), spread over the images,
        about REFERENCE_IMAGES: each batch's mean error is one the gate bounded. `policy`
        is the gate's verify.GatePolicy (not imported here: verify imports this module)."""
        wanted = -(-REFERENCE_IMAGES // len(pixels[0]))
        picks = np.unique(np.linspace(0, len(pixels) - 1, min(wanted, len(pixels))).astype(int))
        mean = policy.mean or policy.tolerance  # a policy without a mean bound: the elementwise
        return cls(
            np.concatenate([pixels[i] for i in picks]), np.concatenate([scores[i] for i in picks]),
            policy.tolerance.atol, policy.tolerance.rtol, mean.atol, mean.rtol,
            policy.min_agreement, cpu_name(), tuple(cpu_features()),
        )  # fmt: skip

    def save(self, model_file: Path) -> Path:
        path = reference_path(model_file)
        with open(path, "wb") as out:  # numpy appends .npz to a name unless given a file
            np.savez_compressed(out, **{f.name: getattr(self, f.name) for f in fields(self)})
        return path

    @classmethod
    def read(cls, model_file: Path) -> ReferenceOutputs | None:
        """The reference outputs beside `model_file`; None where it has none (FP32)."""
        path = reference_path(model_file)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                values = {f.name: data[f.name] for f in fields(cls)}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # damaged
            # The model cannot be checked: refused like one that fails the check.
            raise ReferenceMismatch(f"{path} is unreadable ({exc}): rebuild the model") from None
        scalars = {k: v.item() for k, v in values.items() if v.ndim == 0}
        return cls(**{**values, **scalars, "build_features": tuple(values["build_features"])})

    def compare(self, scores: np.ndarray) -> Comparison:
        """Polygraphy's checks as the gate ran them (verify.py): elementwise, each value
        within atol or rtol; the mean error within mean_atol or mean_rtol; top-1 agreement,
        on the images whose reference answer leads by over 2 atol: on a few dozen images
        one near-tie that flips within atol would fail min_agreement alone (seen: a lead
        of 0.00014 among the test model's 32)."""
        want = self.scores.astype(np.float64)
        abs_error = np.abs(scores.astype(np.float64) - want)
        rel_error = abs_error / np.abs(np.where(want == 0, np.finfo(float).eps, want))
        outside = int(np.sum(~(abs_error <= self.atol) & ~(rel_error <= self.rtol)))  # NaN too
        mean_abs, mean_rel = float(abs_error.mean()), float(rel_error.mean())
        mean_ok = mean_abs <= self.mean_atol or mean_rel <= self.mean_rtol
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * self.atol
        agrees = scores.argmax(1)[clear] == self.scores.argmax(1)[clear]
        agreement = float(agrees.mean()) if clear.any() else 1.0
        return Comparison(
            len(scores), float(abs_error.max()), mean_abs, outside, int(clear.sum()), agreement,
            outside == 0 and mean_ok and agreement >= self.min_agreement,
        )  # fmt: skip

    def refusal(self, model_file: Path, got: Comparison) -> str:
        features = " ".join(cpu_features()) or "unknown"
        return (
            f"{model_file} breaks its INT8 gate on this CPU ({cpu_name()}; {features}): on the "
            f"{got.images} held-out images saved at build, max abs error {got.max_abs_error:.3g} "
            f"(atol {self.atol:g}, rtol {self.rtol:g}: {got.outside} values outside), mean abs "
            f"error {got.mean_abs_error:.3g} (<= {self.mean_atol:g}), top-1 agreement "
            f"{got.top1_agreement:.4f} on the {got.clear} clear answers (>= "
            f"{self.min_agreement:g}); the gate passed on "
            f"{self.build_cpu} ({' '.join(self.build_features) or 'unknown'}). ONNX Runtime "
            "picks INT8 kernels by CPU: rebuild the model on a CPU like this one"
        )


def check_on_this_cpu(
    model_file: Path, score: Callable[[np.ndarray], np.ndarray]
) -> Comparison | None:
    """`score` (pixels -> scores, the model's session on this CPU) against the reference
    outputs saved beside `model_file`; None where there are none. Raises ReferenceMismatch,
    naming the numbers and both CPUs, where the scores break the gate's tolerance."""
    reference = ReferenceOutputs.read(model_file)
    if reference is None:
        return None
    got = reference.compare(score(reference.pixels))
    if not got.passed:
        raise ReferenceMismatch(reference.refusal(model_file, got))
    return got
