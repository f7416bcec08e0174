"""Against the real Triton server (nvidia-pytriton's tritonserver 2.51) on free ports."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import HOSTILE, NAMES, rerendered, served
from test_model_metrics import scrape, scrape_until, total
from tritonclient.utils import InferenceServerException

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.build.manifest import Manifest
from resnet_triton.build.verify import TorchRunner
from resnet_triton.client import Classifier, ClientError
from resnet_triton.data import image_folder
from resnet_triton.preprocess import REJECT_REASONS, pixels_from_files
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.server import Ports, TritonServer

pytestmark = pytest.mark.integration


def val_images(digits, count=32):
    samples = image_folder(digits / "val").samples
    picks = np.linspace(0, len(samples) - 1, count).astype(int)
    return [samples[i] for i in picks]


def clients(triton):
    return {
        "grpc": Classifier(f"localhost:{triton.ports.grpc}", "grpc"),
        "http": Classifier(f"localhost:{triton.ports.http}", "http"),
    }


def assert_ready(triton):
    client = httpclient.InferenceServerClient(f"localhost:{triton.ports.http}")
    assert client.is_server_live()
    for model in (NAMES.ensemble, NAMES.preprocess, NAMES.classifier):
        assert client.is_model_ready(model), model


def test_grpc_and_http_agree_with_local_pytorch(triton, digits, checkpoint):
    samples = val_images(digits)
    payloads = [Path(path).read_bytes() for path, _ in samples]
    spec, model, _ = load_checkpoint(checkpoint)
    pixels = pixels_from_files([path for path, _ in samples], spec.preprocessing)
    reference = TorchRunner(model, spec).infer_impl({spec.names.pixels: pixels})[spec.names.scores]

    answers = {}
    for protocol, classifier in clients(triton).items():
        rows = classifier.classify_bytes(payloads, top_k=3)  # one request, batch of 32
        answers[protocol] = rows
        for row, ref in zip(rows, reference, strict=True):
            assert [p.index for p in row] == list(np.argsort(ref)[::-1][:3])
            assert [p.label for p in row] == [spec.labels[p.index] for p in row]
            np.testing.assert_allclose([p.score for p in row], np.sort(ref)[::-1][:3], atol=1e-4)
    assert answers["grpc"] == answers["http"]
    accuracy = np.mean(
        [row[0].index == target for row, (_, target) in zip(answers["grpc"], samples, strict=True)]
    )
    assert accuracy >= 0.9


def test_batch_beyond_max_batch_size_is_refused(triton, digits):
    payload = Path(val_images(digits, 1)[0][0]).read_bytes()
    client = grpcclient.InferenceServerClient(f"localhost:{triton.ports.grpc}")
    batch = np.array([[payload]] * 33, dtype=np.object_)
    too_many = grpcclient.InferInput(NAMES.image, list(batch.shape), "BYTES")
    too_many.set_data_from_numpy(batch)
    with pytest.raises(InferenceServerException, match="batch-size must be <= 32"):
        client.infer(NAMES.ensemble, [too_many])
    client.close()
    # The client library refuses it before sending, and classify() splits instead.
    with pytest.raises(ClientError, match="33 images in one request; resnet_ensemble takes at"):
        clients(triton)["grpc"].classify_bytes([payload] * 33)
    assert_ready(triton)


# A decoding library with a bug, in the preprocess model's stub: an image starting with
# b"odd:" raises an exception class that no decoder is known to raise.
BUGGY_DECODER = """
from resnet_triton import preprocess
from resnet_triton.serving.triton_models import PreprocessModel as TritonPythonModel  # noqa: F401


class OddLibraryError(Exception):
    pass


def decode_image(data, cfg=None, decode=preprocess.decode_image):
    if data.startswith(b"odd:"):
        raise OddLibraryError(data.decode())
    return decode(data, cfg)


