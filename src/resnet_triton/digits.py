"""The demo's data and model: scikit-learn's handwritten digits, and the spec trained on them.

The committed model_repository/ is rendered from `demo_spec()`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from resnet_triton.spec import ModelSpec

DEMO_ARCH = "resnet18"  # small enough to train from scratch on 2 cores in minutes
DIGIT_LABELS = tuple(str(d) for d in range(10))


def demo_spec() -> ModelSpec:
    """The spec the demo's training produces."""
    return ModelSpec(labels=DIGIT_LABELS, arch=DEMO_ARCH)


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
