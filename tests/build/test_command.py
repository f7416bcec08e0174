"""Export, the accuracy gates, INT8, manifests, skipping, and publishing only what passes."""

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import damage, snapshot
from PIL import Image
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

from resnet_triton import cli
from resnet_triton.build import command as build
from resnet_triton.build import engine, verify
from resnet_triton.build.export import ExportError, check_onnx, spec_from_onnx
from resnet_triton.build.images import GateImages, ImageSet
from resnet_triton.build.manifest import Manifest, cpu_features, file_sha256
from resnet_triton.build.quantize import Quantization
from resnet_triton.build.reference_outputs import (
    ReferenceOutputs,
    check_on_this_cpu,
    reference_path,
)
from resnet_triton.build.verify import POLYGRAPHY_MIN, Reference, polygraphy_too_old, run_gate
from resnet_triton.data import image_folder
from resnet_triton.errors import UserError
from resnet_triton.preprocess import normalize
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.repository import read_config


def options(checkpoint, digits, root, **kwargs):
    kwargs = {"target": "cpu", "images": digits / "val", **kwargs}
    return build.BuildOptions(checkpoint, root / "repo", root / "work", **kwargs)


def test_onnx_is_one_checked_file_with_dynamic_batch(repository, checkpoint):
    model_dir = repository / "classifier" / "1"
    files = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    assert files == ["model.onnx", "model.onnx.manifest.json", "model.py"]  # no .onnx.data
    path = model_dir / "model.onnx"
    # Readable by a server running as another user (the images' uid 1000).
    assert path.stat().st_mode & 0o777 == 0o644
    check_onnx(path)
    spec, _, _ = load_checkpoint(checkpoint)
    assert spec_from_onnx(path) == spec
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == (spec.names.pixels, spec.names.scores)
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 64, 64]
    assert inp.type == "tensor(uint8)"  # 8-bit pixels: the graph normalizes them
    for batch in (1, 5, spec.max_batch_size):
        x = np.random.default_rng(batch).integers(0, 256, (batch, 3, 64, 64), dtype=np.uint8)
        scores = session.run(None, {inp.name: x})[0]
        assert scores.shape == (batch, 10)
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)  # softmax probabilities


def normalized_by_the_graph(path, levels: np.ndarray) -> np.ndarray:
    """`levels` through the model's own ops, up to the first convolution (or the
    quantization of its input)."""
    model = onnx.load(path)
    first = next(n for n in model.graph.node if n.op_type in ("Conv", "QuantizeLinear"))
    head = onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], [first.input[0]])
    assert [n.op_type for n in head.graph.node] == ["Cast", "Div", "Sub", "Div"]
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {head.graph.input[0].name: levels})[0]


def every_level(spec) -> np.ndarray:
    """(1, 3, crop, crop) uint8 holding each of the 256 values in every channel."""
    return np.resize(np.arange(256, dtype=np.uint8), (1, *spec.preprocessing.input_shape))


def test_the_graph_normalizes_bit_for_bit_as_the_preprocessing_did(repository, checkpoint):
    """FP32 and INT8 alike: the parity of preprocessing with torchvision is unchanged
    by moving normalization into the classifier (no value moves by one ulp)."""
    spec, _, _ = load_checkpoint(checkpoint)
    levels = every_level(spec)
    graph = normalized_by_the_graph(repository / "classifier/1/model.onnx", levels)
    assert np.array_equal(graph, normalize(levels, spec.preprocessing))


def test_export_gate_passes_on_real_images_within_tolerance(repository, digits):
    (report,) = json.loads((repository.parent / "build" / "gates.json").read_text())
    assert report["gate"] == "export" and report["passed"] is True
    assert report["images"] == 64 and report["agreement_images"] == 360
    assert len(report["image_names"]) == 64
    assert all(name.startswith(f"{digits}/val/") for name in report["image_names"])
    # FP32 against FP32: summation order only (about 1e-6 seen), far inside the gate's 1e-4.
    assert report["max_abs_error"] <= 1e-5 and report["mean_abs_error"] <= 1e-6
    assert report["top1_agreement"] == 1.0
    manifest = Manifest.read(repository / "classifier" / "1" / "model.onnx")
    assert manifest.precision == "fp32" and manifest.target == "cpu"
    assert manifest.output_sha256 == file_sha256(repository / "classifier" / "1" / "model.onnx")
    assert manifest.inputs["onnxruntime"] == ort.__version__
    assert manifest.gpu is None and manifest.compute_capability is None  # a CPU build
    assert manifest.cpu == (platform.processor() or platform.machine())


