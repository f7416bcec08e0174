"""listing.py: manifests, labels from file names, and the split by ratio."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from resnet_triton.data import held_out_images, image_folder, list_splits, split_fingerprint
from resnet_triton.errors import DataError
from resnet_triton.listing import manifest_splits, pattern_images, split_by_ratio
from resnet_triton.spec import Preprocessing
from resnet_triton.training.config import TrainConfig

PREP = Preprocessing(36, 32)


def flat_folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    for c in range(classes):
        for i in range(per_class):
            path = root / f"c{c}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * c, 5 * i, 0)).save(path)
    return root


def paths(dataset) -> set[str]:
    return {path for path, _ in dataset.samples}


def test_without_a_test_share_the_split_is_the_one_runs_drew_before(tmp_path):
    """Checkpoints record the validation split's fingerprint: it must not move."""
    full = image_folder(flat_folder(tmp_path), PREP)
    train_idx, val_idx = train_test_split(
        np.arange(len(full)), test_size=0.2, stratify=full.targets, random_state=0
    )
    train, val, test = split_by_ratio(full, 0.2, 0.0, 0)
    assert test is None
    assert train.samples == [full.samples[i] for i in sorted(train_idx)]
    assert val.samples == [full.samples[i] for i in sorted(val_idx)]


def test_the_test_share_is_drawn_first_and_stays_whatever_the_val_share(tmp_path):
    full = image_folder(flat_folder(tmp_path), PREP)
    train, val, test = split_by_ratio(full, 0.2, 0.1, 0)
    assert (len(train), len(val), len(test)) == (21, 6, 3)  # ceil(10%), ceil(20%) of 30
    assert np.bincount(test.targets).tolist() == [1, 1, 1]  # stratified
    assert paths(train) | paths(val) | paths(test) == paths(full)
    assert not paths(train) & paths(val) and not (paths(train) | paths(val)) & paths(test)
    for val_split in (0.1, 0.3, 0.5):
        assert split_by_ratio(full, val_split, 0.1, 0)[2].samples == test.samples
    assert split_by_ratio(full, 0.2, 0.1, 1)[2].samples != test.samples  # seeded


def test_csv_and_json_lines_manifests_list_the_same_images(tmp_path):
    root = flat_folder(tmp_path / "data")
    files = sorted(root.rglob("*.png"))
    split = {0: "val", 1: "test"}
    (root / "m.csv").write_text(
        "path,label,split,notes\n"
        + "".join(
            f"{f.relative_to(root)},{f.parent.name},{split.get(i % 5, 'train')},x\n"
            for i, f in enumerate(files)
        )
    )
    (root / "m.jsonl").write_text(
        "".join(
            f'{{"path": "{f.relative_to(root)}", "label": "{f.parent.name}", '
            f'"split": "{split.get(i % 5, "train")}"}}\n'
            for i, f in enumerate(files)
        )
    )
    from_csv = manifest_splits(root / "m.csv", PREP, 0.2, 0.0, 0)
    from_jsonl = manifest_splits(root / "m.jsonl", PREP, 0.2, 0.0, 0)
    assert [len(d) for d in from_csv] == [18, 6, 6]
    for a, b in zip(from_csv, from_jsonl, strict=True):
        assert a.samples == b.samples and a.classes == b.classes == ["c0", "c1", "c2"]
    train = from_csv[0]
    assert train.targets == sorted(train.targets)  # by class, then path, as ImageFolder
    image, target = train[0]
    assert isinstance(image, Image.Image) and target == 0
    # Its fingerprint is relative to the manifest's folder: the same from anywhere.
    assert split_fingerprint(from_csv[1]) == split_fingerprint(
        manifest_splits((root / "m.csv").resolve(), PREP, 0.2, 0.0, 0)[1]
    )


def test_the_run_manifest_gives_its_val_split_and_another_all_its_images(tmp_path):
    root = flat_folder(tmp_path / "data")
    lines = [f"{f.relative_to(root)},{f.parent.name}" for f in sorted(root.rglob("*.png"))]
    (root / "run.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    (root / "other.csv").write_text("path,label\n" + "\n".join(lines[::3]) + "\n")
    config = TrainConfig(data=str(root / "run.csv"), test_split=0.1).as_dict()
    _, val, test = list_splits(root / "run.csv", PREP, 0.2, 0, 0.1)
    fingerprint = split_fingerprint(val)
    given = held_out_images(root / "run.csv", config, PREP, fingerprint, "ck.pt")
    assert given.samples == val.samples and paths(given).isdisjoint(paths(test))
    other = held_out_images(root / "other.csv", config, PREP, fingerprint, "ck.pt")
    assert len(other) == 10


def test_labels_from_file_names(tmp_path):
    for name in ("cat_1.png", "cat_2.png", "big_dog_1.png", "notes.txt", ".cat_3.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    dataset = pattern_images(tmp_path, r"^([a-z_]+)_\d+", PREP)
    assert dataset.classes == ["big_dog", "cat"]
    assert [(Path(p).name, t) for p, t in dataset.samples] == [
        ("big_dog_1.png", 0), ("cat_1.png", 1), ("cat_2.png", 1),
    ]  # fmt: skip
    (tmp_path / "cats").mkdir()
    for name in ("cat_1.png", "cat_2.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "cats" / name)
    with pytest.raises(DataError, match=r"cats has 1 class\(es\) \['cat'\]; a classifier"):
        pattern_images(tmp_path / "cats", r"^([a-z_]+)_\d+", PREP)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="--label-pattern applies to data split by ratio"):
        list_splits(tmp_path, PREP, label_pattern="(x)")
