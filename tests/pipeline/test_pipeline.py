"""The engine pipeline: its config, the container smoke server, and the local dry run.

The dry run is CI's engine job for a CPU target on this machine: the same
steps, gates, manifest and skip-when-unchanged logic, with the ONNX (FP32 and
INT8) path in place of TensorRT, and the real Triton server for the smoke test.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import damage, snapshot

from resnet_triton import cli, pipeline
from resnet_triton.build import command as build
from resnet_triton.build import engine
from resnet_triton.build.manifest import Manifest, file_sha256
from resnet_triton.client import Classifier
from resnet_triton.errors import UserError
from resnet_triton.serving.container import ContainerTritonServer
from resnet_triton.serving.repository import DEFAULT_ENV_PATH, read_config
from resnet_triton.serving.server import Ports, TritonServer

ROOT = Path(__file__).parents[2]


def write_config(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def dry_run_config(tmp_path, checkpoint, digits, **changes) -> pipeline.PipelineConfig:
    fields = {
        "checkpoint": str(checkpoint),
        "images": str(digits / "val"),
        "calibration": str(digits / "train"),
        "holdout": str(digits / "val"),
        "holdout_images": 120,
        "min_accuracy": 0.9,
        "store": str(tmp_path / "store"),
        "work_dir": str(tmp_path / "work"),
        "targets": {"cpu": {"target": "cpu", "precision": "fp32"}},
        **changes,
    }
    return pipeline.PipelineConfig.load(write_config(tmp_path / "pipeline.yaml", **fields))


MINIMAL = {"checkpoint": "c.pt", "images": "val", "holdout": "val"}
GPU = {"target": "gpu", "precision": "fp16", "runs_on": ["self-hosted", "gpu-h100"]}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"images": "val", "holdout": "val", "targets": {}}, "field 'checkpoint' is required"),
        ({**MINIMAL, "targets": {"t": {"target": "cpu", "precision": "fp32"}}, "stor": "x"},
         "unknown field(s) ['stor']"),
        ({**MINIMAL, "targets": {"t": {"target": "cpu", "precision": "fp16"}}},
         "unknown targets.t.precision 'fp16'; choose one of fp32, int8"),
        ({**MINIMAL, "targets": {"t": {"target": "tpu", "precision": "fp32"}}},
         "unknown targets.t.target 'tpu'; choose one of cpu, gpu"),
        ({**MINIMAL, "targets": {"t": {"target": "gpu", "precision": "fp16", "runs_on": ["x"]}}},
         "targets.t.runs_on must name a self-hosted GPU runner"),
        ({**MINIMAL, "targets": {"t": {"target": "cpu", "precision": "fp32", "gpu": "a100"}}},
         "unknown field(s) ['gpu'] in targets.t"),
        ({**MINIMAL, "targets": {"a": {"target": "cpu", "precision": "fp32"},
                                 "b": {"target": "cpu", "precision": "int8"}}},
         "two targets would publish the same model file"),
        ({**MINIMAL, "targets": {"a": {**GPU, "compute_capability": 8.0},
                                 "b": {**GPU, "compute_capability": "8.0"}}},
         "two targets would publish the same model file"),
        ({**MINIMAL, "targets": {"t": {"target": "gpu", "precision": "fp16",
                                       "runs_on": ["self-hosted"]}}},
         "targets.t.compute_capability (e.g. '9.0' for H100) is required for gpu targets"),
        ({**MINIMAL, "targets": {"t": {"target": "cpu", "precision": "fp32",
                                       "compute_capability": "9.0"}}},
         "meaningless for cpu ones"),
        ({**MINIMAL, "targets": ["cpu"]}, "targets must map names to targets"),
        ({**MINIMAL, "targets": {"t": {"target": "cpu", "precision": "fp32"}},
          "min_accuracy": 97}, "min_accuracy must be within [0, 1]"),
        ({**MINIMAL, "targets": {"t": {"target": "cpu", "precision": "fp32"}},
          "holdout_images": 0}, "holdout_images must be a positive integer"),
        ({**MINIMAL, "targets": {"t": {"target": "cpu", "precision": "fp32"}},
          "store_uri": "ftp://x/y"}, "store_uri ftp://x/y is not s3://, gs:// or a folder"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_field(tmp_path, fields, message):
    with pytest.raises(UserError) as info:
        pipeline.PipelineConfig.load(write_config(tmp_path / "p.yaml", **fields))
    assert message in str(info.value)


def test_committed_config_reads_everything_from_the_model_store(monkeypatch, capsys):
    shipped = ROOT / "build" / "pipeline.yaml"
    monkeypatch.delenv("MODEL_STORE_URI", raising=False)
    assert cli.main(["pipeline", "matrix", "--config", str(shipped)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: pipeline config {shipped}: checkpoint uses ${{MODEL_STORE_URI}}, which is not "
        "set: export MODEL_STORE_URI (in the engine workflow, the repository variable "
        "MODEL_STORE_URI; build/README.md)"
    )
    monkeypatch.setenv("MODEL_STORE_URI", "s3://acme-models/resnet")
    config = pipeline.PipelineConfig.load(shipped)
    assert (config.checkpoint, config.images, config.calibration, config.holdout) == (
        "s3://acme-models/resnet/inputs/checkpoint.pt", "s3://acme-models/resnet/inputs/val",
        "s3://acme-models/resnet/inputs/train", "s3://acme-models/resnet/inputs/val",
    )  # fmt: skip
    assert config.store_uri == "s3://acme-models/resnet/repositories"


def test_committed_config_gives_the_workflow_matrix(monkeypatch, capsys):
    monkeypatch.setenv("MODEL_STORE_URI", "gs://acme-models/resnet")
    assert cli.main(["pipeline", "matrix", "--config", str(ROOT / "build/pipeline.yaml")]) == 0
    entries = json.loads(capsys.readouterr().out)["include"]
    assert {e["target"]: e["kind"] for e in entries} == {
        "cpu-fp32": "cpu",
        "a100-fp16": "gpu",
        "h100-fp16": "gpu",
    }
    for entry in entries:
        hosted = entry["runs-on"] == ["ubuntu-latest"]
        assert hosted == (entry["kind"] == "cpu")  # GPU targets on self-hosted GPU runners
    assert {e["runs-on"][-1] for e in entries if e["kind"] == "gpu"} == {"gpu-a100", "gpu-h100"}


def test_a_runner_with_another_gpu_is_refused(monkeypatch, tmp_path, checkpoint, digits):
    h100 = {"h100": {**GPU, "compute_capability": 9.0}}
    config = dry_run_config(tmp_path, checkpoint, digits, targets=h100)
    assert config.targets["h100"].compute_capability == "9.0"
    # No GPU here: stand in for a runner labelled gpu-h100 that holds an A100.
    a100 = engine.Gpu("NVIDIA A100-SXM4-80GB", "8.0")
    monkeypatch.setattr(engine, "gpu_status", lambda: (a100, "an A100"))
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.build_step(config, "h100")
    assert str(info.value) == (
        "target h100 expects compute capability 9.0, but this runner has "
        "NVIDIA A100-SXM4-80GB (8.0): check its labels"
    )
    assert not (tmp_path / "store").exists()


def test_steps_need_a_known_target(tmp_path, capsys):
    targets = {"t": {"target": "cpu", "precision": "fp32"}}
    config = write_config(tmp_path / "p.yaml", **MINIMAL, targets=targets)
    assert cli.main(["pipeline", "build", "--config", str(config)]) == 1
    assert "`pipeline build` needs --target, one of: t" in capsys.readouterr().err
    assert cli.main(["pipeline", "smoke", "--config", str(config), "--target", "x"]) == 1
    assert "unknown target 'x'; choose one of t" in capsys.readouterr().err


def fake_command(folder: Path, name: str, calls: Path) -> None:
    """An executable `name` in `folder` that records its arguments in `calls`."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f'#!/bin/sh\necho {name} "$@" >> {calls}\n')
    (folder / name).chmod(0o755)


