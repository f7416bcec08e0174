"""Image decoding and eval preprocessing: the one implementation.

The training eval transform (data.EvalTransform), the training loader, the
Triton `preprocess` model and local reference inference all call
`decode_image`/`load_image` and `preprocess`/`preprocess_batch`, so a served
image goes through exactly the pixels-to-tensor path the model was
validated on. Only numpy and Pillow are needed, so the serving image does
not carry PyTorch.

Against torchvision's Resize -> CenterCrop -> ToTensor -> Normalize the
arithmetic is the same (Pillow's resampling, torchvision's rounding of sizes
and crop offsets, float32 operation order), with two deliberate shortcuts:
the resize computes only the pixels inside the crop (Pillow's `box`, about a
third less work; at most one 8-bit level apart), and JPEGs larger than twice
the resize size are decoded at 1/2, 1/4 or 1/8 scale (`jpeg_draft`; a
4032x3024 photo decodes about 4x faster, within half an 8-bit level on
average). tests/test_preprocess.py states and checks the tolerances on real
photos.

The pixels that cross from the preprocess model to the classifier are 8-bit
(`pixels_from_bytes`: (N, 3, crop, crop) uint8, a quarter of float32's bytes);
the exported classifier graph normalizes them, with the same float32
arithmetic as `normalize` (tests/build/test_command.py checks every value).

Where the bytes allow it, decoding runs in libjpeg-turbo through simplejpeg
(JPEG, at the same DCT scale Pillow's draft picks) and in libspng through
pyspng (8-bit gray, RGB and RGBA PNG): the same pixels as Pillow's decoder,
bit for bit, in less time. Everything else (CMYK, palette, 16-bit, EXIF in a
PNG) goes through Pillow.

Decoding decisions, the same for training and serving:
- formats outside `cfg.formats` and images over `cfg.max_pixels` are refused
  before any pixel is decoded;
- EXIF orientation is applied (phone photos come out upright);
- grayscale, palette, CMYK and 16-bit images become 8-bit RGB; an alpha
  channel is dropped, as torchvision's default loader does.
"""

from __future__ import annotations

import functools
import glob
import io
from pathlib import Path

import numpy as np
import pyspng
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_triton.errors import UserError
from resnet_triton.spec import IMAGE_EXTENSIONS, Preprocessing

PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
PNG_FAST_COLOR_TYPES = (0, 2, 6)  # 8-bit gray, RGB, RGBA: what libspng decodes as Pillow does


class ImageDecodeError(UserError, ValueError):
    """The bytes are not an image this pipeline accepts; `reason` says why in one of
    REJECT_REASONS (the serving metrics count rejections by it)."""

    def __init__(self, message: str, reason: str = "corrupt"):
        super().__init__(message)
        self.reason = reason


REJECT_REASONS = ("empty", "too_many_bytes", "not_an_image", "corrupt", "format", "too_many_pixels")


