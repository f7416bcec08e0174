"""perf/'s configurations come from the published model and the release pin, never copies:
the Model Analyzer config (rendered) and the FastAPI baseline's preprocessing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from conftest import PHOTOS

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import render
from resnet_triton.spec import ModelSpec, Preprocessing

ROOT = Path(__file__).parent.parent
PERF = ROOT / "perf"


def test_model_analyzer_config_is_rendered_from_the_repository_and_the_pin(tmp_path):
    spec = ModelSpec(labels=("a", "b"), max_batch_size=8,
                     preprocessing=Preprocessing(resize_size=160, crop_size=128))  # fmt: skip
    render(spec, tmp_path / "repo", "/opt/venv", serving=ServingConfig(preferred_batch_sizes=(8,)))
    out = tmp_path / "config.yaml"
    result = subprocess.run(
        [sys.executable, str(PERF / "model_analyzer.py"), "--repository", str(tmp_path / "repo"),
         "--out", str(out)], capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(out.read_text())
    release = re.search(r"^TRITON_RELEASE=(\S+)$", (ROOT / ".env").read_text(), re.M)[1]
    assert config["triton_docker_image"] == f"nvcr.io/nvidia/tritonserver:{release}-py3"
    assert config["run_config_search_max_model_batch_size"] == 8
    assert (
        config["profile_models"]["classifier"]["perf_analyzer_flags"]["shape"] == "PIXELS:3,128,128"
    )


def test_the_baseline_preprocesses_with_the_models_spec(repository):
    """Its tutorial-style PIL code, with the spec's sizes from the ONNX metadata,
    matches the shared preprocessing within resampling differences."""
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import baseline_app as b; "
        "np.save(sys.argv[2], np.concatenate([b.preprocess(open(p, 'rb').read()) "
        "for p in sys.argv[3:]]))"
    )
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"baseline-{os.getpid()}.npy"
    model = repository / "classifier" / "1" / "model.onnx"
    env = {**os.environ, "ONNX_MODEL": str(model)}
    photos = [str(p) for p in PHOTOS[:3]]
    result = subprocess.run([sys.executable, "-c", script, str(PERF), str(out), *photos],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    pixels = np.load(out)
    out.unlink()
    prep = spec_from_onnx(model).preprocessing
    assert prep.crop_size != 224  # the test model's own size, not the tutorials' 224
    reference = pixels_from_files(photos, prep)
    assert pixels.shape == reference.shape == (3, 3, prep.crop_size, prep.crop_size)
    assert pixels.dtype == reference.dtype == np.uint8
    levels = np.abs(pixels.astype(int) - reference)
    assert levels.mean() < 0.2 and levels.max() <= 2  # same crop; resize within the crop


def test_the_report_holds_each_run_to_its_targets(monkeypatch):
    monkeypatch.syspath_prepend(str(PERF))
    import report

    def rows(*cells):
        return [{"concurrency": c, "throughput_img_s": t, "p50_ms": p50, "p99_ms": p99}
                for c, t, p50, p99 in cells]  # fmt: skip

    fp32 = {"precision": "fp32", "ratios": {"ensemble_over_fair_ceiling": 0.96},
            "ensemble": rows((1, 50, 18, 30), (4, 70, 55, 80), (8, 70, 110, 160)),
            "baseline": rows((1, 48, 19, 25), (4, 50, 80, 170), (8, 50, 160, 310))}  # fmt: skip
    assert [met for *_, met in report.targets(fp32, None)] == [True, True, True, False]
    # c4: 1.40x with p99 80 <= 170 / 2; c8: 1.40x, but p99 160 > 310 / 2.
    int8 = {**fp32, "precision": "int8", "ratios": {"ensemble_over_fair_ceiling": 0.9},
            "ensemble": rows((1, 60, 20, 30), (4, 150, 25, 40), (8, 160, 50, 70))}  # fmt: skip
    checks = report.targets(int8, fp32)
    assert [met for *_, met in checks] == [False, False, True, True, True]
    assert checks[-1][:2] == ("INT8 / FP32 ensemble (best)", "2.29")
