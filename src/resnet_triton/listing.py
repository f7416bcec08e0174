"""Labelled images listed without class folders, and the split of a listing by ratio.

    --data images.csv    a manifest: a header naming its columns, path and label and
                         optionally split, then one image a line; paths relative to the
                         manifest's folder
    --data images.jsonl  the same as JSON lines: {"path": ..., "label": ..., "split": ...}
    --data DIR --label-pattern REGEX
                         the images under DIR, each labelled by the pattern's group
                         `label` (or its first group), searched in the file name

A manifest's split column (train, val or test) places every image; without one, and for
labels from file names, the images are split by ratio like a flat ImageFolder: stratified
and seeded, the test share (--test-split) drawn first, so that it stays the same whatever
--val-split is. Every dataset here is an ImageFolder (samples, targets, classes, root), so
the rest of the pipeline takes it unchanged.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import ImageFolder
from torchvision.datasets.vision import VisionDataset

from resnet_triton.errors import DataError
from resnet_triton.preprocess import load_image
from resnet_triton.spec import Preprocessing

MANIFEST_SUFFIXES = (".csv", ".jsonl")
SPLITS = ("train", "val", "test")
COLUMNS = ("path", "label", "split")  # split is optional


def is_image_file(path: str | Path, cfg: Preprocessing) -> bool:
    """Whether a file in a data folder is an image of `cfg`'s formats: what is trained on,
    and what is listed as ignored when it is not. A hidden file never is one (macOS copies
    leave a "._photo.jpg" resource fork beside each photo)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in cfg.extensions


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir()


class ListedImages(ImageFolder):
    """An ImageFolder whose samples come from a list instead of class folders, sorted by
    class, then path, as ImageFolder sorts them; decoded by the shared decoder."""

    def __init__(self, root: Path, items: list[tuple[str, str]], classes: list[str], cfg):
        VisionDataset.__init__(self, root)  # ImageFolder's own __init__ scans class folders
        self.loader = functools.partial(load_image, cfg=cfg)
        self.extensions = cfg.extensions
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        samples = sorted((self.class_to_idx[label], path) for path, label in items)
        self.samples = self.imgs = [(path, target) for target, path in samples]
        self.targets = [target for _, target in self.samples]


def restrict(dataset: ImageFolder, samples: list[tuple[str, int]]) -> ImageFolder:
    """`dataset` with only `samples`: a split of it."""
    subset = copy.copy(dataset)
    subset.samples = subset.imgs = samples
    subset.targets = [target for _, target in samples]
    return subset


