"""serving.layout fused on the real Triton server: one Python-backend model decodes and
runs ONNX Runtime under the ensemble's name. The demo's model answers as the ensemble
does; in a dynamic batch a bad image and a row ONNX Runtime fails on each fail their own
request only; the metrics count traffic, not the warm-up of either instance. One image
alone is scored with all cores only while no other instance of the same server is at
work, which the model counts (resnet_triton_single_image_runs_total{session})."""

import io
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from conftest import NAMES, PHOTOS
from PIL import Image
from test_model_metrics import scrape, scrape_until, total
from test_python_models import SPEC, WHITE, answer, darkest_pixel_model
from tritonclient.utils import InferenceServerException

from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import (
    ONNX_FILE,
    env_path_for,
    model_home,
    render,
    version_dir,
)
from resnet_triton.serving.serve import Supervisor
from resnet_triton.serving.server import Ports, TritonServer

pytestmark = pytest.mark.integration

FUSED = ServingConfig(layout="fused")


def serve(repo, root) -> TritonServer:
    return TritonServer(repo, Ports.free(), log_path=root / "triton.log", exit_timeout_s=3)


@pytest.fixture(scope="module")
def fused(repository, checkpoint, tmp_path_factory):
    """The published test model, rendered again in the fused layout."""
    root = tmp_path_factory.mktemp("fused")
    repo = root / "repo"
    shutil.copytree(repository, repo, symlinks=True)
    render(load_checkpoint(checkpoint)[0], repo, env_path_for(repo), serving=FUSED)
    with serve(repo, root) as server:
        server.wait_ready([NAMES.ensemble], timeout=180)
        yield server


def scores(port: int, payloads: list[bytes]) -> np.ndarray:
    """The ensemble's SCORES for one request holding `payloads`."""
    client = grpcclient.InferenceServerClient(f"localhost:{port}")
    try:
        image = grpcclient.InferInput(NAMES.image, [len(payloads), 1], "BYTES")
        image.set_data_from_numpy(np.array([[p] for p in payloads], dtype=np.object_))
        return client.infer(NAMES.ensemble, [image]).as_numpy(NAMES.scores)
    finally:
        client.close()


def test_the_fused_model_answers_as_the_ensemble_and_counts_traffic_only(fused, triton, digits):
    images = [p.read_bytes() for p in [*PHOTOS, *sorted((digits / "val").rglob("*.png"))[::7]]]
    before = scrape(fused.ports.metrics)
    one_by_one = np.concatenate([scores(fused.ports.grpc, [image]) for image in images])
    batched = np.concatenate(
        [scores(fused.ports.grpc, images[n : n + 16]) for n in range(0, len(images), 16)]
    )
    expected = np.concatenate([scores(triton.ports.grpc, [image]) for image in images])
    # The same ONNX file and pixels; 1 thread or one per core only reorders float sums.
    np.testing.assert_allclose(one_by_one, expected, atol=1e-5)
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    assert (one_by_one.argmax(1) == expected.argmax(1)).all()

    sent = 2 * len(images)
    after = scrape_until(
        fused.ports.metrics, lambda now: counted(before, now, "resnet_triton_answers_total") >= sent
    )

    def counted_here(name: str) -> float:
        return counted(before, after, name)

    assert counted_here("resnet_triton_answers_total") == sent
    # One image at a time from one client: each scored by an instance alone, with all cores.
    assert single_image_runs(before, after) == {"all_cores": len(images), "one_thread": 0}
    assert counted_here("resnet_triton_preprocess_seconds_count") == sent
    assert counted_here("nv_inference_count") == sent
    # Each of the 2 instances was warmed up with a photo and a batch of 32 (its first
    # 33 requests), which Triton counts and the model's metrics do not.
    answers = total(after, "resnet_triton_answers_total", model=NAMES.ensemble)
    assert total(after, "nv_inference_count", model=NAMES.ensemble) - answers == 2 * 33


def counted(before, after, name: str, **labels) -> float:
    """What the fused model counted in `name` between two scrapes."""
    labels["model"] = NAMES.ensemble
    return total(after, name, **labels) - total(before, name, **labels)


def single_image_runs(before, after) -> dict[str, float]:
    """The fused model's runs on one image between two scrapes, by the session used."""
    name = "resnet_triton_single_image_runs_total"
    return {s: counted(before, after, name, session=s) for s in ("all_cores", "one_thread")}


def large_images() -> list[bytes]:
    """A request that keeps an instance at work for a while: 8 images of 1500x1500."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize((1500, 1500)).convert("RGB").save(out, "PNG")
    return [out.getvalue()] * 8


def singles_while_busy(client_port: int, busy_port: int, image: bytes) -> int:
    """Images sent one at a time to `client_port` while a request of large images is in
    flight on `busy_port` (the same server or another); how many were sent."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(scores, busy_port, large_images())
        sent = 0
        while not busy.done() or sent == 0:
            scores(client_port, [image])
            sent += 1
        busy.result()
    return sent


