"""Extra training data (`resnet-triton train --extra DIR`): labelled ImageFolders beside
the base data, such as the web page's review of captured traffic writes.

    DIR/<class>/<image>   a class of the base data, matched by name: the image gets the
                          base data's class index, whatever classes DIR has or lacks
    DIR/not-ours/         images of none of the classes: skipped (calibration's business,
                          not training's), counted in one line
    DIR/labels.jsonl      the review's log (who labelled what): not an image

A share of each DIR (--extra-holdout) is held out, chosen by a hash of the file name, so
an image stays on its side across runs and as the folder grows. Held-out images join the
validation split (every epoch's val top-1, the best epoch, the final evaluation, and
evaluation.json's "extra_holdout" on them alone). The gates take a folder of whole
classes, so the run writes everything it held out, the base validation split and these,
to <out>/holdout/<class>/ (hard links where it can): `resnet-triton build --images` it,
or make it the pipeline's inputs/val.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_triton.data import DataError, Splits, find_bad_images, is_image_file, load_splits
from resnet_triton.serving.capture import LABELS_LOG, NOT_OURS
from resnet_triton.spec import Preprocessing
from resnet_triton.training import report
from resnet_triton.training.config import TrainConfig

HOLDOUT_DIR = "holdout"  # <out>/holdout/<class>/: every image the run held out


def is_held_out(name: str, share: float) -> bool:
    """Whether the file `name` is in the held-out `share`: by its name's hash alone, so
    neither the seed, nor its class, nor the other files move it."""
    draw = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return draw < share


@dataclass(frozen=True)
class ExtraFolder:
    """One --extra folder, listed: (path, base class index) on each side of the split."""

    root: Path
    train: list[tuple[str, int]]
    held_out: list[tuple[str, int]]
    not_ours: int  # images in not-ours/, skipped
    ignored: list[str]  # files that are not images of the spec's formats

    def summary(self) -> str:
        images = self.train + self.held_out
        classes = len({target for _, target in images})
        return (
            f"extra data {self.root}: {len(images)} images in {classes} classes "
            f"({len(self.train)} train, {len(self.held_out)} held out), "
            f"{self.not_ours} not-ours skipped"
        )


def _files(folder: Path, cfg: Preprocessing) -> tuple[list[Path], list[str]]:
    """(image files, other files) under `folder`, sorted; hidden files and folders left out."""
    images, other = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue
        (images if is_image_file(path, cfg) else other).append(path)
    return images, [str(p) for p in other]


def list_extra(root: Path, classes: list[str], cfg: Preprocessing, share: float) -> ExtraFolder:
    """`root`'s class folders mapped by name onto `classes`, the base data's, and split."""
    if not root.is_dir():
        raise DataError(f"--extra {root}: no such folder")
    index = {name: i for i, name in enumerate(classes)}
    train, held_out, ignored, not_ours = [], [], [], 0
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == LABELS_LOG:
            continue
        if entry.is_file() and is_image_file(entry, cfg):
            raise DataError(
                f"--extra {root}: {entry.name} is in no class folder; move it to "
                f"{root}/<class>/ (or {NOT_OURS}/)"
            )
        if not entry.is_dir():
            ignored.append(str(entry))
        elif entry.name == NOT_OURS:
            not_ours = len(_files(entry, cfg)[0])
        elif entry.name not in index:
            raise DataError(
                f"--extra {root}: class folder {entry.name!r} is not a class of the base data; "
                f"valid: {', '.join(classes)} (images of none of them go in {NOT_OURS}/)"
            )
        else:
            images, other = _files(entry, cfg)
            ignored += other
            for path in images:
                side = held_out if is_held_out(path.name, share) else train
                side.append((str(path), index[entry.name]))
    return ExtraFolder(root, train, held_out, not_ours, ignored)


def _drop_bad(extra: ExtraFolder, bad: dict[str, str]) -> ExtraFolder:
    train = [(p, t) for p, t in extra.train if p not in bad]
    held_out = [(p, t) for p, t in extra.held_out if p not in bad]
    return ExtraFolder(extra.root, train, held_out, extra.not_ours, extra.ignored)


def add_extra(
    splits: Splits, folders: list[Path], cfg: Preprocessing, share: float, on_bad_image: str
) -> list[ExtraFolder]:
    """Each of `folders` listed and added to `splits`: its train share to the train split,
    its held-out share to the validation split, after the base images. A file that does
    not decode stops the run or is skipped (on_bad_image), as in the base data."""
    extras = [list_extra(Path(f), splits.classes, cfg, share) for f in folders]
    paths = [p for e in extras for p, _ in e.train + e.held_out]
    bad = find_bad_images(paths, cfg)
    if bad and on_bad_image == "fail":
        listing = "; ".join(f"{p}: {r}" for p, r in list(bad.items())[:5])
        raise DataError(
            f"{len(bad)} extra image(s) do not decode (use --on-bad-image skip to leave them "
            f"out): {listing}"
        )
    extras = [_drop_bad(e, bad) for e in extras]
    splits.bad_images.extend(f"{p}: {r}" for p, r in bad.items())
    for extra in extras:
        splits.ignored_files.extend(extra.ignored)
    for dataset, side in ((splits.train, "train"), (splits.val, "held_out")):
        added = [item for e in extras for item in getattr(e, side)]
        dataset.samples = dataset.imgs = dataset.samples + added
        dataset.targets = [target for _, target in dataset.samples]
    return extras


def _place(source: str, target: Path) -> None:
    """A hard link where the file system allows one (no copy of the pixels), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_holdout(splits: Splits, out: Path) -> Path:
    """Every image of the validation split (base and extra) in <out>/holdout/<class>/, a
    folder of the run's classes the gates take; a file name taken twice in a class is
    refused, naming both files."""
    folder = out / HOLDOUT_DIR
    shutil.rmtree(folder, ignore_errors=True)  # a rerun's folder holds this run's images only
    placed: dict[Path, str] = {}
    for path, target in splits.val.samples:
        dest = folder / splits.classes[target] / Path(path).name
        if dest in placed:
            raise DataError(
                f"{path} and {placed[dest]} are both held-out images named {dest.name} in "
                f"class {splits.classes[target]}; rename one"
            )
        placed[dest] = path
        _place(path, dest)
    return folder


