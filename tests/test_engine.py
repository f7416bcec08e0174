"""TensorRT plans: profile rules everywhere, engine builds where a GPU and TensorRT exist."""

import numpy as np
import pytest

from resnet_triton import build, engine
from resnet_triton.errors import UserError
from resnet_triton.manifest import read_manifest
from resnet_triton.repository import read_config
from resnet_triton.spec import Batching, ModelSpec

GPU, WHY = engine.gpu_status()
needs_gpu = pytest.mark.skipif(GPU is None, reason=f"TensorRT path unavailable: {WHY}")


def test_profile_follows_the_spec():
    spec = ModelSpec(labels=("a", "b"), batching=Batching(16, (4, 8), 100))
    profile = engine.Profile.for_spec(spec)
    assert (profile.min, profile.opt, profile.max) == (1, 8, 16)
    assert profile.shapes(spec)["max"] == [16, 3, 224, 224]
    with pytest.raises(UserError, match="profile max batch 8 must equal the spec's max_batch_size"):
        engine.Profile.for_spec(spec, max_batch=8)


def test_calibration_batches_are_cut_to_the_opt_batch():
    arrays = (np.full((n, 2), i) for i, n in enumerate([16, 16, 16, 5]))  # 53 rows
    batches = list(engine.fixed_batches(arrays, 32))
    assert [b.shape for b in batches] == [(32, 2)]  # 21 rows left over: dropped
    assert (batches[0][:, 0] == [0] * 16 + [1] * 16).all()
    assert [len(b) for b in engine.fixed_batches(iter([np.zeros((70, 1))]), 32)] == [32, 32]


def test_gpu_tag_names_the_compute_capability():
    assert engine.Gpu("NVIDIA H100 80GB HBM3", "9.0").tag == "sm90"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plans_pass_their_gates_and_are_published(checkpoint, digits, tmp_path, precision):
    opts = build.BuildOptions(
        checkpoint, tmp_path / "repo", tmp_path / "work", precision=precision, target="gpu",
        images=digits / "val",
    )  # fmt: skip
    result = build.run(opts)
    assert all(r.passed for r in result["reports"])
    plan = tmp_path / "repo" / "classifier" / "1" / f"model.{GPU.tag}.plan"
    manifest = read_manifest(plan)
    assert manifest["compute_capability"] == GPU.compute_capability
    assert manifest["inputs"]["profile"] == {"min": 1, "opt": 32, "max": 32}
    config = read_config(tmp_path / "repo" / "classifier" / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    assert dict(config.cc_model_filenames) == {GPU.compute_capability: plan.name}
    assert build.run(opts)["skipped"]
    if precision == "int8":
        key = result["content_hash"][:16]
        assert (tmp_path / "work" / f"calibration.{key}.cache").is_file()
    assert (tmp_path / "work" / "timing.cache").is_file()
