"""TensorRT plans: profile rules everywhere, engine builds where a GPU and TensorRT exist."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_triton.build import command as build
from resnet_triton.build import engine
from resnet_triton.build.manifest import Manifest
from resnet_triton.errors import UserError
from resnet_triton.serving.repository import read_config
from resnet_triton.spec import ModelSpec

GPU, WHY = engine.gpu_status()
needs_gpu = pytest.mark.skipif(GPU is None, reason=f"TensorRT path unavailable: {WHY}")


def test_profile_follows_the_spec_and_the_serving_config():
    spec = ModelSpec(labels=("a", "b"), max_batch_size=16)
    profile = engine.Profile.for_spec(spec, preferred=(4, 8))
    assert (profile.min, profile.opt, profile.max) == (1, 8, 16)
    assert profile.shapes(spec)["max"] == [16, 3, 224, 224]
    assert engine.Profile.for_spec(spec, opt_batch=2).opt == 2
    with pytest.raises(UserError, match="profile opt batch 32 must lie in 1..16"):
        engine.Profile.for_spec(spec, opt_batch=32)
    # No preferred sizes (the batcher then forms batches up to the max): opt is the max.
    assert engine.Profile.for_spec(spec).opt == 16


def test_calibration_batches_are_cut_to_the_opt_batch():
    arrays = (np.full((n, 2), i) for i, n in enumerate([16, 16, 16, 5]))  # 53 rows
    batches = list(engine.fixed_batches(arrays, 32))
    assert [b.shape for b in batches] == [(32, 2)]  # 21 rows left over: dropped
    assert (batches[0][:, 0] == [0] * 16 + [1] * 16).all()
    assert [len(b) for b in engine.fixed_batches(iter([np.zeros((70, 1))]), 32)] == [32, 32]


def test_gpu_tag_names_the_compute_capability():
    assert engine.Gpu("NVIDIA H100 80GB HBM3", "9.0").tag == "sm90"


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """A stand-in `tensorrt` package and `nvidia-smi` (this machine has neither).

    Returns a function that sets what nvidia-smi prints and its exit code.
    """
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "10.13.3"\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def nvidia_smi(output: str, code: int = 0) -> Path:
        (bin_dir / "output").write_text(output)
        script = bin_dir / "nvidia-smi"
        script.write_text(
            f'#!/bin/sh\necho "$@" > {bin_dir}/args\ncat {bin_dir}/output\nexit {code}\n'
        )
        script.chmod(0o755)
        return bin_dir / "args"

    yield nvidia_smi
    sys.modules.pop("tensorrt", None)  # imported from the stand-in: gone with it


def test_gpu_is_found_through_nvidia_smi_not_torch(stand_ins):
    args = stand_ins("NVIDIA H100 80GB HBM3, 9.0\n")
    gpu, why = engine.gpu_status()
    assert gpu == engine.Gpu("NVIDIA H100 80GB HBM3", "9.0")
    assert why == "TensorRT 10.13.3 on NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    assert args.read_text().split() == ["--query-gpu=name,compute_cap", "--format=csv,noheader"]
    # The NGC images' driver can be older than PyPI's CUDA torch needs: torch is not asked.
    script = "import sys; sys.modules['torch'] = None; from resnet_triton.build import engine; "
    script += "print(engine.gpu_status()[0])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Gpu(name='NVIDIA H100 80GB HBM3', compute_capability='9.0')"


def test_no_gpu_says_why(stand_ins, monkeypatch):
    stand_ins("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n", 9)
    gpu, why = engine.gpu_status()
    assert gpu is None
    assert why == (
        "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate "
        "with the NVIDIA driver"
    )
    stand_ins("Tesla T4, 7.5\nNVIDIA A100-SXM4-80GB, 8.0\n")
    assert engine.gpu_status() == (None, (
        "GPUs of different compute capabilities are visible (Tesla T4 (7.5), "
        "NVIDIA A100-SXM4-80GB (8.0)): set CUDA_VISIBLE_DEVICES to the one to build for"
    ))  # fmt: skip
    args = stand_ins("NVIDIA A100-SXM4-80GB, 8.0\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert engine.gpu_status()[0].compute_capability == "8.0"
    assert "--id=1" in args.read_text().split()
    monkeypatch.setenv("PATH", "/nonexistent")
    assert engine.gpu_status()[1].startswith("nvidia-smi is not on PATH")


def test_gpu_target_without_a_gpu_refuses_and_auto_says_why(stand_ins):
    stand_ins("No devices were found\n", 6)
    with pytest.raises(UserError) as error:
        build.resolve_target("gpu")
    assert str(error.value) == (
        "--target gpu needs TensorRT and a CUDA GPU: nvidia-smi failed (exit 6): "
        "No devices were found"
    )
    target, gpu, why = build.resolve_target("auto")
    assert (target, gpu) == ("cpu", None)
    assert why.endswith("no TensorRT path here: nvidia-smi failed (exit 6): No devices were found)")


def test_hardware_compatible_plans_need_an_ampere_or_newer_build_gpu(stand_ins, tmp_path):
    stand_ins("Tesla T4, 7.5\n")
    opts = build.BuildOptions(
        tmp_path / "never-read.pt", target="gpu", precision="fp16", hardware_compatible=True
    )
    with pytest.raises(UserError) as error:
        build.run(opts)  # refused before the checkpoint is read
    assert str(error.value) == (
        "--hardware-compatible builds a plan for every Ampere or newer GPU, which TensorRT can "
        "do only on one of them; Tesla T4 has compute capability 7.5 (8.0 or higher needed): "
        "build without the flag"
    )
    cpu = build.BuildOptions(tmp_path / "never-read.pt", target="cpu", version_compatible=True)
    with pytest.raises(UserError) as error:
        build.run(cpu)
    assert (
        str(error.value)
        == "--version-compatible: options of TensorRT plans (--target gpu), not of cpu"
    )


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plans_pass_their_gates_and_are_published(checkpoint, digits, tmp_path, precision):
    opts = build.BuildOptions(
        checkpoint, tmp_path / "repo", tmp_path / "work", precision=precision, target="gpu",
        images=digits / "val",
    )  # fmt: skip
    result = build.run(opts)
    assert all(r.passed for r in result.reports)
    plan = tmp_path / "repo" / "classifier" / "1" / f"model.{GPU.tag}.plan"
    manifest = Manifest.read(plan)
    assert manifest.compute_capability == GPU.compute_capability
    assert manifest.inputs["profile"] == {"min": 1, "opt": 32, "max": 32}
    config = read_config(tmp_path / "repo" / "classifier" / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    assert dict(config.cc_model_filenames) == {GPU.compute_capability: plan.name}
    assert build.run(opts).skipped
    if precision == "int8":
        key = result.content_hash[:16]
        assert (tmp_path / "work" / f"calibration.{key}.cache").is_file()
    assert (tmp_path / "work" / "timing.cache").is_file()
