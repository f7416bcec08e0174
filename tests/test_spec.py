import json

import pytest

from resnet_triton.spec import Batching, ModelSpec, Preprocessing, SpecError


def test_round_trips_through_json():
    spec = ModelSpec(
        labels=("cat", "dog", "owl"),
        arch="resnet34",
        preprocessing=Preprocessing(resize_size=160, crop_size=128),
        batching=Batching(max_batch_size=16, preferred_batch_sizes=(4, 16)),
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
        ({"batching": Batching(max_batch_size=8)}, "[16, 32] lie outside 1..max_batch_size (8)"),
    ],
)
def test_bad_fields_are_named(kwargs, message):
    with pytest.raises(SpecError) as info:
        ModelSpec(**{"labels": ("a", "b"), **kwargs})
    assert message in str(info.value)


def test_unknown_field_in_saved_spec_is_named():
    data = ModelSpec(labels=("a", "b")).to_dict()
    data["preprocessing"]["crop"] = 3
    with pytest.raises(SpecError, match=r"unknown field\(s\) \['crop'\] in preprocessing"):
        ModelSpec.from_dict(data)
