"""The shared decoding and preprocessing against torchvision's eval transform, on real photos.

Tolerances, in 8-bit levels of the image before normalization (one level is
1/255 of the range; normalized values are that divided by std):
- resize-inside-the-crop (Pillow's `box`): at most 1 level, on average under
  0.05 levels (torchvision resizes the whole image, then crops);
- JPEG draft decoding (photos more than twice the resize size): at the
  default 256/224, under 0.5 levels on average and 99% of values within 4
  levels; at small outputs (72/64, a 6x downscale) under 2 levels on average
  and 99% within 12. Single pixels at sharp edges differ more (up to 51 levels
  seen on retina.jpg at 64 px).
With `jpeg_draft` off, JPEGs follow the first bound too.
"""

import io

import numpy as np
import pytest
from conftest import HOSTILE, PHOTOS, SKLEARN_IMAGES
from PIL import Image, PngImagePlugin
from torchvision import transforms

from resnet_triton import preprocess as preprocess_module
from resnet_triton.data import image_folder
from resnet_triton.preprocess import (
    ImageDecodeError,
    decode_image,
    normalize,
    pixels_from_bytes,
    preprocess,
    to_pixels,
)
from resnet_triton.spec import PILLOW_BOMB_PIXELS, ModelSpec, Preprocessing, SpecError


def torchvision_eval(cfg: Preprocessing) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(cfg.resize_size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(cfg.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(cfg.mean, cfg.std),
        ]
    )


def levels(ours: np.ndarray, reference: np.ndarray, cfg: Preprocessing) -> np.ndarray:
    """|difference| in 8-bit levels of the unnormalized image."""
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]
    return np.abs(ours - reference) * std * 255


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
@pytest.mark.parametrize("sizes", [(256, 224), (72, 64), (299, 299)])
@pytest.mark.parametrize("draft", [False, True])
def test_matches_torchvision_on_real_photos(path, sizes, draft):
    cfg = Preprocessing(resize_size=sizes[0], crop_size=sizes[1], jpeg_draft=draft)
    ours = preprocess(decode_image(path.read_bytes(), cfg), cfg)
    full = Image.open(path).convert("RGB")  # a full decode, as torchvision's loader does
    reference = torchvision_eval(cfg)(full).numpy()
    assert ours.shape == reference.shape == (3, sizes[1], sizes[1])
    assert ours.dtype == np.float32
    diff = levels(ours, reference, cfg)
    drafted = draft and path.suffix == ".jpg" and min(full.size) >= 4 * sizes[0]
    if not drafted:
        assert diff.max() <= 1 + 1e-3 and diff.mean() < 0.05
    elif sizes[0] >= 256:
        assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 4 + 1e-3
    else:
        assert diff.mean() < 2 and np.percentile(diff, 99) <= 12 + 1e-3


def large_jpeg(tmp_path):
    """A 4032x2688 phone-sized JPEG with real photo content."""
    image = Image.open(SKLEARN_IMAGES / "china.jpg").resize((4032, 2688), Image.BICUBIC)
    path = tmp_path / "phone.jpg"
    image.save(path, quality=92)
    return path


def test_draft_decoding_of_a_large_photo_stays_close(tmp_path):
    path = large_jpeg(tmp_path)
    cfg = Preprocessing()
    drafted = decode_image(path.read_bytes(), cfg)
    assert drafted.size == (1008, 672)  # libjpeg decoded at 1/4 scale
    diff = levels(preprocess(drafted, cfg), torchvision_eval(cfg)(Image.open(path)).numpy(), cfg)
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 4 + 1e-3


def test_same_decoder_for_training_and_serving(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    jpeg = large_jpeg(tmp_path / "a")
    Image.new("RGB", (9, 9)).save(tmp_path / "b" / "x.png")
    cfg = Preprocessing()
    loaded, _ = image_folder(tmp_path, cfg=cfg)[0]
    assert np.array_equal(np.asarray(loaded), np.asarray(decode_image(jpeg.read_bytes(), cfg)))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_modes_become_8_bit_rgb():
    gray = Image.fromarray(np.full((10, 12), 200, dtype=np.uint8))
    assert decode_image(encode(gray, "PNG")).getpixel((0, 0)) == (200, 200, 200)
    rgba = Image.new("RGBA", (5, 5), (10, 20, 30, 0))
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (10, 20, 30)  # alpha dropped
    sixteen = Image.fromarray(np.full((4, 4), 0xABCD, dtype=np.uint16))
    assert decode_image(encode(sixteen, "PNG")).getpixel((0, 0)) == (0xAB, 0xAB, 0xAB)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 250, 100, 50] + [0] * 762)
    with_transparency = encode(palette, "PNG", transparency=0)
    assert decode_image(with_transparency).getpixel((0, 0)) == (250, 100, 50)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in print colours
    red, green, blue = decode_image(encode(cmyk, "JPEG")).getpixel((4, 4))
    assert red > 240 and green < 15 and blue < 15


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert decode_image(encode(image, "JPEG", exif=exif)).size == (20, 40)


