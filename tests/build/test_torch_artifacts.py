"""TorchScript (model.pt) and torch.export (model.pt2) files: written, read back and gated
against the checkpoint like the ONNX model; the pytorch target's repository, checked
statically against the rules of Triton's PyTorch backend (the PyPI server here has no
PyTorch backend, and refuses to serve it)."""

import contextlib
import copy
import dataclasses
import importlib
import io
import json
import re
import shlex
import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import snapshot
from tritonclient.grpc import model_config_pb2 as mc

from resnet_triton import cli
from resnet_triton.build import torch_artifacts
from resnet_triton.build.export import ServedModel
from resnet_triton.build.images import ImageSet
from resnet_triton.build.manifest import Manifest, file_sha256
from resnet_triton.data import image_folder
from resnet_triton.errors import UserError
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.repository import read_config, rendered_files
from resnet_triton.serving.server import ServerError, TritonServer

ROOT = Path(__file__).parents[2]
FEWER = ("--gate-images=16", "--agreement-images=64")  # where the counts are not the point


def build_args(checkpoint, digits, root: Path, *extra: str) -> list[str]:
    return ["build", "--checkpoint", str(checkpoint), "--repository", str(root / "repo"),
            "--work-dir", str(root / "work"), "--images", str(digits / "val"),
            *extra]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Built:
    root: Path
    status: int
    out: str


@pytest.fixture(scope="module")
def pytorch_build(checkpoint, digits, tmp_path_factory) -> Built:
    """`build --target pytorch --torch-export` through the CLI, once for this module."""
    root = tmp_path_factory.mktemp("pytorch-target")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        args = build_args(checkpoint, digits, root, "--target", "pytorch", "--torch-export")
        status = cli.main(args)
    return Built(root, status, printed.getvalue())


def test_the_pytorch_target_gates_both_files_and_publishes_the_torchscript_one(
    pytorch_build, checkpoint, digits, capsys
):
    root = pytorch_build.root
    assert pytorch_build.status == 0, pytorch_build.out
    assert pytorch_build.out.splitlines()[0] == (
        f"build target: pytorch (TorchScript for Triton's PyTorch backend; torch "
        f"{version('torch')})"
    )
    reports = json.loads((root / "work" / "gates.json").read_text())
    assert [(r["gate"], r["candidate"], r["reference"]) for r in reports] == [
        ("torchscript", "torchscript", "pytorch"), ("torch-export", "torch-export", "pytorch"),
    ]  # fmt: skip
    for report in reports:  # the export gate's policy, on the same held-out images
        assert report["passed"] is True and report["within_tolerance"] is True
        assert report["policy"]["tolerance"] == {"atol": 1e-4, "rtol": 1e-3}
        assert report["images"] == 64 and report["agreement_images"] == 360
        assert report["top1_agreement"] == 1.0 and report["accuracy_drop"] == 0.0
        # The same CPU kernels as the checkpoint's eager run: no error at all.
        assert report["max_abs_error"] == 0.0
    assert "torchscript gate PASSED: torchscript vs pytorch" in pytorch_build.out
    assert "torch-export gate PASSED: torch-export vs pytorch" in pytorch_build.out
    published = root / "repo" / "classifier" / "1" / "model.pt"
    assert published.read_bytes() == (root / "work" / "model.pt").read_bytes()
    manifest = Manifest.read(published)
    assert (manifest.target, manifest.precision) == ("pytorch", "fp32")
    assert manifest.output_sha256 == file_sha256(published)
    assert manifest.inputs["source"] == {"checkpoint_sha256": file_sha256(checkpoint)}
    assert manifest.inputs["torch_files"]["formats"] == ["torchscript", "torch-export"]
    assert [g["gate"] for g in manifest.gates] == ["torchscript", "torch-export"]
    assert f"published {published} (fp32, pytorch)" in pytorch_build.out
    # Unchanged: nothing traced, exported or gated again.
    args = build_args(checkpoint, digits, root, "--target", "pytorch", "--torch-export")
    assert cli.main(args) == 0
    assert "up to date:" in capsys.readouterr().out


def held_out_pixels(digits, spec, count: int) -> np.ndarray:
    images = ImageSet.of(image_folder(digits / "val", spec.preprocessing)).spread(count)
    return pixels_from_files(list(images.paths), spec.preprocessing)  # (N, 3, 64, 64) uint8


