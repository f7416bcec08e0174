"""Build stage: checkpoint -> ONNX -> (INT8 | TensorRT plan) -> gates -> model repository.

Targets:
  cpu  ONNX Runtime in Triton's Python backend: FP32, or INT8 by static
       quantization (QDQ) calibrated on real training images.
  gpu  TensorRT plans (FP32 with TF32 off, FP16, INT8 calibrated the same
       way), one per GPU compute capability, served as `tensorrt_plan`.
  auto gpu where TensorRT and a CUDA GPU are present, cpu otherwise; the
       build says which and why.

Artifacts are written to the work folder first. Only when every accuracy
gate passes (verify.py has the table) are the model file and its manifest
installed into the repository; a failed gate exits 1, reports the worst
outputs and leaves the repository as it was. A build whose content hash
(manifest.py) matches the published manifest is skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

from resnet_triton.build import engine
from resnet_triton.build.export import copy_metadata, export_onnx, fold_if_equal, spec_from_onnx
from resnet_triton.build.manifest import content_hash, file_sha256, files_sha256, is_up_to_date
from resnet_triton.build.quantize import SETTINGS as QUANTIZATION
from resnet_triton.build.quantize import quantize_int8
from resnet_triton.build.verify import GateReport, TorchRunner, run_gate
from resnet_triton.data import image_folder
from resnet_triton.errors import UserError
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.plans import published_plans
from resnet_triton.serving.repository import ONNX_FILE, env_path_for, publish, render
from resnet_triton.spec import ModelSpec, check_choice

TARGETS = ("auto", "cpu", "gpu")
PRECISIONS = {"cpu": ("fp32", "int8"), "gpu": ("fp32", "fp16", "int8")}


class GateFailed(UserError):
    """A candidate model is outside tolerance; nothing was published."""


@dataclass(frozen=True)
class BuildOptions:
    checkpoint: Path
    repository: Path = Path("model_repository")
    work_dir: Path = Path("artifacts/build")
    precision: str = "fp32"
    target: str = "auto"
    images: Path | None = None  # validation ImageFolder for the gates
    calibration: Path | None = None  # training ImageFolder for INT8
    calibration_images: int = 128
    gate_images: int = 64
    agreement_images: int = 1000
    opt_batch: int | None = None  # TensorRT profile; default from the serving config
    workspace_gib: float = 4.0
    hardware_compatible: bool = False
    version_compatible: bool = False
    onnx: Path | None = None
    env_path: str | None = None
    serving: ServingConfig = ServingConfig()  # rendered into the repository's configs
    force: bool = False


@dataclass(frozen=True)
class BuildResult:
    skipped: bool  # the published model was built from the same inputs: configs re-rendered
    content_hash: str
    published: Path  # the model file in the repository
    spec: ModelSpec
    reports: list[GateReport] = field(default_factory=list)


def resolve_target(requested: str) -> tuple[str, engine.Gpu | None, str]:
    check_choice("target", requested, TARGETS)
    gpu, why = engine.gpu_status()
    if requested == "gpu" and gpu is None:
        raise UserError(f"--target gpu needs TensorRT and a CUDA GPU: {why}")
    if requested == "cpu" or gpu is None:
        reason = "as asked" if requested == "cpu" else f"no TensorRT path here: {why}"
        return "cpu", None, f"cpu (ONNX Runtime {ort.__version__}; {reason})"
    return "gpu", gpu, f"gpu ({why})"


def sample(folder: Path, count: int) -> tuple[list[str], np.ndarray]:
    """`count` images spread evenly over an ImageFolder (every class), and their labels."""
    samples = image_folder(folder).samples
    picks = np.unique(np.linspace(0, len(samples) - 1, min(count, len(samples))).astype(int))
    return [samples[i][0] for i in picks], np.array([samples[i][1] for i in picks])


def gate_images(folder: Path, spec: ModelSpec, count: int) -> tuple[np.ndarray, list[str]]:
    """(uint8 pixels (n, 3, crop, crop), paths) of `count` images of an ImageFolder."""
    paths, _ = sample(folder, count)
    return pixels_from_files(paths, spec.preprocessing), paths


def batches(
    paths: list[str], labels: np.ndarray, spec: ModelSpec, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed (pixels, labels) batches, decoded lazily to keep memory flat."""
    for i in range(0, len(paths), size):
        chunk = paths[i : i + size]
        yield pixels_from_files(chunk, spec.preprocessing), labels[i : i + size]


