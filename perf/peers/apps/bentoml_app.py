"""BentoML: an ingress Service of `decoders` workers that decodes each request's image and
awaits a batchable Classify Service (adaptive batching) through `bentoml.depends`, the
distributed-Services shape its documentation gives for a CPU stage in front of a model.

    ONNX_MODEL=... ORT_THREADS=2 PEER_SETTINGS='{"decoders": "cpu_count",
        "max_batch_size": 32}' bentoml serve bentoml_app:Decode --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import json
import os

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from model import ImageDecodeError, Model

SETTINGS = json.loads(os.environ.get("PEER_SETTINGS", "{}"))
ORT_THREADS = int(os.environ.get("ORT_THREADS", "0"))


@bentoml.service(
    workers=SETTINGS.get("classifiers", 1),
    resources={"cpu": str(ORT_THREADS or os.cpu_count())},
)
class Classify:
    """A dynamic batch of pixels -> scores; batches come from every Decode worker."""

    def __init__(self):
        self.model = Model.load()

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.get("max_batch_size", 32),
        # A latency bound, not a wait: requests estimated to miss it are answered 503.
        max_latency_ms=SETTINGS.get("max_latency_ms", 60000),
    )
    def scores(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.scores(pixels)  # (N, 3, crop, crop) uint8 -> (N, classes)


@bentoml.service(workers=SETTINGS.get("decoders", "cpu_count"), resources={"cpu": "1"})
class Decode:
    """The HTTP front: encoded bytes (the raw body) -> the answer, one request at a time."""

    classify = bentoml.depends(Classify)

    def __init__(self):
        self.model = Model.load(threads=1)  # its preprocessing settings and labels

    @bentoml.api(route="/predict")
    async def predict(self, image: bytes, /) -> dict:
        try:
            pixels = self.model.pixels(image)
        except ImageDecodeError as exc:
            raise InvalidArgument(str(exc)) from None  # HTTP 400, this request only
        scores = await self.classify.to_async.scores(pixels[None])  # (1, classes)
        return self.model.answers(scores)[0]
