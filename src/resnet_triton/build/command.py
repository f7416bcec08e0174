"""Build stage: checkpoint -> ONNX -> (INT8 | TensorRT plan) -> gates -> model repository.

Targets:
  cpu      ONNX Runtime in Triton's Python backend: FP32, or INT8 by static
           quantization (QDQ) calibrated on real training images.
  gpu      TensorRT plans (FP32 with TF32 off, FP16, INT8 calibrated the same
           way), one per GPU compute capability, served as `tensorrt_plan`.
  pytorch  TorchScript (model.pt, FP32) in Triton's PyTorch backend on the CPU, for
           hosts whose Triton has that backend (the PyPI server here has not).
  auto     gpu where TensorRT and a CUDA GPU are present, cpu otherwise; the
           build says which and why.

--torchscript and --torch-export also write model.pt and model.pt2 (a torch.export
program) into the work folder, each gated against the checkpoint (torch_artifacts.py).

Artifacts are written to the work folder first. Only when every accuracy
gate passes (verify.py has the table) are the model file and its manifest
installed into the repository; a failed gate exits 1, reports the worst
outputs and leaves the repository as it was. A build whose content hash
(manifest.py) matches the published manifest is skipped before anything is
exported or decoded: the hash covers the checkpoint and the exporter, not
the ONNX file the export would write.

Gates measure on held-out images only (build/images.py): the validation split
of the checkpoint's training run, reproduced from its config for a folder of
classes; INT8 calibrates on its training split.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import onnxruntime as ort

from resnet_triton.build import engine, export, torch_artifacts
from resnet_triton.build.export import export_onnx, fold_if_equal, spec_from_onnx
from resnet_triton.build.gating import GateFailed, gate_step
from resnet_triton.build.images import GateImages, calibration_set, held_out_set
from resnet_triton.build.manifest import (
    Manifest,
    cpu_features,
    cpu_name,
    file_sha256,
    files_sha256,
    is_up_to_date,
)
from resnet_triton.build.options import PRECISIONS, TARGETS, BuildOptions, BuildResult, Plan
from resnet_triton.errors import UserError
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.model_configs import TORCHSCRIPT_FILE
from resnet_triton.serving.plans import published_plans
from resnet_triton.serving.repository import (
    ONNX_FILE,
    env_path_for,
    model_home,
    publish,
    render,
    version_dir,
)
from resnet_triton.spec import check_choice

# Named by the tests, the pipeline and the demo as `build.<name>`.
__all__ = ["PRECISIONS", "TARGETS", "BuildOptions", "BuildResult", "GateFailed", "Plan", "run"]


def resolve_target(requested: str) -> tuple[str, engine.Gpu | None, str]:
    check_choice("target", requested, TARGETS)
    if requested == "pytorch":  # never picked by auto: the served Triton needs the backend
        why = f"TorchScript for Triton's PyTorch backend; torch {version('torch')}"
        return "pytorch", None, f"pytorch ({why})"
    gpu, why = engine.gpu_status()
    if requested == "gpu" and gpu is None:
        raise UserError(f"--target gpu needs TensorRT and a CUDA GPU: {why}")
    if requested == "cpu" or gpu is None:
        reason = "as asked" if requested == "cpu" else f"no TensorRT path here: {why}"
        return "cpu", None, f"cpu (ONNX Runtime {ort.__version__}; {reason})"
    return "gpu", gpu, f"gpu ({why})"


def _check_options(opts: BuildOptions, target: str, gpu: engine.Gpu | None) -> None:
    check_choice(f"precision for the {target} target", opts.precision, PRECISIONS[target])
    plan_flags = [f for f in ("hardware_compatible", "version_compatible") if getattr(opts, f)]
    if plan_flags and target != "gpu":
        flags = " and ".join(f"--{f.replace('_', '-')}" for f in plan_flags)
        raise UserError(f"{flags}: options of TensorRT plans (--target gpu), not of {target}")
    if opts.hardware_compatible:
        engine.check_hardware_compatible(gpu)
    if opts.onnx is not None and target == "pytorch":
        raise UserError("--onnx: the pytorch target traces TorchScript from the checkpoint")


def source_inputs(opts: BuildOptions) -> dict:
    """What the FP32 ONNX model is made from: a given file, or the checkpoint and the
    exporter (its code and versions), so that an unchanged build skips the export too."""
    if opts.onnx is not None:
        return {"onnx_sha256": file_sha256(opts.onnx)}
    exporter = {
        "code": file_sha256(Path(export.__file__)),  # ServedModel's too
        "opset": export.OPSET,
        **{package: version(package) for package in ("torch", "onnx", "polygraphy")},
    }
    return {"checkpoint_sha256": file_sha256(opts.checkpoint), "exporter": exporter}


def torch_inputs(formats: tuple[str, ...]) -> dict:
    """What the PyTorch files are made from, besides the checkpoint: their writer's code,
    ServedModel's and torch's version."""
    code = [file_sha256(Path(module.__file__)) for module in (torch_artifacts, export)]
    return {"formats": list(formats), "code": code, "torch": version("torch")}


def _target_inputs(opts: BuildOptions, target: str, gpu, profile, settings) -> tuple[dict, str]:
    """(what the target's model file depends on besides the source, the file's name)."""
    if target == "pytorch":
        return {}, TORCHSCRIPT_FILE
    if target == "cpu":
        inputs = {"onnxruntime": ort.__version__}
        if opts.precision == "int8":
            inputs["quantization"] = asdict(opts.quantization)  # what quantize_int8 calls
        return inputs, ONNX_FILE
    inputs = {"tensorrt": engine.trt_version(), "compute_capability": gpu.compute_capability}
    inputs |= {"profile": vars(profile), "flags": settings.flags()}
    return inputs, f"model.{gpu.tag}.plan"


def plan_build(opts: BuildOptions) -> Plan:
    target, gpu, why = resolve_target(opts.target)
    print(f"build target: {why}", flush=True)
    _check_options(opts, target, gpu)
    spec, model, payload = load_checkpoint(opts.checkpoint)
    opts.serving.validate(spec)
    profile = engine.Profile.for_spec(spec, opts.opt_batch, opts.serving.preferred_batch_sizes)
    settings = engine.PlanSettings(
        opts.precision, profile, opts.workspace_gib, opts.hardware_compatible,
        opts.version_compatible,
    )  # fmt: skip
    calibration = []
    if opts.precision == "int8":
        calibration = calibration_set(
            spec, payload, opts.checkpoint, opts.calibration, opts.calibration_images
        )
    if calibration and target == "gpu" and len(calibration) < profile.opt:
        raise UserError(
            f"TensorRT calibrates in batches of the profile's opt size {profile.opt}; "
            f"--calibration-images {len(calibration)} does not fill one"
        )
    source = source_inputs(opts)
    if target == "pytorch":
        source = {"checkpoint_sha256": source["checkpoint_sha256"]}  # no ONNX is made
    inputs = {
        "source": source,
        "precision": opts.precision,
        "target": target,
        "calibration_sha256": files_sha256(calibration) if calibration else None,
        "calibration_images": len(calibration),
    }
    formats = tuple(
        name for name, asked in (("torchscript", opts.torchscript or target == "pytorch"),
                                 ("torch-export", opts.torch_export)) if asked
    )  # fmt: skip
    if formats:  # absent otherwise: the hash of a build without them stays what it was
        inputs["torch_files"] = torch_inputs(formats)
    target_inputs, filename = _target_inputs(opts, target, gpu, profile, settings)
    inputs |= target_inputs
    return Plan(target, gpu, spec, model, payload, settings, calibration, inputs, filename,
                formats)  # fmt: skip


def export_step(opts: BuildOptions, plan: Plan, images: GateImages) -> Path:
    """The FP32 ONNX model: exported and folded, or the given file if it carries the spec."""
    if opts.onnx is not None:
        if spec_from_onnx(opts.onnx) != plan.spec:
            raise UserError(
                f"{opts.onnx} was exported from another model spec than {opts.checkpoint}"
            )
        return opts.onnx
    fp32 = export_onnx(plan.model, plan.spec, opts.work_dir / "model.fp32.onnx", opts.checkpoint)
    print(f"exported {fp32}; {fold_if_equal(fp32, images.first_pixels)}")
    return fp32


def manifest_for(opts: BuildOptions, plan: Plan, artifact: Path, reports, started: float):
    gates = [
        {k: r.as_dict()[k] for k in ("gate", "passed", "max_abs_error", "top1_agreement")}
        for r in reports
    ]
    return Manifest(
        content_hash=plan.key,
        inputs=plan.inputs,
        precision=opts.precision,
        target=plan.target,
        output_sha256=file_sha256(artifact),
        checkpoint=str(opts.checkpoint),
        checkpoint_sha256=file_sha256(opts.checkpoint),
        cpu=cpu_name(),
        cpu_features=cpu_features(),  # a gate measures the kernels this CPU's features pick
        gpu=plan.gpu.name if plan.gpu else None,
        compute_capability=plan.gpu.compute_capability if plan.gpu else None,
        build_seconds=round(time.perf_counter() - started, 1),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        gates=gates,
    )


def run(opts: BuildOptions) -> BuildResult:
    """Resolve, skip if up to date, else export, gate and publish."""
    plan = plan_build(opts)
    spec, key = plan.spec, plan.key
    published = version_dir(opts.repository, model_home(spec, opts.serving)) / plan.filename
    env_path = opts.env_path or env_path_for(opts.repository)
    if not opts.force and is_up_to_date(published, key):
        print(f"up to date: {published} was built from the same inputs (content hash {key[:12]})")
        plans = published_plans(published.parent) if plan.target == "gpu" else None
        render(spec, opts.repository, env_path, plan.target, plans, opts.serving)
        return BuildResult(True, key, published, spec)

    started = time.perf_counter()
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    gate_set = held_out_set(spec, plan.payload, opts.checkpoint, opts.images)
    images = GateImages.load(gate_set, spec, opts.gate_images, opts.agreement_images)
    fp32 = export_step(opts, plan, images) if plan.target != "pytorch" else None
    artifact, reports = gate_step(opts, plan, fp32, images)
    manifest = manifest_for(opts, plan, artifact, reports, started)
    destination = publish(
        artifact, spec, opts.repository, plan.filename, manifest, env_path, plan.target,
        opts.serving,
    )  # fmt: skip
    print(f"published {destination} ({opts.precision}, {plan.target})")
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
        "--precision",
        default=d.precision,
        help="cpu: fp32 or int8; gpu: fp32, fp16 or int8; pytorch: fp32",
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
    _image_options(parser.add_argument_group("images the gates and INT8 calibration use"), d)
    _plan_options(parser.add_argument_group("TensorRT plans (--target gpu)"), d)
    _torch_options(parser.add_argument_group("PyTorch files, gated like the ONNX model"))
    return parser


def _torch_options(group) -> None:
    group.add_argument(
        "--torchscript",
        action="store_true",
        help="also write <work-dir>/model.pt (TorchScript, what Triton's PyTorch backend loads) "
        "and gate it against the checkpoint (--target pytorch publishes it)",
    )
    group.add_argument(
        "--torch-export",
        action="store_true",
        help="also write <work-dir>/model.pt2 (a torch.export program) and gate it against the "
        "checkpoint",
    )


def _image_options(group, d: BuildOptions) -> None:
    group.add_argument(
        "--images",
        type=Path,
        help="held-out ImageFolder for the gates (default: the validation split of the "
        "checkpoint's training data: its val/, or a folder of classes split again as training "
        "split it; a flat training folder given here is split the same way)",
    )
    group.add_argument(
        "--calibration",
        type=Path,
        help="INT8 calibration images: a folder, or a manifest (.csv, .jsonl) whose every "
        "image calibrates (default, and for the run's own data: the training split of the "
        "checkpoint's training data)",
    )
    group.add_argument("--calibration-images", type=int, default=d.calibration_images)
    group.add_argument(
        "--gate-images", type=int, default=d.gate_images, help="images Polygraphy compares on"
    )
    group.add_argument(
        "--agreement-images",
        type=int,
        default=d.agreement_images,
        help="held-out images for the top-1 agreement and accuracy gates",
    )


def _plan_options(group, d: BuildOptions) -> None:
    group.add_argument("--opt-batch", type=int, help="TensorRT profile opt batch")
    group.add_argument("--workspace-gib", type=float, default=d.workspace_gib)
    flags = {
        "hardware-compatible": "runs on any Ampere or newer GPU",
        "version-compatible": "later TensorRT versions can run",
    }
    for flag, what in flags.items():
        group.add_argument(f"--{flag}", action="store_true", help=f"TensorRT plan that {what}")


def main(args: argparse.Namespace) -> int:
    options = {k: v for k, v in vars(args).items() if v is not None}
    if "serving" in options:
        options["serving"] = ServingConfig.load(options["serving"])
    run(BuildOptions(**options))
    return 0