def split_by_ratio(
    full: ImageFolder, val_split: float, test_split: float = 0.0, seed: int = 0
) -> tuple[ImageFolder, ImageFolder, ImageFolder | None]:
    """(train, val, test or None), stratified and seeded; both shares are of all images.
    The test share is drawn first: the same images whatever `val_split` is."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(full.targets, minlength=len(full.classes))
    least = 3 if test_split else 2
    if counts.min() < least:
        few = [c for c, n in zip(full.classes, counts, strict=True) if n < least]
        raise DataError(
            f"classes {few} have fewer than {least} images; cannot split by ratio"
            + (" into train, val and test" if test_split else "")
        )
    indices, test_idx, val_size = np.arange(len(full)), None, val_split
    try:
        if test_split:
            indices, test_idx = train_test_split(
                indices, test_size=test_split, stratify=full.targets, random_state=seed
            )
            val_size = math.ceil(val_split * len(full))  # a share of all images, as a count
        train_idx, val_idx = train_test_split(
            indices, test_size=val_size, stratify=[full.targets[i] for i in indices],
            random_state=seed,
        )  # fmt: skip
    except ValueError as exc:  # e.g. fewer images in a split than classes
        raise DataError(
            f"{full.root}: cannot split {len(full)} images of {len(full.classes)} classes "
            f"by --val-split {val_split} and --test-split {test_split}: {exc}"
        ) from None

    def pick(idx) -> ImageFolder:
        return restrict(full, [full.samples[i] for i in sorted(idx)])

    return pick(train_idx), pick(val_idx), None if test_idx is None else pick(test_idx)


# -- manifests ---------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    line: int  # in the manifest, from 1 (a CSV's header is line 1)
    given: str  # the path as written
    path: str  # the manifest's folder / given
    label: str
    split: str | None  # None: the manifest has no split for it


def _csv_records(manifest: Path) -> Iterator[tuple[int, dict]]:
    with manifest.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [c for c in COLUMNS[:2] if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{manifest} line 1: the header {reader.fieldnames or []} lacks the column(s) "
                f"{missing}; a manifest's header names path, label and optionally split"
            )
        for record in reader:
            yield reader.line_num, record


def _jsonl_records(manifest: Path) -> Iterator[tuple[int, dict]]:
    with manifest.open(encoding="utf-8") as file:
        for line, text in enumerate(file, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{manifest} line {line}: not JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{manifest} line {line}: a JSON object with path and label expected, "
                    f"got {text.strip()[:60]}"
                )
            yield line, record


def _text(record: dict, key: str) -> str | None:
    value = record.get(key)
    return None if value is None else str(value).strip()


def _row(manifest: Path, line: int, record: dict, cfg: Preprocessing) -> Row:
    where = f"{manifest} line {line}"
    given, label, split = _text(record, "path"), _text(record, "label"), _text(record, "split")
    if not given:
        raise DataError(f"{where}: no path")
    if Path(given).is_absolute():
        raise DataError(f"{where}: {given} is absolute; paths are relative to the manifest")
    if not is_image_file(given, cfg):
        raise DataError(
            f"{where}: {given} is not an image file (extensions {', '.join(cfg.extensions)})"
        )
    if not label:
        raise DataError(f"{where}: {given} has an empty label")
    if "split" in record and split not in SPLITS:
        raise DataError(f"{where}: split {(split or '')!r} is not one of {', '.join(SPLITS)}")
    return Row(line, given, str(manifest.parent / given), label, split)


def read_manifest(manifest: Path, cfg: Preprocessing) -> list[Row]:
    """Every line of a manifest, checked: the error names the line."""
    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist")
    reader = _csv_records if manifest.suffix.lower() == ".csv" else _jsonl_records
    rows = [_row(manifest, line, record, cfg) for line, record in reader(manifest)]
    if not rows:
        raise DataError(f"manifest {manifest} lists no images")
    first: dict[str, int] = {}
    for row in rows:
        if row.path in first:
            raise DataError(
                f"{manifest} line {row.line}: {row.given} is listed again (line {first[row.path]})"
            )
        first[row.path] = row.line
        if (row.split is None) != (rows[0].split is None):
            raise DataError(
                f"{manifest} line {row.line}: {'no' if row.split is None else 'a'} split, but "
                f"line {rows[0].line} has {'one' if row.split is None else 'none'}: give "
                "every line a split or none"
            )
    missing = [row for row in rows if not Path(row.path).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
        raise DataError(
            f"{manifest} line {missing[0].line}: {missing[0].given} does not exist{more}"
        )
    return rows


def _classes(labels: set[str], source: Path) -> list[str]:
    if len(labels) < 2:
        raise DataError(f"{source} has {len(labels)} class(es) {sorted(labels)}; a classifier "
                        "needs at least 2")  # fmt: skip
    return sorted(labels)


def manifest_images(manifest: Path, cfg: Preprocessing, rows: list[Row] | None = None):
    """Every image a manifest lists (its `rows`, read already), whatever its split."""
    rows = read_manifest(manifest, cfg) if rows is None else rows
    items = [(row.path, row.label) for row in rows]
    return ListedImages(manifest.parent, items, _classes({r.label for r in rows}, manifest), cfg)


def manifest_splits(
    manifest: Path, cfg: Preprocessing, val_split: float, test_split: float, seed: int
) -> tuple[ImageFolder, ImageFolder, ImageFolder | None]:
    """(train, val, test or None) of a manifest: by its split column, else by ratio."""
    rows = read_manifest(manifest, cfg)
    if rows[0].split is None:
        return split_by_ratio(manifest_images(manifest, cfg, rows), val_split, test_split, seed)
    if test_split:
        raise DataError(
            f"--test-split {test_split} with {manifest}, whose split column places every "
            "image; leave --test-split out (or the column)"
        )
    items = {name: [(r.path, r.label) for r in rows if r.split == name] for name in SPLITS}
    for name in ("train", "val"):
        if not items[name]:
            raise DataError(f"{manifest}: no line has split {name}; train and val need images")
    classes = _classes({label for _, label in items["train"]}, manifest)
    for name in ("val", "test"):
        unknown = sorted({label for _, label in items[name]} - set(classes))
        if unknown:
            raise DataError(f"{manifest}: {name} images of classes {unknown}, which no train "
                            f"image has; classes: {', '.join(classes)}")  # fmt: skip
    listed = {name: ListedImages(manifest.parent, items[name], classes, cfg) for name in SPLITS}
    return listed["train"], listed["val"], listed["test"] if items["test"] else None


# -- labels from file names --------------------------------------------------


def label_regex(pattern: str) -> re.Pattern:
    """--label-pattern compiled; it needs a group named `label` or at least one group."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--label-pattern {pattern!r} is no regular expression: {exc}") from None
    if not regex.groups:
        raise DataError(
            f"--label-pattern {pattern!r} has no group; mark the label as (?P<label>...) "
            r"or (...), e.g. '^(?P<label>[a-z]+)_\d+'"
        )
    return regex


def pattern_images(folder: Path, pattern: str, cfg: Preprocessing) -> ListedImages:
    """The images under `folder`, each labelled by `pattern` searched in its file name."""
    regex = label_regex(pattern)
    group = "label" if "label" in regex.groupindex else 1
    items, unlabelled = [], []
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if hidden or not path.is_file() or not is_image_file(path, cfg):
            continue  # other files: counted as ignored, as in every data folder
        match = regex.search(path.name)
        label = match.group(group) if match else None
        if label:
            items.append((str(path), label))
        else:
            unlabelled.append(str(path.relative_to(folder)))
    if unlabelled:
        raise DataError(
            f"--label-pattern {pattern!r} finds no label in {len(unlabelled)} file name(s) "
            f"of {folder}: {', '.join(unlabelled[:5])}"
        )
    classes = _classes({label for _, label in items}, folder)
    return ListedImages(folder, items, classes, cfg)
