"""The DALI preprocessing option (`serving.preprocess_backend: dali`): decoding and resizing in
NVIDIA DALI, served by Triton's DALI backend (in the NGC image; not in the
nvidia-pytriton wheel that `make serve` runs).

On the GPU target the JPEG decode runs in nvJPEG ("mixed") and the resize, crop and
transpose on the GPU, so the pixels reach the TensorRT classifier without leaving the
device; on the CPU target the same graph runs on DALI's CPU operators. The graph
computes what `preprocess.pixels_from_bytes` computes, with torchvision's geometry
(shorter side to resize_size, truncated; centre crop offsets rounded half to even),
from the full-size decode. tests/serving/test_dali.py holds it to Pillow's path on
real photos and odd files (gray, CMYK, palette, RGBA, 16-bit, progressive, Adam7,
EXIF-rotated): at most 1 8-bit level apart at every value, as the Python path is from
torchvision. Bilinear only: DALI's cubic and nearest filters differ from Pillow's by
2 and 9 levels on average (measured), so other interpolations are refused.

What the Python path does and this one does not:
- Requests carry the encoded bytes as UINT8 [-1] (zero-padded to the longest in a
  request; the decoders stop at the image's end), not as one BYTES element per image;
  the project's client reads the input's datatype and sends either.
- One corrupt image fails its whole DALI batch (dali_backend sends the pipeline's error
  to every request it ran together), so the DALI model has no dynamic batcher: each
  request runs alone and a bad image fails only its own request. The classifier after
  it still batches across requests. The client's policy (a refused request of several
  images is retried one image at a time) then answers every good image.
- `formats`, `max_pixels` and `max_bytes` are not checked before decoding (DALI has no
  per-image refusal); Triton's request size limit bounds the bytes. Serve untrusted
  uploads through the Python path, or check them in front.

The pipeline is serialized at render time (`model.dali`) by the nvidia-dali wheel
pinned in pyproject.toml's `dali` extra; the NGC image's DALI must be that release
or newer to load it.
"""

from __future__ import annotations

import numpy as np

from resnet_triton.errors import UserError
from resnet_triton.spec import ModelSpec, Preprocessing

MODEL_FILE = "model.dali"
DECODERS = {"gpu": "mixed", "cpu": "cpu"}  # target -> where the decoder runs
INSTALL = "pip install -e '.[dali]' (the nvidia-dali-cuda120 wheel)"


def _dali():
    try:
        import nvidia.dali as dali
    except ImportError:
        raise UserError(
            f"serving.preprocess_backend: dali needs NVIDIA DALI here: {INSTALL}"
        ) from None
    return dali


def _half_to_even(difference):
    """Python's round(difference / 2) for integers, in DALI's integer arithmetic."""
    half = difference // 2
    odd_half = half - 2 * (half // 2)
    return half + (difference - 2 * half) * odd_half


def graph(cfg: Preprocessing, image_name: str, decoder: str):
    """Encoded bytes (uint8, 1-D) -> (3, crop, crop) uint8, as pixels_from_bytes."""
    dali = _dali()
    fn, types = dali.fn, dali.types
    encoded = fn.external_source(name=image_name, dtype=types.UINT8, ndim=1)
    # The decoded shape, read from the header (EXIF orientation applied), on the CPU,
    # where DALI wants the resize and crop arguments.
    shape = fn.peek_image_shape(encoded, dtype=types.INT32)
    height, width = shape[0], shape[1]
    shorter = dali.math.min(height, width)
    new_height = cfg.resize_size * height // shorter  # torchvision's int() of the ratio
    new_width = cfg.resize_size * width // shorter
    images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
    images = fn.resize(
        images,
        resize_x=fn.cast(new_width, dtype=types.FLOAT),
        resize_y=fn.cast(new_height, dtype=types.FLOAT),
        interp_type=types.INTERP_LINEAR,
        antialias=True,
    )
    anchor = fn.stack(
        _half_to_even(new_height - cfg.crop_size), _half_to_even(new_width - cfg.crop_size)
    )
    size = fn.constant(idata=[cfg.crop_size, cfg.crop_size], dtype=types.INT32)
    images = fn.slice(images, anchor, size, axes=[0, 1])
    return fn.transpose(images, perm=[2, 0, 1])


def serialized(spec: ModelSpec, target: str, threads: int) -> bytes:
    """The `model.dali` file: the graph for `target`, serialized by this DALI release.

    The device is left open (device_id None): the backend places it at load.
    """
    dali = _dali()
    pipeline = dali.Pipeline(batch_size=spec.max_batch_size, num_threads=threads, device_id=None)
    with pipeline:
        pipeline.set_outputs(graph(spec.preprocessing, spec.names.image, DECODERS[target]))
    return pipeline.serialize()


class CpuPipeline:
    """A serialized CPU-target pipeline run in this process, as the backend runs it."""

    def __init__(self, model_dali: bytes, image_name: str, threads: int = 2):
        dali = _dali()
        self.image_name = image_name
        self.pipeline = dali.Pipeline.deserialize(
            serialized_pipeline=model_dali, device_id=None, num_threads=threads,
            exec_pipelined=False, exec_async=False, prefetch_queue_depth=1,
        )  # fmt: skip
        self.pipeline.build()

    def __call__(self, payloads: list[bytes] | np.ndarray) -> np.ndarray:
        """Encoded images (bytes, or rows of a zero-padded uint8 array) -> (N, 3, C, C)."""
        rows = [np.frombuffer(p, np.uint8) if isinstance(p, bytes) else p for p in payloads]
        self.pipeline.feed_input(self.image_name, rows)
        (pixels,) = self.pipeline.run()
        return pixels.as_array()
