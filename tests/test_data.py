import numpy as np
import pytest
from PIL import Image

from resnet_triton.data import DataError, image_folder, load_splits, write_digits
from resnet_triton.spec import Preprocessing


def make_folder(root, classes, per_class=2):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10, 10), (i, 0, 0)).save(root / name / f"{i}.png")


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


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data folder .*nowhere does not exist"):
        load_splits(tmp_path / "nowhere", Preprocessing(), hflip=False)


def test_missing_val_split(tmp_path):
    make_folder(tmp_path / "train", ["a", "b"])
    with pytest.raises(DataError, match="lacks val/"):
        load_splits(tmp_path, Preprocessing(), hflip=False)


def test_empty_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="Couldn't find any class folder"):
        image_folder(tmp_path / "train")


def test_class_folder_without_images(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "c").mkdir()
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
        load_splits(tmp_path, Preprocessing(), hflip=False)
