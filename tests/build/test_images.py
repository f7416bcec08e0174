"""A folder of classes, trained, built and calibrated through the CLI: the gates, the
INT8 calibration and the rejection threshold see exactly the split training held out."""

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from resnet_triton import cli
from resnet_triton.build.manifest import Manifest, files_sha256
from resnet_triton.data import DataError, held_out_images
from resnet_triton.spec import Preprocessing

CLASSES = ("0", "1", "2")
PER_CLASS = 20
VAL_SPLIT, SEED = 0.25, 3


@pytest.fixture(scope="module")
def flat_run(digits, tmp_path_factory):
    """(flat data folder, checkpoint, the expected (train, val) file lists)."""
    root = tmp_path_factory.mktemp("flat")
    data = root / "data"
    for label in CLASSES:
        (data / label).mkdir(parents=True)
        for path in sorted((digits / "train" / label).glob("*.png"))[:PER_CLASS]:
            shutil.copy(path, data / label / path.name)
    # What training must have held out, computed here from the files themselves:
    # torchvision's order (classes, then files, sorted), sklearn's stratified split.
    files = [str(p) for label in CLASSES for p in sorted((data / label).glob("*.png"))]
    targets = [int(p.split("/")[-2]) for p in files]
    train_idx, val_idx = train_test_split(
        np.arange(len(files)), test_size=VAL_SPLIT, stratify=targets, random_state=SEED
    )
    expected = ([files[i] for i in sorted(train_idx)], [files[i] for i in sorted(val_idx)])
    out = root / "train"
    assert cli.main([
        "train", "--data", str(data), "--out", str(out), "--arch", "resnet18",
        "--weights", "none", "--epochs", "1", "--val-split", str(VAL_SPLIT),
        "--seed", str(SEED), "--resize-size", "36", "--crop-size", "32", "--workers", "0",
    ]) == 0  # fmt: skip
    return data, out / "checkpoint.pt", expected


def build(checkpoint, root, *flags):
    return cli.main([
        "build", "--checkpoint", str(checkpoint), "--target", "cpu", "--repository",
        str(root / "repo"), "--work-dir", str(root / "work"), *flags,
    ])  # fmt: skip


def test_the_gates_see_exactly_the_held_out_split(flat_run, tmp_path):
    data, checkpoint, (train, val) = flat_run
    assert len(val) == 15 and not set(val) & set(train)
    assert build(checkpoint, tmp_path) == 0
    (export,) = json.loads((tmp_path / "work" / "gates.json").read_text())
    assert export["image_names"] == val  # every held-out image (fewer than 64), no other
    assert export["agreement_images"] == len(val)
    # The training folder given as --images is split the same way, not taken whole.
    assert build(checkpoint, tmp_path / "again", "--images", str(data)) == 0
    (again,) = json.loads((tmp_path / "again" / "work" / "gates.json").read_text())
    assert again["image_names"] == val


def test_int8_calibrates_on_the_training_split_only(flat_run, tmp_path):
    _, checkpoint, (train, _) = flat_run
    assert build(checkpoint, tmp_path, "--precision", "int8", "--calibration-images", "45") == 0
    manifest = Manifest.read(tmp_path / "repo" / "classifier" / "1" / "model.onnx")
    assert manifest.inputs["calibration_images"] == 45
    assert manifest.inputs["calibration_sha256"] == files_sha256(train)


def test_calibrate_measures_on_the_held_out_split(flat_run, tmp_path, capsys):
    data, checkpoint, (_, val) = flat_run
    copy = tmp_path / "checkpoint.pt"
    shutil.copy(checkpoint, copy)  # calibrate rewrites its checkpoint
    assert cli.main(["calibrate", "--checkpoint", str(copy), "--data", str(data)]) == 0
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["val_images"] == len(val)
    assert f"of {len(val)} validation images rejected" in capsys.readouterr().out


def test_training_images_are_refused_as_held_out(tmp_path):
    config = {"data": str(tmp_path / "split")}
    (tmp_path / "split" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"split/train is the training split of ckpt; give held"):
        held_out_images(tmp_path / "split" / "train", config, Preprocessing(), None, "ckpt")


def test_a_changed_folder_cannot_give_its_held_out_split(flat_run, tmp_path, capsys):
    data, checkpoint, _ = flat_run
    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    shutil.copy(sorted((changed / "1").glob("*.png"))[0], changed / "1" / "added.png")
    moved = tmp_path / "checkpoint.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["data"] = str(changed)  # the same run, its folder grown since
    torch.save(payload, moved)
    assert build(moved, tmp_path) == 1
    err = capsys.readouterr().err
    assert f"error: {changed} no longer gives the validation split that {moved} was trained " in err
    assert "(--images DIR: held-out images for the gates)" in err
    assert cli.main(["calibrate", "--checkpoint", str(moved), "--data", str(changed)]) == 1
    assert "no longer gives the validation split" in capsys.readouterr().err
