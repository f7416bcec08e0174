"""The serving configuration: defaults, YAML, and bad values named by field."""

import pytest

from resnet_triton.serving.config import ServingConfig
from resnet_triton.spec import ModelSpec, SpecError

SPEC = ModelSpec(labels=("a", "b"), max_batch_size=16)


def test_one_version_is_served_and_versions_is_no_setting(tmp_path):
    """Publishing replaces the model in its one version folder: a `versions` setting could
    never take effect, so it is refused by name rather than ignored."""
    path = tmp_path / "serving.yaml"
    path.write_text("versions: 2\n")
    with pytest.raises(
        SpecError, match=rf"unknown field\(s\) \['versions'\] in serving config {path}"
    ):
        ServingConfig.load(path)


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("preferred_batch_sizes: [4, 16]\nclassifier_instances: 2\nwarmup: false\n")
    serving = ServingConfig.load(path)
    assert serving == ServingConfig(preferred_batch_sizes=(4, 16), classifier_instances=2,
                                    warmup=False)  # fmt: skip
    serving.validate(SPEC)
    assert ServingConfig.from_dict(serving.to_dict()) == serving


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"preferred_batch_sizes": (8, 32)},
         "serving.preferred_batch_sizes [32] lie outside 1..max_batch_size (16)"),
        ({"preferred_batch_sizes": (4,), "classifier_instances": 0},
         "serving.classifier_instances must be an integer >= 1, got 0"),
        ({"preferred_batch_sizes": (4,), "preprocess_queue_delay_us": -1},
         "serving.preprocess_queue_delay_us must be an integer >= 0, got -1"),
        ({"preferred_batch_sizes": (4,), "classifier_nice": 20},
         "serving.classifier_nice must be an integer in 0..19, got 20"),
        ({"preferred_batch_sizes": (4,), "warmup": "yes"},
         "serving.warmup must be true or false, got 'yes'"),
        ({"layout": "single"}, "serving.layout must be one of ensemble, fused, got 'single'"),
        ({"layout": "fused", "preprocess_backend": "dali"},
         "serving.layout: fused decodes in the Python backend; it cannot run with "
         "serving.preprocess_backend 'dali'"),
        ({"layout": "fused", "fused_instances": 0},
         "serving.fused_instances must be an integer >= 1, got 0"),
        ({"capture": "yes"}, "serving.capture must be true or false, got 'yes'"),
        ({"fused_preferred_batch_sizes": (0, 2)},
         "serving.fused_preferred_batch_sizes [0] lie outside 1..max_batch_size (16)"),
    ],
)  # fmt: skip
def test_bad_values_are_named(fields, message):
    with pytest.raises(SpecError) as info:
        ServingConfig(**fields).validate(SPEC)
    assert str(info.value) == message


def test_unreadable_or_unknown_fields_are_named(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("instances: 2\n")
    with pytest.raises(SpecError, match=r"unknown field\(s\) \['instances'\] in serving config"):
        ServingConfig.load(path)
    with pytest.raises(SpecError, match="cannot read serving config"):
        ServingConfig.load(tmp_path / "missing.yaml")