def biased(source, target, bias: float) -> None:
    """`source` with `bias` added to every output probability: the top-1 answers stay."""
    model = onnx.load(source)
    output = model.graph.output[0]
    scores = output.name
    for node in model.graph.node:
        node.output[:] = [f"{scores}_unbiased" if o == scores else o for o in node.output]
    shift = onnx.numpy_helper.from_array(np.array(bias, dtype=np.float32), "bias")
    model.graph.initializer.append(shift)
    model.graph.node.append(onnx.helper.make_node("Add", [f"{scores}_unbiased", "bias"], [scores]))
    onnx.save(model, target)


def test_a_systematic_drift_inside_the_elementwise_bound_fails_the_int8_gate(
    repository, checkpoint, digits, tmp_path
):
    """Every probability 0.01 too high: within INT8's elementwise atol (0.05), the same
    top-1 answers, but the mean error (Polygraphy's check_error_stat) is twice its bound."""
    spec, _, _ = load_checkpoint(checkpoint)
    fp32 = repository / "classifier" / "1" / "model.onnx"
    biased(fp32, tmp_path / "biased.onnx", 0.01)
    held_out_set = ImageSet.of(image_folder(digits / "val", spec.preprocessing))
    images = GateImages.load(held_out_set, spec, 16, 64)
    reference = Reference(runner(fp32, "onnxruntime-fp32"), file_sha256(fp32), images, tmp_path)
    report = run_gate("int8", runner(tmp_path / "biased.onnx", "biased"), reference, spec, tmp_path)
    assert report.max_abs_error == pytest.approx(0.01, abs=1e-6)
    assert report.mean_abs_error == pytest.approx(0.01, abs=1e-6)
    assert report.top1_agreement == 1.0 and report.accuracy_drop == 0.0
    assert not report.within_tolerance and not report.passed
    assert "mean abs <= 0.005" in report.summary()


def runner(path, name):
    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name)