def test_remote_inputs_and_store_are_copied_by_pull_and_push(monkeypatch, tmp_path):
    cpu = {"t": {"target": "cpu", "precision": "fp32"}}
    config = pipeline.PipelineConfig.load(write_config(
        tmp_path / "p.yaml", checkpoint="s3://models/ckpt.pt", images="s3://data/val/",
        holdout="gs://data/holdout", targets=cpu, store=str(tmp_path / "store"),
        store_uri="s3://models/store", work_dir=str(tmp_path / "work"),
    ))  # fmt: skip
    inputs = tmp_path / "work" / "t" / "inputs"
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.build_step(config, "t")  # build never downloads
    assert str(info.value) == (
        f"checkpoint {inputs}/checkpoint/ckpt.pt does not exist: "
        "run `pipeline pull --target t` first"
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pipeline.PipelineError, match="s3://models/store needs the `aws` command"):
        pipeline.pull_step(config, "t")

    calls, bin_dir = tmp_path / "calls", tmp_path / "bin"
    for name in ("aws", "gcloud"):
        fake_command(bin_dir, name, calls)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    pipeline.pull_step(config, "t")
    pipeline.sync_store(config, "push")
    store = tmp_path / "store"
    assert calls.read_text().splitlines() == [
        f"aws s3 sync --exclude *__pycache__* s3://models/store {store}",
        f"aws s3 cp s3://models/ckpt.pt {inputs}/checkpoint/ckpt.pt",
        f"aws s3 sync --exclude *__pycache__* s3://data/val/ {inputs}/images/val",
        "gcloud storage rsync -r --exclude .*__pycache__.* gs://data/holdout "
        f"{inputs}/holdout/holdout",
        f"aws s3 sync --exclude *__pycache__* {store} s3://models/store",
    ]


