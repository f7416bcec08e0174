"""TensorRT plans for the GPU target, built with Polygraphy's loaders.

A plan runs only on the TensorRT version and GPU compute capability it was
built for, so both go into its file name (`model.sm90.plan`), its manifest
and the content hash. One optimization profile: min 1, opt, max = the spec's
max_batch_size (Triton refuses a plan whose max batch differs from the
config's). TF32 stays off for FP32 plans so that they match ONNX Runtime
FP32. INT8 is calibrated on real training images in batches of the profile's
opt size; the calibration cache (named by the build's content hash) and the
timing cache are kept in the work folder and reused by later builds.

Nothing here runs without the `tensorrt` package and a CUDA GPU; `gpu_status`
says which one is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_triton.errors import UserError
from resnet_triton.spec import ModelSpec


@dataclass(frozen=True)
class Profile:
    min: int
    opt: int
    max: int

    @classmethod
    def for_spec(
        cls, spec: ModelSpec, opt_batch: int | None = None, max_batch: int | None = None
    ) -> Profile:
        """The one profile a plan for this spec may have; errors name the limit."""
        limit = spec.batching.max_batch_size
        max_batch = limit if max_batch is None else max_batch
        if max_batch != limit:
            raise UserError(
                f"profile max batch {max_batch} must equal the spec's max_batch_size {limit}: "
                "Triton refuses a plan whose max batch differs from its config"
            )
        if opt_batch is None:
            opt_batch = max(spec.batching.preferred_batch_sizes)
        if not 1 <= opt_batch <= max_batch:
            raise UserError(f"profile opt batch {opt_batch} must lie in 1..{max_batch}")
        return cls(1, opt_batch, max_batch)

    def shapes(self, spec: ModelSpec) -> dict[str, list[int]]:
        tail = list(spec.preprocessing.input_shape)
        return {k: [getattr(self, k), *tail] for k in ("min", "opt", "max")}


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "9.0"

    @property
    def tag(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


def gpu_status() -> tuple[Gpu | None, str]:
    """(the GPU, a sentence) or (None, why the TensorRT path cannot run here)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, "the tensorrt Python package is not installed"
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA GPU is visible"
    import tensorrt

    major, minor = torch.cuda.get_device_capability()
    gpu = Gpu(torch.cuda.get_device_name(), f"{major}.{minor}")
    return (
        gpu,
        f"TensorRT {tensorrt.__version__} on {gpu.name} (compute capability {major}.{minor})",
    )


def fixed_batches(arrays: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The rows of `arrays` re-cut into batches of exactly `size`; a partial last one is dropped.

    TensorRT calibrates a dynamic-shape network at its calibration profile's opt
    shape only, and Polygraphy's calibrator rejects any other batch.
    """
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        pending.append(array)
        count += len(array)
        while count >= size:
            rows = np.concatenate(pending)
            yield rows[:size]
            pending, count = [rows[size:]], count - size


def trt_version() -> str:
    import tensorrt

    return tensorrt.__version__


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    spec: ModelSpec,
    precision: str,
    profile: Profile,
    calibration: Iterator[np.ndarray] | None,
    work_dir: Path,
    cache_key: str,
    workspace_gib: float = 4.0,
    hardware_compatible: bool = False,
    version_compatible: bool = False,
) -> dict:
    """Build and save a plan; returns the build flags for the manifest.

    `cache_key` names the INT8 calibration cache: scales belong to one model,
    calibration set and profile, and a cache from another build must not be reused.
    """
    import tensorrt as trt
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
    )
    from polygraphy.backend.trt import Profile as TrtProfile

    shapes = profile.shapes(spec)
    trt_profile = TrtProfile().add(spec.names.pixels, shapes["min"], shapes["opt"], shapes["max"])
    calibrator = None
    if precision == "int8":
        feeds = ({spec.names.pixels: b} for b in fixed_batches(calibration, profile.opt))
        calibrator = Calibrator(feeds, cache=str(work_dir / f"calibration.{cache_key}.cache"))
    timing_cache = work_dir / "timing.cache"
    config = CreateConfig(
        tf32=False,
        fp16=precision == "fp16",
        int8=precision == "int8",
        profiles=[trt_profile],
        calibrator=calibrator,
        load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))},
        hardware_compatibility_level=(
            trt.HardwareCompatibilityLevel.AMPERE_PLUS if hardware_compatible else None
        ),
        version_compatible=version_compatible or None,
    )
    build = EngineBytesFromNetwork(
        NetworkFromOnnxPath(str(onnx_path)), config=config, save_timing_cache=str(timing_cache)
    )
    plan_path.write_bytes(build())
    return {
        "tf32": False,
        "workspace_gib": workspace_gib,
        "hardware_compatible": hardware_compatible,
        "version_compatible": version_compatible,
    }


def plan_runner(plan_path: Path, name: str):
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name=name)
