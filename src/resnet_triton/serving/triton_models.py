"""Triton Python-backend models; model_repository/*/1/model.py import them.

This module runs inside Triton's Python stub (it imports
`triton_python_backend_utils`, which only exists there). Every setting
comes from the rendered config.pbtxt, so nothing here repeats the spec:
each model finds its tensors by the names its `input_name` and
`output_name` parameters give (rendered from `spec.names`), and the output
dtype from the tensor's config, as python_backend's own examples do.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from resnet_triton.build.reference_outputs import check_on_this_cpu
from resnet_triton.preprocess import ImageDecodeError, pixels_from_bytes
from resnet_triton.serving.busy import Busy
from resnet_triton.serving.capture import AnswerCapture, describe, from_environment
from resnet_triton.serving.model_metrics import AnswerMetrics, PreprocessMetrics
from resnet_triton.serving.probe import warmup_image
from resnet_triton.serving.resources import cpu_limit, onnx_threads
from resnet_triton.spec import (
    CAPTURE_INPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    REJECT_BELOW,
    REJECT_RATE,
    Preprocessing,
)


def _config(args: dict) -> tuple[dict, dict[str, str]]:
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return config, params


def _shape(tensor: dict) -> str:
    """'TYPE_UINT8 [3, 224, 224]': how a tensor's config reads in the log."""
    return f"{tensor['data_type']} [{', '.join(str(d) for d in tensor['dims'])}]"


class Warmup:
    """Tells the model's warm-up requests from traffic, so that metrics count traffic only.

    Triton sends an instance its warm-up samples (model_warmup: batch_size requests of
    one item, `count` times, at least once) after initialize and before any other
    request, so they are exactly its first requests.
    """

    def __init__(self, config: dict):
        samples = config.get("model_warmup", [])
        self.left = sum(
            int(s.get("batch_size", 1)) * max(int(s.get("count", 0)), 1) for s in samples
        )

    def skip(self, requests: int) -> int:
        """How many of the next `requests` are warm-up."""
        skipped = min(self.left, requests)
        self.left -= skipped
        return skipped


def _tensor_configs(config: dict, params: dict[str, str]) -> tuple[dict, dict]:
    """The input and output configs named by the model's parameters; raises if absent."""
    found = []
    for key, kind, lookup in (
        (INPUT_NAME, "input", pb_utils.get_input_config_by_name),
        (OUTPUT_NAME, "output", pb_utils.get_output_config_by_name),
    ):
        tensor = lookup(config, params.get(key))
        if tensor is None:
            names = [t["name"] for t in config.get(kind, [])]
            raise ValueError(
                f"model '{config['name']}': parameter {key} is {params.get(key)!r}, not one "
                f"of its {kind}s {names}; render the repository again (resnet-triton render)"
            )
        found.append(tensor)
    return found[0], found[1]


class Decoder:
    """Encoded images -> 8-bit pixels with the shared code, counting what it decodes and refuses."""

    def __init__(self, name: str, version: str, params: dict[str, str], input_name: str):
        self.name = name
        self.cfg = Preprocessing.from_params(params)
        self.input_name = input_name
        self.metrics = PreprocessMetrics(name, version)

    def __call__(self, request, counted: bool = True) -> np.ndarray | pb_utils.TritonError:
        """The request's pixels (n, 3, crop, crop), or the error its own response carries.

        Nothing one request's bytes cause reaches another request of the batch: an
        exception the decoders were not expected to raise is this request's INTERNAL error.
        """
        started = time.perf_counter()
        try:
            payloads = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            pixels = pixels_from_bytes(payloads.reshape(-1), self.cfg)
        except ImageDecodeError as exc:  # the client's image: its own request fails
            self.metrics.rejected(exc.reason)
            return pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
        except Exception as exc:  # noqa: BLE001 - a library's odd exception class, say
            message = f"{self.name} failed on this request's images: {type(exc).__name__}: {exc}"
            pb_utils.Logger.log_error(message)  # not the client's fault: the server's to look at
            return pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
        if counted:
            self.metrics.decoded(len(pixels), time.perf_counter() - started)
        return pixels