def test_int8_is_built_gated_published_and_then_skipped(
    checkpoint, digits, tmp_path, capsys, monkeypatch
):
    runs = []
    real = verify.outputs

    def counted(runner, feeds):
        runs.append(runner.name)
        return real(runner, feeds)

    monkeypatch.setattr(verify, "outputs", counted)
    result = build.run(options(checkpoint, digits, tmp_path, precision="int8"))
    export_gate, int8_gate = result.reports
    assert int8_gate.gate == "int8" and int8_gate.passed
    assert int8_gate.top1_agreement >= 0.98 and int8_gate.accuracy_drop <= 0.01
    # Each runner once on the gate images and once on the agreement images: the FP32
    # reference's outputs serve both gates.
    assert sorted(runs) == sorted(["pytorch", "onnxruntime-fp32", "onnxruntime-int8"] * 2)
    published = tmp_path / "repo" / "classifier" / "1" / "model.onnx"
    ops = {node.op_type for node in onnx.load(published).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # a QDQ model
    assert all(len(shape) == 1 for shape in weight_scale_shapes(published))  # per channel
    # 7-bit weights: a u8 activation pair times them sums within 16 bits (no saturation
    # on AVX2 without VNNI), where full 8-bit weights reach +-127.
    assert max(np.abs(w).max() for w in int8_weights(published)) == 64
    spec = load_checkpoint(checkpoint)[0]
    levels = every_level(spec)  # the normalization is not quantized:
    assert np.array_equal(
        normalized_by_the_graph(published, levels), normalize(levels, spec.preprocessing)
    )
    assert spec_from_onnx(published) == load_checkpoint(checkpoint)[0]  # metadata kept
    manifest = Manifest.read(published)
    assert manifest.precision == "int8"
    assert manifest.inputs["calibration_images"] == 128
    assert manifest.cpu_features == cpu_features()  # the CPU the gate measured the kernels of
    kept_for_the_server(published, tmp_path / "work" / "model.fp32.onnx")
    assert (tmp_path / "work" / "model.fp32.onnx").is_file()  # both precisions produced
    # Every run's outputs are kept for Polygraphy's own inspection.
    shown = subprocess.run(
        [Path(sys.executable).parent / "polygraphy", "inspect", "data",
         tmp_path / "work" / "int8.outputs.json"], capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    said = shown.stdout + shown.stderr  # Polygraphy's logger
    assert "onnxruntime-int8 (8 iterations)" in said  # 64 gate images, 8 a batch
    assert "onnxruntime-fp32 (8 iterations)" in said

    # Unchanged: skipped before anything is exported or decoded.
    def forbidden(*args, **kwargs):
        raise AssertionError("an up-to-date build must not export or decode images")

    before = snapshot(tmp_path / "repo")
    with monkeypatch.context() as patch:
        patch.setattr(build, "export_onnx", forbidden)
        patch.setattr(build.GateImages, "load", forbidden)
        again = build.run(options(checkpoint, digits, tmp_path, precision="int8"))
    assert again.skipped and again.content_hash == result.content_hash
    assert snapshot(tmp_path / "repo") == before
    assert "up to date" in capsys.readouterr().out

    # Another precision, or a damaged published file, means a rebuild; the same FP32
    # model on the same images: the reference's outputs are read back, not run again.
    runs.clear()
    fp32 = build.run(options(checkpoint, digits, tmp_path, precision="fp32"))
    assert not fp32.skipped and fp32.content_hash != result.content_hash
    assert runs == ["pytorch"] * 2
    assert not reference_path(published).exists()  # the INT8 model's went with it
    published.write_bytes(published.read_bytes()[:-10])
    assert not build.run(options(checkpoint, digits, tmp_path)).skipped


def kept_for_the_server(published, fp32) -> None:
    """The INT8 model's reference outputs beside it: 32 of the gate's images and the FP32
    reference's scores on them, which the published model meets on this CPU."""
    reference = ReferenceOutputs.read(published)
    assert reference.pixels.shape == (32, 3, 64, 64) and reference.pixels.dtype == np.uint8
    assert reference.build_features == tuple(cpu_features())
    name = reference_path(published).name
    assert name == "model.onnx.reference.npz" and reference_path(published).stat().st_size < 1e6
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    fp32_scores = session.run(None, {session.get_inputs()[0].name: reference.pixels})[0]
    np.testing.assert_allclose(reference.scores, fp32_scores, atol=1e-5)
    session = ort.InferenceSession(str(published), providers=["CPUExecutionProvider"])
    got = check_on_this_cpu(published, lambda x: session.run(None, {"PIXELS": x})[0])
    assert got.passed and got.max_abs_error <= 0.05


def int8_weights(path) -> list[np.ndarray]:
    """The convolutions' INT8 weights."""
    model = onnx.load(path)
    return [
        onnx.numpy_helper.to_array(t) for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]  # fmt: skip


def weight_scale_shapes(path) -> set[tuple[int, ...]]:
    """The shapes of the scales that dequantize the convolutions' INT8 weights."""
    model = onnx.load(path)
    initializers = {t.name: t for t in model.graph.initializer}
    return {
        tuple(initializers[node.input[1]].dims)
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and initializers[node.input[0]].data_type == onnx.TensorProto.INT8
        and len(initializers[node.input[0]].dims) == 4  # a convolution's weight
    }


def test_int8_is_quantized_with_the_settings_it_hashes(checkpoint, digits, tmp_path):
    per_tensor = Quantization(per_channel=False)
    result = build.run(options(checkpoint, digits, tmp_path, precision="int8",
                               quantization=per_tensor))  # fmt: skip
    manifest = Manifest.read(result.published)
    assert manifest.inputs["quantization"] == {
        "format": "QDQ", "activations": "QUInt8", "weights": "QInt8", "per_channel": False,
        "reduce_range": True, "calibration": "MinMax",
    }  # fmt: skip
    assert max(np.abs(w).max() for w in int8_weights(result.published)) == 64  # 7-bit weights
    assert weight_scale_shapes(result.published) == {()}  # one scale per weight tensor


def test_another_model_changes_the_content_hash(checkpoint, digits, tmp_path):
    first = build.run(options(checkpoint, digits, tmp_path))
    damaged = tmp_path / "other.onnx"
    damage(tmp_path / "work" / "model.fp32.onnx", damaged, scale=1e-3)  # tiny: still passes
    second = build.run(options(checkpoint, digits, tmp_path, onnx=damaged))
    assert not second.skipped and second.content_hash != first.content_hash


def test_damaged_model_is_rejected_and_repository_untouched(
    repository, checkpoint, digits, tmp_path, capsys
):
    published = repository / "classifier" / "1" / "model.onnx"
    before = snapshot(repository)
    damaged = tmp_path / "damaged.onnx"
    damage(published, damaged)
    opts = build.BuildOptions(
        checkpoint, repository, tmp_path / "work", target="cpu", images=digits / "val",
        onnx=damaged,
    )  # fmt: skip
    with pytest.raises(build.GateFailed, match="failed the export gate"):
        build.run(opts)
    assert snapshot(repository) == before
    out = capsys.readouterr().out
    assert "export gate FAILED" in out
    assert "<- outside tolerance" in out
    assert "worst outputs (image, class, candidate, reference, abs error):" in out
    assert "/val/" in out  # the worst outputs name real validation images


def test_int8_calibrated_on_blank_images_fails_its_gate(checkpoint, digits, tmp_path, capsys):
    blank = tmp_path / "blank"
    for label in ("0", "1"):
        (blank / label).mkdir(parents=True)
        for i in range(64):
            Image.new("L", (8, 8), 0).save(blank / label / f"{i}.png")
    opts = options(checkpoint, digits, tmp_path, precision="int8", calibration=blank)
    with pytest.raises(build.GateFailed, match="failed the int8 gate"):
        build.run(opts)
    assert not (tmp_path / "repo").exists()
    assert "int8 gate FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp16"}, "unknown precision for the cpu target 'fp16'; choose one of fp32"),
        ({"target": "tpu"}, "unknown target 'tpu'; choose one of auto, cpu, gpu"),
        ({"opt_batch": 0}, "profile opt batch 0 must lie in 1..32"),
        (
            {"precision": "int8", "calibration_images": 5000},
            "has 1437 training images; --calibration-images asks for 5000",
        ),
    ],
)
def test_bad_build_options_are_named(checkpoint, digits, tmp_path, kwargs, message):
    opts = options(checkpoint, digits, tmp_path, **kwargs)
    with pytest.raises(UserError, match=message):
        build.run(opts)
    assert not (tmp_path / "repo").exists()


