"""Structured pruning (training/pruning.py, `resnet-triton prune`) on the digits.

The unpruned model is the session's checkpoint (resnet18, 3 epochs, 64 px). Pruned at
0.5 with round-to 8, every width halves: 11.18 M parameters become 2.80 M and 0.149
GMACs become 0.040 per image. Seen on this CPU: top-1 0.98 unpruned, about 0.1 right
after pruning (chance), 0.96 after 2 epochs of recovery.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NAMES, served
from torch import nn

from resnet_triton import cli
from resnet_triton.build import command as build
from resnet_triton.client import Classifier
from resnet_triton.resnet import CheckpointError, build_model, load_checkpoint, save_checkpoint
from resnet_triton.spec import ModelSpec, SpecError
from resnet_triton.training.loaders import predict_folder
from resnet_triton.training.pruning import count, prune

DIGITS = tuple("0123456789")
RATIO = "the pruning ratio (--ratio, --prune-ratio)"
RECOVERY = ["--epochs", "2", "--lr", "3e-3", "--no-hflip", "--workers", "0"]


def resnet18_parameters(stem: int, stages: tuple[int, ...], classes: int) -> int:
    """A resnet18's parameters from its widths: convolutions (no bias), BatchNorms
    (weight and bias), 1x1 downsampling where a stage changes width, the linear head."""
    total = 3 * 7 * 7 * stem + 2 * stem
    inputs = stem
    for width in stages:
        for block in range(2):
            first = inputs if block == 0 else width
            total += 9 * first * width + 2 * width + 9 * width * width + 2 * width
            if block == 0 and first != width:
                total += first * width + 2 * width
        inputs = width
    return total + inputs * classes + classes


def test_pruning_halves_every_width_of_a_resnet18():
    spec = ModelSpec(labels=DIGITS, arch="resnet18")
    model = build_model(spec).eval()
    stock = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    before = count(model, spec)
    pruned_spec, pruned = prune(model, spec, ratio=0.5, round_to=8)
    assert dict(pruned_spec.widths) == {name: width // 2 for name, width in stock.items()}
    assert resnet18_parameters(64, (64, 128, 256, 512), 10) == before["params"] == 11_181_642
    expected = resnet18_parameters(32, (32, 64, 128, 256), 10)
    assert sum(p.numel() for p in pruned.parameters()) == expected == 2_801_450
    after = count(pruned, pruned_spec)
    assert after["params"] == expected
    assert after["gmacs"] < 0.3 * before["gmacs"]  # every layer's MACs scale by 1/4 or 1/2
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():  # Torch-Pruning's model and the one the spec builds are the same
        assert torch.equal(model(x), pruned(x))


def test_a_pruned_resnet50_with_a_dropout_head_rebuilds_from_its_spec():
    spec = ModelSpec(labels=DIGITS, arch="resnet50", head_dropout=0.2)
    model = build_model(spec).eval()
    pruned_spec, pruned = prune(model, spec, ratio=0.3, round_to=8)
    assert dict(pruned_spec.widths)["layer1.0.conv3"] == 176  # 256 less 80: 0.3 rounded to 8
    again = ModelSpec.from_dict(json.loads(pruned_spec.to_json()))
    assert again == pruned_spec
    rebuilt = build_model(again).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    assert rebuilt.fc[1].in_features == 1432
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(pruned.eval()(x), rebuilt(x))


def test_widths_that_break_a_residual_connection_are_named():
    spec = ModelSpec(labels=DIGITS, arch="resnet18", widths=(("conv1", 32),))
    with pytest.raises(SpecError) as error:
        build_model(spec)
    assert str(error.value) == (
        "widths: layer1.0 adds a shortcut of 32 channels to a branch of 64; a residual "
        "connection needs them equal"
    )
    with pytest.raises(SpecError, match=r"widths name \['fc'\], which are not convolutions"):
        build_model(ModelSpec(labels=DIGITS, arch="resnet18", widths=(("fc", 8),)))


@pytest.fixture(scope="module")
def pruned(checkpoint, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    flags = ["--data", str(digits), "--checkpoint", str(checkpoint), "--ratio", "0.5"]
    assert cli.main(["prune", *flags, "--out", str(out), *RECOVERY]) == 0
    return out


def test_recovery_brings_the_pruned_model_back(pruned, checkpoint, digits):
    report = json.loads((pruned / "evaluation.json").read_text())["pruning"]
    assert report["from"] == str(checkpoint)
    assert (report["ratio"], report["round_to"]) == (0.5, 8)
    before, after = report["unpruned"], report["pruned"]
    assert (before["params"], after["params"]) == (11_181_642, 2_801_450)
    assert after["gmacs"] < 0.3 * before["gmacs"]
    assert after["top1_before_recovery"] < 0.5 < 0.9 <= after["top1"]
    spec, model, _ = load_checkpoint(pruned / "checkpoint.pt")
    assert len(spec.widths) == 20 and dict(spec.widths)["layer4.1.conv2"] == 256
    assert sum(p.numel() for p in model.parameters()) == after["params"]
    probs, targets = predict_folder(pruned / "checkpoint.pt", digits / "val", torch.device("cpu"))
    assert float((probs.argmax(1) == targets).mean()) == pytest.approx(after["top1"], abs=1e-9)
    config = (pruned / "config.yaml").read_text()
    assert f"prune_from: {checkpoint}\nprune_ratio: 0.5\nprune_round_to: 8\n" in config


def test_resume_reproduces_the_pruning_run(pruned, checkpoint, digits, tmp_path):
    flags = ["--data", str(digits), "--checkpoint", str(checkpoint), "--ratio", "0.5"]
    assert cli.main(["prune", *flags, "--out", str(tmp_path), *RECOVERY, "--stop-after", "1"]) == 0
    assert not (tmp_path / "evaluation.json").exists()
    resume = ["--resume", str(tmp_path / "last.pt")]
    assert cli.main(["prune", *flags, "--out", str(tmp_path), *RECOVERY, *resume]) == 0
    timing = ("seconds", "train_images_per_s")
    straight, resumed = (
        [{k: v for k, v in r.items() if k not in timing}
         for r in json.loads((out / "metrics.json").read_text())["history"]]
        for out in (pruned, tmp_path)
    )  # fmt: skip
    assert len(resumed) == 2
    for a, b in zip(straight, resumed, strict=True):
        assert a["val_top1"] == b["val_top1"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    first, second = (
        json.loads((out / "evaluation.json").read_text()) for out in (pruned, tmp_path)
    )
    assert first["pruning"] == second["pruning"]


def test_torchrun_ranks_prune_alike_and_rank_0_writes(checkpoint, few_digits, tmp_path):
    """2 CPU processes (gloo), 1 epoch at 32 px on few digits: every rank prunes the
    checkpoint to the same widths (DDP would refuse parameters of different shapes) and
    rank 0 writes."""
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone",
                "--nproc_per_node=2", "-m", "resnet_triton.cli"]  # fmt: skip
    flags = ["--data", str(few_digits), "--checkpoint", str(checkpoint), "--ratio", "0.5",
             "--out", str(tmp_path), "--epochs", "1", "--resize-size", "36", "--crop-size",
             "32", "--workers", "0", "--no-hflip", "--no-tensorboard"]  # fmt: skip
    result = subprocess.run(
        [*torchrun, "prune", *flags], env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr  # rank 0 only
    assert printed.count("pruned resnet18 at ratio 0.5: 11,181,642 -> 2,801,450") == 1
    spec, _, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert dict(spec.widths)["conv1"] == 32 and spec.preprocessing.crop_size == 32
    report = json.loads((tmp_path / "evaluation.json").read_text())["pruning"]
    assert report["pruned"]["params"] == 2_801_450


@pytest.mark.integration
def test_the_pruned_model_passes_the_gates_and_serves_pytorchs_answers(pruned, digits, tmp_path):
    options = build.BuildOptions(
        pruned / "checkpoint.pt", tmp_path / "repo", tmp_path / "build", target="cpu",
        images=digits / "val",
    )  # fmt: skip
    result = build.run(options)
    assert result.reports and all(r.passed for r in result.reports)
    images = sorted((digits / "val").rglob("*.png"))
    probs, _ = predict_folder(pruned / "checkpoint.pt", digits / "val", torch.device("cpu"))
    spec = load_checkpoint(pruned / "checkpoint.pt")[0]
    with (
        served(tmp_path / "repo", tmp_path) as server,
        Classifier(f"localhost:{server.ports.grpc}", model=NAMES.ensemble) as client,
    ):
        results = client.classify(images, top_k=1)
    assert [r.error for r in results] == [None] * len(images)
    assert [r.top1.label for r in results] == [spec.labels[i] for i in probs.argmax(1)]
    served_top = np.array([r.top1.score for r in results])
    np.testing.assert_allclose(served_top, probs.max(1), atol=1e-4)


def test_the_pruned_checkpoint_explains(pruned, digits, tmp_path, capsys):
    image = sorted((digits / "val" / "3").glob("*.png"))[0]
    flags = ["--checkpoint", str(pruned / "checkpoint.pt"), "--out", str(tmp_path)]
    assert cli.main(["explain", *flags, str(image)]) == 0
    heatmaps = np.load(tmp_path / "heatmaps.npz")
    assert len(heatmaps.files) == 1 and heatmaps[heatmaps.files[0]].shape == (64, 64)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ratio", "1.5"], f"{RATIO} must lie in (0, 1), got 1.5"),
        (["--ratio", "0"], f"{RATIO} must lie in (0, 1), got 0.0"),
        (
            ["--ratio", "0.97"],
            "--ratio 0.97 with --round-to 8 leaves conv1 (64 channels) and 14 more layers "
            "whole: Torch-Pruning removes whole multiples of 8 channels and never all of "
            "them, so a layer of C channels needs a ratio from 8/C to 1 - 8/C",
        ),
        (["--arch", "resnet34"], "has architecture resnet18; this run has resnet34"),
        (["--weights", "imagenet"], "--weights imagenet with --prune-from (--checkpoint): a "
         "pruned run starts from the pruned checkpoint's weights; pass --weights none"),
    ],
)  # fmt: skip
def test_bad_pruning_settings_are_named(checkpoint, digits, tmp_path, capsys, flags, message):
    base = ["prune", "--data", str(digits), "--checkpoint", str(checkpoint)]
    assert cli.main([*base, "--out", str(tmp_path), *flags, *RECOVERY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "checkpoint.pt").exists()


def test_an_architecture_prune_cannot_rebuild_is_named(digits, tmp_path, capsys):
    spec = ModelSpec(labels=DIGITS, arch="resnet18")
    save_checkpoint(tmp_path / "vgg.pt", build_model(spec), spec)
    payload = torch.load(tmp_path / "vgg.pt", weights_only=True)
    payload["spec"]["arch"] = "vgg16"
    torch.save(payload, tmp_path / "vgg.pt")
    flags = ["--data", str(digits), "--checkpoint", str(tmp_path / "vgg.pt")]
    assert cli.main(["prune", *flags, "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == (
        f"error: cannot prune vgg16 (--checkpoint {tmp_path / 'vgg.pt'}): resnet-triton prune "
        "takes resnet18, resnet34, resnet50, resnet101, resnet152\n"
    )
    assert cli.main(["prune", "--data", str(digits)]) == 1
    assert capsys.readouterr().err == (
        "error: resnet-triton prune needs --checkpoint checkpoint.pt to prune\n"
    )


def test_a_checkpoint_whose_widths_do_not_fit_its_weights_is_named(
    pruned, digits, tmp_path, capsys
):
    spec = load_checkpoint(pruned / "checkpoint.pt")[0]
    stock = dataclasses.replace(spec, widths=())
    save_checkpoint(tmp_path / "bad.pt", build_model(stock), spec)  # stock weights, pruned spec
    bad = tmp_path / "bad.pt"
    expected = (
        f"{bad}: conv1.weight is [64, 3, 7, 7] in the weights but [32, 3, 7, 7] in resnet18 "
        "with 10 classes and 20 pruned layer widths, as its spec says"
    )
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(bad)
    assert str(error.value) == expected
    assert cli.main(["build", "--checkpoint", str(bad), "--repository", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err == f"error: {expected}\n"
    flags = ["--data", str(digits), "--checkpoint", str(bad), "--out", str(tmp_path / "o")]
    assert cli.main(["prune", *flags]) == 1
    assert capsys.readouterr().err == f"error: {expected}\n"
