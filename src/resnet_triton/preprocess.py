"""Image decoding and eval preprocessing: the one implementation.

The training eval transform (data.EvalTransform), the Triton `preprocess`
model and local reference inference all call `decode_image`/`load_image` and `preprocess`,
so a served image goes through exactly the pixels-to-tensor path the model
was validated on. The arithmetic follows torchvision's
Resize(resize_size) -> CenterCrop(crop_size) -> ToTensor -> Normalize on PIL
images step by step (same PIL resampling call, same rounding of the crop
offset, same float32 operation order), which is why parity with torchvision
is within float32 rounding (tests/test_preprocess.py). Only numpy and Pillow
are needed here, so the serving image does not carry PyTorch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_triton.errors import UserError
from resnet_triton.spec import Preprocessing

PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class ImageDecodeError(UserError, ValueError):
    """The bytes are not an image this pipeline can decode."""


def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes -> RGB PIL image, EXIF orientation applied.

    Orientation is applied here, so training and serving see a phone photo
    the same way up.
    """
    if not data:
        raise ImageDecodeError("empty image payload (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a decodable image ({len(data)} bytes, starting {data[:8]!r})"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data: Pillow raises OSError/SyntaxError/ValueError.
        raise ImageDecodeError(f"corrupt image ({len(data)} bytes): {exc}") from None


def load_image(path: str | Path) -> Image.Image:
    """Read and decode an image file; the error names the file."""
    try:
        return decode_image(Path(path).read_bytes())
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from None


def preprocess(image: Image.Image, cfg: Preprocessing) -> np.ndarray:
    """RGB PIL image -> normalized (3, crop, crop) float32 array."""
    width, height = image.size
    short, long = sorted((width, height))
    # torchvision's rule: the shorter side becomes resize_size, the longer one
    # keeps the aspect ratio, truncated to an int.
    new_short, new_long = cfg.resize_size, int(cfg.resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize((new_w, new_h), PIL_RESAMPLE[cfg.interpolation])

    crop = cfg.crop_size
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    image = image.crop((left, top, left + crop, top + crop))

    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (crop, crop, 3)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, crop, crop)


def preprocess_bytes(payloads, cfg: Preprocessing) -> np.ndarray:
    """Encoded images -> (N, 3, crop, crop) float32; the error names the bad item."""
    arrays = []
    for index, data in enumerate(payloads):
        try:
            arrays.append(preprocess(decode_image(data), cfg))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {index}: {exc}") from None
    return np.stack(arrays)