def _resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    # torchvision's rule: the shorter side becomes resize_size, the longer
    # keeps the aspect ratio, truncated to an int.
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def decode_image(data: bytes, cfg: Preprocessing | None = None) -> Image.Image:
    """Encoded bytes -> upright 8-bit RGB PIL image; errors name the problem."""
    cfg = cfg or Preprocessing()
    if not data:
        raise ImageDecodeError("empty image payload (0 bytes)", "empty")
    if len(data) > cfg.max_bytes:
        raise ImageDecodeError(
            f"image payload of {len(data):,} bytes exceeds the limit of {cfg.max_bytes:,}",
            "too_many_bytes",
        )
    image = _open(data)
    if image.format not in cfg.formats:
        raise ImageDecodeError(
            f"image format {image.format} is not accepted; accepted: {', '.join(cfg.formats)}",
            "format",
        )
    width, height = image.size
    if width * height > cfg.max_pixels:
        raise ImageDecodeError(
            f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{cfg.max_pixels:,}",
            "too_many_pixels",
        )
    try:
        if cfg.jpeg_draft and image.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below the request.
            # Asking for twice the resized size leaves the antialiased resize to do
            # the last step, which keeps the result close to a full decode.
            new_w, new_h = _resized_size(width, height, cfg.resize_size)
            image.draft("RGB", (2 * new_w, 2 * new_h))  # only sets the scale: no decoding yet
        fast = _fast_decode(data, image)
        if fast is not None:
            fast.info = image.info  # the EXIF orientation, read with the header
            image = fast
        else:
            image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)
    except Image.DecompressionBombError as exc:  # a frame or tile larger than the header said
        raise ImageDecodeError(f"{image.format} image: {exc}", "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError, RuntimeError) as exc:
        # Truncated or corrupt data: Pillow raises OSError, SyntaxError or ValueError,
        # simplejpeg ValueError, pyspng RuntimeError.
        raise ImageDecodeError(f"corrupt {image.format} image ({len(data)} bytes): {exc}") from None


def _open(data: bytes) -> Image.Image:
    """The image's header, read; nothing decoded yet."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a decodable image ({len(data)} bytes, starting {data[:8]!r})", "not_an_image"
        ) from None
    except Image.DecompressionBombError as exc:
        # A header claiming over twice Image.MAX_IMAGE_PIXELS: Pillow refuses it with a
        # plain Exception (not an OSError) before our own max_pixels check can.
        raise ImageDecodeError(
            f"image header of {len(data)} bytes claims too many pixels: {exc}", "too_many_pixels"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # a header cut short, for one
        raise ImageDecodeError(f"corrupt image ({len(data)} bytes): {exc}") from None


def _fast_decode(data: bytes, image: Image.Image) -> Image.Image | None:
    """The pixels Pillow would decode for `image` (header read), or None for Pillow to do it."""
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        width, height = image.size  # after draft: the scale Pillow chose
        pixels = simplejpeg.decode_jpeg(
            data, "RGB" if image.mode == "RGB" else "GRAY", min_width=width, min_height=height
        )  # the smallest libjpeg-turbo scale that is at least that size: the same one
    elif (
        image.format == "PNG"
        and data[24] == 8  # IHDR bit depth
        and data[25] in PNG_FAST_COLOR_TYPES
        and b"eXIf" not in data  # orientation in a PNG: Pillow reads it
    ):
        pixels = pyspng.load(data)
    else:
        return None
    if pixels.shape[:2] != image.size[::-1]:
        raise ValueError(f"decoded {pixels.shape[1]}x{pixels.shape[0]}, header says {image.size}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:  # simplejpeg's gray: (h, w, 1)
        pixels = pixels[..., 0]
    return Image.fromarray(pixels)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image  # convert() would copy it: a fresh allocation, a tenth of the time here
    if image.mode in SIXTEEN_BIT:
        eight_bit = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)  # keep the top byte
        return Image.fromarray(eight_bit).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's documented path for palette transparency
    return image.convert("RGB")


def load_image(path: str | Path, cfg: Preprocessing | None = None) -> Image.Image:
    """Read and decode an image file; the error names the file."""
    try:
        return decode_image(Path(path).read_bytes(), cfg)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}", exc.reason) from None


def crop(image: Image.Image, cfg: Preprocessing) -> np.ndarray:
    """RGB image -> the center crop of its resized version, (crop, crop, 3) uint8."""
    width, height = image.size
    new_w, new_h = _resized_size(width, height, cfg.resize_size)
    size = cfg.crop_size
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    # Resample only the crop: the box is the crop in source coordinates.
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(image.resize((size, size), PIL_RESAMPLE[cfg.interpolation], box=box))


def to_pixels(crops: np.ndarray) -> np.ndarray:
    """(N, crop, crop, 3) uint8 crops -> (N, 3, crop, crop) uint8: the classifier's input."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


@functools.lru_cache(maxsize=8)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: every 8-bit value of every channel, normalized once."""
    levels = np.arange(256, dtype=np.float32)[:, None]  # (256, 1)
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((levels / np.float32(255.0) - mean32) / std32).T)


def normalize(pixels: np.ndarray, cfg: Preprocessing) -> np.ndarray:
    """(N, 3, crop, crop) uint8 -> (N, 3, crop, crop) float32: what the network takes.

    A table lookup per channel: the table holds torchvision's arithmetic,
    (x / 255 - mean) / std in float32, for the 256 possible values, so the
    result is bit-identical to computing it and takes one pass instead of five.
    """
    table = _lookup_table(tuple(cfg.mean), tuple(cfg.std))
    out = np.empty(pixels.shape, dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, channel], out=out[:, channel])
    return out


def preprocess(image: Image.Image, cfg: Preprocessing) -> np.ndarray:
    """RGB PIL image -> normalized (3, crop, crop) float32 array (training, reference runs)."""
    return normalize(to_pixels(crop(image, cfg)[None]), cfg)[0]


def pixels_from_bytes(payloads, cfg: Preprocessing) -> np.ndarray:
    """Encoded images -> (N, 3, crop, crop) uint8; the error names the bad item."""
    crops = np.empty((len(payloads), cfg.crop_size, cfg.crop_size, 3), dtype=np.uint8)
    for index, data in enumerate(payloads):
        try:
            crops[index] = crop(decode_image(data, cfg), cfg)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {index}: {exc}", exc.reason) from None
    return to_pixels(crops)


def pixels_from_files(paths, cfg: Preprocessing) -> np.ndarray:
    """Image files -> (N, 3, crop, crop) uint8; the error names the bad file."""
    crops = np.empty((len(paths), cfg.crop_size, cfg.crop_size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        crops[index] = crop(load_image(path, cfg), cfg)
    return to_pixels(crops)


def image_files(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; sorted per input."""
    paths = []
    for item in inputs:
        path = Path(item)
        if glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"{item} matches no file")
            paths += matches
        elif path.is_dir():
            paths += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"{item} is neither a file nor a folder")
    if not paths:
        raise UserError(f"no image files in {', '.join(inputs)}")
    return paths
