"""Production behaviour of the served repository: bad inputs, warmup, restricted APIs,
metrics, and the supervisor noticing a dead Python-backend stub."""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import (
    ADMIN_KEY,
    NAMES,
    PHOTOS,
    infer_images,
    inference_metrics,
    restricted_api_statuses,
    series,
)
from google.protobuf import text_format
from PIL import Image
from tritonclient.utils import InferenceServerException

from resnet_triton.client import Classifier, ClientError
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.model_configs import LAYOUT_PARAM
from resnet_triton.serving.repository import (
    WARMUP_FILE,
    read_config,
    render,
    serialized_bytes,
    warmup_image,
)
from resnet_triton.serving.serve import python_stubs
from resnet_triton.serving.server import (
    Ports,
    ServerError,
    TritonServer,
    ensemble_names,
    server_environment,
)
from resnet_triton.spec import ModelSpec

pytestmark = pytest.mark.integration


def png(size, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "TIFF")
    return buffer.getvalue()


BAD_IMAGES = {
    "empty": (b"", "empty image payload (0 bytes)"),
    "not an image": (b"GIF89a?" * 3, "not a decodable image (21 bytes"),
    "truncated": (PHOTOS[3].read_bytes()[:5000], "corrupt JPEG image (5000 bytes)"),
    "not allowed": (tiff(), "image format TIFF is not accepted; accepted: JPEG, PNG"),
    "too many pixels": (png((8000, 6000), "L"), "48,000,000 pixels exceeds the limit"),
    "too many bytes": (b"\xff\xd8\xff" + bytes(17 * 2**20), "exceeds the limit of 16,777,216"),
}