def test_a_folder_store_is_copied_by_pull_and_push(tmp_path):
    shared = tmp_path / "share" / "repositories"  # a mounted share, say
    config = pipeline.PipelineConfig.load(write_config(
        tmp_path / "p.yaml", **MINIMAL, targets={"t": {"target": "cpu", "precision": "fp32"}},
        store=str(tmp_path / "store"), store_uri=str(shared),
    ))  # fmt: skip
    pipeline.sync_store(config, "pull")  # nothing published yet
    assert list((tmp_path / "store").iterdir()) == []
    (tmp_path / "store" / "cpu" / "m" / "__pycache__").mkdir(parents=True)
    (tmp_path / "store" / "cpu" / "m" / "config.pbtxt").write_text("name: 'm'")
    pipeline.sync_store(config, "push")
    assert sorted(p.name for p in (shared / "cpu" / "m").iterdir()) == ["config.pbtxt"]
    shutil.rmtree(tmp_path / "store")
    pipeline.sync_store(config, "pull")
    assert (tmp_path / "store" / "cpu" / "m" / "config.pbtxt").read_text() == "name: 'm'"


def test_bad_or_missing_inputs_are_named(tmp_path):
    path = write_config(
        tmp_path / "p.yaml", **{**MINIMAL, "checkpoint": "https://x/c.pt"},
        targets={"t": {"target": "cpu", "precision": "fp32"}},
    )  # fmt: skip
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.PipelineConfig.load(path)
    assert str(info.value).endswith("checkpoint https://x/c.pt is not a local path, s3:// or gs://")
    config = pipeline.PipelineConfig.load(write_config(
        tmp_path / "p.yaml", **MINIMAL, targets={"t": {"target": "cpu", "precision": "fp32"}},
        work_dir=str(tmp_path / "w"),
    ))  # fmt: skip
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.build_step(config, "t")
    assert str(info.value) == (
        "checkpoint c.pt does not exist: fix the pipeline config's field 'checkpoint'"
    )


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_container_smoke_server_is_the_compose_service(target, tmp_path):
    server = ContainerTritonServer(tmp_path, Ports(18000, 18001, 18002), admin_key="k",
                                   target=target, compose_dir=ROOT)  # fmt: skip
    files = [f"--file={ROOT / 'docker-compose.yml'}"]
    if target == "gpu":
        files.append(f"--file={ROOT / 'docker-compose.gpu.yml'}")
    if (ROOT / "docker-compose.override.yml").is_file():  # this machine's local base image
        files.append(f"--file={ROOT / 'docker-compose.override.yml'}")
    assert server.command == [
        "docker", "compose", f"--project-name={server.project}", *files,
        "up", "--build", "--no-deps", "--exit-code-from=tritonserver", "tritonserver",
    ]  # fmt: skip
    env = server.environment()
    assert (env["HTTP_PORT"], env["GRPC_PORT"], env["METRICS_PORT"]) == ("18000", "18001", "18002")
    assert (env["MODEL_REPOSITORY"], env["TRITON_ADMIN_KEY"]) == (str(tmp_path.resolve()), "k")
    assert env["TRITON_BIND_ADDRESS"] == "127.0.0.1"
    with pytest.raises(UserError, match=r"unknown container target 'tpu'; choose from \('cpu'"):
        ContainerTritonServer(tmp_path, target="tpu")


