"""ImageFolder datasets read through the shared decoder, and the digits demo set.

Layouts accepted by `load_splits`:
    root/train/<class>/*, root/val/<class>/*  (and optionally root/test/<class>/*)
    root/<class>/*   split into train and val (and test) by ratio: stratified and seeded
    a manifest (.csv, .jsonl), or root/* labelled by a pattern in their names: listing.py
Every image is decoded once before training: a file that fails is listed by
path and either stops the run or is skipped, never dropped silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from resnet_triton.errors import DataError
from resnet_triton.listing import (
    is_image_file,
    is_manifest,
    manifest_images,
    manifest_splits,
    pattern_images,
    split_by_ratio,
)
from resnet_triton.preprocess import ImageDecodeError, load_image, preprocess
from resnet_triton.spec import Preprocessing


class EvalTransform:
    """Dataset transform: PIL image -> (3, crop, crop) float tensor, via the shared `preprocess`."""

    def __init__(self, cfg: Preprocessing):
        self.cfg = cfg

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess(image, self.cfg))


@dataclass(frozen=True)
class Augmentation:
    rrc_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    color_jitter: float = 0.0
    rotation: float = 0.0
    blur: float = 0.0
    auto_augment: str = "none"


def train_transform(cfg: Preprocessing, aug: Augmentation) -> transforms.Compose:
    """Augmentation ending in the same tensor layout and normalization as `EvalTransform`."""
    interpolation = transforms.InterpolationMode(cfg.interpolation)
    steps = [
        transforms.RandomResizedCrop(cfg.crop_size, aug.rrc_scale, interpolation=interpolation)
    ]
    if aug.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    if aug.rotation:
        steps.append(transforms.RandomRotation(aug.rotation, interpolation=interpolation))
    if aug.color_jitter:
        j = aug.color_jitter
        steps.append(transforms.ColorJitter(brightness=j, contrast=j, saturation=j))
    if aug.blur:
        blur = transforms.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))
        steps.append(transforms.RandomApply([blur], p=aug.blur))
    if aug.auto_augment == "autoaugment":
        steps.append(transforms.AutoAugment(interpolation=interpolation))
    elif aug.auto_augment == "randaugment":
        steps.append(transforms.RandAugment(interpolation=interpolation))
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    return transforms.Compose(steps)


def image_folder(
    root: Path, cfg: Preprocessing | None = None, evaluate: bool = False
) -> ImageFolder:
    """torchvision's ImageFolder over the files of `cfg`'s formats (spec.FORMAT_EXTENSIONS),
    decoded with the same function and limits as serving. `evaluate`: items are `cfg`'s
    eval tensors, so the decoding and the preprocessing come from one setting."""
    cfg = cfg or Preprocessing()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    try:
        dataset = ImageFolder(
            root,
            transform=EvalTransform(cfg) if evaluate else None,
            loader=functools.partial(load_image, cfg=cfg),
            is_valid_file=functools.partial(is_image_file, cfg=cfg),
        )
    except FileNotFoundError as exc:
        # torchvision names the folder and, for an empty class, the class.
        raise DataError(f"{root}: {exc}Image files end in {', '.join(cfg.extensions)}") from None
    if len(dataset.classes) < 2:
        raise DataError(
            f"{root} has {len(dataset.classes)} class folder(s) {dataset.classes}; "
            "a classifier needs at least 2"
        )
    return dataset


@dataclass
class Splits:
    train: ImageFolder
    val: ImageFolder
    test: ImageFolder | None
    classes: list[str]
    bad_images: list[str]  # path: reason, for every skipped file
    ignored_files: list[str]  # files that are not images of the spec's formats
    held_out_fingerprint: str  # split_fingerprint(val) as listed, before bad images are left out


def split_fingerprint(dataset: ImageFolder) -> str:
    """SHA-256 of a split's files (relative to its root) and classes: whether a folder,
    listed again, still gives the split a model was validated on."""
    root = Path(dataset.root)
    listing = [[str(Path(path).relative_to(root)), target] for path, target in dataset.samples]
    return hashlib.sha256(json.dumps([dataset.classes, listing]).encode()).hexdigest()


def find_bad_images(paths: list[str], cfg: Preprocessing, workers: int = 4) -> dict[str, str]:
    """path -> reason, for every file the shared decoder refuses."""

    def check(path: str) -> str | None:
        try:
            load_image(path, cfg)
        except ImageDecodeError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without the GIL
        reasons = pool.map(check, paths)
    return {path: reason for path, reason in zip(paths, reasons, strict=True) if reason}


def list_splits(
    root: Path,
    cfg: Preprocessing,
    val_split: float = 0.2,
    seed: int = 0,
    test_split: float = 0.0,
    label_pattern: str | None = None,
) -> tuple[ImageFolder, ImageFolder, ImageFolder | None]:
    """(train, val, test or None) of a data folder or manifest, listed, nothing decoded:
    the split `load_splits` trains on, drawn again by the same arguments."""
    if is_manifest(root):
        if label_pattern:
            raise DataError(f"--label-pattern labels a folder's files; {root} is a manifest, "
                            "whose label column labels them")  # fmt: skip
        return manifest_splits(root, cfg, val_split, test_split, seed)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if not (root / "train").is_dir():
        full = (
            pattern_images(root, label_pattern, cfg) if label_pattern else image_folder(root, cfg)
        )
        return split_by_ratio(full, val_split, test_split, seed)
    for flag, value, instead in (
        ("--test-split", test_split, f"put test images in {root}/test/<class>/"),
        ("--label-pattern", label_pattern, "its folders name the classes"),
    ):
        if value:
            raise DataError(
                f"{flag} applies to data split by ratio; {root} has train/ class folders: {instead}"
            )
    if not (root / "val").is_dir():
        raise DataError(
            f"{root} has train/ but no val/; add {root}/val/<class>/*, or put the class "
            f"folders directly in {root} to split by --val-split"
        )
    train, val = image_folder(root / "train", cfg), image_folder(root / "val", cfg)
    test = image_folder(root / "test", cfg) if (root / "test").is_dir() else None
    for name, other in (("val", val), ("test", test)):
        if other is not None and other.classes != train.classes:
            raise DataError(
                f"train and {name} have different classes: only in train "
                f"{sorted(set(train.classes) - set(other.classes))}, only in {name} "
                f"{sorted(set(other.classes) - set(train.classes))}"
            )
    return train, val, test


def load_splits(
    root: Path,
    cfg: Preprocessing,
    aug: Augmentation,
    val_split: float = 0.2,
    seed: int = 0,
    on_bad_image: str = "fail",
    test_split: float = 0.0,
    label_pattern: str | None = None,
) -> Splits:
    train, val, test = list_splits(root, cfg, val_split, seed, test_split, label_pattern)
    held_out_fingerprint = split_fingerprint(val)
    train.transform = train_transform(cfg, aug)
    val.transform = EvalTransform(cfg)
    if test is not None:
        test.transform = EvalTransform(cfg)
    datasets = [d for d in (train, val, test) if d is not None]
    bad = find_bad_images([p for d in datasets for p, _ in d.samples], cfg)
    if bad and on_bad_image == "fail":
        listing = "; ".join(f"{p}: {r}" for p, r in list(bad.items())[:5])
        raise DataError(
            f"{len(bad)} image(s) do not decode (use --on-bad-image skip to leave them out): "
            f"{listing}"
        )
    for dataset in datasets:
        kept = [(p, t) for p, t in dataset.samples if p not in bad]
        if not kept:
            raise DataError(f"no decodable images left in {dataset.root}")
        dataset.samples = dataset.imgs = kept
        dataset.targets = [t for _, t in kept]
    ignored = sorted(
        str(p)
        for p in (root.rglob("*") if root.is_dir() else ())  # a manifest lists images only
        if p.is_file() and not p.name.startswith(".") and not is_image_file(p, cfg)
    )
    classes = train.classes
    return Splits(
        train, val, test, classes, [f"{p}: {r}" for p, r in bad.items()], ignored,
        held_out_fingerprint,
    )  # fmt: skip


def run_splits(
    config: dict, cfg: Preprocessing, held_out_fingerprint: str | None, source: str
) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) of the training run whose resolved `config` a checkpoint carries, listed
    again: a flat folder is split again with the run's val_split and seed. `held_out_fingerprint`,
    the one the run recorded (None in checkpoints from before 2026-12), must match:
    a folder whose files changed since cannot tell its held-out images apart."""
    data = recorded_data(config)
    if data is None:
        raise DataError(f"{source} names no training data; pass the images to use")
    if not data.is_absolute():
        raise DataError(
            f"{source} records its training data as the relative path {str(data)!r}, which "
            "names another folder (or none) from every other working folder; pass the "
            "images to use instead"
        )
    train, val, _ = list_recorded(data, config, cfg)
    if held_out_fingerprint is not None and split_fingerprint(val) != held_out_fingerprint:
        raise DataError(
            f"{data} no longer gives the validation split that {source} was trained with "
            "(files added, removed or renamed since), so its held-out images cannot be told "
            "apart from the training images; pass a folder of images it never trained on"
        )
    return train, val