preprocess.decode_image = decode_image
"""
ODD = b"odd: no decoder raises this"


@pytest.fixture(scope="module")
def batching_triton(repository, tmp_path_factory):
    """The session's model behind a preprocess batcher that waits up to a second for more
    requests, so that requests sent together share executions (the default waits 0 s, and
    whether they batch is then up to the scheduler's timing); its decoder has a bug for
    images starting with b"odd:" (BUGGY_DECODER), and only for them."""
    root = tmp_path_factory.mktemp("batching")
    serving = ServingConfig(preprocess_queue_delay_us=1_000_000)
    repo = rerendered(repository, root, serving)
    (repo / NAMES.preprocess / "1" / "model.py").write_text(BUGGY_DECODER)
    with served(repo, root) as server:
        yield server


def test_corrupt_image_fails_alone_in_a_dynamic_batch(batching_triton, digits):
    triton = batching_triton
    samples = val_images(digits, 24)
    payloads = [Path(path).read_bytes() for path, _ in samples]
    bad_index = 11
    payloads[bad_index] = payloads[bad_index][: len(payloads[bad_index]) // 2]  # truncated PNG
    classifier = clients(triton)["grpc"]

    def one(payload):
        try:
            return classifier.classify_bytes([payload])[0][0]
        except ClientError as exc:
            return exc

    before = preprocess_batches(triton)
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        answers = list(pool.map(one, payloads))
    error = answers[bad_index]
    assert isinstance(error, ClientError)
    assert "image 0: corrupt PNG image (60 bytes): pyspng: could not decode image: end of" in str(
        error
    )
    good = [a for i, a in enumerate(answers) if i != bad_index]
    assert all(not isinstance(a, Exception) for a in good)
    targets = [target for i, (_, target) in enumerate(samples) if i != bad_index]
    assert np.mean([a.index == t for a, t in zip(good, targets, strict=True)]) >= 0.9
    # Triton put several requests into one execution: the batch survived the bad image.
    stats = preprocess_batches(triton)
    assert stats["requests"] - before["requests"] == len(payloads)
    assert stats["executions"] - before["executions"] < len(payloads)
    assert_ready(triton)


def top1(port: int, payload: bytes) -> int | InferenceServerException:
    """The class index the ensemble answers for one image sent alone, or its error."""
    client = grpcclient.InferenceServerClient(f"localhost:{port}")
    image = grpcclient.InferInput(NAMES.image, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
    try:
        return int(client.infer(NAMES.ensemble, [image]).as_numpy(NAMES.scores)[0].argmax())
    except InferenceServerException as exc:
        return exc
    finally:
        client.close()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_hostile_headers_and_a_decoder_bug_fail_alone_in_a_dynamic_batch(batching_triton, digits):
    """Headers claiming up to 4 Gpx (Pillow refuses those with an exception class of its
    own), a PNG without pixels and an image that trips a decoder bug, sent while good
    images are in flight and batched with them: each fails alone, with its reason."""
    triton = batching_triton
    good = [Path(path).read_bytes() for path, _ in val_images(digits, 16)]
    expected = [int(i) for i in np.argmax(infer_scores(triton, good), axis=1)]  # one request
    bad = {name: payload for name, (payload, _, _) in HOSTILE.items()} | {"bug": ODD}
    sent = [*good[:6], *bad.values(), *good[6:]]  # in arrival order, the bad among the good
    before = preprocess_batches(triton), scrape(triton.ports.metrics)
    with ThreadPoolExecutor(max_workers=len(sent)) as pool:
        answers = list(pool.map(lambda payload: top1(triton.ports.grpc, payload), sent))
    refused = dict(zip(bad, answers[6 : 6 + len(bad)], strict=True))
    assert answers[:6] + answers[6 + len(bad) :] == expected
    for name, (_, _, message) in HOSTILE.items():
        assert isinstance(refused[name], InferenceServerException), name
        assert str(refused[name].status()) == "StatusCode.INVALID_ARGUMENT", name
        assert message in refused[name].message(), name
    assert str(refused["bug"].status()) == "StatusCode.INTERNAL"
    assert "failed on this request's images: OddLibraryError: odd:" in refused["bug"].message()
    stats = preprocess_batches(triton)  # the bad ones were batched with the good ones
    assert stats["requests"] - before[0]["requests"] == len(sent)
    assert stats["executions"] - before[0]["executions"] < len(sent)
    reasons = Counter(reason for _, reason, _ in HOSTILE.values())

    def rejected(samples, reason: str) -> float:
        name = "resnet_triton_rejected_inputs_total"
        return total(samples, name, model=NAMES.preprocess, reason=reason) - total(
            before[1], name, model=NAMES.preprocess, reason=reason
        )

    after = scrape_until(
        triton.ports.metrics, lambda now: all(rejected(now, r) >= n for r, n in reasons.items())
    )
    assert {reason: rejected(after, reason) for reason in REJECT_REASONS} == {
        reason: reasons[reason] for reason in REJECT_REASONS
    }
    assert triton.log_path.read_text().count("OddLibraryError: odd:") == 1  # logged, once
    assert_ready(triton)


def infer_scores(triton, payloads: list[bytes]) -> np.ndarray:
    client = grpcclient.InferenceServerClient(f"localhost:{triton.ports.grpc}")
    image = grpcclient.InferInput(NAMES.image, [len(payloads), 1], "BYTES")
    image.set_data_from_numpy(np.array([[p] for p in payloads], dtype=np.object_))
    try:
        return client.infer(NAMES.ensemble, [image]).as_numpy(NAMES.scores)
    finally:
        client.close()


def preprocess_batches(triton):
    client = httpclient.InferenceServerClient(f"localhost:{triton.ports.http}")
    stats = client.get_inference_statistics(NAMES.preprocess)["model_stats"][0]
    return {
        "requests": stats["inference_stats"]["success"]["count"]
        + stats["inference_stats"]["fail"]["count"],
        "executions": stats["execution_count"],
    }


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_wrong_dtype_is_refused_and_server_stays_ready(triton, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    port = triton.ports.grpc if protocol == "grpc" else triton.ports.http
    client = module.InferenceServerClient(f"localhost:{port}")
    wrong = module.InferInput(NAMES.image, [1, 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="(?i)data.?type|datatype|FP32"):
        client.infer(NAMES.ensemble, [wrong])
    assert_ready(triton)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model_is_named(triton, protocol):
    address = f"localhost:{triton.ports.grpc if protocol == 'grpc' else triton.ports.http}"
    with pytest.raises(ClientError) as error:
        Classifier(address, protocol, model="nope")
    assert str(error.value) == (
        f"unknown model 'nope' at {address}: Request for unknown model: 'nope' is not found"
    )


def test_cpu_classifier_serves_the_int8_model(int8_repository, digits, tmp_path):
    published = int8_repository / NAMES.classifier / "1" / "model.onnx"
    assert Manifest.read(published).precision == "int8"

    samples = val_images(digits, 16)
    spec = spec_from_onnx(published)
    pixels = pixels_from_files([p for p, _ in samples], spec.preprocessing)
    session = ort.InferenceSession(str(published), providers=["CPUExecutionProvider"])
    local = session.run(None, {spec.names.pixels: pixels})[0]

    server = TritonServer(
        int8_repository, Ports.free(), log_path=tmp_path / "triton.log", exit_timeout_s=3
    )
    with server:
        server.wait_ready([NAMES.ensemble])
        with Classifier(f"localhost:{server.ports.grpc}", "grpc") as classifier:
            rows = classifier.classify_bytes([Path(p).read_bytes() for p, _ in samples], top_k=1)
    assert [row[0].index for row in rows] == list(local.argmax(1))
    np.testing.assert_allclose([row[0].score for row in rows], local.max(1), atol=1e-3)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_classifier_answers_class_count_with_labels(triton, digits, protocol):
    """What NVIDIA's image_client.py does: pixels to the classifier model, class_count."""
    published = triton.repository / NAMES.classifier / "1" / "model.onnx"
    spec = spec_from_onnx(published)
    paths = [path for path, _ in val_images(digits, 2)]
    pixels = pixels_from_files(paths, spec.preprocessing)  # (2, 3, crop, crop) uint8
    session = ort.InferenceSession(str(published), providers=["CPUExecutionProvider"])
    local = session.run(None, {spec.names.pixels: pixels})[0]

    module = grpcclient if protocol == "grpc" else httpclient
    port = triton.ports.grpc if protocol == "grpc" else triton.ports.http
    client = module.InferenceServerClient(f"localhost:{port}")
    request = module.InferInput(spec.names.pixels, list(pixels.shape), "UINT8")
    request.set_data_from_numpy(pixels)
    top2 = module.InferRequestedOutput(spec.names.scores, class_count=2)
    try:
        result = client.infer(spec.names.classifier, [request], outputs=[top2])
    finally:
        client.close()
    rows = result.as_numpy(spec.names.scores)  # (2, 2) "score:index:label" bytes
    for row, scores in zip(rows, local, strict=True):
        expected = np.argsort(scores)[::-1][:2]
        answers = [entry.decode().split(":") for entry in row]
        assert [len(parts) for parts in answers] == [3, 3], row  # "score:index" lacks labels
        assert [int(index) for _, index, _ in answers] == list(expected)
        assert [label for _, _, label in answers] == [spec.labels[i] for i in expected]
        np.testing.assert_allclose([float(s) for s, _, _ in answers], scores[expected], atol=1e-5)