def test_the_pytorch_backend_config_fits_the_file_the_spec_and_the_ensemble(
    pytorch_build, checkpoint, digits
):
    """What Triton's PyTorch backend checks at load, checked here without it: platform,
    file, names, dtypes and dims; the input bound to forward's argument of the same name
    (its FORWARD_ARGUMENT rule), the one output by position (its rule for outputs without
    a <name>__<index> name); and the file answers as the checkpoint does."""
    repo = pytorch_build.root / "repo"
    spec, model, _ = load_checkpoint(checkpoint)
    config = read_config(repo / "classifier" / "config.pbtxt")
    assert (config.backend, config.platform) == ("pytorch", "pytorch_libtorch")
    assert config.default_model_filename == "model.pt"
    assert config.max_batch_size == spec.max_batch_size == 32
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    ((inp,), (out,)) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("PIXELS", mc.TYPE_UINT8, [3, 64, 64])
    assert (out.name, out.data_type, list(out.dims)) == ("SCORES", mc.TYPE_FP32, [10])
    assert out.label_filename == "labels.txt" and "__" not in out.name
    assert [w.batch_size for w in config.model_warmup] == [1, 32]
    # No model.py: no Python-backend glue beside the TorchScript file.
    files = sorted(p.name for p in (repo / "classifier" / "1").iterdir())
    assert files == ["model.pt", "model.pt.manifest.json"]
    # The ensemble is the cpu target's, and names the classifier's tensors.
    ensemble = read_config(repo / "resnet_ensemble" / "config.pbtxt")
    cpu = rendered_files(spec, target="cpu")["resnet_ensemble/config.pbtxt"]
    assert (repo / "resnet_ensemble" / "config.pbtxt").read_text() == cpu
    step = ensemble.ensemble_scheduling.step[1]
    assert (step.model_name, list(step.input_map), list(step.output_map)) == (
        "classifier", [inp.name], [out.name],
    )  # fmt: skip

    module, file_spec = torch_artifacts.load_torchscript(repo / "classifier" / "1" / "model.pt")
    assert file_spec == spec
    arguments = module.forward.schema.arguments[1:]  # after self
    assert [(a.name, str(a.type)) for a in arguments] == [(inp.name, "Tensor")]
    answers_as_the_checkpoint(module, model, spec, digits, (1, 5, spec.max_batch_size))


def answers_as_the_checkpoint(module, model, spec, digits, batches) -> None:
    """`module` and the checkpoint's eager ServedModel, bit for bit, on held-out images
    in batches of each size (a batch's size picks the kernels: compare like with like)."""
    pixels = torch.from_numpy(held_out_pixels(digits, spec, spec.max_batch_size))
    eager = ServedModel(model.eval(), spec).eval()
    with torch.no_grad():
        for batch in batches:
            assert module(pixels[:batch]).shape == (batch, spec.num_classes)
            np.testing.assert_array_equal(module(pixels[:batch]), eager(pixels[:batch]))


def test_the_torch_export_program_carries_the_spec_and_a_dynamic_batch(
    pytorch_build, checkpoint, digits
):
    spec, model, _ = load_checkpoint(checkpoint)
    path = pytorch_build.root / "work" / "model.pt2"
    module, file_spec = torch_artifacts.load_program(path)
    assert file_spec == spec
    program = torch.export.load(str(path))
    assert [str(r) for r in program.range_constraints.values()] == ["VR[1, 32]"]
    answers_as_the_checkpoint(module, model, spec, digits, (1, spec.max_batch_size))


def test_the_pypi_server_refuses_a_pytorch_backend_repository(pytorch_build, tmp_path):
    repo = pytorch_build.root / "repo"
    with pytest.raises(ServerError) as refused:
        TritonServer(repo, log_path=tmp_path / "triton.log").start()
    assert str(refused.value) == (
        f"{repo / 'classifier' / '1' / 'model.pt'} needs Triton's PyTorch backend, which the "
        "nvidia-pytriton wheel's tritonserver does not have: serve it with a Triton that has it "
        "(the NGC image, or --tritonserver with its binary), or build --target cpu"
    )
    assert not (tmp_path / "triton.log").exists()  # refused before anything started


def damaged(export):
    """`export`, writing a copy of the model whose largest convolution's weights moved by
    noise (0.3 of their spread): a silently broken conversion."""

    def write(model, spec, path, checkpoint):
        broken = copy.deepcopy(model)
        weight = max((p for p in broken.parameters() if p.dim() == 4), key=torch.numel)
        rng = np.random.default_rng(0)
        noise = rng.normal(scale=0.3 * weight.std().item(), size=tuple(weight.shape))
        with torch.no_grad():
            weight.add_(torch.from_numpy(noise).to(weight.dtype))
        return export(broken, spec, path, checkpoint)

    return write


