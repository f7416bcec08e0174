"""Render the Triton model repository from the spec, with protobuf.

Layout (names from `spec.names`):

    <repo>/preprocess/config.pbtxt       Python backend: bytes -> pixels
    <repo>/preprocess/1/model.py         glue: imports resnet_triton.serving.triton_models
                                         (serving.preprocess_backend dali: DALI backend,
                                         1/model.dali; serving/dali.py)
    <repo>/classifier/config.pbtxt       CPU target: Python backend running ONNX Runtime;
                                         GPU target: tensorrt_plan, cc_model_filenames
                                         (a hardware-compatible plan: default_model_filename);
                                         pytorch target: pytorch_libtorch, model.pt
    <repo>/classifier/1/model.py         CPU target only
    <repo>/classifier/1/model.onnx       CPU target (FP32 or INT8), placed by `publish`
    <repo>/classifier/1/model.sm90.plan  GPU target, one plan per compute capability
    <repo>/classifier/1/model.pt         pytorch target: TorchScript for Triton's PyTorch
                                         backend (platform pytorch_libtorch, CPU instances),
                                         for hosts whose Triton has it
    <repo>/classifier/1/<file>.manifest.json   how and from what each model file was built
    <repo>/classifier/1/model.onnx.reference.npz   INT8 only: the gate's reference outputs,
                                         checked on the server's CPU at load
    <repo>/classifier/labels.txt         one label per line, for class_count (both targets)
    <repo>/resnet_ensemble/config.pbtxt  IMAGE -> preprocess -> classifier -> SCORES
    <repo>/resnet_ensemble/labels.txt    the same labels, for the ensemble's class_count
    <repo>/resnet_ensemble/1/            ensembles need a (empty) version folder
    <repo>/preprocess/warmup/image       a small real photo, serialized, for model warmup

serving.layout fused (CPU target): one Python-backend model under the ensemble's name
decodes and runs ONNX Runtime (serving/triton_models.py FusedModel), and holds the
model file itself:

    <repo>/resnet_ensemble/config.pbtxt  IMAGE -> SCORES, backend python
    <repo>/resnet_ensemble/1/model.py    glue, as above
    <repo>/resnet_ensemble/1/model.onnx  placed by `publish`, with its manifest
    <repo>/resnet_ensemble/labels.txt, warmup/image

Both SCORES outputs carry `label_filename`, so Triton's classification
extension answers "score:index:label" from the classifier too (NVIDIA's stock
image_client.py asks the model that takes pixels). The Python-backend models
name the tensors they read and write in their `input_name` and `output_name`
parameters (serving/triton_models.py finds them by those names).

Every model: max_batch_size from the spec (the model contract); from the
serving configuration (serving/config.py, a deployment's choice): the dynamic
batcher's preferred sizes and queue delay, instance counts, the classifier's
ONNX Runtime threads and warmup at
load (preprocess: a real JPEG through the whole decode path; classifier: zero
tensors at batch 1 and at max_batch_size), so the first requests do not pay
for lazy initialization and a model that cannot run fails at start.

Response cache: off. It keys on the request bytes, so it only pays when the
same image bytes come back, which photo traffic rarely does, and each entry
holds a copy of the output in server memory; turn it on per model
(`response_cache { enable: true }` plus `--cache-config local,size=...`) for
traffic that repeats.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from resnet_triton.build.manifest import Manifest
from resnet_triton.build.reference_outputs import reference_path
from resnet_triton.serving import dali
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.model_configs import (
    DEFAULTS,
    LABELS_FILE,
    ONNX_FILE,
    WARMUP_FILE,
    classifier_config,
    dali_preprocess_config,
    ensemble_config,
    fused_config,
    preprocess_config,
    pytorch_classifier_config,
    tensorrt_classifier_config,
)
from resnet_triton.serving.plans import Plans, published_plans
from resnet_triton.serving.probe import serialized_bytes, warmup_image
from resnet_triton.spec import ModelSpec, SpecError

# The stub's interpreter ignores PYTHONPATH; EXECUTION_ENV_PATH points it at the
# project's virtual environment, here relative to the committed repository.
DEFAULT_ENV_PATH = "$$TRITON_MODEL_DIRECTORY/../../.venv"
VERSION = "1"  # the one version folder of every model (version_dir)


def env_path_for(repo: Path) -> str:
    """EXECUTION_ENV_PATH naming this interpreter's environment from `repo`'s models.

    The relative default when it fits (so the committed repository renders the
    same on every checkout), the absolute path of the environment otherwise.
    """
    a_model_dir = str(Path(repo).resolve() / "any_model")
    relative = Path(DEFAULT_ENV_PATH.replace("$$TRITON_MODEL_DIRECTORY", a_model_dir))
    if relative.resolve() == Path(sys.prefix).resolve():
        return DEFAULT_ENV_PATH
    return str(Path(sys.prefix).resolve())


def version_dir(repo: Path, model: str) -> Path:
    """Where `model`'s files live: one version is served, a new model replaces the old."""
    return Path(repo) / model / VERSION


