"""Shared fixtures: real images from installed packages, a small trained model,
the real Triton server on free ports, the demo's published repository, and a
Docker engine with the CPU serving image."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import skimage
import sklearn
import tritonclient.grpc as grpcclient
from onnx import numpy_helper
from playwright.sync_api import sync_playwright

from resnet_triton import demo
from resnet_triton.build import command as build
from resnet_triton.build.export import spec_from_onnx
from resnet_triton.data import package_photos
from resnet_triton.digits import write_digits
from resnet_triton.pipeline.store import keep_version
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import DEFAULT_ENV_PATH, env_path_for, render
from resnet_triton.serving.server import Ports, TritonServer
from resnet_triton.spec import Names
from resnet_triton.training import TrainConfig
from resnet_triton.training import run as train
from resnet_triton.training.calibrate import calibrate

ROOT = Path(__file__).parent.parent
NAMES = Names()
ADMIN_KEY = "test-admin-key-0123456789"  # the fence takes 16 characters or more
# Real photographs of several sizes, colour modes and formats.
PHOTOS = package_photos()
SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"

# The integration model: the digits at a small input size, so that training
# takes seconds; serving code reads every size from the spec.
SMALL = {"resize_size": 72, "crop_size": 64}


@pytest.fixture(scope="session", autouse=True)
def session_tmpdir(tmp_path_factory):
    """TMPDIR for the session and every process it starts (torchrun's logs, rollout's
    locks, Chromium's profiles), inside pytest's base folder, which a green run removes
    (pyproject.toml: tmp_path_retention_policy): nothing is left in /tmp."""
    folder = str(tmp_path_factory.mktemp("tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", folder)
        patch.setattr(tempfile, "tempdir", folder)
        yield


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


# The first of each class's digits, for what a run does rather than how well it learns.
FEW_TRAIN, FEW_VAL = 13, 4  # a class's training and validation images


@pytest.fixture(scope="session")
def few_digits(digits, tmp_path_factory) -> Path:
    """The first 13 training and 4 validation digits of each class (130 and 40 images:
    one tenth of the digits, as fast to train on)."""
    root = tmp_path_factory.mktemp("few-digits")
    for split, count in (("train", FEW_TRAIN), ("val", FEW_VAL)):
        for folder in sorted((digits / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


@pytest.fixture(scope="session")
def checkpoint(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    config = TrainConfig(
        data=str(digits),
        out=str(out),
        arch="resnet18",
        weights="none",
        epochs=3,
        lr=3e-3,
        hflip=False,
        workers=0,
        **SMALL,
    )
    train(config)
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def int8_repository(checkpoint, digits, tmp_path_factory) -> Path:
    """The session checkpoint built, gated and published as INT8 for the CPU (once: the
    INT8 serving tests share it; a test that changes it works on a copy)."""
    root = tmp_path_factory.mktemp("int8")
    options = build.BuildOptions(
        checkpoint, root / "repo", root / "work", precision="int8", target="cpu",
        images=digits / "val",
    )  # fmt: skip
    build.run(options)
    return root / "repo"


@pytest.fixture(scope="session")
def repository(checkpoint, digits, tmp_path_factory) -> Path:
    """A published model repository (export, accuracy gate, render)."""
    root = tmp_path_factory.mktemp("published")
    options = build.BuildOptions(
        checkpoint, root / "model_repository", root / "build", target="cpu", images=digits / "val"
    )
    build.run(options)
    return root / "model_repository"


def rerendered(repository: Path, root: Path, serving) -> Path:
    """A copy of a published repository under `root`, rendered again with `serving`."""
    repo = root / "model_repository"
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (model,) = repo.glob(f"{NAMES.classifier}/*/model.onnx")
    render(spec_from_onnx(model), repo, env_path_for(repo), serving=serving)
    return repo


@contextlib.contextmanager
def served(repo: Path, root: Path, environment: dict[str, str] | None = None):
    """The real Triton server on `repo`, ready to classify, stopped on leaving; with
    `environment` added to its own (capture's, say)."""
    server = TritonServer(repo, Ports.free(), log_path=root / "triton.log", exit_timeout_s=3,
                          extra_environment=environment)  # fmt: skip
    server.start()
    try:
        server.wait_ready([NAMES.ensemble], timeout=180)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    # A short exit timeout: Triton would wait 30 s for the tests' idle connections.
    server = TritonServer(
        repository, Ports.free(), log_path=log, exit_timeout_s=3, admin_key=ADMIN_KEY
    ).start()
    try:
        server.wait_ready([NAMES.ensemble], timeout=180)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, repository):
    """A model store (pipeline/store.py) whose repository "cpu" keeps three versions of
    the session's model: 1 as published, 2 with a longer batching delay (a serving change
    rolls out like a model), 3 with its labels in the wrong order: it loads and answers,
    but wrongly. Their configs name the serving image's environment, as a store's do."""
    store = tmp_path_factory.mktemp("model-store")
    latest = store / "cpu"

    def keep(delay_us=0, mislabel=False) -> None:
        serving = ServingConfig(classifier_queue_delay_us=delay_us)
        shutil.rmtree(latest, ignore_errors=True)
        shutil.copytree(repository, latest, ignore=shutil.ignore_patterns("__pycache__"))
        (model,) = latest.glob("classifier/1/model.onnx")
        render(spec_from_onnx(model), latest, DEFAULT_ENV_PATH, serving=serving)
        for labels in latest.glob("*/labels.txt") if mislabel else ():
            names = labels.read_text().splitlines()
            labels.write_text("\n".join(names[1:] + names[:1]) + "\n")
        keep_version(store, "cpu", {"delay_us": delay_us, "mislabelled": mislabel})

    keep()
    keep(delay_us=2000)
    keep(mislabel=True)
    return store


# Open-set rejection (tests/integration/test_open_set.py says what is seen): the test
# model calibrated on half its validation digits, and images of none of its classes.
OUTSIDE = sorted(
    [*(Path(skimage.__file__).parent / "data").glob("*.png"),
     *(Path(skimage.__file__).parent / "data").glob("*.jpg"),
     *(Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg")]
)  # fmt: skip


FRR = 0.05  # the false-rejection rate the open-set model is calibrated for


@pytest.fixture(scope="session")
def halves(digits, tmp_path_factory) -> tuple[Path, Path]:
    """(calibration, held-out): every other validation image of each class to one, the
    rest to the other; neither was trained on, and the calibration sees only the first."""
    root = tmp_path_factory.mktemp("val-halves")
    for folder in sorted((digits / "val").iterdir()):
        for i, image in enumerate(sorted(folder.iterdir())):
            target = root / ("calibration", "held-out")[i % 2] / folder.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target / image.name)
    return root / "calibration", root / "held-out"


@pytest.fixture(scope="session")
def calibrated(checkpoint, halves, tmp_path_factory):
    root = tmp_path_factory.mktemp("open-set")
    shutil.copy(checkpoint, root / "checkpoint.pt")
    report = calibrate(root / "checkpoint.pt", halves[0], FRR, OUTSIDE)
    return root / "checkpoint.pt", report


@pytest.fixture(scope="session")
def calibrated_server(calibrated, digits, tmp_path_factory):
    checkpoint, _ = calibrated
    root = tmp_path_factory.mktemp("open-set-repo")
    build.run(build.BuildOptions(checkpoint, root / "repo", root / "work", target="cpu",
                                 images=digits / "val"))  # fmt: skip
    server = TritonServer(root / "repo", Ports.free(), log_path=root / "triton.log",
                          exit_timeout_s=3, admin_key=ADMIN_KEY).start()  # fmt: skip
    try:
        server.wait_ready([NAMES.ensemble], timeout=180)
        yield server, root / "repo"
    finally:
        server.stop()


def restricted_api_statuses(http_port: int) -> list[int]:
    """HTTP status of the repository index (a restricted API) with no admin key, a wrong
    one, and the right one."""
    url = f"http://localhost:{http_port}/v2/repository/index"
    statuses = []
    for headers in ({}, {"admin-key": "wrong"}, {"admin-key": ADMIN_KEY}):
        request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
        try:
            statuses.append(urllib.request.urlopen(request).status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
    return statuses


def inference_metrics(metrics_port: int) -> dict[str, float]:
    """Triton's nv_inference_* series, e.g. 'nv_inference_count{model="classifier",
    version="1"}' -> value, as Prometheus scrapes them."""
    text = urllib.request.urlopen(f"http://localhost:{metrics_port}/metrics").read().decode()
    lines = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("nv_inference_"))
    return {series: float(value) for series, value in lines}


def infer_images(grpc_port: int, payloads: list[bytes]) -> None:
    """One gRPC request to the ensemble, `payloads` its batch; raises if it fails."""
    client = grpcclient.InferenceServerClient(f"localhost:{grpc_port}")
    try:
        image = grpcclient.InferInput(NAMES.image, [len(payloads), 1], "BYTES")
        image.set_data_from_numpy(np.array([[p] for p in payloads], dtype=np.object_))
        client.infer(NAMES.ensemble, [image])
    finally:
        client.close()


def series(metric: str, model: str, reason: str | None = None) -> str:
    """One model's series of `metric` (version 1), in Triton's label order."""
    labels = f'model="{model}",' + (f'reason="{reason}",' if reason else "") + 'version="1"'
    return f"{metric}{{{labels}}}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, chunks: bool = True) -> bytes:
    """A PNG that is its header only: an IHDR claiming `width` x `height` 8-bit RGB, then
    an empty IDAT and an IEND (57 bytes), or nothing more (33 bytes)."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    rest = _png_chunk(b"IDAT", b"") + _png_chunk(b"IEND", b"") if chunks else b""
    return b"\x89PNG\r\n\x1a\n" + ihdr + rest


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG that is its header only (37 bytes): a baseline SOF claiming `width` x
    `height` in 3 components, a scan header and the end, no scan data."""
    components = b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    sof = struct.pack(">HBHHB", 17, 8, height, width, 3) + components
    sos = struct.pack(">HB", 12, 3) + b"".join(bytes([i, 0]) for i in (1, 2, 3)) + bytes([0, 63, 0])
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xda" + sos + b"\xff\xd9"


# Headers a client can send to make a server allocate or decode far too much, and why
# each is refused: (payload, reason in REJECT_REASONS, what the error says). Above twice
# PIL.Image.MAX_IMAGE_PIXELS (about 179 Mpx) Pillow itself refuses them, with an
# exception class of its own (DecompressionBombError).
HOSTILE = {
    "png-100-mpx": (png_header(10_000, 10_000), "too_many_pixels", "exceeds the limit"),
    "png-4-gpx": (png_header(65_536, 65_536), "too_many_pixels", "claims too many pixels"),
    "jpeg-100-mpx": (jpeg_header(10_000, 10_000), "too_many_pixels", "exceeds the limit"),
    "jpeg-4-gpx": (jpeg_header(65_535, 65_535), "too_many_pixels", "claims too many pixels"),
    "png-ihdr-only": (png_header(64, 64, chunks=False), "not_an_image", "not a decodable"),
    "png-no-pixels": (png_header(64, 64), "corrupt", "corrupt PNG image"),
}


def snapshot(repo):
    return {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} if repo.exists() else {}


def damage(source, target, scale=0.3):
    """Perturb the largest convolution's weights: a silently broken conversion."""
    model = onnx.load(source)
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 4 else 0)
    array = numpy_helper.to_array(weights)
    noise = np.random.default_rng(0).normal(scale=scale * array.std(), size=array.shape)
    weights.CopyFrom(numpy_helper.from_array((array + noise).astype(array.dtype), weights.name))
    onnx.save_model(model, target)


@dataclass(frozen=True)
class Demo:
    report: dict
    output: str  # what the demo printed
    repository: Path
    val: Path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Demo:
    """The demo end to end (one epoch, at the tests' SMALL input size: 224 px took 4 of
    the suite's minutes to train): the published repository `make demo` leaves.

    A `.venv` beside the repository links this environment, so the configs carry
    the relative EXECUTION_ENV_PATH that the committed repository has: the same
    files serve here and in the container (where /workspace/.venv is the image's).
    """
    root = tmp_path_factory.mktemp("demo")
    (root / ".venv").symlink_to(sys.prefix)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = demo.run(root / "demo", root / "model_repository", epochs=1, **SMALL)
    return Demo(report, printed.getvalue(), root / "model_repository", root / "demo/digits/val")


# The docker tests: a real Docker engine, Compose v2 and the CPU serving image.


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)