def calibration_set(opts: BuildOptions, folder: Path) -> list[str]:
    paths, _ = sample(folder, opts.calibration_images)
    if len(paths) < opts.calibration_images:
        raise UserError(
            f"calibration folder {folder} has {len(paths)} images; --calibration-images asks "
            f"for {opts.calibration_images} (lower it, or point --calibration at more images)"
        )
    return paths


def _data_folders(opts: BuildOptions, payload: dict) -> tuple[Path, Path]:
    """(validation folder, calibration folder), defaulting to the training data's splits."""
    data = Path(payload.get("config", {}).get("data", ""))
    split = (data / "train").is_dir()
    val = opts.images or (data / "val" if split else data)
    calibration = opts.calibration or (data / "train" if split else data)
    if not val.is_dir():
        raise UserError(f"no validation images at {val}; pass --images DIR (an ImageFolder)")
    return val, calibration


def run(opts: BuildOptions) -> BuildResult:
    target, gpu, why = resolve_target(opts.target)
    print(f"build target: {why}", flush=True)
    check_choice(f"precision for the {target} target", opts.precision, PRECISIONS[target])
    plan_flags = [f for f in ("hardware_compatible", "version_compatible") if getattr(opts, f)]
    if plan_flags and target != "gpu":
        flags = " and ".join(f"--{f.replace('_', '-')}" for f in plan_flags)
        raise UserError(f"{flags}: options of TensorRT plans (--target gpu), not of {target}")
    if opts.hardware_compatible:
        engine.check_hardware_compatible(gpu)
    spec, model, payload = load_checkpoint(opts.checkpoint)
    opts.serving.validate(spec)
    profile = engine.Profile.for_spec(spec, opts.opt_batch, opts.serving.preferred_batch_sizes)
    plan = engine.PlanSettings(
        opts.precision, profile, opts.workspace_gib, opts.hardware_compatible,
        opts.version_compatible,
    )  # fmt: skip
    val_dir, calibration_dir = _data_folders(opts, payload)
    work = opts.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    gate_set = gate_images(val_dir, spec, opts.gate_images)
    if opts.onnx is None:
        fp32 = export_onnx(model, spec, work / "model.fp32.onnx", opts.checkpoint)
        print(f"exported {fp32}; {fold_if_equal(fp32, gate_set[0][:8])}")
    else:
        fp32 = opts.onnx
        if spec_from_onnx(fp32) != spec:
            raise UserError(f"{fp32} was exported from another model spec than {opts.checkpoint}")

    calibration = calibration_set(opts, calibration_dir) if opts.precision == "int8" else []
    if calibration and target == "gpu" and len(calibration) < profile.opt:
        raise UserError(
            f"TensorRT calibrates in batches of the profile's opt size {profile.opt}; "
            f"--calibration-images {len(calibration)} does not fill one"
        )
    inputs = {
        "onnx_sha256": file_sha256(fp32),
        "precision": opts.precision,
        "target": target,
        "calibration_sha256": files_sha256(calibration) if calibration else None,
        "calibration_images": len(calibration),
    }
    if target == "cpu":
        inputs["onnxruntime"] = ort.__version__
        if opts.precision == "int8":
            inputs["quantization"] = QUANTIZATION
        filename = ONNX_FILE
    else:
        inputs |= {"tensorrt": engine.trt_version(), "compute_capability": gpu.compute_capability}
        inputs |= {"profile": vars(profile), "flags": plan.flags()}
        filename = f"model.{gpu.tag}.plan"
    key = content_hash(inputs)
    published = opts.repository / spec.names.classifier / "1" / filename
    env_path = opts.env_path or env_path_for(opts.repository)
    if not opts.force and is_up_to_date(published, key):
        print(f"up to date: {published} was built from the same inputs (content hash {key[:12]})")
        plans = published_plans(published.parent) if target == "gpu" else None
        render(spec, opts.repository, env_path, target, plans, opts.serving)
        return BuildResult(True, key, published, spec)

    val_paths, val_labels = sample(val_dir, opts.agreement_images)

    def agreement_set():
        return batches(val_paths, val_labels, spec, 16)

    def onnxrt(path: Path, name: str) -> OnnxrtRunner:
        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name)

    reference = onnxrt(fp32, "onnxruntime-fp32")
    reports = [
        run_gate("export", reference, TorchRunner(model, spec), spec, gate_set, agreement_set())
    ]
    artifact = fp32
    if reports[0].passed and (target, opts.precision) != ("cpu", "fp32"):
        calibration_batches = (
            batches(calibration, np.zeros(len(calibration)), spec, 16) if calibration else iter(())
        )
        pixels_only = (pixels for pixels, _ in calibration_batches)
        if target == "cpu":
            artifact = work / "model.int8.onnx"
            quantize_int8(fp32, artifact, spec.names.pixels, pixels_only)
            copy_metadata(fp32, artifact)
            candidate = onnxrt(artifact, "onnxruntime-int8")
        else:
            artifact = work / f"model.{opts.precision}.{gpu.tag}.plan"
            engine.build_plan(
                fp32, artifact, spec, plan, calibration=pixels_only, work_dir=work,
                cache_key=key[:16],
            )  # fmt: skip
            candidate = engine.plan_runner(artifact, f"tensorrt-{opts.precision}")
        print(f"built {artifact}", flush=True)
        reports.append(
            run_gate(opts.precision, candidate, reference, spec, gate_set, agreement_set())
        )

    (work / "gates.json").write_text(json.dumps([r.as_dict() for r in reports], indent=2))
    for report in reports:
        print(report.summary())
    failed = [r.gate for r in reports if not r.passed]
    if failed:
        raise GateFailed(
            f"{artifact} failed the {' and '.join(failed)} gate; {opts.repository} left unchanged"
        )

    manifest = {
        "content_hash": key,
        "inputs": inputs,
        "precision": opts.precision,
        "target": target,
        "output_sha256": file_sha256(artifact),
        "checkpoint": str(opts.checkpoint),
        "checkpoint_sha256": file_sha256(opts.checkpoint),
        "gpu": gpu.name if gpu else platform.processor() or platform.machine(),
        "compute_capability": gpu.compute_capability if gpu else None,
        "build_seconds": round(time.perf_counter() - started, 1),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gates": [
            {k: r.as_dict()[k] for k in ("gate", "passed", "max_abs_error", "top1_agreement")}
            for r in reports
        ],
    }
    destination = publish(
        artifact, spec, opts.repository, filename, manifest, env_path, target, opts.serving
    )
    print(f"published {destination} ({opts.precision}, {target})")
    return BuildResult(False, key, destination, spec, reports)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = BuildOptions(checkpoint=Path())
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--repository", default=d.repository, type=Path)
    parser.add_argument("--work-dir", default=d.work_dir, type=Path)
    parser.add_argument("--target", default=d.target, help=f"one of {', '.join(TARGETS)}")
    parser.add_argument(
        "--precision", default=d.precision, help="cpu: fp32 or int8; gpu: fp32, fp16 or int8"
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="validation ImageFolder for the gates (default: val/ of the training data)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        help="INT8 calibration ImageFolder (default: train/ of the training data)",
    )
    parser.add_argument("--calibration-images", type=int, default=d.calibration_images)
    parser.add_argument(
        "--gate-images", type=int, default=d.gate_images, help="images Polygraphy compares on"
    )
    parser.add_argument(
        "--agreement-images",
        type=int,
        default=d.agreement_images,
        help="validation images for the top-1 agreement and accuracy gates",
    )
    parser.add_argument("--opt-batch", type=int, help="TensorRT profile opt batch")
    parser.add_argument("--workspace-gib", type=float, default=d.workspace_gib)
    parser.add_argument(
        "--hardware-compatible",
        action="store_true",
        help="TensorRT plan that runs on any Ampere or newer GPU",
    )
    parser.add_argument(
        "--version-compatible",
        action="store_true",
        help="TensorRT plan that later TensorRT versions can run",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        help="gate and publish this FP32 ONNX file instead of exporting one "
        "(it must carry the checkpoint's spec)",
    )
    parser.add_argument("--env-path", help="EXECUTION_ENV_PATH for Python-backend models")
    parser.add_argument(
        "--serving",
        type=Path,
        help="serving configuration (YAML, fields of serving/config.py) rendered into the "
        "repository's configs; an unchanged model is not rebuilt, its configs are re-rendered",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    return parser


def main(args: argparse.Namespace) -> int:
    options = {k: v for k, v in vars(args).items() if v is not None}
    if "serving" in options:
        options["serving"] = ServingConfig.load(options["serving"])
    run(BuildOptions(**options))
    return 0
