"""Triton Python-backend models; model_repository/*/1/model.py import them.

This module runs inside Triton's Python stub (it imports
`triton_python_backend_utils`, which only exists there). Every setting
comes from the rendered config.pbtxt, so nothing here repeats the spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from resnet_triton.preprocess import ImageDecodeError, pixels_from_bytes
from resnet_triton.spec import Preprocessing


def _config(args: dict) -> tuple[dict, dict[str, str]]:
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return config, params


class PreprocessModel:
    """Encoded images -> 8-bit pixels. A bad image fails its own request only."""

    def initialize(self, args):
        config, params = _config(args)
        self.cfg = Preprocessing.from_params(params)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            payloads = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                pixels = pixels_from_bytes(payloads.reshape(-1), self.cfg)  # (n, 3, crop, crop)
            except ImageDecodeError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensor = pb_utils.Tensor(self.output_name, pixels)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses


class OnnxClassifierModel:
    """The CPU classifier: ONNX Runtime, one run over all requests Triton batched."""

    def initialize(self, args):
        config, params = _config(args)
        path = Path(args["model_repository"]) / args["model_version"] / params["onnx_file"]
        # Before the session: its pool's threads inherit the priority of the thread that
        # starts them. Linux keeps a nice value per thread: set it on every thread.
        nice = int(params.get("nice", "0"))
        for task in Path("/proc/self/task").iterdir():
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        # Idle ONNX Runtime threads spin by default, taking the cores that the
        # preprocess model (another process) needs between batches.
        spinning = params.get("allow_spinning", "0")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        expected = "tensor(uint8)"
        (model_input,) = self.session.get_inputs()
        if model_input.type != expected:  # an ONNX file exported before pixels were 8-bit
            raise RuntimeError(
                f"{path} takes {model_input.type} pixels; the preprocess model sends "
                f"{expected}: rebuild it from its checkpoint (resnet-triton build)"
            )

    def execute(self, requests):
        batches = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        scores = self.session.run([self.output_name], {self.input_name: np.concatenate(batches)})[
            0
        ]  # (sum of request batch sizes, num_classes)
        splits = np.cumsum([len(b) for b in batches])[:-1]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in np.split(scores, splits)
        ]