class DockerPrebuild:
    """The Docker engine and the CPU serving image, started in the background as soon as
    the session knows it has docker tests, which pytest_collection_modifyitems puts last:
    on a clean machine (CI) the image is minutes of downloads, spent meanwhile instead of
    in the first docker test."""

    def __init__(self):
        os.environ["DOCKER_CONFIG"] = str(ROOT / ".docker")
        self.engine = Future()
        self.image = Future()
        threading.Thread(target=self._make, name="docker-prebuild", daemon=True).start()

    def _make(self) -> None:
        for future, step in ((self.engine, self._start), (self.image, self._build)):
            try:
                future.set_result(step())
            except BaseException as exc:  # said by the fixture that waits for it
                future.set_exception(exc)

    def _start(self) -> subprocess.CompletedProcess:
        return run(["docker/engine.sh", "start"], timeout=120)

    def _build(self) -> str:
        """The image's name, or an AssertionError naming the step that failed."""
        if self.engine.result().returncode != 0:
            return ""  # docker_engine says why
        for command in (["docker/base-image.sh"], ["docker", "compose", "build", "tritonserver"]):
            result = run(command, env={**os.environ, "TRITON_ADMIN_KEY": "unused"}, timeout=900)
            said = result.stdout[-2000:] + result.stderr[-3000:]
            assert result.returncode == 0, f"{command}: {said}"
        return "resnet-triton/tritonserver-cpu:latest"

    def stop(self) -> None:
        """Stop the engine if this session started it (by its pid, docker/engine.sh); a
        build still going fails with it."""
        with contextlib.suppress(Exception):  # one that did not start has nothing to stop
            if self.engine.result(timeout=150).stdout.startswith("started dockerd"):
                run(["docker/engine.sh", "stop"])


