"""What the sync and async clients share: results, image encoding, the batching policy
(`Job`), request building and parsing, and the retry policy (`_Protocol.retry_delay`, on
failures.py's `Failure` and `failure_of`). The package docstring (resnet_triton.client)
describes the behaviour."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_triton.client.failures import (
    API_KEY_ENV,
    HOW_TO_PASS_A_KEY,
    Failure,
    failure_of,
    key_refusal,
    message_of,
    retry_after_s,
)
from resnet_triton.endpoints import GRPC_PORT, HTTP_PORT
from resnet_triton.errors import UserError
from resnet_triton.spec import REJECT_BELOW

PROTOCOLS = {"grpc": f"localhost:{GRPC_PORT}", "http": f"localhost:{HTTP_PORT}"}
ImageLike = bytes | str | Path | Image.Image | np.ndarray


class ClientError(UserError):
    """The server, the model or an image cannot be used as asked; `failure` says why a
    request failed (Failure.OTHER for errors that are not a request's)."""

    def __init__(self, message: str, failure: Failure = Failure.OTHER):
        super().__init__(message)
        self.failure = failure


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
    # The version of the model that answered, from Triton's response (a kept store version
    # serves as its number: pipeline/store.py).
    model_version: str | None = None

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
class Reply:
    """One answered request: each image's predictions, and the model version that answered."""

    rows: list[tuple[Prediction, ...]]
    model_version: str


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
    classes: int | None = None  # the output's last dimension: how many labels the model has


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


class Job:
    """The images of one classify() call, and the policy both clients follow: encode each
    once, send them in requests of at most max_batch_size, and when the server refuses a
    request of several images as invalid input, send each of them alone, so that only the
    image at fault fails (with its own error) and every other image is answered. Any other
    failure is every image's of the request (see Failure)."""

    def __init__(
        self, images: Sequence[ImageLike], max_batch_size: int, reject_below: float | None = None
    ):
        self.items = _encode_all(images)
        self.reject_below = reject_below
        ready = [item for item in self.items if item.error is None]
        self.batches = [ready[i : i + max_batch_size] for i in range(0, len(ready), max_batch_size)]
        self.answers: dict[int, Result] = {}

    def answered(self, batch: list[_Item], reply: Reply) -> None:
        limit = self.reject_below
        self.answers.update(
            {
                i.index: Result(
                    i.source,
                    row,
                    unknown=limit is not None and row[0].score < limit,
                    model_version=reply.model_version,
                )
                for i, row in zip(batch, reply.rows, strict=True)
            }
        )

    def refused(self, batch: list[_Item], error: ClientError) -> list[list[_Item]]:
        """The requests to send instead: each image alone when the server refused a batch
        of several as invalid input; otherwise none, and every image has the error."""
        if len(batch) > 1 and error.failure is Failure.INVALID_INPUT:
            return [[item] for item in batch]
        self.answers.update({i.index: Result(i.source, error=str(error)) for i in batch})
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

    def __init__(
        self, url, protocol, model, timeout_s, retries, backoff_s, concurrency, api_key=None
    ):
        if protocol not in PROTOCOLS:
            choices = ", ".join(PROTOCOLS)
            raise ClientError(f"unknown protocol {protocol!r}; choose one of {choices}")
        self.protocol = protocol
        self.url = url or PROTOCOLS[protocol]
        self.model = model
        self.timeout_s = timeout_s
        self.retries, self.backoff_s, self.concurrency = retries, backoff_s, concurrency
        self._api_key = api_key or os.environ.get(API_KEY_ENV) or None
        # Every request's headers (gRPC: metadata, whose keys are lowercase); None without a key.
        self.headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else None

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
                int(metadata.outputs[0].shape[-1]),
            )
        parameter = config.get("parameters", {}).get(REJECT_BELOW)
        return ModelInfo(
            self.model,
            metadata["inputs"][0]["name"],
            metadata["outputs"][0]["name"],
            config["max_batch_size"],
            metadata["inputs"][0]["datatype"],
            self._threshold(parameter["string_value"] if parameter else None),
            int(metadata["outputs"][0]["shape"][-1]),
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

    def _said(self, exc: BaseException) -> str:
        """The error's message, the key cut out should a server ever echo it."""
        message = message_of(exc)
        return message.replace(self._api_key, "<api key>") if self._api_key else message

    def _key_error(self, exc: BaseException) -> ClientError | None:
        refusal = key_refusal(exc)
        if refusal is None:
            return None
        return ClientError(f"{self.url}: {refusal} ({self._said(exc)}); {HOW_TO_PASS_A_KEY}")

    def connect_error(self, exc: Exception) -> ClientError:
        """The error of a failed connect: the model's metadata, config or readiness."""
        key_error = self._key_error(exc)
        if key_error is not None:
            return key_error
        message = self._said(exc)
        if failure_of(exc) is Failure.THROTTLED:
            return ClientError(f"{self.url} throttled this client: {message}", Failure.THROTTLED)
        if "unknown model" in message.lower() or "not found" in message.lower():
            return ClientError(f"unknown model {self.model!r} at {self.url}: {message}")
        return ClientError(f"cannot reach Triton at {self.url} ({self.protocol}): {message}")

    def request(self, module, info: ModelInfo, payloads: list[bytes], top_k: int):
        """The input, with the encoded images in the request's body, and the output."""
        batch = encoded_batch(payloads, info.input_datatype)
        infer_input = self.input_for(module, info, batch)
        if self.grpc:
            infer_input.set_data_from_numpy(batch)
        else:
            infer_input.set_data_from_numpy(batch, binary_data=True)
        return infer_input, self.output_for(module, info, top_k)

    @staticmethod
    def input_for(module, info: ModelInfo, batch: np.ndarray):
        """The input for an encoded batch, its data not set yet (the body or shared memory)."""
        return module.InferInput(info.input_name, list(batch.shape), info.input_datatype)

    def output_for(self, module, info: ModelInfo, top_k: int):
        if self.grpc:
            return module.InferRequestedOutput(info.output_name, class_count=top_k)
        return module.InferRequestedOutput(info.output_name, binary_data=True, class_count=top_k)

    @staticmethod
    def parse(result, info: ModelInfo, count: int, top_k: int) -> Reply:
        rows = result.as_numpy(info.output_name).reshape(count, top_k)
        response = result.get_response()  # gRPC: a ModelInferResponse; HTTP: its JSON
        if isinstance(response, dict):
            version = response.get("model_version", "")
        else:
            version = response.model_version
        return Reply([tuple(parse_classification(e) for e in row) for row in rows], version)

    def retry_delay(self, exc: BaseException, attempt: int) -> float:
        """Seconds to wait before sending a failed request again (attempt 0 was the first);
        raises ClientError, carrying the Failure, when it is not to be sent again."""
        failure = failure_of(exc)
        if failure in (Failure.UNAVAILABLE, Failure.THROTTLED) and attempt < self.retries:
            backoff = self.backoff_s * 2**attempt
            asked = retry_after_s(exc) if failure is Failure.THROTTLED else None
            return max(backoff, asked or 0.0)
        key_error = self._key_error(exc)
        if key_error is not None:
            raise key_error from None
        message = self._said(exc)
        tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
        if failure is Failure.UNAVAILABLE:
            message = f"Triton at {self.url} unavailable after {tries}: {message}"
        elif failure is Failure.THROTTLED:
            message = f"{self.url} throttled this client, {tries}: {message}"
        elif failure is Failure.TIMEOUT:
            message = f"no answer from {self.url} within {self.timeout_s:g} s: {message}"
        raise ClientError(message, failure) from None
