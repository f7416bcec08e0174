"""The demo end to end, one epoch: the same code path as `make demo`."""

import json
from pathlib import Path

import pytest

from resnet_triton.serving.repository import read_config

pytestmark = pytest.mark.integration


def test_demo_writes_the_report(demo_run):
    report = demo_run.report
    saved = json.loads((demo_run.repository.parent / "demo" / "report.json").read_text())
    assert saved == report
    assert report["images"] == 360
    assert report["failed_requests"] == 0
    # Served and PyTorch run the same weights on the same pixels.
    assert report["served_vs_pytorch_agreement"] >= 0.99
    assert abs(report["served_top1_accuracy"] - report["pytorch_top1_accuracy"]) <= 0.01
    # The export gate's bound, as verify.py documents it, and the error well inside it
    # (FP32 summation order only); a model outside it fails (tests/build/test_command.py).
    assert report["polygraphy_tolerance"] == {"atol": 1e-4, "rtol": 1e-3}
    assert report["polygraphy_max_abs_error"] <= 1e-5
    assert set(report["stage_seconds"]) == {
        "data", "train", "build", "pytorch_reference", "server_start", "classify", "server_stop",
    }  # fmt: skip
    figures = report["training_figures"]
    assert set(figures) == {"curves", "confusion_matrix", "mistakes", "examples"}
    assert all(Path(path).is_file() for path in figures.values())
    assert report["val_mistakes"] == round(360 * (1 - report["pytorch_top1_accuracy"]))
    config = read_config(demo_run.repository / "resnet_ensemble" / "config.pbtxt")
    assert config.max_batch_size == 32
    last_lines = demo_run.output.splitlines()[-3:]
    assert [line.split()[0] for line in last_lines] == [
        "pytorch_top1_accuracy", "served_top1_accuracy", "served_vs_pytorch_agreement",
    ]  # fmt: skip
