"""The fine-tuning guides' recipes (train/README.md, "Recipes"): an MLP head, focal loss,
layer-wise learning-rate decay, warm restarts and milestones, layer4-only training, the
gradient norm logged and the augmentation grid; each on exact figures, then all of them in
one `resnet-triton train` run whose MLP head is built to ONNX, gated and served by Triton."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import served
from PIL import Image
from torch import nn

from resnet_triton import cli
from resnet_triton.client import Classifier
from resnet_triton.predict import Predictor
from resnet_triton.resnet import build_model, load_checkpoint
from resnet_triton.spec import ModelSpec, SpecError
from resnet_triton.training.config import TrainConfig, resolve
from resnet_triton.training.loop import Trainer
from resnet_triton.training.optim import FocalLoss, Schedule
from resnet_triton.training.strategy import parameter_groups

LABELS = tuple("0123456789")


def config(**kwargs) -> TrainConfig:
    return TrainConfig(data="x", arch="resnet18", **kwargs)


def test_an_mlp_head_is_built_from_the_spec_and_travels_in_it():
    spec = ModelSpec(labels=LABELS, arch="resnet18", head="mlp:64", head_dropout=0.2)
    fc = build_model(spec).fc
    assert [type(m) for m in fc] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (fc[0].in_features, fc[0].out_features, fc[2].p, fc[3].out_features) == (
        512, 64, 0.2, 10)  # fmt: skip
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "head" not in ModelSpec(labels=LABELS).to_dict()  # a linear spec keeps its bytes
    for bad in ("mlp", "mlp:0", "mlp:x", "conv:3"):
        with pytest.raises(SpecError, match=f"head must be linear or mlp:N .*got '{bad}'"):
            resolve(None, {"data": "x", "head": bad})


def test_layer_decay_gives_each_stage_its_rate_from_layer4_down():
    cfg = config(lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    model = build_model(ModelSpec(LABELS, "resnet18"))
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    rates = {name: g["lr"] for name, g in groups.items() if not name.endswith("_no_decay")}
    assert rates == {"head": 1e-2, "layer4": 1e-3, "layer3": 5e-4, "layer2": 2.5e-4,
                     "layer1": 1.25e-4, "stem": 6.25e-5}  # fmt: skip
    assert groups["stem_no_decay"]["lr"] == 6.25e-5  # bn1 with conv1
    assert groups["stem_no_decay"]["weight_decay"] == 0
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == 11_181_642
    for bad in (0, 1.5):
        with pytest.raises(SpecError, match=f"--layer-decay must lie in \\(0, 1\\], got {bad}"):
            config(layer_decay=bad).validate()


def test_focal_loss_weighs_each_image_by_one_minus_its_probability_to_the_gamma():
    logits = torch.tensor([[math.log(9.0), 0.0], [0.0, 0.0]])  # p(true) 0.9 and 0.5
    labels = torch.tensor([0, 0])
    ce = -torch.log(torch.tensor([0.9, 0.5]))
    expected = (torch.tensor([0.1, 0.5]) ** 2 * ce).mean()
    assert torch.allclose(FocalLoss(2.0)(logits, labels), expected)
    weight = torch.tensor([3.0, 1.0])
    logits, labels = torch.randn(16, 2), torch.randint(0, 2, (16,))
    plain = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(logits, labels)
    assert torch.allclose(FocalLoss(0.0, weight, 0.1)(logits, labels), plain)  # gamma 0: CE


def factors(epochs: int, **kwargs) -> list[float]:
    """The learning-rate factor of each optimizer step, at 2 steps per epoch."""
    cfg = config(epochs=epochs, warmup_epochs=0, **kwargs)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule, seen = Schedule(optimizer, cfg, steps_per_epoch=2), []
    for _ in range(epochs * 2):
        seen.append(round(optimizer.param_groups[0]["lr"], 6))
        optimizer.step()
        schedule.after_step()
    return seen


def test_warm_restarts_and_milestones_schedules():
    # cycles of 1 epoch, 2, then 4 (restart_mult 2): back to the peak at steps 2 and 6
    assert factors(4, schedule="cosine-restarts", restart_epochs=1, restart_mult=2) == [
        1.0, 0.5, 1.0, 0.853553, 0.5, 0.146447, 1.0, 0.96194]  # fmt: skip
    assert factors(5, schedule="milestones", milestones=(2, 4), gamma=0.1) == [
        1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]  # fmt: skip
    with pytest.raises(SpecError, match=r"--schedule milestones needs --milestones: increasing "
                       r"epochs in \[1, 4\] \(--epochs 5\).*got \[3, 2\]"):  # fmt: skip
        config(epochs=5, schedule="milestones", milestones=(3, 2)).validate()


@pytest.fixture(scope="module")
def recipe_run(few_digits, tmp_path_factory):
    """Every recipe option in one `resnet-triton train` run on the few digits, 32 px."""
    out = tmp_path_factory.mktemp("recipes")
    argv = ["train", "--data", str(few_digits), "--out", str(out), "--arch=resnet18",
            "--weights=none", "--resize-size=36", "--crop-size=32", "--workers=0",
            "--no-hflip", "--epochs=3", "--lr=2e-3", "--head=mlp:64", "--strategy=layer4",
            "--loss=focal", "--focal-gamma=2", "--layer-decay=0.5",
            "--schedule=cosine-restarts", "--restart-epochs=1", "--warmup-epochs=0",
            "--clip-grad-norm=5"]  # fmt: skip
    assert cli.main(argv) == 0
    return out


def test_gradient_norms_leave_out_the_fp16_steps_that_overflowed():
    """GradScaler skips a step whose fp16 gradients overflowed (CUDA only); its norm, inf or
    nan, is left out of the epoch's figures instead of making them inf."""
    norms = SimpleNamespace(grad_norms=[1.0, math.inf, 3.0, math.nan])
    assert Trainer.grad_norm_figures(norms) == {"grad_norm": 2.0, "grad_norm_max": 3.0}
    figures = Trainer.grad_norm_figures(SimpleNamespace(grad_norms=[math.inf]))
    assert all(math.isnan(value) for value in figures.values())  # no finite step: nan


