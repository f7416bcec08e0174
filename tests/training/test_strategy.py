"""Each strategy trains exactly the parameters it should, stage by stage.

Counts are resnet18 with a 10-class head: layer4 8,393,728 parameters,
layer3 2,099,712, head 5,130, all 11,181,642, BatchNorm affine 9,600.
"""

import pytest
import torch

from resnet_triton.resnet import build_model
from resnet_triton.spec import ModelSpec
from resnet_triton.training.config import TrainConfig
from resnet_triton.training.strategy import (
    apply_stage,
    parameter_groups,
    set_train_mode,
    stage_for_epoch,
)

HEAD, LAYER4, LAYER3, ALL, BN = 5_130, 8_393_728, 2_099_712, 11_181_642, 9_600


def model():
    torch.manual_seed(0)
    return build_model(ModelSpec(labels=tuple("0123456789"), arch="resnet18"))


def config(**kwargs):
    return TrainConfig(data="x", arch="resnet18", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "stage", "expected"),
    [
        ({"strategy": "linear-probe"}, 0, HEAD),
        ({"strategy": "layer4"}, 0, HEAD + LAYER4),
        ({"strategy": "staged"}, 0, HEAD + LAYER4),
        ({"strategy": "staged"}, 1, HEAD + LAYER4 + LAYER3),
        ({"strategy": "staged"}, 2, ALL),
        ({"strategy": "full"}, 0, ALL),
        ({"strategy": "full", "freeze_bn": True}, 0, ALL - BN),
    ],
)
def test_trainable_parameter_counts(kwargs, stage, expected):
    assert apply_stage(model(), config(**kwargs), stage) == expected


def test_stages_follow_stage_epochs():
    cfg = config(strategy="staged", stage_epochs=(2, 3), epochs=8)
    assert [stage_for_epoch(cfg, e) for e in range(1, 9)] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [stage_for_epoch(config(strategy="full"), e) for e in (1, 5)] == [0, 0]


@pytest.mark.parametrize(
    ("kwargs", "stage", "changes"),
    [
        ({"strategy": "linear-probe"}, 0, {"fc"}),
        ({"strategy": "layer4"}, 0, {"fc", "layer4"}),
        ({"strategy": "staged"}, 0, {"fc", "layer4"}),
        ({"strategy": "staged"}, 1, {"fc", "layer4", "layer3"}),
        ({"strategy": "full", "freeze_bn": True}, 0, None),
    ],
)
def test_a_real_step_changes_only_what_trains(kwargs, stage, changes):
    net = model()
    cfg = config(**kwargs)
    apply_stage(net, cfg, stage)
    set_train_mode(net, cfg, stage)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.AdamW(parameter_groups(net, cfg), lr=0.01)
    loss = net(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if changes is None:  # full with frozen BatchNorm: everything but BatchNorm moves
        batchnorm = {
            f"{name}.{key}"
            for name, module in net.named_modules()
            if isinstance(module, torch.nn.BatchNorm2d)
            for key in module.state_dict()
        }
        assert changed == set(before) - batchnorm
    else:
        # Weights and BatchNorm statistics of frozen blocks stay as they were.
        assert {k.split(".")[0] for k in changed} == changes


def test_groups_split_learning_rates_and_skip_decay_on_norms_and_biases():
    cfg = config(lr=0.001, head_lr=0.01, weight_decay=0.05)
    groups = {g["name"]: g for g in parameter_groups(model(), cfg)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == groups["head_no_decay"]["lr"] == 0.01
    assert groups["backbone"]["lr"] == 0.001
    assert (
        groups["backbone_no_decay"]["weight_decay"] == groups["head_no_decay"]["weight_decay"] == 0
    )
    assert groups["backbone"]["weight_decay"] == 0.05
    assert all(p.ndim == 1 for p in groups["backbone_no_decay"]["params"])
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == ALL
