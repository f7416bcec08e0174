"""What every peer serves, the same for all: the published classifier ONNX file in ONNX
Runtime, the project's own preprocessing (`resnet_triton.preprocess`), top-k labels out.

Runs inside each peer's virtual environment (artifacts/peers/<peer>/venv), which holds
the peer, ONNX Runtime, numpy, Pillow and the two decoders, and this project installed
without its dependencies: nothing here imports PyTorch.

    model = Model.load()                      # ONNX_MODEL, ORT_THREADS from the environment
    pixels = model.pixels(jpeg_bytes)         # (3, crop, crop) uint8, or ImageDecodeError
    answers = model.answers(model.scores(np.stack([pixels, ...])))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from resnet_triton.preprocess import ImageDecodeError, pixels_from_bytes
from resnet_triton.spec import ModelSpec

TOP_K = 3
__all__ = ["TOP_K", "ImageDecodeError", "Model"]


@dataclass
class Model:
    spec: ModelSpec
    session: ort.InferenceSession

    @classmethod
    def load(cls, path: str | None = None, threads: int | None = None) -> Model:
        """The classifier in ONNX Runtime with `threads` intra-op threads (0: one per core);
        by default ONNX_MODEL and ORT_THREADS from the environment."""
        path = path or os.environ["ONNX_MODEL"]
        threads = int(os.environ.get("ORT_THREADS", "0")) if threads is None else threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        spec = ModelSpec.from_json(
            session.get_modelmeta().custom_metadata_map["resnet_triton.spec"]
        )
        return cls(spec, session)

    def pixels(self, data: bytes) -> np.ndarray:
        """Encoded image (any bytes-like) -> (3, crop, crop) uint8; ImageDecodeError names
        a bad image."""
        return pixels_from_bytes([bytes(data)], self.spec.preprocessing)[0]

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, crop, crop) uint8 -> (N, classes) softmax probabilities."""
        name = self.spec.names.pixels
        return self.session.run([self.spec.names.scores], {name: pixels})[0]

    def answers(self, scores: np.ndarray) -> list[dict]:
        """One answer per row: the top-1 label, index and score and the top-k."""
        out = []
        for row in scores:
            top = np.argsort(row)[::-1][:TOP_K]
            ranked = [
                {"label": self.spec.labels[i], "index": int(i), "score": float(row[i])} for i in top
            ]
            out.append({**ranked[0], "top_k": ranked})
        return out

    def answer_json(self, data: bytes) -> bytes:
        """One image in, its answer as JSON bytes out (peers without batching)."""
        return json.dumps(self.answers(self.scores(self.pixels(data)[None]))[0]).encode()
