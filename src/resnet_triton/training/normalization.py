"""`--normalize data`: the per-channel mean and standard deviation of the training split's
pixels, in [0, 1], after the eval resize and center crop (what the network sees of each
image). They replace ImageNet's in the spec's preprocessing, which travels in the
checkpoint, so training, evaluation, the gates and the server normalize alike. Only the
training split is read: the validation and test images tell the run nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from resnet_triton.data import Augmentation, EvalTransform, Splits, train_transform
from resnet_triton.errors import DataError
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.spec import Preprocessing

BATCH = 64  # images decoded at a time: memory stays flat on any data set
DECIMALS = 4  # as printed, as stored in the spec


def _sums(paths: list[str], prep: Preprocessing) -> np.ndarray:
    """(3, 2): per channel, the sum of the pixel values in [0, 1] and of their squares."""
    pixels = pixels_from_files(paths, prep).astype(np.float64) / 255.0  # (N, 3, crop, crop)
    return np.stack([pixels.sum(axis=(0, 2, 3)), np.square(pixels).sum(axis=(0, 2, 3))], 1)


def channel_statistics(
    paths: list[str], prep: Preprocessing, workers: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (3,): over every pixel of every image's eval crop."""
    batches = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without the GIL
        sums = sum(pool.map(lambda batch: _sums(batch, prep), batches))
    count = len(paths) * prep.crop_size**2
    mean = sums[:, 0] / count
    return mean, np.sqrt(np.maximum(sums[:, 1] / count - mean**2, 0.0))


def from_training_split(
    splits: Splits, prep: Preprocessing, aug: Augmentation, log: Callable[[str], None]
) -> Preprocessing:
    """`prep` with the training split's mean and std, which the splits' transforms now use
    too; the values are printed."""
    paths = [path for path, _ in splits.train.samples]
    mean, std = (np.round(v, DECIMALS) for v in channel_statistics(paths, prep))
    if std.min() <= 0:
        raise DataError(
            f"--normalize data: the {len(paths)} training images have a channel without "
            f"variation (std {std.tolist()}); use --normalize imagenet"
        )
    prep = dataclasses.replace(prep, mean=tuple(mean.tolist()), std=tuple(std.tolist()))
    splits.train.transform = train_transform(prep, aug)
    for dataset in (splits.val, splits.test):
        if dataset is not None:
            dataset.transform = EvalTransform(prep)
    log(
        f"normalization from the {len(paths)} training images: mean {list(prep.mean)}, "
        f"std {list(prep.std)} (in the spec: the server normalizes with them too)"
    )
    return prep