def assert_ready(triton):
    client = httpclient.InferenceServerClient(f"localhost:{triton.ports.http}")
    try:
        assert client.is_server_ready()
        for model in (NAMES.ensemble, NAMES.preprocess, NAMES.classifier):
            assert client.is_model_ready(model), model
    finally:
        client.close()


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_each_bad_image_fails_alone_with_its_reason(triton, case, protocol):
    payload, message = BAD_IMAGES[case]
    good = PHOTOS[0].read_bytes()
    port = triton.ports.grpc if protocol == "grpc" else triton.ports.http
    with Classifier(f"localhost:{port}", protocol) as classifier:
        with pytest.raises(ClientError) as info:
            classifier.classify_bytes([payload])
        assert message in str(info.value)
        # The same server answers the next request.
        (answer,) = classifier.classify_bytes([good])
    assert answer[0].label in {str(d) for d in range(10)}
    assert_ready(triton)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_wrong_input_name_is_refused(triton, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    port = triton.ports.grpc if protocol == "grpc" else triton.ports.http
    client = module.InferenceServerClient(f"localhost:{port}")
    wrong = module.InferInput("PICTURE", [1, 1], "BYTES")
    wrong.set_data_from_numpy(np.array([[PHOTOS[0].read_bytes()]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="unexpected inference input 'PICTURE'"):
        client.infer(NAMES.ensemble, [wrong])
    client.close()
    assert_ready(triton)


def test_restricted_apis_need_the_admin_key(triton):
    # no key, a wrong key, the right key
    assert restricted_api_statuses(triton.ports.http) == [403, 403, 200]
    # Inference, health and metadata stay open.
    assert_ready(triton)


def test_metrics_count_each_request_per_model(triton):
    """The change two good requests (1 and 2 images) and one bad one make to the counters."""
    before = inference_metrics(triton.ports.metrics)
    infer_images(triton.ports.grpc, [PHOTOS[1].read_bytes()])
    infer_images(triton.ports.grpc, [PHOTOS[0].read_bytes(), PHOTOS[2].read_bytes()])
    with pytest.raises(InferenceServerException, match="image 0: empty image payload"):
        infer_images(triton.ports.grpc, [b""])
    ensemble, preprocess, classifier = NAMES.ensemble, NAMES.preprocess, NAMES.classifier
    expected = {
        series("nv_inference_request_success", ensemble): 2,
        # Triton 2.51 counts a failed ensemble request twice, as reason OTHER.
        series("nv_inference_request_failure", ensemble, "OTHER"): 2,
        series("nv_inference_request_failure", ensemble, "BACKEND"): 0,
        series("nv_inference_count", ensemble): 3,  # images
        # The Python backend reports a request it answered with an error as a success.
        series("nv_inference_request_success", preprocess): 3,
        series("nv_inference_request_failure", preprocess, "BACKEND"): 0,
        series("nv_inference_count", preprocess): 4,
        series("nv_inference_exec_count", preprocess): 3,  # one request at a time
        series("nv_inference_request_success", classifier): 2,
        series("nv_inference_count", classifier): 3,
        series("nv_inference_exec_count", classifier): 2,
        # The latency summaries for the dashboard, one observation per request.
        series("nv_inference_queue_summary_us_count", preprocess): 3,
        series("nv_inference_queue_summary_us_count", classifier): 2,
        series("nv_inference_compute_infer_summary_us_count", classifier): 2,
    }
    # Counters settle when each model finishes; the last ones may trail the reply.
    deadline = time.monotonic() + 10
    while True:
        after = inference_metrics(triton.ports.metrics)
        changes = {key: after[key] - before[key] for key in expected}
        if changes == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert changes == expected
    for model in (preprocess, classifier):  # time was measured, whatever it was
        compute = series("nv_inference_compute_infer_duration_us", model)
        assert after[compute] > before[compute], model


def copy_repository(repository, target):
    shutil.copytree(repository, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def processes_in_group(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == group:
                    members.append(int(entry.name))
            except ProcessLookupError:
                pass  # ended while we looked
    return members


WARMUP_FAILED = (
    "failed to load 'preprocess' version 1: Invalid argument: failed to run warmup sample "
    "'real photo': image 0: corrupt image (600 bytes): Truncated File Read"
)


def failed_start(repo: Path, log: Path) -> tuple[int, str]:
    """Start Triton on `repo`, which must not get ready: (exit code, log)."""
    server = TritonServer(repo, Ports.free(), log_path=log, exit_timeout_s=3)
    with server, pytest.raises(ServerError, match=r"exited with code -?\d+ while loading"):
        server.wait_ready([NAMES.ensemble], timeout=120)
    # No stub outlives its server (killed ones take a moment to be reaped).
    deadline = time.monotonic() + 10
    while processes_in_group(server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_in_group(server.process.pid) == []
    return server.process.returncode, log.read_text()


def test_warmup_runs_at_load_and_a_broken_one_stops_the_start(repository, tmp_path):
    repo = copy_repository(repository, tmp_path / "repo")
    warmup = repo / NAMES.preprocess / "warmup" / WARMUP_FILE
    assert warmup.read_bytes() == serialized_bytes(warmup_image())  # the shipped photo
    warmup.write_bytes(serialized_bytes(warmup_image()[:600]))  # a well-formed, cut JPEG
    # Only the warmup file differs from the repository the session server serves.
    # Triton 2.51 stops with exit 1 and the reason, or, in about a third of the starts
    # here, crashes first with SIGSEGV: a race in its core, which destroys the instance
    # whose warmup failed while that instance's backend thread still appends to the list
    # StopBackendThread reads (backend_model_instance.cc; the core dump's stack is
    # ~TritonModelInstance -> TritonBackendThread::StopBackendThread). A crashed start
    # is started again, up to five times in all.
    codes = []
    for attempt in range(5):
        code, log = failed_start(repo, tmp_path / f"log{attempt}")
        codes.append(code)
        assert "successfully loaded 'preprocess'" not in log
        if code != -11:
            break
    assert codes[-1] == 1 and set(codes[:-1]) <= {-11}, codes
    assert WARMUP_FAILED in log
    assert log.rstrip().endswith("error: creating server: Internal - failed to load all models")


def serve_command(repository: Path, ports: Ports, *extra: str) -> list[str]:
    """`resnet-triton serve` on `repository` and `ports`, as a user runs it."""
    return [
        sys.executable, "-m", "resnet_triton", "serve", "--repository", str(repository),
        "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
        "--metrics-port", str(ports.metrics), "--admin-key", ADMIN_KEY, *extra,
    ]  # fmt: skip


def start_serve(repository: Path, ports: Ports, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(serve_command(repository, ports, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_supervisor_stops_when_a_python_stub_dies(repository, tmp_path):
    ports = Ports.free()
    serve = start_serve(repository, ports)
    try:
        for line in serve.stdout:
            if line.startswith("ready:"):
                break
        assert "supervising 2 Python-backend stubs" in line
        # The banner says which of the fence only the container provides (SECURITY.md).
        assert next(serve.stdout).startswith("fence: Triton's own admin-key check only; the "
                                             "CPU container's nginx adds the rest")  # fmt: skip
        (triton,) = [
            int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(p) == serve.pid
        ]  # fmt: skip
        stubs = {model: pid for pid, model in python_stubs(triton).items()}
        assert set(stubs) == {NAMES.preprocess, NAMES.classifier}
        started = time.monotonic()
        os.kill(stubs[NAMES.classifier], signal.SIGKILL)
        rest = serve.communicate(timeout=120)[0]
        noticed = time.monotonic() - started
    finally:
        serve.kill()
    assert serve.returncode == 1
    assert f"the Python-backend stub of model '{NAMES.classifier}'" in rest
    assert "stopped the server (exit 1 for the process manager)" in rest
    assert noticed < 60


def test_serve_runs_another_installations_tritonserver(repository, tmp_path):
    """`serve --tritonserver`, as the GPU compose service runs NVIDIA's binary: the
    installation's own backends, no environment of ours. Stand-in installation: a
    wrapper that runs the wheel's server with a backends folder of its own."""
    binary = tmp_path / "tritonserver" / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    server = TritonServer(repository)
    wheel, ours = server.command[0], server.command[2]  # binary, --backend-directory=...
    assert ours.startswith("--backend-directory=")
    library_path = server_environment()["LD_LIBRARY_PATH"]
    binary.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH={library_path} exec {wheel} {ours} "$@"\n')
    binary.chmod(0o755)
    ports = Ports.free()
    serve = start_serve(repository, ports, "--tritonserver", str(binary))
    try:
        for line in serve.stdout:
            if line.startswith("ready:"):
                break
        assert "supervising 2 Python-backend stubs" in line
        # The banner says which of the fence only the container provides (SECURITY.md).
        assert next(serve.stdout).startswith("fence: Triton's own admin-key check only; the "
                                             "CPU container's nginx adds the rest")  # fmt: skip
        with Classifier(f"localhost:{ports.grpc}", "grpc", NAMES.ensemble) as client:
            (result,) = client.classify([PHOTOS[0]], top_k=1)
        assert result.ok
        serve.send_signal(signal.SIGTERM)
        rest = serve.communicate(timeout=120)[0]
    finally:
        serve.kill()
    assert serve.returncode == 0, rest
    assert "tritonserver stopped (exit code 0)" in rest
    missing = TritonServer(repository, binary=tmp_path / "nothing" / "tritonserver")
    with pytest.raises(ServerError, match="nothing/tritonserver is not an executable file"):
        missing.start()


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_serve_names_a_port_another_server_holds_before_saying_ready(triton, repository):
    free = Ports.free()
    ports = Ports(triton.ports.http, free.grpc, free.metrics)
    result = subprocess.run(serve_command(repository, ports), capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""  # nothing said ready
    assert result.stderr == (
        f"error: http port {triton.ports.http} on 127.0.0.1 already in use (another server?); "
        "stop it or choose other ports\n"
    )


def test_readiness_counts_only_from_the_servers_own_process(triton, repository):
    # A server whose process never serves, on the ports where another one answers ready.
    impostor = TritonServer(repository, triton.ports)
    impostor.process = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(ServerError, match=r"not ready after 3 s"):
            impostor.wait_ready([NAMES.ensemble], timeout=3)
    finally:
        impostor.process.kill()
        impostor.process.wait()


def test_the_local_server_listens_on_loopback_only(triton):
    # This machine's address on its default route (a UDP connect sends nothing).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
    assert not address.startswith("127."), address
    for port in (triton.ports.http, triton.ports.grpc, triton.ports.metrics):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_the_classifier_runs_at_the_configured_priority(triton):
    """serving.classifier_nice: the classifier's stub and every thread it starts (ONNX
    Runtime's pool included) run at that nice value; the preprocess stub keeps 0."""
    stubs = python_stubs(triton.process.pid)

    def nice_of_threads(pid: int) -> set[int]:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return {int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in tasks}

    by_model = {model: nice_of_threads(pid) for pid, model in stubs.items()}
    assert by_model[NAMES.classifier] == {ServingConfig().classifier_nice} == {10}
    assert by_model[NAMES.preprocess] == {0}


def test_the_models_clients_send_images_to_are_the_ones_their_configs_name(tmp_path):
    """What `serve` waits for and probes: ensembles, and the fused layout's model because
    its config says so, not because its parameters look like it."""
    spec = ModelSpec(labels=("a", "b"))
    render(spec, tmp_path / "fused", serving=ServingConfig(layout="fused"))
    render(spec, tmp_path / "ensemble")
    assert ensemble_names(tmp_path / "fused") == [spec.names.ensemble]
    assert ensemble_names(tmp_path / "ensemble") == [spec.names.ensemble]
    # A Python model that decodes and runs ONNX as the fused one does, beside an
    # ensemble, but is no layout's: clients are not sent to it.
    custom = read_config(tmp_path / "fused" / spec.names.ensemble / "config.pbtxt")
    custom.name = "custom"
    del custom.parameters[LAYOUT_PARAM]
    (tmp_path / "ensemble" / "custom").mkdir()
    (tmp_path / "ensemble" / "custom" / "config.pbtxt").write_text(
        text_format.MessageToString(custom)
    )
    assert ensemble_names(tmp_path / "ensemble") == [spec.names.ensemble]
