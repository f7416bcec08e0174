"""resnet-triton rollout's refusals that need no Docker (tests/docker/test_rollout.py
runs it on real replicas)."""

import fcntl
import tempfile
from pathlib import Path

import pytest

from resnet_triton import cli
from resnet_triton.build.manifest import Manifest, file_sha256, manifest_path
from resnet_triton.pipeline.rollout import (
    Rollout,
    RolloutError,
    describe,
    serving,
    store_version,
)
from resnet_triton.pipeline.store import keep_version


def test_a_store_version_is_found_or_named_missing(tmp_path):
    with pytest.raises(RolloutError, match=r"versions/cpu holds no published version"):
        store_version(tmp_path, "cpu", "latest")
    (tmp_path / "cpu" / "classifier" / "1").mkdir(parents=True)
    for _ in range(2):
        keep_version(tmp_path, "cpu", {})
    assert store_version(tmp_path, "cpu", "latest") == tmp_path / "versions" / "cpu" / "2"
    assert store_version(tmp_path, "cpu", "1") == tmp_path / "versions" / "cpu" / "1"
    with pytest.raises(
        RolloutError, match=r"^version 7 of cpu is not in the store .*; published: 1, 2$"
    ):
        store_version(tmp_path, "cpu", "7")


def test_a_folder_that_is_no_published_repository_is_refused_before_docker(tmp_path, capsys):
    with pytest.raises(RolloutError, match=r"model repository .*/nowhere does not exist"):
        Rollout("p", tmp_path).to(tmp_path / "nowhere")
    (tmp_path / "empty" / "classifier" / "3").mkdir(parents=True)
    with pytest.raises(RolloutError, match=r"/empty holds no published model \(no manifest\)"):
        describe(tmp_path / "empty")
    code = cli.main(["rollout", "--path", str(tmp_path / "nowhere"), "--images", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: model repository ")


def test_describe_names_the_served_version_and_content(tmp_path):
    model = tmp_path / "classifier" / "4" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"onnx")
    Manifest("ab" * 32, {}, "fp32", "cpu", file_sha256(model)).write(model)
    assert describe(tmp_path) == f"version 4, content {'ab' * 6}"
    manifest_path(model).write_text("{")  # damaged: the content is not known
    assert describe(tmp_path) == "version 4, content unknown"


def test_a_second_rollout_of_a_project_is_refused_while_one_runs(tmp_path):
    lock = Path(tempfile.gettempdir()) / "resnet-triton-rollout-locked-test.lock"
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write("4242")
        held.flush()
        with pytest.raises(
            RolloutError, match=r"another rollout of 'locked-test' is running \(pid 4242; "
        ):
            Rollout("locked-test", tmp_path).to(tmp_path)
    with pytest.raises(RolloutError, match=r"holds no published model"):  # free again
        Rollout("locked-test", tmp_path).to(tmp_path)
    lock.unlink()


def test_a_replica_serving_no_published_model_is_named_not_fatal(tmp_path):
    """The replicas compose started may mount any repository: rollout goes on."""
    (tmp_path / "classifier" / "1").mkdir(parents=True)
    assert serving(tmp_path) == f"unknown model: {tmp_path} holds no published model (no manifest)"
    with pytest.raises(RolloutError):
        describe(tmp_path)  # a rollout's target must be one