def fast_decoder_cases(tmp_path) -> list[tuple[str, bytes]]:
    """Real photos plus what the fast decoders must treat as Pillow does."""
    china = Image.open(SKLEARN_IMAGES / "china.jpg")
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b"gAMA", (45455).to_bytes(4, "big"))  # a gamma Pillow ignores: so must libspng
    rotated = Image.Exif()
    rotated[0x0112] = 8
    return [(p.name, p.read_bytes()) for p in PHOTOS] + [
        ("phone.jpg (drafted 1/4)", large_jpeg(tmp_path).read_bytes()),
        ("gray.jpg", encode(china.convert("L"), "JPEG")),
        ("exif-rotated.jpg", encode(china, "JPEG", exif=rotated)),
        ("progressive.jpg", encode(china, "JPEG", progressive=True, quality=80)),
        ("rgba.png", encode(china.convert("RGBA"), "PNG")),
        ("interlaced.png", encode(china, "PNG", interlace=1)),  # Adam7
        ("gamma.png", encode(china, "PNG", pnginfo=gamma)),
        ("palette.png (Pillow)", encode(china.quantize(64), "PNG")),
        ("cmyk.jpg (Pillow)", encode(china.convert("CMYK"), "JPEG")),
    ]


def test_fast_decoders_give_pillows_pixels(tmp_path, monkeypatch):
    """simplejpeg and pyspng decode these bit for bit as Pillow does, so every
    tolerance above (stated against Pillow's decoding) holds unchanged."""
    cases = fast_decoder_cases(tmp_path)
    fast = [decode_image(data) for _, data in cases]
    used = []
    original = preprocess_module._fast_decode
    monkeypatch.setattr(
        preprocess_module, "_fast_decode", lambda *a: used.append(original(*a)) or None
    )
    for (name, data), ours in zip(cases, fast, strict=True):
        pillow = decode_image(data)
        assert ours.mode == pillow.mode == "RGB", name
        assert ours.size == pillow.size, name
        assert np.array_equal(np.asarray(ours), np.asarray(pillow)), name
    took_fast_path = [name for (name, _), image in zip(cases, used, strict=True) if image]
    assert took_fast_path == [name for name, _ in cases if "(Pillow)" not in name]


@pytest.mark.parametrize(
    ("payload", "cfg", "message"),
    [
        (b"", None, "empty image payload (0 bytes)"),
        (b"this is not an image at all", None, "not a decodable image (27 bytes, starting b'this"),
        (PHOTOS[0].read_bytes()[:2000], None, "corrupt image (2000 bytes): Truncated File Read"),
        (PHOTOS[0].read_bytes()[:200000], None, "corrupt PNG image (200000 bytes): pyspng: could"),
        (PHOTOS[3].read_bytes()[:20000], None, "corrupt JPEG image (20000 bytes): Premature end"),
        (
            encode(Image.new("RGB", (8, 8)), "TIFF"),
            None,
            "image format TIFF is not accepted; accepted: JPEG, PNG, WEBP, BMP, GIF",
        ),
        (
            encode(Image.new("L", (8000, 6000)), "PNG"),
            None,
            "image of 8000x6000 = 48,000,000 pixels exceeds the limit of 40,000,000",
        ),
        (
            encode(Image.new("RGB", (300, 300)), "PNG"),
            Preprocessing(max_pixels=250 * 250),
            "exceeds the limit of 62,500",
        ),
    ],
    ids=[
        "empty",
        "text",
        "truncated-png-header",
        "truncated-png",
        "truncated-jpeg",
        "tiff",
        "bomb",
        "custom-limit",
    ],
)
def test_bad_payloads_are_named(payload, cfg, message):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(payload, cfg)
    assert message in str(info.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_headers_are_refused_for_their_reason(name):
    """Under 60 bytes each; Pillow's own refusal (DecompressionBombError, a plain
    Exception) is one of them and must reach the caller as the image's error."""
    payload, reason, message = HOSTILE[name]
    with pytest.raises(ImageDecodeError, match=message) as info:
        decode_image(payload)
    assert info.value.reason == reason
    with pytest.raises(ImageDecodeError, match=f"^image 1: .*{message}") as info:
        pixels_from_bytes([PHOTOS[0].read_bytes(), payload], Preprocessing())
    assert info.value.reason == reason


def test_pixel_limit_stays_below_pillows_bomb_threshold():
    assert PILLOW_BOMB_PIXELS == Image.MAX_IMAGE_PIXELS
    with pytest.raises(SpecError, match="decompression-bomb limit"):
        ModelSpec(labels=("a", "b"), preprocessing=Preprocessing(max_pixels=100_000_000))


def test_batch_error_names_the_item():
    good = PHOTOS[0].read_bytes()
    with pytest.raises(ImageDecodeError, match=r"^image 2: empty image payload"):
        pixels_from_bytes([good, good, b""], Preprocessing())
    cfg = Preprocessing(72, 64)
    batch = pixels_from_bytes([good, PHOTOS[3].read_bytes()], cfg)
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == np.uint8
    # The batch path, normalized, equals the one-image path.
    single = preprocess(decode_image(PHOTOS[3].read_bytes(), cfg), cfg)
    assert np.array_equal(normalize(batch, cfg)[1], single)


def test_normalize_is_bit_identical_to_the_formula():
    cfg = Preprocessing()
    crops = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    formula = ((crops.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(0, 3, 1, 2)
    assert np.array_equal(normalize(to_pixels(crops), cfg), formula)
