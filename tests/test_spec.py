import json
from pathlib import Path

import pytest

from resnet_triton.spec import ModelSpec, Preprocessing, SpecError

DATA = Path(__file__).parent / "data"


def test_round_trips_through_json():
    spec = ModelSpec(
        labels=("cat", "dog", "owl"),
        arch="resnet34",
        preprocessing=Preprocessing(resize_size=160, crop_size=128),
        max_batch_size=16,
    )
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert again.num_classes == 3
    assert again.preprocessing.input_shape == (3, 128, 128)


def test_preprocessing_round_trips_through_triton_parameters():
    cfg = Preprocessing(resize_size=300, crop_size=256, interpolation="bicubic")
    params = cfg.to_params()
    assert params["mean"] == json.dumps(list(cfg.mean))
    assert Preprocessing.from_params({**params, "EXECUTION_ENV_PATH": "/x"}) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet9"}, "unknown architecture 'resnet9'; choose one of resnet18, resnet34"),
        ({"labels": ("only",)}, "at least 2 labels"),
        ({"labels": ("a", "a")}, "labels must be unique"),
        ({"labels": ("a", "b\nc")}, "non-empty single lines"),
        ({"preprocessing": Preprocessing(resize_size=200, crop_size=224)}, "resize_size (200)"),
        ({"preprocessing": Preprocessing(interpolation="lanczos")}, "interpolation 'lanczos'"),
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"reject_below": 1.0}, "reject_below must lie in (0, 1), got 1.0"),
        ({"widths": (("conv1", 0),)}, "channel counts >= 1, got 'conv1': 0"),
    ],
)
def test_bad_fields_are_named(kwargs, message):
    with pytest.raises(SpecError) as info:
        ModelSpec(**{"labels": ("a", "b"), **kwargs})
    assert message in str(info.value)


def test_pruned_widths_round_trip_and_a_stock_spec_does_not_carry_them():
    stock = ModelSpec(labels=("a", "b"), arch="resnet18")
    assert "widths" not in stock.to_dict()  # specs from before pruning keep their bytes
    pruned = ModelSpec(labels=("a", "b"), arch="resnet18", widths=(("conv1", 32), ("fc", 8)))
    assert json.loads(pruned.to_json())["widths"] == {"conv1": 32, "fc": 8}
    assert ModelSpec.from_json(pruned.to_json()) == pruned
    with pytest.raises(SpecError, match=r"widths must be a mapping, got \[\['conv1', 32\]\]"):
        ModelSpec.from_dict({"labels": ["a", "b"], "widths": [["conv1", 32]]})


def test_unknown_field_in_saved_spec_is_named():
    data = ModelSpec(labels=("a", "b")).to_dict()
    data["preprocessing"]["crop"] = 3
    with pytest.raises(SpecError, match=r"unknown field\(s\) \['crop'\] in preprocessing"):
        ModelSpec.from_dict(data)


def test_a_spec_written_before_serving_settings_left_it_still_loads():
    """Checkpoints and ONNX files up to 2026-11-25 carry `batching` and `instances`."""
    saved = json.loads((DATA / "spec-2026-11-25.json").read_text())
    assert saved["batching"]["preferred_batch_sizes"] == [4, 16]  # what such a file holds
    spec = ModelSpec.from_dict(saved)
    assert spec.max_batch_size == 16  # the model contract keeps the batch limit
    assert spec.labels == ("ok", "scratch", "dent") and spec.arch == "resnet18"
    assert "batching" not in spec.to_dict() and "instances" not in spec.to_dict()