def renumber(repo: Path, version: int) -> list[str]:
    """Serve every model of `repo` as `version` instead of VERSION, so that Triton's
    answers, statistics and metrics name it (a kept store version); returns the models."""
    models = sorted(p.parent.name for p in Path(repo).glob(f"*/{VERSION}") if p.is_dir())
    if str(version) != VERSION:
        for model in models:
            version_dir(repo, model).rename(Path(repo) / model / str(version))
    return models


def served_dir(repo: Path, model: str) -> Path:
    """The version folder Triton serves of `model`: the highest number (its default policy,
    latest 1), VERSION unless the repository was renumbered."""
    numbers = [int(p.name) for p in (Path(repo) / model).glob("*") if p.name.isdigit()]
    return Path(repo) / model / str(max(numbers, default=int(VERSION)))


def served_version(repo: Path) -> str:
    """The one version folder every model of `repo` has (VERSION unless renumbered)."""
    found = {p.name for p in Path(repo).glob("*/*") if p.is_dir() and p.name.isdigit()}
    if len(found) != 1:
        raise SpecError(
            f"{repo}: expected one version folder in every model, found {sorted(found) or 'none'}"
        )
    return found.pop()


def model_home(spec: ModelSpec, serving: ServingConfig = DEFAULTS) -> str:
    """The model whose version folder holds the published model file."""
    return spec.names.ensemble if serving.layout == "fused" else spec.names.classifier


HEADER = (
    "# Generated from the model spec by `resnet-triton render`; edit the spec, not this file.\n"
)
MODEL_PY = (
    "# Generated by `resnet-triton render`. Triton loads TritonPythonModel from this file;\n"
    "# the code lives in the resnet_triton package.\n"
    "from resnet_triton.serving.triton_models import {cls} as TritonPythonModel  # noqa: F401\n"
)


def _pbtxt(config: mc.ModelConfig) -> str:
    return HEADER + text_format.MessageToString(config)


def _fused_files(
    spec: ModelSpec, env_path: str, target: str, serving: ServingConfig, labels: str
) -> dict[str, str | bytes]:
    """rendered_files of serving.layout fused: one model under the ensemble's name."""
    if target != "cpu":
        raise SpecError(
            f"serving.layout: fused runs ONNX Runtime on the CPU; the {target} target serves "
            "its classifier in the ensemble layout"
        )
    name = spec.names.ensemble
    return {
        f"{name}/config.pbtxt": _pbtxt(fused_config(spec, env_path, serving)),
        f"{name}/{LABELS_FILE}": labels,
        f"{name}/{VERSION}/model.py": MODEL_PY.format(cls="FusedModel"),
        f"{name}/warmup/{WARMUP_FILE}": serialized_bytes(warmup_image()),
    }