PREBUILD: list[DockerPrebuild] = []  # one a session, once it has docker tests


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config, items):
    """Docker tests last, their engine and image made meanwhile (DockerPrebuild)."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)  # stable
    if items and items[-1].get_closest_marker("docker") and not config.option.collectonly:
        PREBUILD.append(DockerPrebuild())


def pytest_sessionfinish(session):
    for prebuild in PREBUILD:
        prebuild.stop()


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker daemon, started for the session when none answers (and stopped when it
    ends); Compose v2 from this checkout's DOCKER_CONFIG (`make docker-tools`)."""
    if not (ROOT / ".docker" / "cli-plugins" / "docker-compose").exists():
        pytest.fail("Compose v2 is not in .docker/cli-plugins: run `make docker-tools`")
    if not PREBUILD:  # a docker test that collection did not see as one
        PREBUILD.append(DockerPrebuild())
    started = PREBUILD[0].engine.result()
    if started.returncode != 0:
        pytest.fail(f"no Docker engine: {started.stderr.strip()}")


@pytest.fixture(scope="session")
def cpu_image(docker_engine) -> str:
    """The CPU serving image, built by compose as `docker compose up --build` would: on
    the public Python base, or where it cannot be pulled on the local equivalent."""
    return PREBUILD[0].image.result()


