"""Mosec: a decode stage of `decoders` processes feeding one batched inference stage,
the pipeline its documentation builds for image models (Rust front, Python workers).

    ONNX_MODEL=... ORT_THREADS=2 PEER_SETTINGS='{"decoders": 2, "max_batch_size": 16,
        "max_wait_ms": 5}' python mosec_app.py --address 127.0.0.1 --port 8000
"""

from __future__ import annotations

import json
import os

import numpy as np
from model import ImageDecodeError, Model
from mosec import Server, ValidationError, Worker

SETTINGS = json.loads(os.environ.get("PEER_SETTINGS", "{}"))


class Decode(Worker):
    """Encoded bytes -> (3, crop, crop) uint8 pixels, one request at a time."""

    def __init__(self):
        super().__init__()
        self.model = Model.load(threads=1)  # only its preprocessing settings are used

    def deserialize(self, data: bytes) -> bytes:
        return data  # the body is the encoded image

    def forward(self, data: bytes) -> np.ndarray:
        try:
            return self.model.pixels(data)
        except ImageDecodeError as exc:
            raise ValidationError(str(exc)) from None  # HTTP 422, this request only


class Classify(Worker):
    """A dynamic batch of pixels -> one answer per request."""

    def __init__(self):
        super().__init__()
        self.model = Model.load()

    def forward(self, data: list[np.ndarray]) -> list[dict]:
        return self.model.answers(self.model.scores(np.stack(data)))

    def serialize(self, data: dict) -> bytes:
        return json.dumps(data).encode()


if __name__ == "__main__":
    server = Server()
    server.append_worker(Decode, num=SETTINGS.get("decoders", 1))
    server.append_worker(
        Classify,
        num=SETTINGS.get("classifiers", 1),
        max_batch_size=SETTINGS.get("max_batch_size", 16),
        max_wait_time=SETTINGS.get("max_wait_ms", 10),
    )
    server.run()
