"""The fence in front of Triton 2.51 (docker/nginx/, SECURITY.md), probed from outside as
an attacker would, through each door the project ships: the CPU container
(docker-compose.yml) and the replicas' balancer (deploy/docker/replicas.yml). Each
published vector is replayed, and the server stays ready throughout."""

import dataclasses
import http.client
import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import ADMIN_KEY, NAMES, ComposeProject, run
from load import chunked_post
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.client import Classifier
from resnet_triton.serving.repository import env_path_for, render

pytestmark = pytest.mark.docker

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef01",
        "carol": "carol-key-0123456789abcdef"}  # fmt: skip
RATE, BURST = 10, 20  # per key per second; alice is flooded, carol does everything else
# The Python backend's region: the default prefix, or `resnet-triton serve`'s own.
REGION = re.compile(rb"triton_python_backend_shm_region_|resnet_triton_[0-9a-f]{8}_")
SERVICE = "inference.GRPCInferenceService"
# A body this large grows the Python backend's shared memory past the container's
# (SMALL_SHM), the error that names the region (CVE-2025-23319's first step).
OVERSIZED = 60_000_000
SMALL_SHM = "32m"  # passes serve's preflight for 64 KiB images, not OVERSIZED


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


@dataclasses.dataclass
class Door:
    name: str
    project: ComposeProject
    service: str  # the compose service that publishes the ports

    @property
    def http(self) -> int:
        return self.project.ports.http

    @property
    def grpc(self) -> str:
        return f"localhost:{self.project.ports.grpc}"

    def logs(self) -> str:
        return self.project("logs", "--no-color", self.service).stdout

    def started(self) -> str:
        """Start time and restart count of every container: unchanged means nothing died."""
        ids = self.project("ps", "--quiet").stdout.split()
        template = "{{.Name}} {{.State.StartedAt}} {{.RestartCount}}"
        return run(["docker", "inspect", f"--format={template}", *ids]).stdout