def compose_leftovers() -> list[tuple[str, str]]:
    """(kind, compose project) of every container, network and volume compose made."""
    project = '--format={{.Label "com.docker.compose.project"}}'
    found = []
    for kind in (["ps", "--all"], ["network", "ls"], ["volume", "ls"]):
        names = run(["docker", *kind, "--filter=label=com.docker.compose.project", project])
        found += [(kind[0], name) for name in names.stdout.split()]
    return found


class ComposeProject:
    """`docker compose` in the repository root, as a user types it (docker-compose.yml
    and the machine's override, or `files`), under a project name of its own, on free
    ports."""

    def __init__(self, repository: Path, admin_key: str | None = ADMIN_KEY, ports=None,
                 files: tuple[str, ...] = ()):  # fmt: skip
        self.name = f"resnet-triton-test-{uuid.uuid4().hex[:8]}"
        self.files = [f"--file={ROOT / f}" for f in files]
        self.ports = ports or Ports.free()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"},
            "MODEL_REPOSITORY": str(repository),
            "HTTP_PORT": str(self.ports.http),
            "GRPC_PORT": str(self.ports.grpc),
            "METRICS_PORT": str(self.ports.metrics),
        }
        if admin_key:
            self.env["TRITON_ADMIN_KEY"] = admin_key

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run(["docker", "compose", f"--project-name={self.name}", *self.files, *args],
                   env=self.env, timeout=timeout)  # fmt: skip

    def up(self) -> subprocess.CompletedProcess:
        return self("up", "--detach", "--wait", "--wait-timeout=180", "tritonserver")

    def logs(self) -> str:
        return self("logs", "--no-color", "tritonserver").stdout

    def down(self) -> None:
        self("down", "--volumes", "--timeout=10")
        assert [found for found in compose_leftovers() if found[1] == self.name] == []


