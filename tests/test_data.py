from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_triton.build.images import held_out_set
from resnet_triton.data import (
    Augmentation,
    DataError,
    held_out_images,
    image_folder,
    list_splits,
    load_splits,
    split_fingerprint,
)
from resnet_triton.digits import write_digits
from resnet_triton.errors import UserError
from resnet_triton.preprocess import ImageDecodeError, decode_image, image_files
from resnet_triton.spec import ModelSpec, Preprocessing
from resnet_triton.training import TrainConfig


def make_folder(root, classes, per_class=2):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10, 10), (i, 0, 0)).save(root / name / f"{i}.png")


def splits(root, **kwargs):
    return load_splits(root, Preprocessing(36, 32), Augmentation(), **kwargs)


def test_digits_are_written_as_a_fixed_stratified_split(tmp_path):
    counts = write_digits(tmp_path / "a")
    write_digits(tmp_path / "b")
    assert counts == {"train": 1437, "val": 360}
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and len(files_a) == 1797
    val = image_folder(tmp_path / "a" / "val")
    assert val.classes == [str(d) for d in range(10)]
    assert np.bincount(val.targets).min() >= 35  # stratified: every digit is in val


def test_one_folder_is_split_by_ratio_stratified_and_seeded(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"], per_class=10)
    first = splits(tmp_path, val_split=0.3, seed=1)
    again = splits(tmp_path, val_split=0.3, seed=1)
    other = splits(tmp_path, val_split=0.3, seed=2)
    assert (len(first.train), len(first.val), first.test) == (21, 9, None)
    assert np.bincount(first.val.targets).tolist() == [3, 3, 3]
    assert first.val.samples == again.val.samples
    assert first.val.samples != other.val.samples
    assert not set(first.train.samples) & set(first.val.samples)
    assert first.train.transform is not first.val.transform  # augmentation on train only


def test_train_val_and_test_folders(tmp_path):
    for split in ("train", "val", "test"):
        make_folder(tmp_path / split, ["a", "b"])
    result = splits(tmp_path)
    assert (len(result.train), len(result.val), len(result.test)) == (4, 4, 4)


@pytest.mark.parametrize("on_bad_image", ["fail", "skip"])
def test_undecodable_images_are_listed(tmp_path, on_bad_image):
    make_folder(tmp_path, ["a", "b"], per_class=5)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    if on_bad_image == "fail":
        with pytest.raises(DataError, match=r"1 image\(s\) do not decode .*a/broken.png: "):
            splits(tmp_path, on_bad_image="fail")
        return
    result = splits(tmp_path, on_bad_image="skip")
    assert len(result.bad_images) == 1 and "a/broken.png: " in result.bad_images[0]
    assert len(result.train) + len(result.val) == 10
    assert result.ignored_files == [str(tmp_path / "b" / "notes.txt")]


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data folder .*nowhere does not exist"):
        splits(tmp_path / "nowhere")


def test_missing_val_split(tmp_path):
    make_folder(tmp_path / "train", ["a", "b"])
    with pytest.raises(DataError, match="has train/ but no val/"):
        splits(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="Couldn't find any class folder"):
        image_folder(tmp_path / "train")


def test_class_folder_without_images(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="Found no valid file for the classes c"):
        image_folder(tmp_path)


def test_single_class(tmp_path):
    make_folder(tmp_path, ["a"])
    with pytest.raises(
        DataError, match=r"1 class folder\(s\) \['a'\]; a classifier needs at least 2"
    ):
        image_folder(tmp_path)


def test_train_and_val_classes_must_match(tmp_path):
    make_folder(tmp_path / "train", ["a", "b"])
    make_folder(tmp_path / "val", ["a", "c"])
    with pytest.raises(DataError, match=r"only in train \['b'\], only in val \['c'\]"):
        splits(tmp_path)


def test_one_definition_of_an_image_file(tmp_path):
    """The spec's formats decide which files are images, for training, classify and the
    server alike: a GIF is trained on (the server decodes it), a TIFF is listed as ignored
    instead of stopping the run (the server refuses it)."""
    make_folder(tmp_path, ["a", "b"], per_class=3)
    Image.new("P", (10, 10), 3).save(tmp_path / "a" / "anim.gif")
    Image.new("RGB", (10, 10)).save(tmp_path / "b" / "scan.tif")
    result = splits(tmp_path, val_split=0.4)
    trained = {Path(p).relative_to(tmp_path) for p, _ in result.train.samples + result.val.samples}
    assert Path("a/anim.gif") in trained and len(trained) == 7
    assert result.bad_images == [] and result.ignored_files == [str(tmp_path / "b" / "scan.tif")]
    listed = [p.name for p in image_files([str(tmp_path)])]
    assert "anim.gif" in listed and "scan.tif" not in listed and len(listed) == 7
    assert decode_image((tmp_path / "a" / "anim.gif").read_bytes()).mode == "RGB"
    with pytest.raises(ImageDecodeError, match="image format TIFF is not accepted"):
        decode_image((tmp_path / "b" / "scan.tif").read_bytes())
    # A spec that accepts PNG only trains on PNG files only.
    png_only = image_folder(tmp_path, Preprocessing(36, 32, formats=("PNG",)))
    assert sorted(Path(p).suffix for p, _ in png_only.samples) == [".png"] * 6


def test_hidden_files_are_never_images(tmp_path):
    """One definition of an image file for what is trained on and what is listed as
    ignored: a hidden file (macOS's "._photo.png" beside each photo copied from a Mac) is
    neither, where it used to be trained on, fail to decode and stop the run."""
    make_folder(tmp_path, ["a", "b"], per_class=5)
    (tmp_path / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    result = splits(tmp_path, on_bad_image="fail")
    listed = [Path(p).name for p, _ in result.train.samples + result.val.samples]
    assert len(listed) == 10 and "._0.png" not in listed
    assert result.bad_images == [] and result.ignored_files == []


@pytest.fixture
def moved(tmp_path, monkeypatch):
    """A run that recorded its flat data folder as the relative path "flat" (as checkpoints
    from before absolute paths did), read from another working folder that has a "flat"
    of its own: (the run's folder, its config, the fingerprint of its validation split)."""
    run = tmp_path / "run" / "flat"
    make_folder(run, ["a", "b"], per_class=10)
    make_folder(tmp_path / "elsewhere" / "flat", ["a", "b"], per_class=8)
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = {"data": "flat", "val_split": 0.2, "seed": 0}
    val = list_splits(run, Preprocessing(36, 32), 0.2, 0)[1]
    return run, config, split_fingerprint(val)


@pytest.mark.parametrize("recorded", [True, False], ids=["fingerprint", "no-fingerprint"])
def test_a_relative_data_path_is_refused_not_resolved_here(moved, recorded):
    _, config, held_out = moved
    spec = ModelSpec(labels=("a", "b"))
    payload = {"config": config, "held_out": held_out if recorded else None}
    with pytest.raises(UserError) as refused:
        held_out_set(spec, payload, Path("ck.pt"), images=None)  # what a build does
    assert str(refused.value) == (
        "ck.pt records its training data as the relative path 'flat', which names another "
        "folder (or none) from every other working folder; pass the images to use instead "
        "(--images DIR: held-out images for the gates)"
    )


def test_the_runs_own_folder_from_elsewhere_gives_its_validation_split(moved):
    run, config, held_out = moved
    cfg = Preprocessing(36, 32)
    given = held_out_images(run, config, cfg, held_out, "ck.pt")
    assert given.samples == list_splits(run, cfg, 0.2, 0)[1].samples  # never the training split
    assert len(given) == 4
    other = held_out_images(Path("flat"), config, cfg, held_out, "ck.pt")  # another "flat"
    assert len(other) == 16  # not the run's: all of it is held out


def test_the_runs_training_split_is_refused_from_elsewhere(tmp_path, monkeypatch):
    for split in ("train", "val"):
        make_folder(tmp_path / "run" / "data" / split, ["a", "b"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = {"data": "data"}
    held_out = split_fingerprint(image_folder(tmp_path / "run" / "data" / "val"))
    train = tmp_path / "run" / "data" / "train"
    with pytest.raises(DataError, match=f"^{train} is the training split of ck.pt;"):
        held_out_images(train, config, Preprocessing(36, 32), held_out, "ck.pt")


def test_training_records_its_data_folder_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(data="flat").as_dict()["data"] == str(tmp_path / "flat")
    assert TrainConfig(data="flat").data == "flat"  # as given, for messages