def list_recorded(data: Path, config: dict, cfg: Preprocessing):
    """list_splits of `data` as the run of `config` listed its data."""
    return list_splits(
        data, cfg, config.get("val_split", 0.2), config.get("seed", 0),
        config.get("test_split", 0.0), config.get("label_pattern"),
    )  # fmt: skip


def recorded_data(config: dict) -> Path | None:
    """The data folder the run of `config` trained on, as recorded (None: none). Runs
    record it absolute (TrainConfig.as_dict); checkpoints from before 2026-12 may hold a
    path relative to the folder training ran in, which is never resolved here."""
    return Path(config["data"]) if config.get("data") else None


def held_out_images(
    folder: Path,
    config: dict,
    cfg: Preprocessing,
    held_out_fingerprint: str | None,
    source: str,
) -> ImageFolder:
    """The images of `folder` that the run of `config` did not train on: the validation
    split when `folder` is the run's own flat data folder, all of it otherwise; the run's
    train/ folder is refused. Where the run recorded a relative path, its folders are told
    by the validation split's fingerprint instead of by their paths."""
    data = recorded_data(config)
    if data is not None and not data.is_absolute():
        return _held_out_by_fingerprint(Path(folder), config, cfg, held_out_fingerprint, source)
    data = data.resolve() if data is not None else None
    if data is not None and Path(folder).resolve() == data / "train":
        raise DataError(f"{folder} is the training split of {source}; give held-out images")
    if data is not None and Path(folder).resolve() == data and not (data / "train").is_dir():
        return run_splits(config, cfg, held_out_fingerprint, source)[1]
    if is_manifest(Path(folder)):  # another manifest: all of its images
        return manifest_images(Path(folder), cfg)
    return image_folder(Path(folder), cfg)


