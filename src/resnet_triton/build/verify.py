"""Accuracy gates: a candidate model against its reference, on held-out images.

Every gate has two parts, both on images passed through the shared
preprocessing (never random noise, which exercises activations a trained
network never sees), both with Polygraphy's comparator:

1. Every output value of `gate_images` images (64 by default): SimpleCompareFunc,
   |candidate - reference| <= atol or |candidate - reference| / |reference| <=
   rtol for each element; INT8 also holds the mean error of each batch to a
   tighter bound (check_error_stat "mean"), so that a systematic drift cannot
   hide under the loose elementwise one. Outputs are softmax probabilities.
2. Top-1 over the held-out images (up to `agreement_images`): both outputs
   reduced to their top-1 index (TopKPostprocessFunc) and compared image by
   image (IndicesCompareFunc); the agreement is the share of images that
   match, and the accuracy of each against the labels is reported beside it.

| gate | candidate vs reference | atol | rtol | mean abs | top-1 agreement | acc. drop |
|---|---|---|---|---|---|---|
| export | ONNX Runtime FP32 vs PyTorch FP32 | 1e-4 | 1e-3 | | 100% | 0 |
| torchscript | model.pt (torch.jit.load) vs PyTorch FP32 | 1e-4 | 1e-3 | | 100% | 0 |
| torch-export | model.pt2 (torch.export.load) vs PyTorch FP32 | 1e-4 | 1e-3 | | 100% | 0 |
| fp32 | TensorRT FP32 (TF32 off) vs ONNX Runtime FP32 | 1e-4 | 1e-3 | | 100% | 0 |
| fp16 | TensorRT FP16 vs ONNX Runtime FP32 | 5e-3 | 5e-2 | | >= 99.5% | <= 0.5 pt |
| int8 | INT8 (ORT QDQ or TensorRT) vs ONNX Runtime FP32 | 5e-2 | 5e-1 | 5e-3 | >= 98% | <= 1 pt |

FP32 differences come from summation order only (about 1e-6 seen); FP16
keeps about 3 significant digits; INT8 moves probabilities by up to a few
hundredths (0.014 seen on the demo model) without changing the ranking.

Every run's outputs are saved as Polygraphy RunResults in the build's work
folder (`<gate>.outputs.json`, `<gate>.agreement.json`), beside gates.json:
`polygraphy inspect data <file> --show-values` shows what a failed gate saw.
The reference's outputs are computed once per model file and image set and
kept there (`reference.<key>.*.json`), so neither the next gate nor a later
build of the same model runs the reference again. An INT8 model for ONNX
Runtime is published with some of them (build/reference_outputs.py): its
kernels depend on the CPU, so the server checks the gate again on its own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.logger import G_LOGGER
from torch import nn

from resnet_triton.build.export import ServedModel
from resnet_triton.build.images import GateImages
from resnet_triton.build.manifest import content_hash
from resnet_triton.build.reference_outputs import ReferenceOutputs
from resnet_triton.spec import ModelSpec

# SimpleCompareFunc with check_error_stat, compare_accuracy's list results and
# TopKPostprocessFunc came in Polygraphy 0.53.4; an NGC image's older copy (seen
# through --system-site-packages) must not be used.
POLYGRAPHY_MIN = "0.53.4"


def polygraphy_too_old(installed: str) -> str:
    return (
        f"Polygraphy {installed} is installed; the accuracy gates need {POLYGRAPHY_MIN} or newer "
        f"(pip install 'polygraphy>={POLYGRAPHY_MIN}')"
    )


try:
    from polygraphy.comparator import (
        Comparator,
        IndicesCompareFunc,
        IterationResult,
        RunResults,
        SimpleCompareFunc,
        TopKPostprocessFunc,
    )
except ImportError as exc:
    raise ImportError(polygraphy_too_old(version("polygraphy"))) from exc


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass(frozen=True)
class GatePolicy:
    tolerance: Tolerance  # every output value
    min_agreement: float
    max_accuracy_drop: float
    mean: Tolerance | None = None  # the mean error of each batch too

    def compare_funcs(self) -> list:
        funcs = [SimpleCompareFunc(atol=self.tolerance.atol, rtol=self.tolerance.rtol)]
        if self.mean is not None:
            funcs.append(
                SimpleCompareFunc(atol=self.mean.atol, rtol=self.mean.rtol, check_error_stat="mean")
            )
        return funcs


EXPORT = GatePolicy(Tolerance(atol=1e-4, rtol=1e-3), 1.0, 0.0)
POLICIES = {
    "export": EXPORT,
    # The PyTorch files (build/torch_artifacts.py), read back, against the checkpoint.
    "torchscript": EXPORT,
    "torch-export": EXPORT,
    "fp32": GatePolicy(Tolerance(atol=1e-4, rtol=1e-3), 1.0, 0.0),
    "fp16": GatePolicy(Tolerance(atol=5e-3, rtol=5e-2), 0.995, 0.005),
    "int8": GatePolicy(Tolerance(atol=5e-2, rtol=5e-1), 0.98, 0.01, Tolerance(5e-3, 5e-2)),
}


class TorchRunner(BaseRunner):
    """PyTorch on CPU or CUDA (Polygraphy's PytRunner assumes CUDA): the checkpoint's
    network wrapped as served, or (`served`) a module that already is one, such as a
    TorchScript or torch.export file read back (torch_artifacts.file_runner)."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        device: str = "cpu",
        name: str = "pytorch",
        served: bool = False,
    ):
        super().__init__(name=name, prefix=f"{name}-runner")
        self.model = model if served else ServedModel(model, spec).eval().to(device)
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


