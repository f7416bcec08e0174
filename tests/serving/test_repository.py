import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_triton.build.manifest import Manifest
from resnet_triton.digits import demo_spec
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.model_configs import (
    classifier_config,
    ensemble_config,
    preprocess_config,
)
from resnet_triton.serving.plans import TENSORRT_BACKEND_CONFIG, Plans, backend_flags
from resnet_triton.serving.repository import (
    DEFAULT_ENV_PATH,
    env_path_for,
    model_home,
    publish,
    read_config,
    render,
    rendered_files,
    renumber,
    served_version,
)
from resnet_triton.serving.resources import shm_needs
from resnet_triton.serving.serve import capturing_models
from resnet_triton.serving.server import TritonServer
from resnet_triton.spec import CAPTURE_INPUT, ModelSpec, Preprocessing, SpecError

COMMITTED = Path(__file__).parents[2] / "model_repository"


@pytest.mark.parametrize("relative", sorted(rendered_files(demo_spec())))
def test_committed_repository_equals_a_fresh_render(relative):
    expected = rendered_files(demo_spec())[relative]
    if isinstance(expected, str):
        expected = expected.encode()
    assert (COMMITTED / relative).read_bytes() == expected, (
        f"model_repository/{relative} is stale: run `resnet-triton render --demo`"
    )


def test_every_value_comes_from_the_spec(tmp_path):
    spec = ModelSpec(
        labels=("cat", "dog", "owl"),
        preprocessing=Preprocessing(resize_size=160, crop_size=128),
        max_batch_size=4,
    )
    serving = ServingConfig(
        preferred_batch_sizes=(2, 4), preprocess_queue_delay_us=500, classifier_queue_delay_us=0
    )
    render(spec, tmp_path, env_path="/opt/venv", serving=serving)
    pre = read_config(tmp_path / "preprocess" / "config.pbtxt")
    cls = read_config(tmp_path / "classifier" / "config.pbtxt")
    ens = read_config(tmp_path / "resnet_ensemble" / "config.pbtxt")
    assert pre == preprocess_config(spec, "/opt/venv", serving)
    assert cls == classifier_config(spec, "/opt/venv", serving)
    assert ens == ensemble_config(spec)
    for config in (pre, cls, ens):
        assert config.max_batch_size == 4
    for config, delay in ((pre, 500), (cls, 0)):
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
        assert config.dynamic_batching.max_queue_delay_microseconds == delay
        assert config.parameters["EXECUTION_ENV_PATH"].string_value == "/opt/venv"
    assert list(pre.output[0].dims) == list(cls.input[0].dims) == [3, 128, 128]
    assert pre.parameters["crop_size"].string_value == "128"
    assert list(cls.output[0].dims) == list(ens.output[0].dims) == [3]
    # Both score outputs carry the labels: class_count answers "score:index:label" from
    # the classifier (what NVIDIA's image_client.py asks) as from the ensemble.
    for model, config in (("classifier", cls), ("resnet_ensemble", ens)):
        assert config.output[0].label_filename == "labels.txt"
        assert (tmp_path / model / "labels.txt").read_text() == "cat\ndog\nowl\n"
    # The Python-backend models find their tensors by these names (triton_models.py).
    for config, tensors in ((pre, ("IMAGE", "PIXELS")), (cls, ("PIXELS", "SCORES"))):
        params = config.parameters
        assert (params["input_name"].string_value, params["output_name"].string_value) == tensors
        assert (config.input[0].name, config.output[0].name) == tensors
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["preprocess", "classifier"]
    assert steps[0].output_map["PIXELS"] == steps[1].input_map["PIXELS"]


def test_env_path_is_relative_only_where_it_resolves_to_this_venv(tmp_path):
    venv = Path(sys.prefix).resolve()
    project = tmp_path / "project"
    (project / "model_repository").mkdir(parents=True)
    (project / ".venv").symlink_to(venv)
    assert env_path_for(project / "model_repository") == DEFAULT_ENV_PATH
    assert env_path_for(tmp_path / "elsewhere") == str(venv)