def _held_out_by_fingerprint(
    folder: Path,
    config: dict,
    cfg: Preprocessing,
    held_out_fingerprint: str | None,
    source: str,
) -> ImageFolder:
    """held_out_images for a run that recorded its data folder relative to a working folder
    unknown here: `folder` is the run's flat folder if it draws the recorded validation
    split again, and its train/ if the val/ beside it is that split. Without a recorded
    fingerprint (before 2026-12) nothing can be told: `folder` is taken as given."""
    val = folder.parent / "val"
    if (
        held_out_fingerprint is not None
        and folder.name == "train"
        and val.is_dir()
        and split_fingerprint(image_folder(val, cfg)) == held_out_fingerprint
    ):
        raise DataError(f"{folder} is the training split of {source}; give held-out images")
    if held_out_fingerprint is not None and not (folder / "train").is_dir():
        try:
            val = list_recorded(folder, config, cfg)[1]
        except DataError:
            val = None  # cannot be split as the run split its folder: not that folder
        if val is not None and split_fingerprint(val) == held_out_fingerprint:
            return val
    return image_folder(folder, cfg)


def class_counts(dataset: ImageFolder) -> np.ndarray:
    return np.bincount(dataset.targets, minlength=len(dataset.classes))


def package_photos() -> list[Path]:
    """Real photographs that ship inside scikit-image and scikit-learn: no download needed.

    JPEG and PNG, 300 to 1411 pixels a side, portrait and landscape, colour and gray.
    """
    import skimage
    import sklearn

    skimage_data = Path(skimage.__file__).parent / "data"
    sklearn_images = Path(sklearn.__file__).parent / "datasets" / "images"
    return [
        skimage_data / "astronaut.png",  # 512x512 RGB
        skimage_data / "coffee.png",  # 600x400 RGB, landscape
        skimage_data / "chelsea.png",  # 451x300 RGB
        skimage_data / "rocket.jpg",  # 427x640 JPEG, portrait
        skimage_data / "camera.png",  # 512x512 grayscale
        sklearn_images / "china.jpg",  # 640x427 JPEG
        sklearn_images / "flower.jpg",  # 640x427 JPEG
        skimage_data / "hubble_deep_field.jpg",  # 1000x872 JPEG
        skimage_data / "retina.jpg",  # 1411x1411 JPEG: decoded at 1/2 scale (jpeg_draft)
        skimage_data / "motorcycle_left.png",  # 741x500 RGB
    ]
