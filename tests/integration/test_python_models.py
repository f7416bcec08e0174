"""The Python-backend models, the health probe and the supervisor on a repository whose
spec names every tensor differently from the defaults, served by the real Triton server.

Its classifier is a small real ONNX model that fails on some pixels: it scores an image
by its darkest pixel, looked up in a table of 255 rows, so an all-white image is out of
bounds and ONNX Runtime raises, as a model can raise on data it was never run on.
"""

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from resnet_triton.preprocess import pixels_from_bytes
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.probe import main as probe_main
from resnet_triton.serving.probe import probe, warmup_image
from resnet_triton.serving.repository import ONNX_FILE, env_path_for, render
from resnet_triton.serving.serve import Supervisor
from resnet_triton.serving.server import Ports, ServerError, TritonServer
from resnet_triton.spec import ModelSpec, Names, Preprocessing

pytestmark = pytest.mark.integration

SPEC = ModelSpec(
    labels=("cat", "dog", "owl"),
    preprocessing=Preprocessing(resize_size=72, crop_size=64),
    max_batch_size=8,
    names=Names(ensemble="pets", image="ENCODED", pixels="RGB8", scores="PROBS"),
)
WHITE = 255  # the darkest pixel of an all-white image: past the table's last row
# A second to gather the requests sent together into one batch (the default is 0).
SERVING = ServingConfig(classifier_queue_delay_us=1_000_000)


def darkest_pixel_model(names: Names = SPEC.names) -> onnx.ModelProto:
    """RGB8 uint8 (N, 3, 64, 64) -> PROBS float32 (N, 3): row `darkest pixel` of a table
    whose row v gives class v % 3 a score of 0.8 and the others 0.1."""
    table = np.full((WHITE, SPEC.num_classes), 0.1, dtype=np.float32)
    table[np.arange(WHITE), np.arange(WHITE) % SPEC.num_classes] = 0.8
    crop = SPEC.preprocessing.crop_size
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMin", [names.pixels], ["darkest"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Cast", ["darkest"], ["row"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "row"], [names.scores], axis=0),
        ],
        "darkest_pixel",
        [helper.make_tensor_value_info(names.pixels, TensorProto.UINT8, ["N", 3, crop, crop])],
        [helper.make_tensor_value_info(names.scores, TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def answer(darkest: int) -> str:
    """The classification extension's top-1 for an image whose darkest pixel is `darkest`."""
    index = darkest % SPEC.num_classes
    return f"0.800000:{index}:{SPEC.labels[index]}"


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    root = tmp_path_factory.mktemp("renamed")
    repo = root / "repo"
    render(SPEC, repo, env_path_for(repo), serving=SERVING)
    onnx.save_model(darkest_pixel_model(), repo / SPEC.names.classifier / "1" / ONNX_FILE)
    server = TritonServer(repo, Ports.free(), log_path=root / "triton.log", exit_timeout_s=3)
    with server:
        server.wait_ready([SPEC.names.ensemble], timeout=180)
        yield server


def test_probe_and_supervisor_read_the_tensor_names_from_the_model(renamed, capsys):
    url = f"localhost:{renamed.ports.http}"
    darkest = int(pixels_from_bytes([warmup_image()], SPEC.preprocessing).min())
    assert probe(url, "pets") == answer(darkest)
    assert probe_main(["--url", url, "--model", "pets"]) == 0
    assert capsys.readouterr().out == f"pets answered {answer(darkest)}\n"
    supervisor = Supervisor(renamed, probe_interval_s=0)
    try:
        assert supervisor.ensembles == ["pets"]
        assert supervisor.check() is None  # readiness, stubs and a probe of "pets"
    finally:
        supervisor.close()


def test_a_request_the_classifier_fails_on_gets_its_own_error_in_a_batch(renamed):
    """Six requests in one dynamic batch; the all-white one fails alone."""
    values = [0, 1, 2, WHITE, 4, 5]
    client = grpcclient.InferenceServerClient(f"localhost:{renamed.ports.grpc}")
    crop = SPEC.preprocessing.crop_size

    def classify(value: int) -> str | Exception:
        pixels = grpcclient.InferInput(SPEC.names.pixels, [1, 3, crop, crop], "UINT8")
        pixels.set_data_from_numpy(np.full((1, 3, crop, crop), value, np.uint8))
        top1 = grpcclient.InferRequestedOutput(SPEC.names.scores, class_count=1)
        try:
            result = client.infer(SPEC.names.classifier, [pixels], outputs=[top1])
        except InferenceServerException as exc:
            return exc
        return result.as_numpy(SPEC.names.scores)[0][0].decode()

    def executions() -> int:
        stats = client.get_inference_statistics(SPEC.names.classifier, as_json=True)
        return int(stats["model_stats"][0]["execution_count"])

    before = executions()
    with ThreadPoolExecutor(max_workers=len(values)) as pool:
        answers = list(pool.map(classify, values))
    ran = executions() - before
    client.close()

    failed = answers.pop(values.index(WHITE))
    assert answers == [answer(v) for v in values if v != WHITE]
    assert isinstance(failed, InferenceServerException)
    assert "classifier failed on this request's pixels: [ONNXRuntimeError]" in str(failed)
    assert "indices element out of data bounds, idx=255 must be within the inclusive range " \
           "[-255,254]" in str(failed)  # fmt: skip
    # The white image shared a batch with others (fewer executions than requests), and the
    # model ran that batch again one request at a time.
    assert ran < len(values)
    log = renamed.log_path.read_text()
    batches = re.findall(r"classifier: a batch of (\d+) requests failed, running each alone", log)
    assert batches and all(int(n) >= 2 for n in batches)


def test_a_model_file_with_other_tensor_names_stops_the_start(tmp_path):
    """An ONNX file exported from a spec with the default names, in this repository."""
    repo = tmp_path / "repo"
    render(SPEC, repo, env_path_for(repo), serving=SERVING)
    model = repo / SPEC.names.classifier / "1" / ONNX_FILE
    onnx.save_model(darkest_pixel_model(Names()), model)
    server = TritonServer(repo, Ports.free(), log_path=tmp_path / "log", exit_timeout_s=3)
    with server, pytest.raises(ServerError, match="exited with code 1 while loading"):
        server.wait_ready([SPEC.names.ensemble], timeout=180)
    assert (
        f"{model} maps PIXELS to ['SCORES']; the config serves RGB8 -> PROBS: rebuild it "
        "from its checkpoint"
    ) in (tmp_path / "log").read_text()
