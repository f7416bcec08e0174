"""The build's gate step: every model file it made, against its reference, before anything
is published.

  export        the FP32 ONNX model (ONNX Runtime) against the checkpoint (PyTorch);
  <precision>   the INT8 model or TensorRT plan against the FP32 ONNX model;
  torchscript,  the PyTorch files (torch_artifacts.py), each loaded back from its file,
  torch-export  against the checkpoint, under the export gate's policy.

Every report goes to <work_dir>/gates.json; a failed gate raises GateFailed naming each
file and the gate it failed, and the repository is left as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

from resnet_triton.build import engine, torch_artifacts
from resnet_triton.build.export import copy_metadata
from resnet_triton.build.images import GateImages, pixel_batches
from resnet_triton.build.manifest import file_sha256
from resnet_triton.build.options import BuildOptions, Plan
from resnet_triton.build.quantize import quantize_int8
from resnet_triton.build.reference_outputs import ReferenceMismatch, check_on_this_cpu
from resnet_triton.build.verify import GateReport, Reference, TorchRunner, run_gate
from resnet_triton.errors import UserError


class GateFailed(UserError):
    """A candidate model is outside tolerance; nothing was published."""


def onnxrt(path: Path, name: str) -> OnnxrtRunner:
    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name)


def candidate_step(opts: BuildOptions, plan: Plan, fp32: Path):
    """The reduced-precision model file and its Polygraphy runner."""
    spec, work = plan.spec, opts.work_dir
    pixels = pixel_batches(plan.calibration, spec, 16)
    if plan.target == "cpu":
        artifact = work / "model.int8.onnx"
        quantize_int8(fp32, artifact, spec.names.pixels, pixels, opts.quantization)
        copy_metadata(fp32, artifact)
        runner = onnxrt(artifact, "onnxruntime-int8")
    else:
        artifact = work / f"model.{opts.precision}.{plan.gpu.tag}.plan"
        engine.build_plan(
            fp32, artifact, spec, plan.settings, calibration=pixels, work_dir=work,
            cache_key=plan.key[:16],
        )  # fmt: skip
        runner = engine.plan_runner(artifact, f"tensorrt-{opts.precision}")
    print(f"built {artifact}", flush=True)
    return artifact, runner


def onnx_gates(opts: BuildOptions, plan: Plan, fp32: Path, images: GateImages):
    """[(file, report)]: the export gate, then the candidate's if the export passed."""
    work = opts.work_dir
    reference = Reference(onnxrt(fp32, "onnxruntime-fp32"), file_sha256(fp32), images, work)
    export = run_gate("export", TorchRunner(plan.model, plan.spec), reference, plan.spec, work)
    gated = [(fp32, export)]
    if export.passed and (plan.target, opts.precision) != ("cpu", "fp32"):
        artifact, candidate = candidate_step(opts, plan, fp32)
        gated.append((artifact, run_gate(opts.precision, candidate, reference, plan.spec, work)))
    return gated, reference


def torch_gates(opts: BuildOptions, plan: Plan, images: GateImages):
    """[(file, report)]: each PyTorch file asked for, written, read back and gated against
    the checkpoint's outputs (computed once for all of them)."""
    work = opts.work_dir
    pytorch = TorchRunner(plan.model, plan.spec)
    reference = Reference(pytorch, file_sha256(opts.checkpoint), images, work)
    gated = []
    for name in plan.torch_formats:
        torch_format = torch_artifacts.FORMATS[name]
        path = torch_format.export(plan.model, plan.spec, work / torch_format.filename,
                                   opts.checkpoint)  # fmt: skip
        print(f"exported {path}", flush=True)
        runner = torch_artifacts.file_runner(path, torch_format)
        gated.append((path, run_gate(name, runner, reference, plan.spec, work)))
    return gated


def gate_step(opts: BuildOptions, plan: Plan, fp32: Path | None, images: GateImages):
    """(the file to publish, every gate's report). `fp32` None: no ONNX model (the pytorch
    target, which publishes the TorchScript model)."""
    onnx, reference = onnx_gates(opts, plan, fp32, images) if fp32 else ([], None)
    pytorch = torch_gates(opts, plan, images)
    gated = onnx + pytorch
    reports: list[GateReport] = [report for _, report in gated]
    (opts.work_dir / "gates.json").write_text(json.dumps([r.as_dict() for r in reports], indent=2))
    for report in reports:
        print(report.summary())
    failed = [f"{path} failed the {r.gate} gate" for path, r in gated if not r.passed]
    if failed:
        raise GateFailed(f"{'; '.join(failed)}; {opts.repository} left unchanged")
    if plan.target == "pytorch":
        return next(path for path, r in pytorch if r.gate == "torchscript"), reports
    artifact = onnx[-1][0]  # the FP32 model, or the candidate that passed its gate
    if plan.target == "cpu" and artifact != fp32:
        reference_step(opts, plan, artifact, reference)
    return artifact, reports


def reference_step(opts: BuildOptions, plan: Plan, artifact: Path, reference: Reference):
    """INT8 on ONNX Runtime: the reference's outputs, saved beside the model for the
    server's check at load (build/reference_outputs.py), checked here as it will be."""
    reference.keep_beside(artifact, opts.precision, plan.spec)
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    try:
        got = check_on_this_cpu(
            artifact, lambda x: session.run(None, {plan.spec.names.pixels: x})[0]
        )
    except ReferenceMismatch as exc:
        raise GateFailed(f"{exc}; {opts.repository} left unchanged") from None
    print(f"  reference outputs kept for the server's check: {got}")