def outputs(runner: BaseRunner, feeds: list) -> RunResults:
    """`runner`'s outputs on `feeds`, as Polygraphy keeps them."""
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        return Comparator.run([runner], data_loader=feeds)


def save(results: RunResults, path: Path) -> None:
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # quiet: the files are named in build/README.md
        results.save(str(path))


class Reference:
    """The reference runner's outputs on one build's images, computed once.

    Kept as RunResults in `work`, named by the reference model's hash and the
    images' (GateImages.key): a second gate, or a later build of the same model
    on the same images, loads them instead of running the reference again.
    """

    def __init__(self, runner: BaseRunner, model_sha256: str, images: GateImages, work: Path):
        self.runner = runner
        self.images = images
        key = content_hash({"model": model_sha256, "images": images.key, "runner": runner.name})
        self.prefix = work / f"reference.{key[:16]}"

    def results(self, kind: str) -> RunResults:
        """kind: "outputs" (the elementwise images) or "agreement"."""
        path = Path(f"{self.prefix}.{kind}.json")
        if path.is_file():
            with G_LOGGER.verbosity(G_LOGGER.ERROR):
                return RunResults.load(str(path))
        feeds = self.images.feeds if kind == "outputs" else self.images.agreement_feeds
        results = outputs(self.runner, feeds)
        save(results, path)
        return results

    def keep_beside(self, model_file: Path, gate: str, spec: ModelSpec) -> ReferenceOutputs:
        """Some of the gate images' pixels and this reference's scores on them, with the
        gate's tolerance, saved beside `model_file` for the server to check it on its CPU."""
        pixels = [feed[spec.names.pixels] for feed in self.images.feeds]
        (iterations,) = self.results("outputs").values()
        scores = [iteration[spec.names.scores] for iteration in iterations]
        kept = ReferenceOutputs.of_gate(pixels, scores, POLICIES[gate])
        kept.save(model_file)
        return kept