@pytest.fixture(scope="module")
def fence_repository(demo_run, tmp_path_factory) -> Path:
    """The demo's repository with encoded images capped at 64 KiB, so that the server
    starts with a small /dev/shm (SMALL_SHM) that one OVERSIZED body overflows."""
    root = tmp_path_factory.mktemp("fence")
    (root / ".venv").symlink_to(sys.prefix)
    repo = root / "model_repository"
    shutil.copytree(demo_run.repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (model,) = repo.glob(f"{NAMES.classifier}/*/model.onnx")
    spec = spec_from_onnx(model)
    small = dataclasses.replace(spec.preprocessing, max_bytes=64 * 1024)
    render(dataclasses.replace(spec, preprocessing=small), repo, env_path_for(repo))
    return repo


@pytest.fixture(scope="module", params=["container", "balancer"])
def door(request, cpu_image, fence_repository, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"door-{request.param}")
    keys = root / "api-keys"
    keys.write_text("# the test's keys\n" + "".join(f"{n} {k}\n" for n, k in KEYS.items()))
    keys.chmod(0o644)  # the container's user reads it
    if request.param == "container":
        files, service, served = ("docker-compose.yml",), "tritonserver", "tritonserver"
    else:
        files, service, served = ("deploy/docker/replicas.yml",), "balancer", "replica"
    override = root / "small-shm.yml"
    override.write_text(f"services:\n  {served}:\n    shm_size: {SMALL_SHM}\n")
    local_base = Path(__file__).parents[2] / "docker-compose.override.yml"
    extra = (str(local_base),) if request.param == "container" and local_base.exists() else ()
    project = ComposeProject(fence_repository, files=(*files, *extra, str(override)))
    project.env.update(RESNET_TRITON_API_KEYS=str(keys), RESNET_TRITON_RATE_LIMIT=str(RATE),
                       RESNET_TRITON_RATE_BURST=str(BURST))  # fmt: skip
    try:
        started = project("up", "--detach", "--wait", "--wait-timeout=240", timeout=400)
        assert started.returncode == 0, started.stderr + project("logs").stdout[-3000:]
        door = Door(request.param, project, service)
        before = door.started()
        yield door
        assert door.started() == before  # no container died or restarted under the vectors
        assert_ready(door)
    finally:
        project.down()


def assert_ready(door: Door) -> None:
    client = httpclient.InferenceServerClient(f"localhost:{door.http}")
    try:
        assert client.is_server_ready(headers=bearer("carol"))
        assert client.is_model_ready(NAMES.ensemble, headers=bearer("carol"))
    finally:
        client.close()


def send(port: int, method: str, path: str, headers=None, body: bytes = b""):
    """A request with its path exactly as written (http.client normalises nothing):
    (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def call(target: str, method: str, request, response_type, metadata=()):
    """One unary gRPC call to `method`, spelt as given: "OK" or "CODE: details"."""
    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                  response_deserializer=response_type.FromString)  # fmt: skip
        try:
            rpc(request, metadata=metadata, timeout=30)
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


ADMIN = {"admin-key": ADMIN_KEY}
GRPC_ADMIN = (("triton-grpc-protocol-admin-key", ADMIN_KEY),)
# Alternate spellings of restricted paths: each must be refused with or without the key.
ALTERNATES = [
    "//v2/repository/index", "/v2//repository/index", "/v2/./repository/index",
    "/v2/models/x/../../repository/index", "/v2/models/../repository/index",
    "/v2/%72epository/index", "/v2/repository%2Findex", "/%76%32/repository/index",
    "/v2/repository/index/", "/v2/repository/index/.", "/V2/REPOSITORY/INDEX",
    "/v2/Repository/Index", "/v2/repository/./index", "/v2/repository/index%00",
    "/v2/repository/index;x", "/v2/health/../repository/index",
    "/v2/models/resnet_ensemble/../../repository/models/x/load",
    "/v2/logging/", "//v2/logging", "/v2/%6cogging", "/v2/trace/setting/",
    "/v2/systemsharedmemory/status", "/v2//systemsharedmemory/region/r/register",
    "/v2/cudasharedmemory/status", "/v2/SystemSharedMemory/status",
]  # fmt: skip


@pytest.mark.parametrize("path", ALTERNATES)
def test_alternate_http_paths_to_restricted_apis_are_refused(door, path):
    """CVE-2026-24206/24207: no spelling of a restricted path reaches Triton, key or not."""
    for headers in ({}, {**ADMIN, **bearer("carol")}):
        status, _, body = send(door.http, "POST", path, headers)
        assert status in (400, 403, 404), (path, status, body)
        # Refused by the fence: not Triton's own key check, not the API's answer.
        assert (
            b"is restricted, expecting header" not in body and NAMES.ensemble not in body.decode()
        )


def test_restricted_http_apis_need_the_admin_key_at_the_fence(door):
    for path in ("/v2/repository/index", "/v2/logging", "/v2/trace/setting"):
        status, _, body = send(door.http, "POST", path, bearer("carol"))
        assert (status, json.loads(body)) == (403, {
            "error": "this API is restricted: it needs the admin-key header"})  # fmt: skip
    status, _, body = send(door.http, "POST", "/v2/repository/index", ADMIN)
    assert status == 200 and NAMES.ensemble in body.decode()  # the wall opens for the key
    # Model control (CVE-2025-23316) even with the key: the repository is fixed at start.
    status, _, body = send(door.http, "POST", "/v2/repository/models/x/load", ADMIN)
    assert status >= 400 and b"explicit model load / unload is not allowed" in body


def test_alternate_grpc_methods_are_refused(door):
    index, answer = pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse
    refused = {
        f"/{SERVICE}//RepositoryIndex": "INVALID_ARGUMENT",
        f"/{SERVICE}/./RepositoryIndex": "INVALID_ARGUMENT",
        f"/{SERVICE}/Repository%49ndex": "INVALID_ARGUMENT",
        f"/{SERVICE}/ModelInfer/../RepositoryIndex": "INVALID_ARGUMENT",
        f"/{SERVICE}/RepositoryIndex?x=1": "INVALID_ARGUMENT",
        f"/{SERVICE}/RepositoryIndex/": "UNIMPLEMENTED",
        f"/{SERVICE.lower()}/repositoryindex": "UNIMPLEMENTED",
        f"/{SERVICE}/repositoryIndex": "UNIMPLEMENTED",
        f"/{SERVICE}/ModelStreamInfer": "UNIMPLEMENTED",
    }
    for method, code in refused.items():
        answered = call(
            door.grpc, method, index, answer, GRPC_ADMIN + tuple(bearer("carol").items())
        )
        assert answered.split(":")[0] == code, (method, answered)
    restricted = f"/{SERVICE}/RepositoryIndex"
    assert call(door.grpc, restricted, index, answer, tuple(bearer("carol").items())) == (
        "PERMISSION_DENIED: this method is restricted: it needs the "
        "triton-grpc-protocol-admin-key header"
    )
    assert call(door.grpc, restricted, index, answer, GRPC_ADMIN) == "OK"
    load = pb.RepositoryModelLoadRequest(model_name="../../x")
    assert "explicit model load / unload is not allowed" in call(
        door.grpc, f"/{SERVICE}/RepositoryModelLoad", load, pb.RepositoryModelLoadResponse,
        GRPC_ADMIN)  # fmt: skip


def test_registering_shared_memory_is_refused_even_with_the_admin_key(door):
    """CVE-2025-23320/23334's second step: the leaked region registered as a client's."""
    key = "/triton_python_backend_shm_region_0"
    register = pb.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=64)
    headers = GRPC_ADMIN + tuple(bearer("carol").items())
    for kind in ("SystemSharedMemoryRegister", "CudaSharedMemoryRegister"):
        assert call(door.grpc, f"/{SERVICE}/{kind}", register,
                    pb.SystemSharedMemoryRegisterResponse, headers) == (
            "PERMISSION_DENIED: the shared-memory methods are not served through this "
            "proxy")  # fmt: skip
    body = json.dumps({"key": key, "offset": 0, "byte_size": 64}).encode()
    status, _, answer = send(door.http, "POST", "/v2/systemsharedmemory/region/r/register",
                             {**ADMIN, **bearer("carol"), "Content-Type": "application/json"},
                             body)  # fmt: skip
    assert (status, json.loads(answer)) == (403, {
        "error": "the shared-memory APIs are not served through this proxy"})  # fmt: skip


def test_traversal_in_a_model_name_or_version_is_refused(door):
    """CVE-2026-24208/24209: traversal to a crash, over both protocols."""
    for path in ("/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
                 "/v2/models/resnet_ensemble/versions/..%2F1/infer",
                 "/v2/models/resnet_ensemble/versions/../../../x/infer",
                 "/v2/models/.hidden/config", "/v2/models/a%2F..%2F..%2Fb/ready"):  # fmt: skip
        status, _, body = send(door.http, "POST", path, bearer("carol"))
        assert status in (400, 404) and set(json.loads(body)) == {"error"}, (path, status)
    metadata = tuple(bearer("carol").items())
    for name, version in (("../../etc/passwd", ""), (NAMES.ensemble, "../1"), ("%2e%2e/x", "1")):
        request = pb.ModelMetadataRequest(name=name, version=version)
        answered = call(door.grpc, f"/{SERVICE}/ModelMetadata", request,
                        pb.ModelMetadataResponse, metadata)  # fmt: skip
        assert answered.split(":")[0] in ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE"), answered
    assert_ready(door)


def oversized_request() -> tuple[bytes, int]:
    image = httpclient.InferInput(NAMES.image, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[b"\xff" * OVERSIZED]], dtype=np.object_))
    return httpclient.InferenceServerClient.generate_request_body([image])


def test_errors_never_name_the_python_backends_shared_memory_region(door):
    """CVE-2025-23319's first step, replayed: an input that overflows /dev/shm makes the
    Python backend name its region; what the client receives has the name cut out."""
    body, header_length = oversized_request()
    headers = {**bearer("carol"), "Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(header_length)}  # fmt: skip
    status, _, answer = send(door.http, "POST", f"/v2/models/{NAMES.ensemble}/infer", headers, body)
    assert status == 500 and b"Failed to increase the shared memory pool size" in answer
    assert b"<internal shared-memory region>" in answer and not REGION.search(answer)

    client = grpcclient.InferenceServerClient(door.grpc)
    image = grpcclient.InferInput(NAMES.image, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[b"\xff" * OVERSIZED]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        client.infer(NAMES.ensemble, [image], headers=bearer("carol"))
    client.close()
    message = info.value.message().encode()
    assert b"Failed to increase the shared memory pool size" in message
    assert b"<internal shared-memory region> (rest withheld)" in message
    assert not REGION.search(message)
    assert_ready(door)


def test_a_form_body_that_crashes_2_51_reaches_it_as_binary(door):
    """Found replaying the vectors: 2.51 dies (SIGSEGV) on a 10 MB inference body sent as
    application/x-www-form-urlencoded, the default of curl -d and urllib. The fence
    passes it on as application/octet-stream, which Triton answers."""
    image = httpclient.InferInput(NAMES.image, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[b"\xff" * 10_000_000]], dtype=np.object_))
    body, header_length = httpclient.InferenceServerClient.generate_request_body([image])
    url = f"/v2/models/{NAMES.ensemble}/infer"
    form = {**bearer("carol"), "Content-Type": "application/x-www-form-urlencoded",
            "Inference-Header-Content-Length": str(header_length)}  # fmt: skip
    status, _, answer = send(door.http, "POST", url, form, body)
    assert status == 400 and b"image payload of 10,000,000 bytes exceeds the limit" in answer
    other = {**form, "Content-Type": "multipart/form-data; boundary=x"}
    status, _, answer = send(door.http, "POST", url, other, body)
    assert status == 415 and b"unsupported Content-Type" in answer
    assert_ready(door)


def test_a_chunked_flood_does_not_reach_triton(door):
    """CVE-2025-23310/23311: 30 MB of one-byte chunks, read whole by nginx first."""
    answer = chunked_post(door.http, 30_000_000, f"Authorization: Bearer {KEYS['carol']}\r\n")
    assert answer.startswith(b"HTTP/1.1 ") and b"failed to parse the request JSON" in answer
    assert_ready(door)


def test_inference_needs_a_known_key(door, demo_run):
    path = f"/v2/models/{NAMES.ensemble}"
    status, headers, body = send(door.http, "GET", path)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(body)["error"].startswith("no API key:")
    status, _, body = send(door.http, "GET", path, {"authorization": "Bearer " + "x" * 20})
    assert (status, json.loads(body)) == (403, {"error": "unknown API key"})
    upper = {"authorization": f"Bearer {KEYS['carol'].upper()}"}  # keys are case-sensitive
    assert send(door.http, "GET", path, upper)[0] == 403
    assert send(door.http, "GET", "/v2/health/live")[0] == 200  # liveness stays open
    ready = pb.ServerReadyRequest(), pb.ServerReadyResponse
    assert call(door.grpc, f"/{SERVICE}/ServerReady", *ready).startswith(
        "UNAUTHENTICATED: no API key"
    )
    assert call(door.grpc, f"/{SERVICE}/ServerReady", *ready,
                (("authorization", "Bearer " + "x" * 20),)) == (
        "PERMISSION_DENIED: unknown API key")  # fmt: skip

    paths = sorted(demo_run.val.glob("*/*.png"))[:8]
    labels = [int(p.parent.name) for p in paths]
    for protocol, url in (("grpc", door.grpc), ("http", f"localhost:{door.http}")):
        with Classifier(url, protocol, api_key=KEYS["bob"]) as classifier:
            results = classifier.classify(paths)
        assert [r.error for r in results if not r.ok] == []
        assert len(results) == len(labels)
    # The CLI, with the key from the environment (kept out of the process list).
    cli = subprocess.run(
        [sys.executable, "-m", "resnet_triton", "classify", "--url", door.grpc, *map(str, paths)],
        capture_output=True, text=True, timeout=120,
        env={"RESNET_TRITON_API_KEY": KEYS["bob"], "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "resnet_triton", "classify", "--url", door.grpc,
         "--api-key", "y" * 20, str(paths[0])],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert refused.returncode == 1 and "y" * 20 not in refused.stdout + refused.stderr
    assert "refused" in (refused.stdout + refused.stderr).lower()
    # Whose key each request carried, in the door's access log.
    assert re.search(r'"POST /inference\.GRPCInferenceService/ModelInfer HTTP/2\.0" 200 .*key=bob',
                     door.logs())  # fmt: skip
    assert re.search(
        r'"POST /v2/models/resnet_ensemble/infer HTTP/1\.1" 200 .*key=bob', door.logs()
    )


def flood(request, seconds: float) -> list:
    """`request()` again and again from 8 threads for `seconds`: the bucket stays empty
    however slow one request is (one after another through the balancer on a busy
    machine, they were once too slow to outrun its refill of 10 a second)."""
    deadline = time.monotonic() + seconds

    def repeat() -> list:
        return [request() for _ in iter(lambda: time.monotonic() < deadline, False)]

    with ThreadPoolExecutor(8) as pool:
        return [answer for answers in pool.map(lambda _: repeat(), range(8)) for answer in answers]


def test_a_flooded_key_is_limited_and_another_is_still_served(door, demo_run):
    images = sorted(demo_run.val.glob("*/*.png"))[:8]
    url = f"localhost:{door.http}"
    path = f"/v2/models/{NAMES.ensemble}/ready"
    with (
        Classifier(url, "http", api_key=KEYS["alice"], retries=5, backoff_s=0.2) as client,
        ThreadPoolExecutor(1) as background,
    ):
        flooded = background.submit(flood, lambda: send(door.http, "GET", path, bearer("alice")), 2)
        time.sleep(0.5)  # the bucket is empty: the library, throttled, backs off
        # (Retry-After) within its retries and is answered once the flood ends
        results = client.classify(images)
        answers = flooded.result()
    statuses = [status for status, _, _ in answers]
    assert 200 in statuses and statuses.count(429) >= BURST // 2, statuses
    _, headers, body = next(answer for answer in answers if answer[0] == 429)
    assert (headers["Retry-After"], json.loads(body)) == ("1", {
        "error": "rate limit exceeded for this client: retry after 1 s"})  # fmt: skip
    assert send(door.http, "GET", path, bearer("bob"))[0] == 200  # a bucket of its own
    assert [r.error for r in results if not r.ok] == []
    infers = re.findall(r'"POST /v2/models/resnet_ensemble/infer HTTP/1\.1" (\d+) .*key=alice',
                        door.logs())  # fmt: skip
    assert infers[0] == "429" and infers[-1] == "200", infers

    ready = pb.ModelReadyRequest(name=NAMES.ensemble), pb.ModelReadyResponse
    metadata = tuple(bearer("alice").items())
    answers = flood(lambda: call(door.grpc, f"/{SERVICE}/ModelReady", *ready, metadata), 1)
    assert "RESOURCE_EXHAUSTED: rate limit exceeded for this client: retry after 1 s" in answers
    assert call(door.grpc, f"/{SERVICE}/ModelReady", *ready, tuple(bearer("bob").items())) == "OK"


def test_publishing_beyond_loopback_without_keys_is_refused_at_start(cpu_image):
    """TRITON_BIND_ADDRESS=0.0.0.0 and no keys file: the container stops at start, with
    the reason (nothing is published here: the refusal comes before any listener)."""
    name = f"resnet-triton-test-exposed-{time.monotonic_ns()}"
    result = run(["docker", "run", "--rm", f"--name={name}", "--read-only", "--tmpfs=/tmp",
                  f"--env=TRITON_ADMIN_KEY={ADMIN_KEY}", "--env=TRITON_BIND_ADDRESS=0.0.0.0",
                  cpu_image], timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert ("error: TRITON_BIND_ADDRESS=0.0.0.0 publishes the server beyond this machine, and "
            "RESNET_TRITON_API_KEYS_FILE names no inference keys") in result.stderr  # fmt: skip
