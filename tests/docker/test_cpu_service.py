"""`docker compose up tritonserver` on this CPU machine, against the demo's published
repository: the same answers as the bare-process server, the serving policy, and
nginx keeping chunked bodies away from Triton 2.51."""

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import (
    NAMES,
    ComposeProject,
    infer_images,
    inference_metrics,
    restricted_api_statuses,
    run,
    series,
)
from load import chunked_post
from tritonclient.utils import InferenceServerException

from resnet_triton.client import Classifier
from resnet_triton.serving.server import Ports, TritonServer

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def service(cpu_image, demo_run):
    project = ComposeProject(demo_run.repository)
    try:
        started = project.up()
        assert started.returncode == 0, started.stderr + project.logs()[-3000:]
        yield project
    finally:
        project.down()


def container_id(service) -> str:
    return service("ps", "--quiet", "tritonserver").stdout.strip()


def inspect(service, template: str) -> str:
    return run(["docker", "inspect", f"--format={template}", container_id(service)]).stdout.strip()


def classify(url: str, paths: list[Path]) -> np.ndarray:
    with Classifier(url, "grpc", concurrency=4) as classifier:
        results = classifier.classify(paths)
    assert [r.error for r in results if not r.ok] == []
    return np.array([r.top1.index for r in results])


def test_serves_the_demo_exactly_as_the_bare_process_server(service, demo_run, tmp_path):
    paths = sorted(demo_run.val.glob("*/*.png"))
    labels = np.array([int(p.parent.name) for p in paths])
    assert len(paths) == 360
    in_container = classify(f"localhost:{service.ports.grpc}", paths)
    with TritonServer(demo_run.repository, Ports.free(), tmp_path / "log", 3) as bare:
        bare.wait_ready([NAMES.ensemble])
        bare_process = classify(f"localhost:{bare.ports.grpc}", paths)
    assert np.mean(in_container == bare_process) == 1.0  # agreement
    accuracy = np.mean(in_container == labels)
    assert accuracy == np.mean(bare_process == labels) == demo_run.report["served_top1_accuracy"]


def test_restricted_apis_need_the_admin_key(service):
    # no key, a wrong key, the right key
    assert restricted_api_statuses(service.ports.http) == [403, 403, 200]


def processes_under(pid: int) -> dict[int, str]:
    """pid -> command name of every process descending from `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # not a process, or it ended while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = Path(f"/proc/{child}/comm").read_text().strip()
            todo.append(child)
    return found


def test_the_server_runs_unprivileged_and_cannot_write_the_repository(service):
    init = int(inspect(service, "{{.State.Pid}}"))  # the container's PID 1, seen from here
    processes = processes_under(init)
    servers = [pid for pid, name in processes.items() if name == "tritonserver"]
    assert len(servers) == 1, processes
    uids = Path(f"/proc/{servers[0]}/status").read_text().split("Uid:")[1].split()[:2]
    assert uids == ["1000", "1000"]  # real and effective: the image's triton-server user

    write = service("exec", "-T", "tritonserver", "touch", "/workspace/model_repository/x")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr


def test_the_server_and_its_stubs_run_with_jemalloc(service):
    """serve-cpu passes --allocator jemalloc (deploy/README.md, Soak); nginx keeps glibc's."""
    processes = processes_under(int(inspect(service, "{{.State.Pid}}")))
    served = [p for p, name in processes.items() if name in ("tritonserver", "triton_python_b")]
    assert len(served) == 3, processes  # tritonserver and the two stubs (comm: 15 characters)
    maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in processes}
    assert all("libjemalloc.so.2" in maps[pid] for pid in served)
    nginx = [pid for pid, name in processes.items() if name == "nginx"]
    assert nginx and not any("libjemalloc" in maps[pid] for pid in nginx)


def test_metrics_count_the_requests_sent(service, demo_run):
    """One good request of 3 images and one bad one, beside the healthcheck's probes: each
    probe is one good request of one image, so it adds as much to a model's request
    count as to its image count, and nothing to the failures."""
    before = inference_metrics(service.ports.metrics)
    threes = sorted(demo_run.val.glob("3/*.png"))[:3]
    infer_images(service.ports.grpc, [path.read_bytes() for path in threes])
    with pytest.raises(InferenceServerException, match="image 0: empty image payload"):
        infer_images(service.ports.grpc, [b""])
    # (model, requests that succeeded, images counted) from our two requests. The Python
    # backend reports a request it answered with an error as a success, and Triton 2.51
    # counts a failed ensemble request twice, as reason OTHER.
    ours = ((NAMES.ensemble, 1, 3), (NAMES.preprocess, 2, 4), (NAMES.classifier, 1, 3))
    failed = series("nv_inference_request_failure", NAMES.ensemble, "OTHER")
    deadline = time.monotonic() + 10
    while True:  # counters settle when each model finishes; the last may trail the reply
        after = inference_metrics(service.ports.metrics)
        change = {key: after[key] - before[key] for key in after if key in before}
        probes = {
            model: change[series("nv_inference_request_success", model)] - requests
            for model, requests, _ in ours
        }
        images = {
            model: change[series("nv_inference_count", model)] - count for model, _, count in ours
        }
        if (change[failed], images) == (2, probes) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert change[failed] == 2
    assert images == probes and min(probes.values()) >= 0


def test_ports_are_published_on_loopback_only(service):
    for port in (8000, 8001, 8002):
        published = service("port", "tritonserver", str(port)).stdout.strip()
        assert published.startswith("127.0.0.1:"), published


def test_a_body_of_one_byte_chunks_does_not_reach_triton(service, demo_run):
    """30 MB of one-byte chunks killed the bare 2.51 server here (CVE-2025-23310/23311);
    nginx hands Triton one Content-Length body, which it refuses as bad JSON."""
    started = inspect(service, "{{.State.StartedAt}}")
    answer = chunked_post(service.ports.http, 30_000_000)
    assert answer.startswith(b"HTTP/1.1 500") and b"Server: nginx" in answer
    assert b"failed to parse the request JSON buffer" in answer

    # The same server, still ready, still classifying, with NVIDIA's HTTP client too.
    assert inspect(service, "{{.State.StartedAt}} {{.RestartCount}}") == f"{started} 0"
    client = httpclient.InferenceServerClient(f"localhost:{service.ports.http}")
    try:
        assert client.is_server_ready() and client.is_model_ready(NAMES.ensemble)
        image = httpclient.InferInput(NAMES.image, [1, 1], "BYTES")
        path = sorted(demo_run.val.glob("7/*.png"))[0]
        image.set_data_from_numpy(np.array([[path.read_bytes()]], dtype=np.object_))
        output = httpclient.InferRequestedOutput(NAMES.scores, class_count=1)
        result = client.infer(NAMES.ensemble, [image], outputs=[output])
    finally:
        client.close()
    score, index, label = result.as_numpy(NAMES.scores)[0][0].decode().split(":")
    assert label == index and 0 < float(score) <= 1  # the digits' labels are their indices
    assert classify(f"localhost:{service.ports.grpc}", [path]).tolist() == [int(index)]


def test_a_body_over_64_mib_is_refused_by_nginx(service):
    with socket.create_connection(("127.0.0.1", service.ports.http), timeout=30) as connection:
        connection.sendall(
            f"POST /v2/models/{NAMES.ensemble}/infer HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {64 * 2**20 + 1}\r\n\r\n".encode()
        )
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 Request Entity Too Large")
    assert b"Server: nginx" in answer
    client = httpclient.InferenceServerClient(f"localhost:{service.ports.http}")
    try:
        assert client.is_model_ready(NAMES.ensemble)
    finally:
        client.close()
