"""ImageFolder datasets read through the shared decoder, and the digits demo set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from resnet_triton.errors import UserError
from resnet_triton.preprocess import load_image, preprocess
from resnet_triton.spec import Preprocessing

SPLITS = ("train", "val")


class DataError(UserError, ValueError):
    """A data folder that cannot be trained or evaluated on."""


def image_folder(root: Path, transform=None) -> ImageFolder:
    """torchvision's ImageFolder, decoding with the same function as serving."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    try:
        dataset = ImageFolder(root, transform=transform, loader=load_image)
    except FileNotFoundError as exc:
        # torchvision names the folder and, for an empty class, the class.
        raise DataError(f"{root}: {exc}") from None
    if len(dataset.classes) < 2:
        raise DataError(
            f"{root} has {len(dataset.classes)} class folder(s) {dataset.classes}; "
            "a classifier needs at least 2"
        )
    return dataset


class EvalTransform:
    """Dataset transform: PIL image -> (3, crop, crop) float tensor, via the shared `preprocess`."""

    def __init__(self, cfg: Preprocessing):
        self.cfg = cfg

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess(image, self.cfg))


def train_transform(cfg: Preprocessing, hflip: bool) -> transforms.Compose:
    """Light augmentation ending in the same tensor layout as `EvalTransform`."""
    steps = [
        transforms.RandomResizedCrop(
            cfg.crop_size,
            scale=(0.35, 1.0),
            interpolation=transforms.InterpolationMode(cfg.interpolation),
        )
    ]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    return transforms.Compose(steps)


def load_splits(root: Path, cfg: Preprocessing, hflip: bool) -> tuple[ImageFolder, ImageFolder]:
    """`root/train` with augmentation and `root/val` with the eval transform."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise DataError(
            f"data folder {root} lacks {', '.join(missing)}/; expected {root}/train/<class>/* "
            f"and {root}/val/<class>/*"
        )
    train = image_folder(root / "train", train_transform(cfg, hflip))
    val = image_folder(root / "val", EvalTransform(cfg))
    if train.classes != val.classes:
        raise DataError(
            f"train and val have different classes: only in train "
            f"{sorted(set(train.classes) - set(val.classes))}, only in val "
            f"{sorted(set(val.classes) - set(train.classes))}"
        )
    return train, val


def write_digits(root: Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """scikit-learn's 1,797 handwritten digits as an ImageFolder of 8x8 PNGs.

    The split is stratified and seeded, so every run writes the same files.
    Returns the number of images per split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    indices = np.arange(len(images))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=digits.target, random_state=seed
    )
    counts = {}
    for split, split_idx in (("train", train_idx), ("val", val_idx)):
        for i in split_idx:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"digit_{i:04d}.png")
        counts[split] = len(split_idx)
    return counts