class PreprocessModel:
    """Encoded images -> 8-bit pixels. A bad image fails its own request only."""

    def initialize(self, args):
        config, params = _config(args)
        self.name = config["name"]
        image, pixels = _tensor_configs(config, params)
        self.output_name = pixels["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(pixels["data_type"])
        self.decode = Decoder(self.name, args["model_version"], params, image["name"])
        self.warmup = Warmup(config)
        pb_utils.Logger.log_info(
            f"{self.name}: {image['name']} -> {self.output_name} "
            f"{_shape(pixels)}, accepting {', '.join(self.decode.cfg.formats)}"
        )

    def execute(self, requests):
        warmup = self.warmup.skip(len(requests))
        responses = []
        for n, request in enumerate(requests):
            pixels = self.decode(request, counted=n >= warmup)
            if isinstance(pixels, pb_utils.TritonError):
                responses.append(pb_utils.InferenceResponse(error=pixels))
                continue
            tensor = pb_utils.Tensor(self.output_name, pixels.astype(self.output_dtype, copy=False))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.decode.metrics.close()
        pb_utils.Logger.log_info(f"{self.name}: unloaded")


class OnnxClassifierModel:
    """The CPU classifier: ONNX Runtime, one run over all requests Triton batched.

    A request that run fails on gets its own error: the batch is run again one
    request at a time, so the other requests still get their scores.
    """

    def initialize(self, args):
        config, params = _config(args)
        pixels, scores = _tensor_configs(config, params)
        self._load(args, config, params, pixels, scores)
        self.input_name = pixels["name"]

    def _load(self, args, config, params, inputs: dict, scores: dict, threads=None) -> None:
        """The session, the scores' names and metrics; `threads` overrides intra_op_threads."""
        self.name = config["name"]
        path = Path(args["model_repository"]) / args["model_version"] / params["onnx_file"]
        self.path = path
        self.session = _session(path, params, threads)
        self.output_name = scores["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(scores["data_type"])
        labels = (Path(args["model_repository"]) / scores["label_filename"]).read_text()
        reject_below, reject_rate = (
            float(params[k]) if k in params else None for k in (REJECT_BELOW, REJECT_RATE)
        )
        self.metrics = AnswerMetrics(
            self.name, args["model_version"], labels.splitlines(), reject_below, reject_rate
        )
        self.warmup = Warmup(config)
        self.capture = _answer_capture(args, config, labels.splitlines(), reject_below)
        self.capture_input = params.get(CAPTURE_INPUT)  # the encoded images, where sent
        expected = "tensor(uint8)"
        (model_input,) = self.session.get_inputs()
        self.onnx_input = model_input.name
        if model_input.type != expected:  # an ONNX file exported before pixels were 8-bit
            raise RuntimeError(
                f"{path} takes {model_input.type} pixels; the preprocess model sends "
                f"{expected}: rebuild it from its checkpoint (resnet-triton build)"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        if self.output_name not in outputs or (
            inputs["data_type"] != "TYPE_STRING" and model_input.name != inputs["name"]
        ):
            raise RuntimeError(
                f"{path} maps {model_input.name} to {outputs}; the config serves "
                f"{inputs['name']} -> {self.output_name}: rebuild it from its checkpoint"
            )
        pb_utils.Logger.log_info(
            f"{self.name}: {path.name} in ONNX Runtime {ort.__version__}, "
            f"{inputs['name']} {_shape(inputs)} -> {self.output_name} {_shape(scores)}"
        )
        # ONNX Runtime picks INT8 kernels by CPU: where this one breaks the model's gate,
        # ReferenceMismatch fails initialize and Triton does not serve the model.
        checked = check_on_this_cpu(
            path, lambda x: self.session.run([self.output_name], {self.onnx_input: x})[0]
        )
        if checked is not None:
            pb_utils.Logger.log_info(f"{self.name}: on this CPU as at build, {checked}")

    def execute(self, requests):
        batches = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        results = self._scores(batches)
        warmup = self.warmup.skip(len(requests))
        self._count(results[warmup:])
        self._capture(requests[warmup:], results[warmup:])
        return [self._response(result) for result in results]

    def _count(self, results: list) -> None:
        answered = [r for r in results if isinstance(r, np.ndarray)]
        if answered:
            self.metrics.answered(np.concatenate(answered))

    def _capture(self, requests: list, results: list) -> None:
        """Offer each answered request's images and scores to the capture, when it is on."""
        if not self.capture.enabled or self.capture_input is None:
            return
        for request, result in zip(requests, results, strict=True):
            images = pb_utils.get_input_tensor_by_name(request, self.capture_input)
            if images is not None and isinstance(result, np.ndarray):  # pixels alone: no image
                self.capture.offer(images.as_numpy().reshape(-1), result)

    def _scores(self, batches: list[np.ndarray], session=None) -> list[np.ndarray | Exception]:
        """Each request's scores, or the error running it raised."""
        session = session or self.session
        try:
            scores = session.run([self.output_name], {self.onnx_input: np.concatenate(batches)})[
                0
            ]  # (sum of request batch sizes, num_classes)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several types
            if len(batches) == 1:
                return [exc]
            pb_utils.Logger.log_warn(
                f"{self.name}: a batch of {len(batches)} requests failed, running each alone: {exc}"
            )
            return [self._scores([batch], session)[0] for batch in batches]
        return np.split(scores, np.cumsum([len(b) for b in batches])[:-1])

    def _response(self, result):
        if isinstance(result, Exception):
            # Any uint8 pixels should score: a failure is the model's, so it is logged.
            message = f"{self.name} failed on this request's pixels: {result}"
            pb_utils.Logger.log_error(message)
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
        tensor = pb_utils.Tensor(self.output_name, result.astype(self.output_dtype, copy=False))
        return pb_utils.InferenceResponse(output_tensors=[tensor])

    def finalize(self):
        self.metrics.close()
        if self.capture.enabled:
            self.capture.close()  # writes what is queued
            dropped = self.capture.dropped
            pb_utils.Logger.log_info(f"{self.name}: capture closed; {dropped} dropped (its "
                                     "queue was full, or larger than the cap)")  # fmt: skip
        self.session = None  # the last reference: ONNX Runtime frees the model and its threads
        pb_utils.Logger.log_info(f"{self.name}: ONNX Runtime session released")


class FusedModel(OnnxClassifierModel):
    """serving.layout fused: encoded images -> scores, decoded and scored in one process.

    What the ensemble does without its hand-off (the preprocess stub writing pixels to
    shared memory for Triton to pass to the classifier's stub). Each instance scores its
    batches with 1 ONNX Runtime thread, so instances run side by side, one per core. An
    instance at work on one image while no other instance is busy scores it with a second
    session of one thread per core instead, which keeps a lone client's latency down
    (`Busy` tells). A bad image fails its own request only.
    """

    def initialize(self, args):
        config, params = _config(args)
        image, scores = _tensor_configs(config, params)
        self._load(args, config, params, image, scores, threads=1)
        self.alone = _session(self.path, params)
        self.decode = Decoder(self.name, args["model_version"], params, image["name"])
        self.busy = Busy(self.name, pb_utils.Logger.log_warn)
        self.single_runs = {  # what tells whether the all-cores session is used, and when
            session: self.metrics.counter(
                "single_image_runs_total", "Runs on one image, by the session that scored "
                "it: all_cores where no other instance was at work, one_thread otherwise",
                session=session,
            )
            for session in ("all_cores", "one_thread")
        }  # fmt: skip

    def execute(self, requests):
        warmup = self.warmup.skip(len(requests))
        with self.busy:
            results = [self.decode(r, counted=n >= warmup) for n, r in enumerate(requests)]
            self._score_decoded(results, counted=warmup == 0)
        self._count(results[warmup:])
        self._capture(requests[warmup:], results[warmup:])
        return [self._response(result) for result in results]

    def _score_decoded(self, results: list, counted: bool) -> None:
        """Replace each request's pixels in `results` with its scores (or its error)."""
        good = [n for n, pixels in enumerate(results) if isinstance(pixels, np.ndarray)]
        batches = [results[n] for n in good]
        if not batches:
            return
        session = None  # the instance's own, one thread
        if sum(map(len, batches)) == 1:
            alone = self.busy.alone()
            session = self.alone if alone else None
            if counted:
                self.metrics.add(self.single_runs["all_cores" if alone else "one_thread"], 1)
        for n, scores in zip(good, self._scores(batches, session), strict=True):
            results[n] = scores

    def _response(self, result):
        if isinstance(result, pb_utils.TritonError):  # an image the decoder refused
            return pb_utils.InferenceResponse(error=result)
        return super()._response(result)

    def finalize(self):
        self.decode.metrics.close()
        self.alone = None
        self.busy.close()
        super().finalize()


def _answer_capture(args, config: dict, labels: list[str], reject_below) -> AnswerCapture:
    """The instance's capture of live traffic: off unless the server's environment says
    where (serving/capture.py); each instance writes its own folder, with its share of the cap."""
    instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", []))
    writer = f"{os.uname().nodename}-{args['model_instance_name']}"
    capture_config = from_environment(os.environ, writer, max(instances, 1))
    capture = AnswerCapture(
        capture_config, labels, args["model_version"], reject_below, probe=warmup_image()
    )
    if capture.enabled:
        pb_utils.Logger.log_info(f"{config['name']}: {describe(capture_config)}")
    return capture


def _session(path: Path, params: dict[str, str], threads: int | None = None):
    # Before the session: its pool's threads inherit the priority of the thread that
    # starts them. Linux keeps a nice value per thread: set it on every thread.
    nice = int(params.get("nice", "0"))
    for task in Path("/proc/self/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
    options = ort.SessionOptions()
    threads = int(params.get("intra_op_threads", "0")) if threads is None else threads
    if threads == 0:  # one per core, but the container's CPU limit, not the host's cores
        limit = cpu_limit()
        threads = onnx_threads(limit)
        pb_utils.Logger.log_info(
            f"ONNX Runtime intra-op threads: {threads or 'one per physical core'} "
            f"(cgroup CPU limit: {'none' if limit is None else f'{limit:g} CPUs'})"
        )
    options.intra_op_num_threads = threads
    # Idle ONNX Runtime threads spin by default, taking the cores that the
    # preprocess model (another process) needs between batches.
    spinning = params.get("allow_spinning", "0")
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