def test_an_image_beside_another_instances_work_gets_one_thread(fused):
    """A lone image while the other instance is at work is scored by its own instance's
    one-thread session: the all-cores one would take the busy instance's core."""
    before = scrape(fused.ports.metrics)
    sent = singles_while_busy(fused.ports.grpc, fused.ports.grpc, PHOTOS[0].read_bytes())
    after = scrape_until(
        fused.ports.metrics, lambda now: sum(single_image_runs(before, now).values()) >= sent
    )
    runs = single_image_runs(before, after)
    assert sum(runs.values()) == sent
    assert runs["one_thread"] >= 1, runs


def test_servers_on_one_model_folder_keep_to_their_own_lock(fused, tmp_path):
    """Replicas that mount the same folder (deploy/docker/replicas.yml) each lock a file
    of their own in /dev/shm: another server's work never takes a lone client's cores,
    and a server that stops removes its file."""
    with serve(fused.repository, tmp_path) as other:
        other.wait_ready([NAMES.ensemble], timeout=180)
        before = scrape(fused.ports.metrics)
        sent = singles_while_busy(fused.ports.grpc, other.ports.grpc, PHOTOS[0].read_bytes())
        after = scrape_until(
            fused.ports.metrics, lambda now: sum(single_image_runs(before, now).values()) >= sent
        )
        assert single_image_runs(before, after) == {"all_cores": sent, "one_thread": 0}
        files = [
            f"/dev/shm/resnet-triton-{s.process.pid}-{NAMES.ensemble}.lock" for s in (fused, other)
        ]
        assert [Path(f).is_file() for f in files] == [True, True]  # named after each server
    assert [Path(f).is_file() for f in files] == [True, False]


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """test_python_models' renamed spec and failing model, fused, batching for a second."""
    root = tmp_path_factory.mktemp("fused-pets")
    repo = root / "repo"
    serving = ServingConfig(
        layout="fused", fused_preferred_batch_sizes=(), classifier_queue_delay_us=1_000_000
    )
    render(SPEC, repo, env_path_for(repo), serving=serving)
    onnx.save_model(darkest_pixel_model(), version_dir(repo, model_home(SPEC, serving)) / ONNX_FILE)
    with serve(repo, root) as server:
        server.wait_ready([SPEC.names.ensemble], timeout=180)
        yield server


def uniform_png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 80), (value,) * 3).save(out, "PNG")
    return out.getvalue()


def test_in_a_batch_each_failure_is_its_own_requests(pets):
    """Seven requests in one batch: a corrupt image and an all-white one fail alone."""
    values = [0, 1, 2, WHITE, 4, None, 5]  # None: a truncated PNG
    client = grpcclient.InferenceServerClient(f"localhost:{pets.ports.grpc}")

    def classify(value: int | None) -> str | Exception:
        payload = uniform_png(0)[:60] if value is None else uniform_png(value)
        image = grpcclient.InferInput(SPEC.names.image, [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
        top1 = grpcclient.InferRequestedOutput(SPEC.names.scores, class_count=1)
        try:
            result = client.infer(SPEC.names.ensemble, [image], outputs=[top1])
        except InferenceServerException as exc:
            return exc
        return result.as_numpy(SPEC.names.scores)[0][0].decode()

    def executions() -> int:
        stats = client.get_inference_statistics(SPEC.names.ensemble, as_json=True)
        return int(stats["model_stats"][0]["execution_count"])

    before = executions()
    with ThreadPoolExecutor(max_workers=len(values)) as pool:
        answers = list(pool.map(classify, values))
    ran = executions() - before
    supervisor = Supervisor(pets, probe_interval_s=0)
    try:
        assert supervisor.ensembles == [SPEC.names.ensemble]
        assert supervisor.check() is None  # readiness, stubs and a probe of "pets"
    finally:
        supervisor.close()
    client.close()

    corrupt = answers.pop(values.index(None))
    white = answers.pop(values.index(WHITE))
    assert answers == [answer(v) for v in values if v not in (WHITE, None)]
    assert isinstance(corrupt, InferenceServerException)
    assert "corrupt" in str(corrupt) or "not a decodable image" in str(corrupt)
    assert isinstance(white, InferenceServerException)
    assert "pets failed on this request's pixels: [ONNXRuntimeError]" in str(white)
    assert ran < len(values)  # they shared batches
    log = pets.log_path.read_text()
    batches = re.findall(r"pets: a batch of (\d+) requests failed, running each alone", log)
    assert batches and all(int(n) >= 2 for n in batches)
