"""Client logic that needs no server: encoding, retry policy, parsing."""

import aiohttp
import numpy as np
import pytest
from geventhttpclient.response import HTTPConnectionClosed
from PIL import Image
from tritonclient.utils import InferenceServerException

from resnet_triton.client import Classifier
from resnet_triton.client.protocol import (
    ClientError,
    Job,
    ModelInfo,
    Prediction,
    _Protocol,
    _retryable,
    encode_image,
    encoded_batch,
    parse_classification,
)


def test_parse_keeps_colons_in_labels():
    p = parse_classification(b"0.25:3:class: with colon")
    assert (p.score, p.index, p.label) == (0.25, 3, "class: with colon")


def test_arrays_and_pil_images_are_sent_as_lossless_png():
    array = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    _, data = encode_image(array)
    assert np.array_equal(np.asarray(Image.open(__import__("io").BytesIO(data))), array)
    with pytest.raises(ClientError, match="arrays must be uint8"):
        encode_image(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ClientError, match="cannot classify a dict"):
        encode_image({})


@pytest.mark.parametrize(
    ("status", "retry"),
    [("StatusCode.UNAVAILABLE", True), ("503", True), ("StatusCode.INVALID_ARGUMENT", False),
     ("400", False), ("StatusCode.DEADLINE_EXCEEDED", False)],
)  # fmt: skip
def test_only_unavailable_servers_are_retried(status, retry):
    assert _retryable(InferenceServerException("x", status=status)) is retry
    assert _retryable(ConnectionRefusedError()) is True


def test_a_connection_closed_before_the_answer_is_retried():
    # What tritonclient's sync and asyncio HTTP clients raise, unwrapped, when a proxy
    # accepts the connection and the server behind it is gone.
    assert _retryable(HTTPConnectionClosed("connection closed.")) is True
    assert _retryable(aiohttp.ServerDisconnectedError()) is True
    assert _retryable(ValueError("a bug, not the network")) is False


def test_retries_back_off_then_give_up(monkeypatch):
    classifier = Classifier.__new__(Classifier)  # no server: only the retry loop runs
    classifier.retries, classifier.backoff_s, classifier.shared_memory = 2, 0.01, False
    classifier.protocol, classifier.model, classifier.timeout_s = "grpc", "m", 1.0
    classifier.info = ModelInfo("m", "IMAGE", "SCORES", 32)
    classifier.module = __import__("tritonclient.grpc", fromlist=["x"])
    calls, sleeps = [], []

    class Flaky:
        def infer(self, *args, **kwargs):
            calls.append(1)
            raise InferenceServerException("busy", status="StatusCode.UNAVAILABLE")

    monkeypatch.setattr(classifier, "_client", lambda: Flaky())
    monkeypatch.setattr("resnet_triton.client.classifier.time.sleep", sleeps.append)
    with pytest.raises(ClientError, match="busy"):
        classifier._infer([b"x"], 1)
    assert len(calls) == 3 and sleeps == [0.01, 0.02]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_uint8_image_input_gets_zero_padded_rows(protocol):
    """A DALI ensemble (serving.preprocessing: dali) takes UINT8 [-1], not BYTES."""
    module = __import__(f"tritonclient.{protocol}", fromlist=["x"])
    client = _Protocol(None, protocol, "m", 1.0, 0, 0.1, 1)
    info = ModelInfo("m", "IMAGE", "SCORES", 32, "UINT8")
    infer_input, _ = client.request(module, info, [b"\xff\xd8abc", b"\x89P"], top_k=1)
    assert (infer_input.datatype(), infer_input.shape()) == ("UINT8", [2, 5])
    rows = encoded_batch([b"\xff\xd8abc", b"\x89P"], "UINT8")
    assert rows.tolist() == [[0xFF, 0xD8, 97, 98, 99], [0x89, 80, 0, 0, 0]]
    bytes_input, _ = client.request(module, ModelInfo("m", "IMAGE", "SCORES", 32), [b"ab"], 1)
    assert (bytes_input.datatype(), bytes_input.shape()) == ("BYTES", [1, 1])
    with pytest.raises(
        ClientError, match="the model's image input is FP32; expected BYTES or UINT8"
    ):
        encoded_batch([b"ab"], "FP32")


def test_a_job_marks_answers_below_the_threshold_unknown():
    job = Job([b"a", b"b"], max_batch_size=2, reject_below=0.6)
    rows = [(Prediction("cat", 0, 0.59), Prediction("dog", 1, 0.41)),
            (Prediction("dog", 1, 0.60), Prediction("cat", 0, 0.40))]  # fmt: skip
    job.answered(job.batches[0], rows)
    first, second = job.results()
    assert (first.unknown, first.answer, first.top1.label) == (True, "unknown", "cat")
    assert (second.unknown, second.answer) == (False, "dog")
    assert Job([b"a"], 1).reject_below is None


def test_a_malformed_threshold_parameter_is_named():
    protocol = _Protocol("localhost:1", "grpc", "ensemble", 1.0, 0, 0.0, 1)
    with pytest.raises(ClientError) as error:
        protocol._threshold("high")
    assert str(error.value) == (
        "model 'ensemble' at localhost:1: parameter reject_below is 'high', not a number"
    )