def test_container_server_failures_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    server = ContainerTritonServer(tmp_path, Ports.free(), compose_dir=ROOT)
    with pytest.raises(UserError, match="needs the docker command, not found here"):
        server.start()
    # A docker without its daemon: the client exits, and the error names why.
    calls = tmp_path / "calls"
    fake_command(tmp_path / "bin", "docker", calls)
    docker = tmp_path / "bin" / "docker"
    docker.write_text(
        docker.read_text() + "echo 'Cannot connect to the Docker daemon' >&2\nexit 125\n"
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    elsewhere = ContainerTritonServer(tmp_path, Ports.free(), compose_dir=tmp_path)
    with pytest.raises(UserError, match="has no docker-compose.yml; run from the repository root"):
        elsewhere.start()
    server = ContainerTritonServer(
        tmp_path, Ports.free(), log_path=tmp_path / "log", compose_dir=ROOT
    )
    with server, pytest.raises(UserError) as info:
        server.wait_ready(["resnet_ensemble"], timeout=30)
    assert "exited with code 125" in str(info.value)
    assert "Cannot connect to the Docker daemon" in str(info.value)
    down = calls.read_text().splitlines()[-1]  # what it made is removed
    assert down.startswith(f"docker compose --project-name={server.project} ")
    assert down.endswith(" down --volumes --timeout=5")


def test_publish_refuses_a_build_without_a_passed_smoke_test(tmp_path, checkpoint, digits):
    config = dry_run_config(tmp_path, checkpoint, digits)
    with pytest.raises(pipeline.PipelineError, match="status.json is missing"):
        pipeline.publish_step(config, "cpu")
    stage = pipeline.Stage(config.work_dir / "cpu", {"changed": True, "content_hash": "a"})
    stage.root.mkdir(parents=True)
    stage.save()
    with pytest.raises(pipeline.PipelineError, match="has not passed `pipeline smoke`"):
        pipeline.publish_step(config, "cpu")
    assert not config.store.exists()


def relabel(checkpoint: Path, out: Path) -> Path:
    """The same weights with the classifier's rows shifted by one: every label is wrong."""
    payload = torch.load(checkpoint, weights_only=False)
    for key, value in payload["state_dict"].items():
        if key.startswith("fc.") and value.shape[0] == len(payload["spec"]["labels"]):
            payload["state_dict"][key] = value.roll(1, dims=0)
    torch.save(payload, out)
    return out


@pytest.mark.integration
def test_local_dry_run(tmp_path, checkpoint, digits, capsys):
    """One store through a target's life, each phase on what the one before left."""
    store = tmp_path / "store" / "cpu"
    published = store / "classifier" / "1" / "model.onnx"
    _first_publish(tmp_path, checkpoint, digits, store, published)
    _served_from_the_store(tmp_path, digits, store)
    first = snapshot(store)  # with the __pycache__ that serving wrote
    _nothing_changed(tmp_path, store, first, capsys)
    _new_serving_settings(tmp_path, checkpoint, digits, store, published, capsys)
    # A damaged published model, what the weekly run is for, is rebuilt.
    published.write_bytes(published.read_bytes()[:-10])
    config = dry_run_config(tmp_path, checkpoint, digits)
    assert pipeline.build_step(config, "cpu").status["changed"]
    stage = _another_precision(tmp_path, checkpoint, digits, store, published)
    int8 = snapshot(store)
    assert int8 != first
    _refused_builds_leave_the_store(tmp_path, checkpoint, digits, stage, store, int8)


def _first_publish(tmp_path, checkpoint, digits, store, published):
    """Built, gated, smoke-tested through Triton, published; kept as version 1."""
    config = dry_run_config(tmp_path, checkpoint, digits)
    pipeline.build_step(config, "cpu")
    stage = pipeline.smoke_step(config, "cpu")
    smoke = stage.status["smoke"]
    assert smoke["passed"] and smoke["images"] == 120 and smoke["failed_requests"] == 0
    assert smoke["top1_accuracy"] >= 0.9
    assert pipeline.publish_step(config, "cpu") == published
    manifest = Manifest.read(published)
    assert manifest.content_hash == stage.status["content_hash"]
    assert manifest.precision == "fp32"
    versions = pipeline.versions_dir(store.parent, "cpu")
    assert pipeline.published_versions(store.parent, "cpu") == [1]
    assert snapshot(versions / "1") == {versions / "1" / p.relative_to(store): data
                                        for p, data in snapshot(store).items()}  # fmt: skip
    record = json.loads((versions / "1.json").read_text())
    assert (record["version"], record["content_hash"], record["precision"]) == (
        1,
        stage.status["content_hash"],
        "fp32",
    )
    assert record["model_file"] == "classifier/1/model.onnx"
    preprocess = read_config(store / "preprocess" / "config.pbtxt")
    assert preprocess.parameters["EXECUTION_ENV_PATH"].string_value == DEFAULT_ENV_PATH


def _served_from_the_store(tmp_path, digits, store):
    """The store's repository is what Triton serves: here with this environment where
    the Triton image has its own (<repository>/../.venv)."""
    (store.parent / ".venv").symlink_to(sys.prefix)
    images = sorted((digits / "val").glob("*/*.png"))[::40]
    with TritonServer(
        store, Ports.free(), log_path=tmp_path / "store.log", exit_timeout_s=3
    ) as server:
        server.wait_ready(["resnet_ensemble"])
        with Classifier(f"localhost:{server.ports.grpc}", "grpc") as client:
            results = client.classify(images)
    assert all(r.ok for r in results) and len(results) == 9
    assert (
        sum(r.top1.label == path.parent.name for r, path in zip(results, images, strict=True)) >= 8
    )
    (store.parent / ".venv").unlink()


def _nothing_changed(tmp_path, store, first, capsys):
    """Skipped at build; smoke and publish have nothing to do."""
    capsys.readouterr()
    assert cli.main(["pipeline", "all", "--config", str(tmp_path / "pipeline.yaml"),
                     "--target", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "cpu: unchanged" in out and "no smoke test needed" in out
    assert "the store already holds this build; nothing to publish" in out
    assert snapshot(store) == first
    assert pipeline.published_versions(store.parent, "cpu") == [1]


def _new_serving_settings(tmp_path, checkpoint, digits, store, published, capsys):
    """A serving setting of the target changed: the same model, new configs, smoke-tested
    and published (version 2); nothing is retrained or rebuilt."""
    model = published.read_bytes()
    tuned = {"cpu": {"target": "cpu", "precision": "fp32", "serving": {"classifier_instances": 2}}}
    config = dry_run_config(tmp_path, checkpoint, digits, targets=tuned)
    capsys.readouterr()
    stage = pipeline.build_step(config, "cpu")
    assert stage.status["changed"] and "cpu: unchanged model, new serving configs" in (
        capsys.readouterr().out
    )
    pipeline.smoke_step(config, "cpu")
    pipeline.publish_step(config, "cpu")
    assert read_config(store / "classifier" / "config.pbtxt").instance_group[0].count == 2
    assert published.read_bytes() == model


def _another_precision(tmp_path, checkpoint, digits, store, published):
    """INT8: rebuilt, smoke-tested and published over the FP32 model as version 3, for a
    server that reads the store from s3:// itself (an absolute env path)."""
    int8_target = {"cpu": {"target": "cpu", "precision": "int8"}}
    config = dry_run_config(
        tmp_path, checkpoint, digits, targets=int8_target, env_path="/workspace/.venv"
    )
    stage = pipeline.build_step(config, "cpu")
    assert stage.status["changed"]
    pipeline.smoke_step(config, "cpu")
    pipeline.publish_step(config, "cpu")
    assert Manifest.read(published).precision == "int8"
    # The tuned configs were version 2, this model is 3; version 1 is still the first.
    versions = pipeline.versions_dir(store.parent, "cpu")
    assert pipeline.published_versions(store.parent, "cpu") == [1, 2, 3]
    record = json.loads((versions / "3.json").read_text())
    assert (record["precision"], record["model_file"]) == ("int8", "classifier/3/model.onnx")
    # Triton serves version 3 as version 3 of every model: answers say which they came from.
    assert sorted(p.relative_to(versions / "3").as_posix() for p in versions.glob("3/*/3")) == [
        "classifier/3", "preprocess/3", "resnet_ensemble/3"
    ]  # fmt: skip
    assert Manifest.read(versions / "3" / "classifier" / "3" / "model.onnx").precision == "int8"
    assert Manifest.read(versions / "1" / "classifier" / "1" / "model.onnx").precision == "fp32"
    for model in ("preprocess", "classifier"):
        params = read_config(store / model / "config.pbtxt").parameters
        assert params["EXECUTION_ENV_PATH"].string_value == "/workspace/.venv"
    return stage


def _refused_builds_leave_the_store(tmp_path, checkpoint, digits, stage, store, int8):
    # A damaged model fails its gate: no status to smoke-test or publish, store untouched.
    damage(stage.root / "build" / "model.fp32.onnx", tmp_path / "damaged.onnx")
    config = dry_run_config(tmp_path, checkpoint, digits, onnx=str(tmp_path / "damaged.onnx"))
    with pytest.raises(build.GateFailed, match="failed the export gate"):
        pipeline.build_step(config, "cpu")
    with pytest.raises(pipeline.PipelineError, match="status.json is missing"):
        pipeline.publish_step(config, "cpu")
    assert snapshot(store) == int8
    # Another model that converts faithfully but labels every image wrong passes the
    # gates and is stopped by the smoke test's accuracy check.
    wrong = relabel(checkpoint, tmp_path / "relabelled.pt")
    config = dry_run_config(tmp_path, wrong, digits)
    assert pipeline.build_step(config, "cpu").status["changed"]
    with pytest.raises(pipeline.PipelineError, match="below min_accuracy; nothing published"):
        pipeline.smoke_step(config, "cpu")
    with pytest.raises(pipeline.PipelineError, match="has not passed `pipeline smoke`"):
        pipeline.publish_step(config, "cpu")
    assert snapshot(store) == int8
    assert pipeline.published_versions(store.parent, "cpu") == [1, 2, 3]


def test_a_pinned_checkpoint_must_match(tmp_path, checkpoint, digits):
    config = dry_run_config(tmp_path, checkpoint, digits, checkpoint_sha256="0" * 64)
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.build_step(config, "cpu")
    assert str(info.value) == (
        f"{checkpoint} has SHA-256 {file_sha256(checkpoint)}, not the pinned "
        f"checkpoint_sha256 {'0' * 64}"
    )
    assert not (tmp_path / "work" / "cpu" / "status.json").exists()
