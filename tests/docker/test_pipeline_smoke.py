"""The engine pipeline's `smoke --server docker`, for real: the staged CPU build served
by docker-compose.yml's tritonserver container, as CI's engine job runs it."""

import json
import re

import pytest
import yaml
from conftest import NAMES, ROOT, compose_leftovers

from resnet_triton import cli

pytestmark = pytest.mark.docker


def test_smoke_test_in_the_cpu_container(cpu_image, checkpoint, digits, tmp_path, monkeypatch):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "checkpoint": str(checkpoint), "images": str(digits / "val"),
        "holdout": str(digits / "val"), "holdout_images": 120, "min_accuracy": 0.9,
        "store": str(tmp_path / "store"), "work_dir": str(tmp_path / "work"),
        "targets": {"cpu": {"target": "cpu", "precision": "fp32"}},
    }))  # fmt: skip
    monkeypatch.chdir(ROOT)  # where docker-compose.yml is, as in CI
    common = ["--config", str(config), "--target", "cpu"]
    assert cli.main(["pipeline", "build", *common]) == 0
    assert cli.main(["pipeline", "smoke", *common, "--server", "docker"]) == 0

    stage = tmp_path / "work" / "cpu"
    smoke = json.loads((stage / "status.json").read_text())["smoke"]
    assert smoke["passed"] and smoke["server"] == "docker"
    assert (smoke["images"], smoke["failed_requests"]) == (120, 0)
    assert smoke["top1_accuracy"] >= 0.9
    log = (stage / "triton.log").read_text()  # the container's whole output
    assert f"ready: {NAMES.ensemble} on HTTP 127.0.0.1:18000" in log  # its supervising serve
    assert "tritonserver stopped (exit code 0)" in log
    # Nothing of its compose project (resnet-triton-<8 hex digits>) is left.
    smoke_projects = re.compile(r"resnet-triton-[0-9a-f]{8}")
    assert [found for found in compose_leftovers() if smoke_projects.fullmatch(found[1])] == []