def test_the_torchscript_gate_refuses_a_damaged_model(
    checkpoint, digits, tmp_path, capsys, monkeypatch
):
    torchscript = torch_artifacts.FORMATS["torchscript"]
    monkeypatch.setitem(
        torch_artifacts.FORMATS, "torchscript",
        dataclasses.replace(torchscript, export=damaged(torchscript.export)),
    )  # fmt: skip
    args = build_args(checkpoint, digits, tmp_path, "--target", "pytorch", *FEWER)
    assert cli.main(args) == 1
    said = capsys.readouterr()
    work, repo = tmp_path / "work", tmp_path / "repo"
    assert said.err == (
        f"error: {work / 'model.pt'} failed the torchscript gate; {repo} left unchanged\n"
    )
    assert "torchscript gate FAILED: torchscript vs pytorch" in said.out
    assert "<- outside tolerance" in said.out
    assert "worst outputs (image, class, candidate, reference, abs error):" in said.out
    assert snapshot(repo) == {}  # nothing published, no config rendered
    (report,) = json.loads((work / "gates.json").read_text())
    assert (report["gate"], report["passed"], report["within_tolerance"]) == (
        "torchscript", False, False,
    )  # fmt: skip
    assert report["max_abs_error"] > 1e-4  # the tolerance it broke


def test_a_cpu_build_also_writes_and_gates_torchscript(repository, checkpoint, digits, tmp_path):
    """Beside the ONNX model (given here, already exported): the export gate, then the
    TorchScript file's; the ONNX model is what is published."""
    onnx = tmp_path / "model.fp32.onnx"
    shutil.copy(repository / "classifier" / "1" / "model.onnx", onnx)
    args = build_args(checkpoint, digits, tmp_path, "--target", "cpu", "--onnx", str(onnx),
                      "--torchscript", *FEWER)  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(args) == 0
    reports = json.loads((tmp_path / "work" / "gates.json").read_text())
    assert [(r["gate"], r["passed"]) for r in reports] == [("export", True), ("torchscript", True)]
    assert (tmp_path / "work" / "model.pt").is_file()
    assert not (tmp_path / "work" / "model.pt2").exists()  # not asked for
    manifest = Manifest.read(tmp_path / "repo" / "classifier" / "1" / "model.onnx")
    assert manifest.inputs["torch_files"]["formats"] == ["torchscript"]
    # A build that asks for no PyTorch file hashes what it hashed before.
    assert "torch_files" not in Manifest.read(repository / "classifier/1/model.onnx").inputs


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision", "int8"], "unknown precision for the pytorch target 'int8'; choose one "
                                  "of fp32"),
        (["--onnx", "model.onnx"], "--onnx: the pytorch target traces TorchScript from the "
                                   "checkpoint"),
        (["--hardware-compatible"], "--hardware-compatible: options of TensorRT plans (--target "
                                    "gpu), not of pytorch"),
    ],
)  # fmt: skip
def test_bad_pytorch_target_options_are_named(checkpoint, digits, tmp_path, capsys, extra,
                                              message):  # fmt: skip
    assert cli.main(build_args(checkpoint, digits, tmp_path, "--target", "pytorch", *extra)) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "repo").exists()


def test_a_file_that_is_not_a_pytorch_model_is_named(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match=re.escape(f"{path} is not a TorchScript model: ")):
        torch_artifacts.load_torchscript(path)
    with pytest.raises(UserError, match=re.escape(f"{path} is not a torch.export program: ")):
        torch_artifacts.load_program(path)


def documented_commands(section: str) -> list[list[str]]:
    """The `resnet-triton` command lines of a build/README.md section, as the shell splits
    them (continuation lines joined, comments dropped)."""
    text = (ROOT / "build" / "README.md").read_text()
    part = text.split(f"\n## {section}\n")[1].split("\n## ")[0].replace("\\\n", " ")
    return [
        shlex.split(line, comments=True)[1:]
        for line in part.splitlines()
        if line.startswith(".venv/bin/resnet-triton ")
    ]


def test_the_documented_commands_parse_as_typed():
    commands = documented_commands("TorchScript and torch.export files")
    assert [command[0] for command in commands] == ["build", "build", "render"]
    parsed = [
        importlib.import_module(cli.COMMANDS[name][0]).get_args_parser().parse_args(rest)
        for name, *rest in commands
    ]
    assert (parsed[0].target, parsed[0].torchscript, parsed[0].torch_export) == ("cpu", True, True)
    assert (parsed[1].target, parsed[1].torchscript) == ("pytorch", False)  # implied by it
    assert (parsed[2].demo, parsed[2].target) == (True, "pytorch")