@dataclass
class GateReport:
    gate: str
    candidate: str
    reference: str
    policy: GatePolicy
    images: int
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float  # the largest batch mean
    within_tolerance: bool
    agreement_images: int
    top1_agreement: float
    reference_accuracy: float
    candidate_accuracy: float
    image_names: list[str] = field(default_factory=list)  # the elementwise comparison's
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
        mean = f", mean abs <= {p.mean.atol:g}" if p.mean else ""
        lines = [
            f"{self.gate} gate {'PASSED' if self.passed else 'FAILED'}: {self.candidate} vs "
            f"{self.reference}",
            f"  {self.images} images (atol={p.tolerance.atol:g}, rtol={p.tolerance.rtol:g}{mean}): "
            f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}, "
            f"mean abs error {self.mean_abs_error:.3g}"
            f"{'' if self.within_tolerance else '  <- outside tolerance'}",
            f"  {self.agreement_images} held-out images: top-1 agreement "
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


def _joined(*runs: RunResults) -> RunResults:
    """The runners of several runs in one RunResults, in order: candidate first, as
    Polygraphy's relative error divides by the second runner's outputs, the reference's."""
    joined = RunResults()
    for run in runs:
        for name, iterations in run.items():
            joined.append((name, iterations))
    return joined


def run_gate(
    gate: str, candidate: BaseRunner, reference: Reference, spec: ModelSpec, work: Path
) -> GateReport:
    """Compare `candidate` with `reference` under the policy named `gate`; both runs'
    outputs are saved in `work` (`<gate>.outputs.json`, `<gate>.agreement.json`)."""
    policy, images, output = POLICIES[gate], reference.images, spec.names.scores
    elementwise = _joined(outputs(candidate, images.feeds), reference.results("outputs"))
    save(elementwise, work / f"{gate}.outputs.json")
    top1 = _joined(outputs(candidate, images.agreement_feeds), reference.results("agreement"))
    save(top1, work / f"{gate}.agreement.json")
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # the report below says what matters
        accuracy = Comparator.compare_accuracy(elementwise, compare_func=policy.compare_funcs())
    per_iteration = next(iter(accuracy[0].values()))  # the elementwise check, one runner pair
    means = next(iter(accuracy[1].values())) if policy.mean else per_iteration
    got, want = (np.concatenate([it[output] for it in its]) for its in elementwise.values())
    return GateReport(
        gate=gate,
        candidate=candidate.name,
        reference=reference.runner.name,
        policy=policy,
        images=len(images.names),
        max_abs_error=max(r[output].max_absdiff for r in per_iteration),
        max_rel_error=max(r[output].max_reldiff for r in per_iteration),
        mean_abs_error=max(r[output].mean_absdiff for r in means),
        within_tolerance=bool(accuracy),
        **_agreement(top1, output, np.array(images.agreement.labels)),
        image_names=images.names,
        worst=_worst(np.abs(got - want), got, want, images.names, spec),
    )


def _worst(abs_error, got, want, names, spec: ModelSpec, count: int = 5) -> list[dict]:
    """The `count` output values furthest from the reference, with their image and class."""
    worst = []
    for flat in np.argsort(abs_error, axis=None)[::-1][:count]:
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
    return worst


def _agreement(results: RunResults, output: str, labels: np.ndarray) -> dict:
    """Top-1 agreement image by image (Polygraphy's top-k and index comparison) and each
    runner's accuracy against `labels`."""
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        top1 = Comparator.postprocess(results, TopKPostprocessFunc(k={output: 1}))
    per_image = RunResults()
    for name, iterations in top1.items():
        rows = np.concatenate([it[output] for it in iterations])  # (N, 1)
        per_image.append(
            (name, [IterationResult({output: row[None]}, runner_name=name) for row in rows])
        )
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # one line per differing image otherwise
        verdicts = Comparator.compare_accuracy(per_image, compare_func=IndicesCompareFunc())
    agree, _, count = verdicts[0].stats()
    candidate, reference = (
        np.concatenate([it[output][:, 0] for it in its]) for its in top1.values()
    )
    return {
        "agreement_images": count,
        "top1_agreement": agree / max(count, 1),
        "reference_accuracy": float(np.mean(reference == labels)) if count else 0.0,
        "candidate_accuracy": float(np.mean(candidate == labels)) if count else 0.0,
    }
