"""TensorRT plans for the GPU target, built with Polygraphy's loaders.

A plan runs only on the TensorRT version and GPU compute capability it was
built for, so both go into its file name (`model.sm90.plan`), its manifest
and the content hash; a `--hardware-compatible` plan (TensorRT's Ampere-plus
level, built on an Ampere or newer GPU) runs on every Ampere or newer GPU and
is served to them as the config's default_model_filename. One optimization
profile: min 1, opt (the serving configuration's largest preferred batch, or
--opt-batch), max = the spec's max_batch_size, which is also the served
config's (Triton refuses a plan whose profile cannot take it). TF32 stays off for
FP32 plans so that they match ONNX Runtime FP32. INT8 is calibrated on real
training images in batches of the profile's opt size; the calibration cache
(`calibration.<content hash>.cache`) and the timing cache are kept in the
work folder and reused by later builds.

The GPU is found through nvidia-smi, which the NVIDIA Container Toolkit puts in
every GPU container, not through PyTorch: PyPI's torch needs a newer driver than
the NGC images run on, and export needs no CUDA at all. Nothing here builds
without the `tensorrt` package and a GPU; `gpu_status` says which one is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
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
        cls, spec: ModelSpec, opt_batch: int | None = None, preferred: tuple[int, ...] = ()
    ) -> Profile:
        """The one profile a plan for this spec has: opt is `opt_batch`, else the largest
        preferred batch of the serving configuration, else (no preferred sizes: the
        batcher forms batches up to the max) the max."""
        limit = spec.max_batch_size
        if opt_batch is None:
            opt_batch = max(preferred, default=limit)
        if not 1 <= opt_batch <= limit:
            raise UserError(f"profile opt batch {opt_batch} must lie in 1..{limit}")
        return cls(1, opt_batch, limit)

    def shapes(self, spec: ModelSpec) -> dict[str, list[int]]:
        tail = list(spec.preprocessing.input_shape)
        return {k: [getattr(self, k), *tail] for k in ("min", "opt", "max")}


@dataclass(frozen=True)
class PlanSettings:
    """Everything a plan is built with besides the network and calibration images."""

    precision: str  # fp32 (TF32 off), fp16 or int8
    profile: Profile
    workspace_gib: float = 4.0
    hardware_compatible: bool = False  # Ampere-plus: runs on every Ampere or newer GPU
    version_compatible: bool = False  # later TensorRT versions can run it

    def flags(self) -> dict:
        """The build flags recorded in the manifest and its content hash."""
        return {
            "tf32": False,
            "workspace_gib": self.workspace_gib,
            "hardware_compatible": self.hardware_compatible,
            "version_compatible": self.version_compatible,
        }


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "9.0"

    @property
    def tag(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


class NoGpu(Exception):
    """No GPU to build for; the message says why."""


def nvidia_smi() -> list[Gpu]:
    """The GPUs the driver shows this process (CUDA_VISIBLE_DEVICES respected), in its order."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        raise NoGpu(
            "nvidia-smi is not on PATH (no NVIDIA driver here, or a container started "
            "without a GPU)"
        )
    command = [binary, "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        if not visible.strip() or visible.strip() == "-1":
            raise NoGpu(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
        command.append(f"--id={visible.strip()}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise NoGpu("nvidia-smi did not answer within 60 s") from None
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip().splitlines() or ["(no output)"]
        raise NoGpu(f"nvidia-smi failed (exit {result.returncode}): {said[0]}")
    gpus = []
    for line in result.stdout.strip().splitlines():
        name, _, capability = line.rpartition(",")
        if not re.fullmatch(r"\d+\.\d+", capability.strip()):
            raise NoGpu(f"nvidia-smi gave no compute capability in {line!r} (driver too old?)")
        gpus.append(Gpu(name.strip(), capability.strip()))
    if not gpus:
        raise NoGpu("nvidia-smi lists no GPU")
    return gpus


def gpu_status() -> tuple[Gpu | None, str]:
    """(the GPU to build for, a sentence) or (None, why the TensorRT path cannot run here)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, "the tensorrt Python package is not installed"
    try:
        gpus = nvidia_smi()
    except NoGpu as exc:
        return None, str(exc)
    if len({gpu.compute_capability for gpu in gpus}) > 1:
        listed = ", ".join(f"{g.name} ({g.compute_capability})" for g in gpus)
        return None, (
            f"GPUs of different compute capabilities are visible ({listed}): set "
            "CUDA_VISIBLE_DEVICES to the one to build for"
        )
    gpu = gpus[0]
    return gpu, (
        f"TensorRT {trt_version()} on {gpu.name} (compute capability {gpu.compute_capability})"
    )


def check_hardware_compatible(gpu: Gpu) -> None:
    """Ampere-plus plans can only be built on an Ampere (8.0) or newer GPU."""
    if int(gpu.compute_capability.split(".")[0]) < 8:
        raise UserError(
            f"--hardware-compatible builds a plan for every Ampere or newer GPU, which "
            f"TensorRT can do only on one of them; {gpu.name} has compute capability "
            f"{gpu.compute_capability} (8.0 or higher needed): build without the flag"
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
    settings: PlanSettings,
    *,
    calibration: Iterator[np.ndarray] | None,
    work_dir: Path,
    cache_key: str,
) -> None:
    """Build and save a plan.

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

    profile, precision = settings.profile, settings.precision
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
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(settings.workspace_gib * (1 << 30))},
        hardware_compatibility_level=(
            trt.HardwareCompatibilityLevel.AMPERE_PLUS if settings.hardware_compatible else None
        ),
        version_compatible=settings.version_compatible or None,
    )
    build = EngineBytesFromNetwork(
        NetworkFromOnnxPath(str(onnx_path)), config=config, save_timing_cache=str(timing_cache)
    )
    plan_path.write_bytes(build())


def plan_runner(plan_path: Path, name: str):
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name=name)
