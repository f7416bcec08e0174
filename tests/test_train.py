import json

import pytest
import torch

from resnet_triton.resnet import build_model, load_checkpoint
from resnet_triton.spec import ModelSpec, SpecError
from resnet_triton.train import TrainConfig, apply_strategy, run

TINY = {"resize_size": 36, "crop_size": 32, "workers": 0, "weights": "none", "arch": "resnet18"}


def test_trained_checkpoint_carries_spec_metrics_and_config(checkpoint):
    spec, _, payload = load_checkpoint(checkpoint)
    assert spec.labels == tuple(str(d) for d in range(10))
    assert spec.preprocessing.crop_size == 64
    assert payload["config"]["epochs"] == 3
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert payload["metrics"] == metrics["best"]
    # 3 epochs from random weights at 64x64 px: the digits are easy enough.
    assert metrics["best"]["val_top1"] >= 0.9


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("linear-probe", 512 * 10 + 10), ("full", 11_181_642)],
)
def test_strategy_decides_what_trains(strategy, expected):
    model = build_model(ModelSpec(labels=tuple("0123456789"), arch="resnet18"))
    params = apply_strategy(model, strategy)
    assert sum(p.numel() for p in params) == expected


def test_linear_probe_leaves_the_backbone_untouched(digits, tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(
        data=str(digits), out=str(tmp_path), strategy="linear-probe", epochs=1, **TINY
    )
    run(config)
    _, trained, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    torch.manual_seed(config.seed)
    initial = build_model(ModelSpec(labels=tuple("0123456789"), arch="resnet18"))
    assert torch.equal(trained.conv1.weight, initial.conv1.weight)
    # BatchNorm statistics are part of the frozen backbone too.
    assert torch.equal(trained.layer3[0].bn1.running_mean, initial.layer3[0].bn1.running_mean)
    assert not torch.equal(trained.fc.weight, initial.fc.weight)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("strategy", "half", "unknown strategy 'half'; choose one of linear-probe, full"),
        ("arch", "vgg16", "unknown architecture 'vgg16'; choose one of resnet18"),
        ("epochs", 0, "--epochs must be >= 1"),
    ],
)
def test_bad_config_is_named(field, value, message):
    with pytest.raises(SpecError, match=message):
        TrainConfig(data="x", **{field: value}).validate()