def run_splits(
    cfg: TrainConfig, prep: Preprocessing, is_main: bool, log: Callable[[str], None]
) -> tuple[Splits, list[ExtraFolder]]:
    """The run's splits: the base data's, with the --extra folders added; on the main
    process, each folder's line and the held-out folder written."""
    splits = load_splits(
        Path(cfg.data), prep, cfg.augmentation, cfg.val_split, cfg.seed, cfg.on_bad_image,
        cfg.test_split, cfg.label_pattern,
    )  # fmt: skip
    if not cfg.extra:
        return splits, []
    extras = add_extra(splits, list(cfg.extra), prep, cfg.extra_holdout, cfg.on_bad_image)
    for extra in extras:
        log(extra.summary())
        if extra.not_ours:
            log(
                f"skipped the {extra.not_ours} images in {extra.root / NOT_OURS}: they belong "
                "to none of the classes (calibration's business, not training's)"
            )
    if is_main:
        held = sum(len(e.held_out) for e in extras)
        folder = write_holdout(splits, Path(cfg.out))
        log(
            f"held-out images ({len(splits.val) - held} of the validation split, {held} "
            f"extra) -> {folder}: the gates' images (resnet-triton build --images {folder})"
        )
    return splits, extras


def holdout_report(
    extras: list[ExtraFolder], splits: Splits, val_probs: np.ndarray, log: Callable[[str], None]
) -> dict:
    """{"extra_holdout": the extra held-out images' own evaluation} for evaluation.json, and
    its line; {} without any. They are the validation split's last rows (add_extra)."""
    held = sum(len(e.held_out) for e in extras)
    if not held:
        return {}
    targets = np.array(splits.val.targets)[-held:]
    result = report.classification_report(targets, val_probs[-held:].argmax(1), splits.classes)
    result["folders"] = [str(e.root) for e in extras]
    log(f"best checkpoint on the {held} extra held-out images: top-1 {result['top1']:.4f}")
    return {"extra_holdout": result}
