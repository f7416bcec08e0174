"""The shared preprocessing against torchvision's eval transform, on real photos.

Tolerance: atol 1e-5 on normalized pixels (values span about -2.1..2.6).
Both sides call the same Pillow resize and crop the same box, so the pixels
are identical before normalization; what remains is float32 rounding in
(x / 255 - mean) / std, which is below 1e-6.
"""

import io

import numpy as np
import pytest
import torch
from conftest import PHOTOS
from PIL import Image
from torchvision import transforms

from resnet_triton.preprocess import ImageDecodeError, decode_image, preprocess, preprocess_bytes
from resnet_triton.spec import Preprocessing


def torchvision_eval(cfg: Preprocessing) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(cfg.resize_size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(cfg.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(cfg.mean, cfg.std),
        ]
    )


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
@pytest.mark.parametrize("sizes", [(256, 224), (72, 64), (299, 299)])
def test_matches_torchvision_on_real_photos(path, sizes):
    cfg = Preprocessing(resize_size=sizes[0], crop_size=sizes[1])
    image = decode_image(path.read_bytes())
    ours = preprocess(image, cfg)
    reference = torchvision_eval(cfg)(image).numpy()
    assert ours.shape == reference.shape == (3, sizes[1], sizes[1])
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_upscales_tiny_images_like_torchvision():
    tiny = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).convert("RGB")
    cfg = Preprocessing()
    np.testing.assert_allclose(
        preprocess(tiny, cfg), torchvision_eval(cfg)(tiny).numpy(), rtol=0, atol=1e-5
    )


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_grayscale_and_alpha_become_rgb():
    gray = Image.fromarray(np.full((10, 12), 200, dtype=np.uint8))
    assert decode_image(encode(gray, "PNG")).mode == "RGB"
    rgba = Image.new("RGBA", (5, 5), (10, 20, 30, 0))
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (10, 20, 30)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty image payload"),
        (b"this is not an image at all", "not a decodable image (27 bytes, starting b'this is "),
        (PHOTOS[0].read_bytes()[:2000], "corrupt image (2000 bytes)"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_payloads_are_named(payload, message):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(payload)
    assert message in str(info.value)


def test_batch_error_names_the_item():
    good = PHOTOS[0].read_bytes()
    with pytest.raises(ImageDecodeError, match=r"^image 2: empty image payload"):
        preprocess_bytes([good, good, b""], Preprocessing())
    batch = preprocess_bytes([good, PHOTOS[1].read_bytes()], Preprocessing(72, 64))
    assert batch.shape == (2, 3, 64, 64)
    assert torch.from_numpy(batch).isfinite().all()
