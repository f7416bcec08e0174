"""TorchServe: the custom handler of the `classifier` model, the Init-Pre-Infer-Post shape of
TorchServe's custom service docs. The frontend (Java) batches requests (batchSize,
maxBatchDelay) for each of the model's worker processes; a worker decodes its batch
(preprocess), runs it in ONNX Runtime (inference) and answers (postprocess). With
`micro_batching` in the model's config (TorchServe's MicroBatching, examples/micro_batching),
a worker splits its batch and runs the three steps in threads of their own, so one micro
batch is decoded while the one before it is in ONNX Runtime.

Packaged by perf/peers/torchserve_peer.py (torch-model-archiver --handler this file); the
model is ONNX_MODEL with ORT_THREADS intra-op threads, from the environment.
"""

from __future__ import annotations

import json

import numpy as np
from model import ImageDecodeError, Model
from ts.handler_utils.micro_batching import MicroBatching

BAD_REQUEST = 400


class ClassifierHandler:
    """One per worker process: TorchServe calls `initialize` once and `handle` per batch."""

    def __init__(self):
        self.model: Model | None = None
        self.micro_batching: MicroBatching | None = None

    def initialize(self, context) -> None:
        self.model = Model.load()
        config = context.model_yaml_config.get("micro_batching")
        if config:
            self.micro_batching = MicroBatching(
                self, config["micro_batch_size"], config["parallelism"]
            )

    def preprocess(self, requests: list[dict]) -> list[np.ndarray | ImageDecodeError]:
        """The raw POST body of each request -> (3, crop, crop) uint8, or the decode error
        that answers that request alone."""
        images = []
        for request in requests:
            body = request.get("data") or request.get("body") or b""
            try:
                images.append(self.model.pixels(body))
            except ImageDecodeError as exc:
                images.append(exc)
        return images

    def inference(self, images: list) -> list[dict | ImageDecodeError]:
        """The decoded images of the batch in one ONNX Runtime run; errors stay in place."""
        decoded = [i for i, image in enumerate(images) if isinstance(image, np.ndarray)]
        results = list(images)
        if decoded:
            scores = self.model.scores(np.stack([images[i] for i in decoded]))  # (n, classes)
            for i, answer in zip(decoded, self.model.answers(scores), strict=True):
                results[i] = answer
        return results

    def postprocess(self, results: list) -> list:
        return results  # answers are written in `handle`, where the request's status is set

    def handle(self, requests: list[dict], context) -> list[str]:
        """One JSON answer per request, in order; a bad image gets HTTP 400 for its own
        request while the rest of the batch is answered."""
        if self.micro_batching is not None:
            results = self.micro_batching.handle(requests)
        else:
            results = self.postprocess(self.inference(self.preprocess(requests)))
        answers = []
        for idx, result in enumerate(results):
            context.set_response_content_type(idx, "application/json")
            if isinstance(result, ImageDecodeError):
                context.set_response_status(BAD_REQUEST, "bad image", idx)
                result = {"error": str(result)}
            answers.append(json.dumps(result))
        return answers