def _preprocess_files(
    spec: ModelSpec, env_path: str, target: str, serving: ServingConfig
) -> dict[str, str | bytes]:
    """The preprocess model's files, relative to its folder: DALI's or the Python one's."""
    if serving.preprocess_backend == "dali":
        return {
            "config.pbtxt": _pbtxt(dali_preprocess_config(spec, target, serving)),
            f"{VERSION}/{dali.MODEL_FILE}": dali.serialized(spec, target, serving.dali_threads),
            f"warmup/{WARMUP_FILE}": warmup_image(),  # raw bytes: the input is UINT8
        }
    return {
        "config.pbtxt": _pbtxt(preprocess_config(spec, env_path, serving)),
        f"{VERSION}/model.py": MODEL_PY.format(cls="PreprocessModel"),
        f"warmup/{WARMUP_FILE}": serialized_bytes(warmup_image()),
    }


def rendered_files(
    spec: ModelSpec,
    env_path: str = DEFAULT_ENV_PATH,
    target: str = "cpu",
    plans: Plans | None = None,
    serving: ServingConfig = DEFAULTS,
) -> dict[str, str | bytes]:
    """Relative path -> content of every generated file (text, or bytes for binaries).

    target "cpu": the classifier is ONNX Runtime in the Python backend.
    target "gpu": the classifier is `tensorrt_plan` serving `plans`.
    target "pytorch": the classifier is model.pt in Triton's PyTorch backend.
    """
    names = spec.names
    serving.validate(spec)
    labels = "".join(f"{label}\n" for label in spec.labels)
    if serving.layout == "fused":
        return _fused_files(spec, env_path, target, serving, labels)
    preprocess = _preprocess_files(spec, env_path, target, serving)
    files = {
        **{f"{names.preprocess}/{path}": content for path, content in preprocess.items()},
        f"{names.classifier}/{LABELS_FILE}": labels,
        f"{names.ensemble}/config.pbtxt": _pbtxt(ensemble_config(spec, serving, target)),
        f"{names.ensemble}/{LABELS_FILE}": labels,
        f"{names.ensemble}/{VERSION}/.gitkeep": "",
    }
    if target != "cpu" and serving.capture:
        runtime = {"gpu": "TensorRT", "pytorch": "TorchScript"}.get(target, target)
        raise SpecError(
            f"serving.capture: the {target} target's {runtime} classifier takes pixels only; "
            "capture live traffic on the cpu target"
        )
    if target == "gpu":
        files[f"{names.classifier}/config.pbtxt"] = _pbtxt(
            tensorrt_classifier_config(spec, plans or Plans(), serving)
        )
    elif target == "pytorch":
        files[f"{names.classifier}/config.pbtxt"] = _pbtxt(pytorch_classifier_config(spec, serving))
    else:
        files[f"{names.classifier}/config.pbtxt"] = _pbtxt(
            classifier_config(spec, env_path, serving)
        )
        files[f"{names.classifier}/{VERSION}/model.py"] = MODEL_PY.format(cls="OnnxClassifierModel")
    return dict(sorted(files.items()))


def render(
    spec: ModelSpec,
    repo: Path,
    env_path: str = DEFAULT_ENV_PATH,
    target: str = "cpu",
    plans: Plans | None = None,
    serving: ServingConfig = DEFAULTS,
) -> list[Path]:
    """Write the generated files into `repo`; returns their paths.

    The other preprocessing option's model file is removed, and so are the other
    layout's models (the published model file moves to this layout's home), so that a
    repository switched between options holds only what its configs load.
    """
    files = rendered_files(spec, env_path, target, plans, serving)
    _switch_layout(spec, Path(repo), serving)
    for option in ("model.py", dali.MODEL_FILE):
        relative = f"{spec.names.preprocess}/{VERSION}/{option}"
        if relative not in files:
            (repo / relative).unlink(missing_ok=True)
    written = []
    for relative, content in files.items():
        path = repo / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        written.append(path)
    return written


