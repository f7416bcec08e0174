"""Export, the Polygraphy gate, and publishing only what passes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from resnet_triton import build
from resnet_triton.export import ExportError, check_onnx, spec_from_onnx
from resnet_triton.resnet import load_checkpoint
from resnet_triton.verify import FP32_TOLERANCE


def test_onnx_is_one_checked_file_with_dynamic_batch(repository, checkpoint):
    model_dir = repository / "classifier" / "1"
    files = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    assert files == ["model.onnx", "model.py"]  # no external-data side file
    path = model_dir / "model.onnx"
    check_onnx(path)
    spec, _, _ = load_checkpoint(checkpoint)
    assert spec_from_onnx(path) == spec
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == (spec.names.pixels, spec.names.scores)
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 64, 64]
    for batch in (1, 5, spec.batching.max_batch_size):
        x = np.random.default_rng(batch).normal(size=(batch, 3, 64, 64)).astype(np.float32)
        scores = session.run(None, {inp.name: x})[0]
        assert scores.shape == (batch, 10)
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)  # softmax probabilities


def test_gate_passes_on_real_images_within_tolerance(repository):
    report = __import__("json").loads((repository.parent / "build" / "gate.json").read_text())
    assert report["passed"] is True
    assert report["images"] == 64
    assert report["max_abs_error"] <= FP32_TOLERANCE.atol
    assert report["top1_agreement"] == 1.0


def damage(source, target, scale=0.3):
    """Perturb the first convolution's weights: a silently broken conversion."""
    model = onnx.load(source)
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 4 else 0)
    array = numpy_helper.to_array(weights)
    noise = np.random.default_rng(0).normal(scale=scale * array.std(), size=array.shape)
    weights.CopyFrom(numpy_helper.from_array((array + noise).astype(array.dtype), weights.name))
    onnx.save_model(model, target)


def test_damaged_model_is_rejected_and_repository_untouched(
    repository, checkpoint, digits, tmp_path, capsys
):
    published = repository / "classifier" / "1" / "model.onnx"
    before = {p: p.read_bytes() for p in repository.rglob("*") if p.is_file()}
    damaged = tmp_path / "damaged.onnx"
    damage(published, damaged)
    with pytest.raises(build.GateFailed, match="failed the accuracy gate"):
        build.run(
            checkpoint, repository, tmp_path / "work", images=digits / "val", onnx_path=damaged
        )
    after = {p: p.read_bytes() for p in repository.rglob("*") if p.is_file()}
    assert after == before
    out = capsys.readouterr().out
    assert "accuracy gate FAILED on 64 images" in out
    assert "worst outputs (image, class, onnx, pytorch, abs error):" in out
    assert "/val/" in out  # the worst outputs name real validation images


def test_corrupt_onnx_file_is_named(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match="model.onnx is not a valid ONNX model"):
        check_onnx(path)