@pytest.fixture
def compose_project():
    """Make a ComposeProject(repository, ...); each is taken down after the test."""
    projects = []

    def make(*args, **kwargs) -> ComposeProject:
        projects.append(ComposeProject(*args, **kwargs))
        return projects[-1]

    yield make
    for project in projects:
        project.down()


# The web page's tests drive Debian's chromium through Playwright (no browser download).
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")  # sync Playwright's loop would outlive tests using asyncio
def browser():
    assert CHROMIUM.is_file(), "the browser tests drive Debian's chromium: make setup installs it"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


def up_replicas(compose_project, repository: Path, **env: str) -> ComposeProject:
    """deploy/docker/replicas.yml's two replicas and their balancer on `repository`, with
    `env` added to compose's, healthy (`docker compose up --wait`); taken down after the
    test."""
    project = compose_project(repository, files=("deploy/docker/replicas.yml",))
    project.env.update(env)
    started = project("up", "--detach", "--wait", "--wait-timeout=240")
    assert started.returncode == 0, started.stderr + project("logs").stdout[-3000:]
    return project


@contextlib.contextmanager
def start_ui(grpc_url: str, log: Path, *flags: str):
    """`resnet-triton ui` against Triton at grpc_url on a free port; yields the page's URL."""
    port = Ports.free().http
    command = [sys.executable, "-m", "resnet_triton", "ui", "--url", grpc_url,
               "--port", str(port), *flags]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running(command, log, f"{url}/api/model", "the page", timeout=60):
        yield url


@contextlib.contextmanager
def running(command: list[str], log: Path, ready_url: str, what: str, timeout: float):
    """`command` in the background, its output in `log`, until `ready_url` answers; it is
    stopped when the block ends."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(ready_url, process, log, what, timeout)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_http(url: str, process: subprocess.Popen, log: Path, what: str, timeout: float):
    """Until `url` answers; fails with the process's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {log.read_text()}") from None
            time.sleep(0.2)


def post_image(url: str, name: str, data: bytes) -> tuple[int, dict]:
    """The page's upload as a browser sends it (multipart/form-data): (status, JSON)."""
    boundary = "resnet-triton-test"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n")  # fmt: skip
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url + "/api/classify", data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
