"""The INT8 gate's reference outputs: kept with the model, checked on the server's CPU."""

import dataclasses
import json

import numpy as np
import pytest

from resnet_triton.build.manifest import Manifest, cpu_features, manifest_path
from resnet_triton.build.reference_outputs import (
    ReferenceMismatch,
    ReferenceOutputs,
    check_on_this_cpu,
    reference_path,
)
from resnet_triton.build.verify import POLICIES

CLASSES = 10
CLEAR = np.array([[0.9, 0.1] + [0.0] * (CLASSES - 2)], np.float32)  # one image's clear answer


def gate_batches(count=8, size=8, seed=0):
    """`count` batches of `size` (pixels, softmax scores), as a gate's feeds and outputs."""
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, (size, 3, 16, 16), dtype=np.uint8) for _ in range(count)]
    logits = [rng.normal(0, 3, (size, CLASSES)) for _ in range(count)]
    for x in logits:
        x[np.arange(size), rng.integers(0, CLASSES, size)] += 20  # clear answers
    scores = [(np.exp(x) / np.exp(x).sum(1, keepdims=True)).astype(np.float32) for x in logits]
    return pixels, scores


@pytest.fixture
def saved(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the model's bytes do not matter here")
    pixels, scores = gate_batches()
    ReferenceOutputs.of_gate(pixels, scores, POLICIES["int8"]).save(model)
    return model, ReferenceOutputs.read(model)


def test_whole_batches_spread_over_the_gate_images_are_kept(saved):
    model, reference = saved
    pixels, scores = gate_batches()
    assert reference_path(model).name == "model.onnx.reference.npz"
    # 32 of 64 images: batches 0, 2, 4 and 7, whole, so each batch mean is one the gate held.
    picks = [0, 2, 4, 7]
    assert np.array_equal(reference.pixels, np.concatenate([pixels[i] for i in picks]))
    assert reference.pixels.dtype == np.uint8
    assert np.array_equal(reference.scores, np.concatenate([scores[i] for i in picks]))
    policy = POLICIES["int8"]
    assert (reference.atol, reference.rtol) == (policy.tolerance.atol, policy.tolerance.rtol)
    assert (reference.mean_atol, reference.min_agreement) == (policy.mean.atol, 0.98)
    assert reference.build_features == tuple(cpu_features())


def test_scores_that_agree_pass_and_are_reported(saved):
    model, reference = saved
    noise = np.random.default_rng(1).normal(0, 1e-3, reference.scores.shape)
    got = check_on_this_cpu(model, lambda pixels: reference.scores + noise.astype(np.float32))
    assert got.passed and got.images == 32 and got.outside == 0
    assert got.top1_agreement == 1.0 and 1e-4 < got.max_abs_error < 5e-3
    assert str(got).startswith("32 held-out images: max abs error ")


def test_a_near_tie_may_flip_within_the_tolerance(saved):
    """An image whose reference top two are 0.01 apart: its answer flips with scores well
    within atol; it is left out of the agreement, which the other images keep."""
    model, reference = saved
    scores = reference.scores.copy()
    scores[0] = 0.0
    scores[0, :2] = (0.505, 0.495)
    dataclasses.replace(reference, scores=scores).save(model)
    flipped = scores.copy()
    flipped[0, :2] = (0.495, 0.505)
    got = check_on_this_cpu(model, lambda pixels: flipped)
    assert got.passed and got.top1_agreement == 1.0 and got.clear <= 31


@pytest.mark.parametrize(
    ("change", "names"),
    [
        # one value past atol (0.05) and rtol: the elementwise check
        (lambda s: s + np.eye(32, CLASSES, dtype=np.float32) * 0.2, "max abs error 0.2 "),
        # every value 0.01 high: inside atol, but the mean error is twice its bound
        (lambda s: s + np.float32(0.01), "mean abs error 0.01 (<= 0.005)"),
        # a clear answer (0.9 against 0.1) swapped in one image of 32
        (
            lambda s: np.concatenate([CLEAR[:, ::-1], s[1:]]),
            "top-1 agreement 0.9688 on the 32 clear answers (>= 0.98)",
        ),
    ],
    ids=["elementwise", "mean", "agreement"],
)
def test_scores_that_break_the_gate_refuse_the_model_with_the_numbers(saved, change, names):
    model, reference = saved
    scores = np.concatenate([CLEAR, reference.scores[1:]])
    clear = np.sort(scores, 1)[:, -2:]
    assert np.all(clear[:, 1] - clear[:, 0] > 0.1)  # every answer clear: all 32 count
    reference = dataclasses.replace(reference, scores=scores)
    reference.save(model)
    with pytest.raises(ReferenceMismatch) as refused:
        check_on_this_cpu(model, lambda pixels: change(reference.scores))
    message = str(refused.value)
    assert message.startswith(f"{model} breaks its INT8 gate on this CPU (")
    assert names in message
    assert f"the gate passed on {reference.build_cpu} (" in message
    assert message.endswith("ONNX Runtime picks INT8 kernels by CPU: rebuild the model on a CPU "
                            "like this one")  # fmt: skip


def test_the_check_scores_the_saved_pixels(saved):
    model, reference = saved
    seen = []
    check_on_this_cpu(model, lambda pixels: seen.append(pixels.copy()) or reference.scores)
    assert len(seen) == 1 and np.array_equal(seen[0], reference.pixels)


def test_a_model_without_reference_outputs_is_not_checked(tmp_path):
    assert check_on_this_cpu(tmp_path / "model.onnx", lambda pixels: 1 / 0) is None


def test_damaged_reference_outputs_refuse_the_model(saved):
    model, _ = saved
    path = reference_path(model)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ReferenceMismatch, match=f"{path} is unreadable .*: rebuild the model"):
        check_on_this_cpu(model, lambda pixels: pixels)


def test_cpu_features_are_the_kernel_flags_of_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma f16c\n\nflags\t: avx2\n")
    assert cpu_features(x86) == ["avx2", "fma", "f16c"]  # no avx512*, no vnni
    vnni = tmp_path / "vnni"
    vnni.write_text("flags\t\t: avx2 fma avx512f avx512bw avx512_vnni amx_int8 amx_tile\n")
    assert cpu_features(vnni) == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                                  "amx_tile", "amx_int8"]  # fmt: skip
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert cpu_features(arm) == ["asimd", "asimddp", "i8mm"]
    assert cpu_features(tmp_path / "missing") == []


def test_a_manifest_from_before_cpu_features_is_still_read(tmp_path):
    model = tmp_path / "model.onnx"
    manifest = Manifest("hash", {}, "int8", "cpu", "sha", cpu="x86_64", cpu_features=["avx2"])
    manifest.write(model)
    assert Manifest.read(model) == manifest
    old = dataclasses.asdict(manifest)
    del old["cpu_features"]
    manifest_path(model).write_text(json.dumps(old))
    assert Manifest.read(model) == dataclasses.replace(manifest, cpu_features=None)
