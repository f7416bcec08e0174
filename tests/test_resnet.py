import json
from pathlib import Path

import pytest
import torch
import torchvision

from resnet_triton.resnet import CheckpointError, build_model, load_checkpoint, save_checkpoint
from resnet_triton.spec import ModelSpec

SPEC = ModelSpec(labels=("a", "b", "c"), arch="resnet18")


def test_head_has_one_output_per_label():
    model = build_model(SPEC, "none")
    assert model.fc.out_features == 3
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_local_weights_file_loads_the_backbone(tmp_path):
    source = torchvision.models.resnet18(weights=None)  # stands in for torchvision's .pth
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model(SPEC, str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit ResNet"):
        build_model(SPEC, str(path))


def test_missing_weights_file_names_the_choices(tmp_path):
    with pytest.raises(CheckpointError, match="takes imagenet, none or a file path"):
        build_model(SPEC, str(tmp_path / "nope.pth"))


def test_checkpoint_round_trip_keeps_spec_and_weights(tmp_path):
    model = build_model(SPEC, "none").eval()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, SPEC, metrics={"val_top1": 0.5})
    spec, loaded, payload = load_checkpoint(path)
    assert spec == SPEC
    assert payload["metrics"] == {"val_top1": 0.5}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", "cannot load"),
        (None, "is not a resnet-triton checkpoint"),
    ],
)
def test_bad_checkpoint_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weights": 1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_checkpoint_whose_weights_disagree_with_its_spec(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, build_model(SPEC, "none"), SPEC)
    payload = torch.load(path, weights_only=True)
    payload["spec"]["labels"] = ["a", "b"]  # 2 labels, weights for 3
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f"{path}: fc.weight is [3, 512] in the weights but [2, 512] in resnet18 with 2 "
        "classes, as its spec says"
    )
    del payload["state_dict"]["fc.bias"]
    payload["spec"]["labels"] = ["a", "b", "c"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f"{path}: weights do not fit resnet18 with 3 classes, as its spec says: 1 tensors "
        "missing (first ['fc.bias']), 0 unexpected (first [])"
    )


def test_a_checkpoint_written_before_the_serving_settings_moved_still_loads(tmp_path):
    """Today's checkpoints hold a spec with `batching` and `instances` (tests/data has one,
    written by the code of 2026-11-25): they load, keeping the batch limit."""
    saved = json.loads((Path(__file__).parent / "data" / "spec-2026-11-25.json").read_text())
    model = build_model(ModelSpec.from_dict(saved), weights="none")
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "resnet-triton/1", "spec": saved, "state_dict": model.state_dict()}, path)
    spec, loaded, _ = load_checkpoint(path)
    assert (spec.arch, spec.labels, spec.max_batch_size) == (
        "resnet18",
        ("ok", "scratch", "dent"),
        16,
    )
    assert loaded.fc.out_features == 3
