"""The images a build checks and calibrates on.

Gates measure on held-out images only: by default the validation split of the
run that wrote the checkpoint (its val/ folder, or a flat folder's split drawn
again from the checkpoint's config; data.run_splits), else `--images`, of
which a flat training folder again gives only its validation split. INT8
calibrates on the run's training split (or `--calibration`). Everything is
listed first, and pixels are decoded only when a build has work to do.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_triton.build.manifest import content_hash, files_sha256
from resnet_triton.data import (
    DataError,
    held_out_images,
    image_folder,
    recorded_data,
    run_splits,
)
from resnet_triton.errors import UserError
from resnet_triton.listing import is_manifest, manifest_images
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.spec import ModelSpec

GATE_BATCH = 8  # images per Polygraphy iteration in the elementwise comparison
AGREEMENT_BATCH = 16


@dataclass(frozen=True)
class ImageSet:
    """Image files and their class indices."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    @classmethod
    def of(cls, dataset) -> ImageSet:
        return cls(tuple(p for p, _ in dataset.samples), tuple(t for _, t in dataset.samples))

    def spread(self, count: int) -> ImageSet:
        """`count` images spread evenly over the set (every class of a sorted folder)."""
        picks = np.unique(np.linspace(0, len(self.paths) - 1, min(count, len(self.paths))))
        picks = picks.astype(int)
        return ImageSet(tuple(self.paths[i] for i in picks), tuple(self.labels[i] for i in picks))


def held_out_set(spec: ModelSpec, payload: dict, source: Path, images: Path | None) -> ImageSet:
    """The gates' images for a build from checkpoint `source` (whose `payload` holds the
    training run's config): `images`, else the run's validation split; nothing decoded."""
    config, fingerprint = payload.get("config", {}), payload.get("held_out")
    try:
        if images is None:
            dataset = run_splits(config, spec.preprocessing, fingerprint, str(source))[1]
        else:
            dataset = held_out_images(images, config, spec.preprocessing, fingerprint, str(source))
    except DataError as exc:
        raise UserError(f"{exc} (--images DIR: held-out images for the gates)") from None
    if tuple(dataset.classes) != spec.labels:
        raise UserError(
            f"{dataset.root} has classes {dataset.classes}; {source} has {list(spec.labels)}"
        )
    return ImageSet.of(dataset)


def calibration_set(
    spec: ModelSpec, payload: dict, source: Path, calibration: Path | None, count: int
) -> list[str]:
    """`count` INT8 calibration images: of `calibration` (a folder, or every image of a
    manifest), else of the run's training split, which the run's own data folder or
    manifest also gives: its held-out and test images never calibrate."""
    config, fingerprint = payload.get("config", {}), payload.get("held_out")
    recorded = recorded_data(config)
    own = (calibration is not None and recorded is not None and recorded.is_absolute()
           and calibration.resolve() == recorded.resolve())  # fmt: skip
    try:
        if calibration is None or own:
            dataset = run_splits(config, spec.preprocessing, fingerprint, str(source))[0]
        elif is_manifest(calibration):
            dataset = manifest_images(calibration, spec.preprocessing)
        else:
            dataset = image_folder(calibration, spec.preprocessing)
    except DataError as exc:
        raise UserError(f"{exc} (--calibration DIR or MANIFEST: images for INT8)") from None
    paths = ImageSet.of(dataset).spread(count).paths
    if len(paths) < count:
        raise UserError(
            f"calibration: {dataset.root} has {len(paths)} training images; --calibration-images "
            f"asks for {count} (lower it, or point --calibration at more images)"
        )
    return list(paths)


def pixel_batches(paths: list[str], spec: ModelSpec, size: int):
    """Preprocessed (N, 3, crop, crop) uint8 batches, decoded lazily to keep memory flat."""
    for i in range(0, len(paths), size):
        yield pixels_from_files(paths[i : i + size], spec.preprocessing)


@dataclass(frozen=True)
class GateImages:
    """What every gate of one build compares on, decoded once: Polygraphy feeds."""

    names: list[str]  # the elementwise comparison's images
    feeds: list[OrderedDict]  # their pixels, GATE_BATCH at a time
    agreement: ImageSet  # the top-1 agreement's images
    agreement_feeds: list[OrderedDict]
    key: str  # the images' content hash: cached reference outputs are keyed by it

    @classmethod
    def load(cls, images: ImageSet, spec: ModelSpec, count: int, agreement: int) -> GateImages:
        """`count` of the held-out `images` for the elementwise comparison and `agreement`
        of them for the top-1 agreement, spread over the set."""
        gate, agree = images.spread(count), images.spread(agreement)
        name = spec.names.pixels

        def feeds(paths, size):
            return [OrderedDict({name: b}) for b in pixel_batches(list(paths), spec, size)]

        key = content_hash(
            {
                "gate": [gate.paths, files_sha256(gate.paths), GATE_BATCH],
                "agreement": [agree.paths, files_sha256(agree.paths), AGREEMENT_BATCH],
                "preprocessing": spec.preprocessing.to_params(),
            }
        )
        return cls(
            list(gate.paths), feeds(gate.paths, GATE_BATCH), agree,
            feeds(agree.paths, AGREEMENT_BATCH), key,
        )  # fmt: skip

    @property
    def first_pixels(self) -> np.ndarray:
        return self.feeds[0][next(iter(self.feeds[0]))]