def test_gpu_target_serves_tensorrt_plans_by_compute_capability(tmp_path):
    spec = ModelSpec(labels=("cat", "dog"))
    plans = Plans({"8.0": "model.sm80.plan", "9.0": "model.sm90.plan"})
    render(spec, tmp_path, env_path="/opt/venv", target="gpu", plans=plans)
    config = read_config(tmp_path / "classifier" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and not config.backend
    assert dict(config.cc_model_filenames) == plans.by_capability
    assert config.default_model_filename == ""  # no plan for GPUs of other capabilities
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert list(config.input[0].dims) == [3, 224, 224]
    assert config.output[0].label_filename == "labels.txt"
    assert (tmp_path / "classifier" / "labels.txt").read_text() == "cat\ndog\n"
    assert not (tmp_path / "classifier" / "1" / "model.py").exists()
    # The ensemble and the preprocess model are the same for both targets.
    cpu = rendered_files(spec, "/opt/venv", "cpu")
    gpu = rendered_files(spec, "/opt/venv", "gpu", plans)
    shared = [k for k in cpu if not k.startswith("classifier/")]
    assert all(cpu[k] == gpu[k] for k in shared) and len(shared) == 6
    with pytest.raises(SpecError, match="the gpu target's TensorRT classifier takes pixels"):
        rendered_files(spec, "/opt/venv", "gpu", plans, ServingConfig(capture=True))


def test_capture_passes_the_classifier_the_encoded_images_at_a_cost_in_shm(tmp_path):
    spec = ModelSpec(labels=("cat", "dog"))
    render(spec, tmp_path / "off")
    render(spec, tmp_path / "on", serving=ServingConfig(capture=True))
    steps = read_config(tmp_path / "on" / "resnet_ensemble" / "config.pbtxt")
    assert dict(steps.ensemble_scheduling.step[1].input_map) == {
        "PIXELS": "pixels", "IMAGE": "IMAGE",
    }  # fmt: skip
    classifier = read_config(tmp_path / "on" / "classifier" / "config.pbtxt")
    image = classifier.input[1]
    assert (image.name, image.optional, list(image.dims)) == ("IMAGE", True, [1])
    assert classifier.parameters[CAPTURE_INPUT].string_value == "IMAGE"
    assert capturing_models(tmp_path / "on") == ["classifier"]
    assert capturing_models(tmp_path / "off") == []
    off = read_config(tmp_path / "off" / "classifier" / "config.pbtxt")
    assert [i.name for i in off.input] == ["PIXELS"] and CAPTURE_INPUT not in off.parameters
    # The classifier's largest batch of images joins the /dev/shm it needs.
    extra = shm_needs(tmp_path / "on")["classifier"] - shm_needs(tmp_path / "off")["classifier"]
    assert extra == spec.max_batch_size * (4 + spec.preprocessing.max_bytes)
    with pytest.raises(SpecError, match="serving.capture: the classifier captures"):
        ServingConfig(capture=True, preprocess_backend="dali").validate(spec)
    fused = rendered_files(spec, serving=ServingConfig(layout="fused"))[
        "resnet_ensemble/config.pbtxt"
    ]
    assert 'key: "capture_input"' in fused  # the fused model has the images: no setting


def publish_plan(repo: Path, tmp_path: Path, capability: str, **flags) -> str:
    """A stand-in plan file (no TensorRT here) published with a manifest like build's."""
    artifact = tmp_path / "candidate.plan"
    artifact.write_bytes(b"stand-in for a TensorRT plan")
    name = f"model.sm{capability.replace('.', '')}.plan"
    manifest = Manifest(
        "hash", {"flags": flags}, "fp16", "gpu", "sha", compute_capability=capability
    )
    publish(artifact, ModelSpec(labels=("cat", "dog")), repo, name, manifest, "/opt/venv", "gpu")
    return name


def test_a_hardware_compatible_plan_serves_every_gpu_without_its_own(tmp_path):
    repo = tmp_path / "repo"
    sm90 = publish_plan(repo, tmp_path, "9.0", hardware_compatible=False)
    config = read_config(repo / "classifier" / "config.pbtxt")
    assert dict(config.cc_model_filenames) == {"9.0": sm90}
    assert config.default_model_filename == ""
    sm86 = publish_plan(repo, tmp_path, "8.6", hardware_compatible=True)
    config = read_config(repo / "classifier" / "config.pbtxt")
    assert dict(config.cc_model_filenames) == {"8.6": sm86, "9.0": sm90}
    # An L4 (8.9) or A100 (8.0) finds the Ampere-plus plan instead of a missing model.plan.
    assert config.default_model_filename == sm86


def test_version_compatible_plans_get_the_tensorrt_backend_flag(tmp_path):
    repo = tmp_path / "repo"
    publish_plan(repo, tmp_path, "9.0", version_compatible=False)
    assert backend_flags(repo) == []
    assert TENSORRT_BACKEND_CONFIG not in TritonServer(repo).command
    publish_plan(repo, tmp_path, "8.0", version_compatible=True)
    assert backend_flags(repo) == ["--backend-config=tensorrt,version-compatible=true"]
    ngc = Path("/opt/tritonserver/bin/tritonserver")
    command = TritonServer(repo, binary=ngc).command
    assert command[0] == str(ngc) and TENSORRT_BACKEND_CONFIG in command
    assert not any(flag.startswith("--backend-directory") for flag in command)  # the image's own


def test_served_code_imports_only_what_the_serving_images_install(tmp_path):
    """Both serving images install docker/requirements-serving.txt: no PyTorch, no YAML."""
    (tmp_path / "triton_python_backend_utils.py").write_text("")  # Triton provides it
    script = (
        "import sys; import resnet_triton.serving.triton_models, resnet_triton.serving.probe, "
        "resnet_triton.serving.serve; print(' '.join(sorted(m for m in ('torch', 'torchvision', "
        "'polygraphy', 'sklearn', 'yaml', 'matplotlib') if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    root = Path(__file__).parents[2]
    requirements = (root / "docker" / "requirements-serving.txt").read_text()
    for package in ("numpy==", "pillow==", "onnxruntime==", "tritonclient[grpc,http]=="):
        assert f"\n{package}" in requirements, package
    triton_stage = (root / "Dockerfile").read_text().split(" AS triton")[1].split("FROM ")[0]
    assert "-r /tmp/requirements-serving.txt" in triton_stage
    assert "--no-deps" in triton_stage


FUSED = ServingConfig(layout="fused")


def test_fused_layout_serves_the_ensembles_contract_from_one_python_model(tmp_path):
    spec = demo_spec()
    files = rendered_files(spec, serving=FUSED)
    assert sorted(files) == [
        "resnet_ensemble/1/model.py", "resnet_ensemble/config.pbtxt",
        "resnet_ensemble/labels.txt", "resnet_ensemble/warmup/image",
    ]  # fmt: skip
    assert "import FusedModel as TritonPythonModel" in files["resnet_ensemble/1/model.py"]
    render(spec, tmp_path, serving=FUSED)
    fused = read_config(tmp_path / "resnet_ensemble" / "config.pbtxt")
    ensemble = ensemble_config(spec)
    assert (fused.name, fused.backend, fused.max_batch_size) == (
        ensemble.name,
        "python",
        spec.max_batch_size,
    )
    assert list(fused.input) == list(ensemble.input)  # IMAGE, TYPE_STRING [1]
    assert list(fused.output) == list(ensemble.output)  # SCORES with the labels
    assert [g.count for g in fused.instance_group] == [2]
    assert list(fused.dynamic_batching.preferred_batch_size) == [2]
    params = {k: v.string_value for k, v in fused.parameters.items()}
    assert params["onnx_file"] == "model.onnx"
    assert params["max_bytes"] == str(spec.preprocessing.max_bytes)
    assert params["input_name"] == "IMAGE" and params["output_name"] == "SCORES"
    assert [(w.name, w.batch_size) for w in fused.model_warmup] == [
        ("real photo, batch 1", 1), ("real photo, batch 32", 32)
    ]  # fmt: skip
    assert model_home(spec, FUSED) == "resnet_ensemble"
    assert model_home(spec) == "classifier"


def test_fused_layout_refuses_the_gpu_target():
    with pytest.raises(SpecError, match="serving.layout: fused runs ONNX Runtime on the CPU"):
        rendered_files(demo_spec(), target="gpu", serving=FUSED)


def test_switching_layouts_moves_the_published_model_and_drops_the_other_models(tmp_path):
    spec = demo_spec()
    render(spec, tmp_path)
    published = tmp_path / "classifier" / "1" / "model.onnx"
    published.write_bytes(b"onnx")
    Path(f"{published}.manifest.json").write_text("{}")
    cache = tmp_path / "classifier" / "1" / "__pycache__" / "model.cpython-311.pyc"
    cache.parent.mkdir()
    cache.write_bytes(b"")  # what the stub's import leaves

    render(spec, tmp_path, serving=FUSED)
    assert files_in(tmp_path) == [
        "resnet_ensemble/1/.gitkeep", "resnet_ensemble/1/model.onnx",
        "resnet_ensemble/1/model.onnx.manifest.json", "resnet_ensemble/1/model.py",
        "resnet_ensemble/config.pbtxt", "resnet_ensemble/labels.txt",
        "resnet_ensemble/warmup/image",
    ]  # fmt: skip
    assert (tmp_path / "resnet_ensemble" / "1" / "model.onnx").read_bytes() == b"onnx"

    render(spec, tmp_path)
    published_files = ["classifier/1/model.onnx", "classifier/1/model.onnx.manifest.json"]
    assert files_in(tmp_path) == sorted([*rendered_files(spec), *published_files])
    assert published.read_bytes() == b"onnx"


def test_a_file_the_fused_layout_would_not_serve_stops_the_switch(tmp_path):
    spec = demo_spec()
    render(spec, tmp_path)
    plan = tmp_path / "classifier" / "1" / "model.sm90.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(SpecError) as info:
        render(spec, tmp_path, serving=FUSED)
    assert str(info.value) == (
        f"serving.layout: fused serves no classifier model, but {tmp_path} holds "
        "['classifier/1/model.sm90.plan']; move them out, or render into another folder"
    )
    assert plan.read_bytes() == b"plan"
    assert (tmp_path / "preprocess" / "config.pbtxt").is_file()  # nothing was changed


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_model_published_in_the_fused_layout_replaces_the_ensembles(tmp_path):
    spec = demo_spec()
    render(spec, tmp_path)
    old = tmp_path / "classifier" / "1" / "model.onnx"
    old.write_bytes(b"old model")
    artifact = tmp_path / "new.onnx"
    artifact.write_bytes(b"new model")
    manifest = Manifest("hash", {}, "fp32", "cpu", "sha")
    destination = publish(
        artifact, spec, tmp_path, "model.onnx", manifest, DEFAULT_ENV_PATH, serving=FUSED
    )
    assert destination == tmp_path / "resnet_ensemble" / "1" / "model.onnx"
    assert destination.read_bytes() == b"new model"
    assert not (tmp_path / "classifier").exists()


def test_a_renumbered_repository_serves_every_model_as_that_version(tmp_path):
    spec = demo_spec()
    render(spec, tmp_path)
    (tmp_path / "classifier" / "1" / "model.onnx").write_bytes(b"onnx")
    assert served_version(tmp_path) == "1"
    assert renumber(tmp_path, 7) == ["classifier", "preprocess", "resnet_ensemble"]
    assert served_version(tmp_path) == "7"
    assert (tmp_path / "classifier" / "7" / "model.onnx").read_bytes() == b"onnx"
    assert sorted(p.name for p in tmp_path.glob("*/1")) == []
    (tmp_path / "preprocess" / "2").mkdir()
    with pytest.raises(
        SpecError, match=r"expected one version folder in every model, found \['2', '7'\]"
    ):
        served_version(tmp_path)