def test_one_run_takes_every_recipe_and_logs_gradient_norms(recipe_run):
    out = recipe_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["head"], saved["loss"], saved["layer_decay"]) == ("mlp:64", "focal", 0.5)
    spec, model, payload = load_checkpoint(out / "checkpoint.pt")
    assert spec.head == "mlp:64" and isinstance(model.fc, nn.Sequential)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [round(r["lr_layer3"] / r["lr_layer4"], 6) for r in history] == [0.5] * 3
    assert [r["lr_backbone"] == r["lr_layer4"] for r in history] == [True] * 3
    for record in history:
        assert 0 < record["grad_norm"] <= record["grad_norm_max"]  # measured before clipping
    # layer4 + head only: the stem and layers 1-3 are the random weights they started with
    torch.manual_seed(0)
    start = build_model(spec).state_dict()
    state = payload["state_dict"]
    assert all(torch.equal(state[k], start[k]) for k in start if k.startswith("layer3."))
    assert not torch.equal(state["layer4.0.conv1.weight"], start["layer4.0.conv1.weight"])
    with Image.open(out / "augmentation.png") as grid:
        assert grid.size[0] > 8 * 32  # 8 columns of 32 px crops, titled


def test_the_mlp_head_round_trips_through_onnx_and_serves(recipe_run, few_digits, tmp_path):
    repo = tmp_path / "model_repository"
    assert cli.main(["build", "--checkpoint", str(recipe_run / "checkpoint.pt"),
                     "--repository", str(repo), "--work-dir", str(tmp_path / "work"),
                     "--target=cpu", "--images", str(few_digits / "val")]) == 0  # fmt: skip
    gates = json.loads((tmp_path / "work" / "gates.json").read_text())
    assert [(g["gate"], g["passed"], g["top1_agreement"]) for g in gates] == [
        ("export", True, 1.0)]  # fmt: skip
    images = sorted((few_digits / "val").glob("*/*.png"))
    expected = Predictor.from_checkpoint(recipe_run / "checkpoint.pt").probabilities(images)
    onnx = Predictor.from_onnx(next(repo.glob("classifier/*/model.onnx")))
    assert np.abs(onnx.probabilities(images) - expected).max() < 1e-4
    with served(repo, tmp_path) as server, Classifier(f"localhost:{server.ports.grpc}") as client:
        results = client.classify(images, top_k=10)
    labels = onnx.spec.labels
    for result, want in zip(results, expected, strict=True):
        got = {p.label: p.score for p in result.predictions}
        assert max(abs(got[label] - want[i]) for i, label in enumerate(labels)) < 1e-4
