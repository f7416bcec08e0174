"""Prediction on a folder decodes and preprocesses as the checkpoint's spec says."""

import numpy as np
import torch
from conftest import PHOTOS

from resnet_triton.build.export import ServedModel
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.resnet import build_model, save_checkpoint
from resnet_triton.spec import ModelSpec, Preprocessing
from resnet_triton.training.loaders import predict_folder


def test_predict_folder_decodes_with_the_specs_settings(tmp_path):
    """With jpeg_draft off, a large JPEG is decoded in full, as the server decodes it for
    this model; a loader that took the default settings would draft-decode it."""
    photos = [p for p in PHOTOS if p.name in ("retina.jpg", "hubble_deep_field.jpg")]
    for label, photo in zip(("a", "b"), photos, strict=True):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / photo.name).write_bytes(photo.read_bytes())
    spec = ModelSpec(labels=("a", "b"), arch="resnet18",
                     preprocessing=Preprocessing(72, 64, jpeg_draft=False))  # fmt: skip
    torch.manual_seed(0)
    model = build_model(spec, "none").eval()
    save_checkpoint(tmp_path / "checkpoint.pt", model, spec)

    probs, targets = predict_folder(
        tmp_path / "checkpoint.pt", tmp_path / "data", torch.device("cpu")
    )
    pixels = pixels_from_files(photos, spec.preprocessing)  # what the server would decode
    with torch.no_grad():
        served = ServedModel(model, spec)(torch.from_numpy(pixels)).numpy()
    assert targets.tolist() == [0, 1]
    np.testing.assert_allclose(probs, served, atol=1e-6)
    drafted = pixels_from_files(photos, Preprocessing(72, 64))
    assert np.abs(drafted.astype(int) - pixels).max() > 10  # the settings matter here
