"""What the sync and async clients share: results, image encoding, the batching policy
(`Job`), request building and parsing, and the retry policy. The package docstring
(resnet_triton.client) describes the behaviour."""

from __future__ import annotations

import http.client
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image
from tritonclient.utils import InferenceServerException

from resnet_triton.endpoints import GRPC_PORT, HTTP_PORT
from resnet_triton.errors import UserError
from resnet_triton.spec import REJECT_BELOW

PROTOCOLS = {"grpc": f"localhost:{GRPC_PORT}", "http": f"localhost:{HTTP_PORT}"}
RETRYABLE_STATUS = {"StatusCode.UNAVAILABLE", "503", "502"}
# The connection went away (refused, reset, closed before the answer: a server that
# stops or restarts, a proxy in front of one that is gone); tritonclient's HTTP
# clients raise these unwrapped (geventhttpclient's HTTPConnectionClosed is an
# http.client.HTTPException).
CONNECTION_ERRORS = (OSError, http.client.HTTPException, aiohttp.ClientConnectionError)

ImageLike = bytes | str | Path | Image.Image | np.ndarray


class ClientError(UserError):
    """The server, the model or an image cannot be used as asked."""


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Result:
    source: str
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None
    # The top score is below the served model's reject_below: the image is none of the
    # classes. The predictions are still there, for a look.
    unknown: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answer(self) -> str | None:
        """The label, "unknown" when rejected, None when the image failed."""
        if self.error is not None or not self.predictions:
            return None
        return "unknown" if self.unknown else self.predictions[0].label

    @property
    def top1(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_name: str
    output_name: str
    max_batch_size: int
    # BYTES: one encoded image per element (the Python preprocess model); UINT8: the
    # encoded bytes as a row of uint8, zero-padded to the longest (the DALI model).
    input_datatype: str = "BYTES"
    reject_below: float | None = None  # the ensemble's config parameter, when calibrated


@dataclass
class _Item:
    index: int
    source: str
    data: bytes | None = None
    error: str | None = field(default=None)


def parse_classification(entry: bytes | str) -> Prediction:
    """One "score:index:label" string of the classification extension."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, label = text.split(":", 2)  # a label may itself contain ':'
    return Prediction(label=label, index=int(index), score=float(score))


def encode_image(image: ImageLike) -> tuple[str, bytes]:
    """(a name for messages, encoded bytes); errors name the input."""
    if isinstance(image, bytes):
        return f"<{len(image)} bytes>", image
    if isinstance(image, str | Path):
        try:
            return str(image), Path(image).read_bytes()
        except OSError as exc:
            raise ClientError(f"{image}: cannot read: {exc.strerror}") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ClientError(
                f"arrays must be uint8 (H, W) or (H, W, 3|4), got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless: the server sees these exact pixels
        return f"<PIL {image.mode} {image.width}x{image.height}>", buffer.getvalue()
    raise ClientError(f"cannot classify a {type(image).__name__}; give bytes, a path, a PIL "
                      "image or a uint8 array")  # fmt: skip


def encoded_batch(payloads: list[bytes], datatype: str) -> np.ndarray:
    """The images of one request as the model's input wants them: (n, 1) BYTES, or
    (n, longest) UINT8 with each image's bytes zero-padded at the end."""
    if datatype == "BYTES":
        return np.array([[p] for p in payloads], dtype=np.object_)
    if datatype != "UINT8":
        raise ClientError(f"the model's image input is {datatype}; expected BYTES or UINT8")
    batch = np.zeros((len(payloads), max(len(p) for p in payloads)), dtype=np.uint8)
    for row, payload in zip(batch, payloads, strict=True):
        row[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    return batch


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, InferenceServerException):
        return str(exc.status()) in RETRYABLE_STATUS
    return isinstance(exc, CONNECTION_ERRORS)  # the server may be back


def _message(exc: Exception) -> str:
    return exc.message() if isinstance(exc, InferenceServerException) else str(exc)


class Job:
    """The images of one classify() call, and the policy both clients follow: encode each
    once, send them in requests of at most max_batch_size, and when the server refuses a
    request of several images, send each of them alone, so that only the image at fault
    fails (with its own error) and every other image is answered."""

    def __init__(
        self, images: Sequence[ImageLike], max_batch_size: int, reject_below: float | None = None
    ):
        self.items = _encode_all(images)
        self.reject_below = reject_below
        ready = [item for item in self.items if item.error is None]
        self.batches = [ready[i : i + max_batch_size] for i in range(0, len(ready), max_batch_size)]
        self.answers: dict[int, Result] = {}

    def answered(self, batch: list[_Item], rows: list[tuple[Prediction, ...]]) -> None:
        limit = self.reject_below
        self.answers.update(
            {
                i.index: Result(i.source, row, unknown=limit is not None and row[0].score < limit)
                for i, row in zip(batch, rows, strict=True)
            }
        )

    def refused(self, batch: list[_Item], error: ClientError) -> list[list[_Item]]:
        """The requests to send instead: each image alone, or none once one image failed."""
        if len(batch) > 1:
            return [[item] for item in batch]
        self.answers[batch[0].index] = Result(batch[0].source, error=str(error))
        return []

    def results(self) -> list[Result]:
        """One Result per image, in the order given."""
        return [
            self.answers.get(item.index) or Result(item.source, error=item.error or "no answer")
            for item in self.items
        ]


def _encode_all(images: Sequence[ImageLike]) -> list[_Item]:
    items = []
    for index, image in enumerate(images):
        try:
            source, data = encode_image(image)
            items.append(_Item(index, source, data))
        except ClientError as exc:
            items.append(_Item(index, str(image)[:80], error=str(exc)))
    return items


class _Protocol:
    """What the sync and async clients share: settings, requests, parsing, retry policy."""

    def __init__(self, url, protocol, model, timeout_s, retries, backoff_s, concurrency):
        if protocol not in PROTOCOLS:
            choices = ", ".join(PROTOCOLS)
            raise ClientError(f"unknown protocol {protocol!r}; choose one of {choices}")
        self.protocol = protocol
        self.url = url or PROTOCOLS[protocol]
        self.model = model
        self.timeout_s = timeout_s
        self.retries, self.backoff_s, self.concurrency = retries, backoff_s, concurrency

    @property
    def grpc(self) -> bool:
        return self.protocol == "grpc"

    def model_info(self, metadata, config, ready: bool) -> ModelInfo:
        if not ready:
            raise ClientError(f"model {self.model!r} at {self.url} is not ready")
        if self.grpc:
            parameter = config.config.parameters.get(REJECT_BELOW)
            return ModelInfo(
                self.model,
                metadata.inputs[0].name,
                metadata.outputs[0].name,
                config.config.max_batch_size,
                metadata.inputs[0].datatype,
                self._threshold(parameter.string_value if parameter else None),
            )
        parameter = config.get("parameters", {}).get(REJECT_BELOW)
        return ModelInfo(
            self.model,
            metadata["inputs"][0]["name"],
            metadata["outputs"][0]["name"],
            config["max_batch_size"],
            metadata["inputs"][0]["datatype"],
            self._threshold(parameter["string_value"] if parameter else None),
        )

    def _threshold(self, text: str | None) -> float | None:
        if text is None:
            return None
        try:
            return float(text)
        except ValueError:
            raise ClientError(
                f"model {self.model!r} at {self.url}: parameter {REJECT_BELOW} is {text!r}, "
                "not a number"
            ) from None

    def unknown_model(self, exc: Exception) -> ClientError:
        message = _message(exc)
        if "unknown model" in message.lower() or "not found" in message.lower():
            return ClientError(f"unknown model {self.model!r} at {self.url}: {message}")
        return ClientError(f"cannot reach Triton at {self.url} ({self.protocol}): {message}")

    def request(self, module, info: ModelInfo, payloads: list[bytes], top_k: int):
        batch = encoded_batch(payloads, info.input_datatype)
        infer_input = module.InferInput(info.input_name, list(batch.shape), info.input_datatype)
        if self.grpc:
            infer_input.set_data_from_numpy(batch)
            output = module.InferRequestedOutput(info.output_name, class_count=top_k)
        else:
            infer_input.set_data_from_numpy(batch, binary_data=True)
            output = module.InferRequestedOutput(
                info.output_name, binary_data=True, class_count=top_k
            )
        return infer_input, output

    @staticmethod
    def parse(result, info: ModelInfo, count: int, top_k: int) -> list[tuple[Prediction, ...]]:
        rows = result.as_numpy(info.output_name).reshape(count, top_k)
        return [tuple(parse_classification(entry) for entry in row) for row in rows]

    def retry_delay(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before retrying a failed request; raises ClientError when it should
        not be retried (the last attempt, or a failure other than an unavailable server)."""
        if attempt == self.retries or not _retryable(exc):
            raise ClientError(_message(exc)) from None
        return self.backoff_s * 2**attempt
