import dataclasses
from pathlib import Path

import pytest

from resnet_triton.data import Augmentation
from resnet_triton.spec import SpecError
from resnet_triton.training.config import TrainConfig, resolve
from resnet_triton.training.options import config_from_args, get_args_parser


def parse(*argv):
    return config_from_args(get_args_parser().parse_args(list(argv)))


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data: /data\nepochs: 7\nlr: 0.01\nrrc-scale: [0.5, 1.0]\nhflip: false\n")
    cfg = parse("--config", str(config), "--lr", "0.002", "--batch-size", "16")
    assert (cfg.data, cfg.epochs, cfg.lr, cfg.batch_size) == ("/data", 7, 0.002, 16)
    assert cfg.rrc_scale == (0.5, 1.0)
    assert cfg.hflip is False
    assert cfg.weight_decay == TrainConfig(data="x").weight_decay


def test_resolved_config_reloads_to_the_same_config(tmp_path):
    cfg = parse(
        "--data", "/d", "--strategy", "staged", "--stage-epochs", "1", "2", "--head-lr", "0.1"
    )
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml())
    assert resolve(saved, {}) == cfg


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("data: /d\nepoch: 3\n", r"unknown config field\(s\) \['epoch'\]"),
        ("data: /d\nepochs: many\n", "config field epochs: cannot use 'many'"),
        ("data: /d\namp: maybe\n", "config field amp: cannot use 'maybe'"),
        ("epochs: 3\n", "no data folder"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_yaml_is_named(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SpecError, match=message):
        resolve(path, {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--strategy", "half"],
            "unknown strategy 'half'; choose one of linear-probe, layer4, staged, full",
        ),
        (["--arch", "vgg16"], "unknown architecture 'vgg16'; choose one of resnet18"),
        (["--optimizer", "lion"], "unknown optimizer 'lion'; choose one of adamw, sgd"),
        (
            ["--schedule", "linear"],
            "unknown schedule 'linear'; choose one of cosine, cosine-restarts, step, "
            "milestones, plateau",
        ),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--strategy", "staged", "--epochs", "4", "--stage-epochs", "2", "2"], "leave epochs"),
        (["--rrc-scale", "0.9", "0.2"], "--rrc-scale needs 0 < min <= max <= 1"),
        (["--on-bad-image", "ignore"], "unknown on_bad_image 'ignore'; choose one of fail, skip"),
    ],
)
def test_bad_choices_are_named(argv, message):
    with pytest.raises(SpecError, match=message):
        parse("--data", "/d", *argv)


def test_example_yaml_lists_every_option_at_its_default():
    example = Path(__file__).parents[2] / "train" / "example.yaml"
    cfg = resolve(example, {})
    assert cfg == TrainConfig(data="path/to/images")
    keys = {line.split(":")[0] for line in example.read_text().splitlines() if line[:1].isalpha()}
    assert keys == {f.name for f in dataclasses.fields(TrainConfig)}


def test_augmentation_flags_reach_the_transform_settings():
    assert TrainConfig(data="d").augmentation == Augmentation()  # one set of defaults
    cfg = config_from_args(
        get_args_parser().parse_args(["--data", "d", "--no-hflip", "--rotation", "10"])
    )
    assert cfg.augmentation == Augmentation(hflip=False, rotation=10.0)