def test_gpu_target_says_why_it_cannot_run(checkpoint, digits, tmp_path):
    gpu, why = engine.gpu_status()
    if gpu is not None:
        pytest.skip(f"a GPU is present: {why}")
    with pytest.raises(UserError, match=f"--target gpu needs TensorRT and a CUDA GPU: {why}"):
        build.run(options(checkpoint, digits, tmp_path, target="gpu"))


def test_corrupt_onnx_file_is_named(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match="model.onnx is not a valid ONNX model"):
        check_onnx(path)


def test_the_polygraphy_pin_covers_the_api_the_gates_use():
    # 0.50.3, the last release before 0.53.4, has CompareFunc.simple and no SimpleCompareFunc.
    pins = [r for r in metadata.requires("resnet-triton") if r.startswith("polygraphy")]
    assert pins == [f"polygraphy>={POLYGRAPHY_MIN}"]
    assert POLYGRAPHY_MIN == "0.53.4"
    assert polygraphy_too_old("0.50.3").startswith(
        "Polygraphy 0.50.3 is installed; the accuracy gates need 0.53.4 or newer"
    )


def test_a_serving_setting_changes_the_configs_without_retraining_or_rebuilding(
    repository, checkpoint, digits, tmp_path, capsys
):
    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo)
    model = repo / "classifier" / "1" / "model.onnx"
    before = file_sha256(model)
    assert read_config(repo / "classifier" / "config.pbtxt").instance_group[0].count == 1
    serving = tmp_path / "serving.yaml"
    serving.write_text(
        "preferred_batch_sizes: [4]\nclassifier_queue_delay_us: 100\nclassifier_instances: 2\n"
    )
    args = ["build", "--checkpoint", str(checkpoint), "--target", "cpu", "--repository", str(repo),
            "--images", str(digits / "val"), "--work-dir", str(tmp_path / "work")]  # fmt: skip
    assert cli.main([*args, "--serving", str(serving)]) == 0
    assert "up to date:" in capsys.readouterr().out  # the same model: nothing exported
    assert file_sha256(model) == before
    config = read_config(repo / "classifier" / "config.pbtxt")
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].count == 2
    assert config.max_batch_size == 32  # the model's limit, from the checkpoint
    # `render` does the same from the checkpoint alone; a bad value is named.
    serving.write_text("preferred_batch_sizes: [64]\n")
    assert cli.main(["render", "--checkpoint", str(checkpoint), "--repository", str(repo),
                     "--serving", str(serving)]) == 1  # fmt: skip
    assert "serving.preferred_batch_sizes [64] lie outside 1..max_batch_size (32)" in (
        capsys.readouterr().err
    )
    serving.write_text("queue_delay: 5\n")
    assert cli.main([*args, "--serving", str(serving)]) == 1
    assert (
        f"unknown field(s) ['queue_delay'] in serving config {serving}" in capsys.readouterr().err
    )