# What render writes, besides the published model files: removed with a layout.
GENERATED = ("config.pbtxt", LABELS_FILE, f"{VERSION}/model.py", f"{VERSION}/.gitkeep",
             f"{VERSION}/{dali.MODEL_FILE}", f"warmup/{WARMUP_FILE}")  # fmt: skip


def _switch_layout(spec: ModelSpec, repo: Path, serving: ServingConfig) -> None:
    """Move a published ONNX file to `serving`'s model home; remove the other layout's models."""
    names = spec.names
    home = model_home(spec, serving)
    other = names.classifier if home == names.ensemble else names.ensemble
    gone = [names.preprocess, names.classifier] if serving.layout == "fused" else []
    for model in gone:
        kept = {repo / model / path for path in GENERATED}
        left = [
            str(path.relative_to(repo)) for path in sorted((repo / model).rglob("*"))
            if path.is_file() and path not in kept and not path.name.startswith(ONNX_FILE)
            and "__pycache__" not in path.parts  # Python's, from the stub importing model.py
        ]  # fmt: skip
        if left:
            raise SpecError(
                f"serving.layout: fused serves no {model} model, but {repo} holds {left}; "
                "move them out, or render into another folder"
            )
    # A model just published at home (publish renders after copying) stays, and the other
    # home's model files all go: its reference outputs too, which the new model may lack.
    published = (version_dir(repo, home) / ONNX_FILE).exists()
    for path in sorted(version_dir(repo, other).glob(f"{ONNX_FILE}*")):
        moved = version_dir(repo, home) / path.name
        if published or moved.exists():
            path.unlink()
        else:
            moved.parent.mkdir(parents=True, exist_ok=True)
            path.replace(moved)
    # The other layout's generated files go; the ensemble's folder serves in both.
    stale = [(model, path) for model in gone for path in GENERATED]
    if serving.layout == "ensemble":
        fused_only = (f"{VERSION}/model.py", f"warmup/{WARMUP_FILE}")
        stale += [(names.ensemble, path) for path in fused_only]
    for model, path in stale:
        (repo / model / path).unlink(missing_ok=True)
        if path == f"{VERSION}/model.py":
            shutil.rmtree(repo / model / VERSION / "__pycache__", ignore_errors=True)
    for model in dict.fromkeys(model for model, _ in stale):
        for folder in [*sorted((repo / model).rglob("*"), reverse=True), repo / model]:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _install(source: Path, destination: Path) -> None:
    """Copied next to `destination` and renamed into place: a reader never sees half a file."""
    fd, partial = tempfile.mkstemp(dir=destination.parent, suffix=".partial")
    os.close(fd)
    shutil.copyfile(source, partial)
    # mkstemp makes the file 0600; the server may run as another user (uid 1000 in
    # the images) and must be able to read it.
    os.chmod(partial, 0o644)
    Path(partial).replace(destination)


def publish(
    artifact: Path,
    spec: ModelSpec,
    repo: Path,
    filename: str,
    manifest: Manifest,
    env_path: str = DEFAULT_ENV_PATH,
    target: str = "cpu",
    serving: ServingConfig = DEFAULTS,
) -> Path:
    """Install a gated model file with its manifest and render the configs for `target`.

    Call only after the accuracy gates passed. The file is copied next to its
    destination and renamed into place, so a reader never sees half a file.
    """
    folder = version_dir(repo, model_home(spec, serving))
    folder.mkdir(parents=True, exist_ok=True)
    destination = folder / filename
    # An INT8 model's reference outputs go with it (the server checks them at load);
    # a model without them must not keep its predecessor's.
    if reference_path(artifact).is_file():
        _install(reference_path(artifact), reference_path(destination))
    else:
        reference_path(destination).unlink(missing_ok=True)
    _install(artifact, destination)
    manifest.write(destination)
    plans = published_plans(folder) if target == "gpu" else None
    render(spec, repo, env_path, target, plans, serving)
    return destination


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt back into its protobuf message."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())
