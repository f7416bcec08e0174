"""Run the real Triton server from the nvidia-pytriton wheel, without Docker.

The wheel ships `tritonserver` 2.51.0 (NGC 24.10) with the Python backend and
the ensemble scheduler. Triton expects a backend folder per backend holding
the backend library and its stub, so one is assembled, once per virtual
environment, from the files the wheel spreads over several folders.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import tritonclient.http as httpclient

from resnet_triton.errors import UserError
from resnet_triton.repository import read_config


class ServerError(UserError, RuntimeError):
    """The server could not start, or stopped being usable."""


# Management APIs that change or expose server state need this header; inference,
# health, metadata, model config, statistics and metrics stay open.
RESTRICTED_APIS = "model-repository,shared-memory,logging"
ADMIN_HEADER = "admin-key"


def policy_flags(admin_key: str) -> list[str]:
    """The serving policy, the same for the local server and docker-compose.yml."""
    restricted = f"{RESTRICTED_APIS}:{ADMIN_HEADER}={admin_key}"
    return [
        "--model-control-mode=none",  # the repository is fixed at start: no loads over the API
        "--strict-readiness=true",  # ready only when every model is
        "--exit-on-error=true",  # a model that fails to load stops the server
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
        "--allow-metrics=true",
    ]


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> Ports:
        """Three ports nobody listens on now, for tests beside a running server."""
        sockets = [socket.socket() for _ in range(3)]
        try:
            for s in sockets:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServerError("nvidia-pytriton is not installed; run `make setup`") from None
    return Path(pytriton.__file__).parent


def backend_directory() -> Path:
    """<venv>/share/resnet-triton/backends, with python/ as Triton wants it."""
    wheel = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = [
        wheel / "backends" / "python" / "libtriton_python.so",
        wheel / "backends" / "python" / "triton_python_backend_utils.py",
        wheel / "python_backend_stubs" / version / "triton_python_backend_stub",
    ]
    root = Path(sys.prefix) / "share" / "resnet-triton" / "backends"
    python_dir = root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if not source.is_file():
            raise ServerError(f"{source} is missing from nvidia-pytriton (Python {version})")
        target = python_dir / source.name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
    return root


def server_environment() -> dict[str, str]:
    libdir = sysconfig.get_config_var("LIBDIR")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise ServerError(
            f"{sys.executable} was built without a shared libpython, which Triton's Python "
            "backend stub needs; use a Python built with --enable-shared"
        )
    paths = [str(_pytriton_dir().parent / "nvidia_pytriton.libs"), libdir]
    old = os.environ.get("LD_LIBRARY_PATH")
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(paths + ([old] if old else []))}


def ensemble_names(repository: Path) -> list[str]:
    return sorted(
        path.parent.name
        for path in repository.glob("*/config.pbtxt")
        if read_config(path).platform == "ensemble"
    )


def _die_with_parent() -> None:
    # If the Python process that started Triton is killed, Triton goes too.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """A tritonserver process; use as a context manager or start()/stop()."""

    def __init__(
        self,
        repository: Path,
        ports: Ports = Ports(),
        log_path: Path | None = None,
        exit_timeout_s: int = 30,
        admin_key: str | None = None,
    ):
        self.repository = Path(repository).resolve()
        self.ports = ports
        self.log_path = log_path
        self.exit_timeout_s = exit_timeout_s
        self.admin_key = admin_key or secrets.token_urlsafe(16)
        # Unique shared-memory names, so a killed run's leftovers are ours to remove
        # and never collide with another server on the machine.
        self.shm_prefix = f"resnet_triton_{uuid.uuid4().hex[:8]}_"
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        return [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            *policy_flags(self.admin_key),
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]

    def environment(self) -> dict[str, str]:
        return server_environment()

    def start(self) -> TritonServer:
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        with open(self.log_path, "wb") if self.log_path else contextlib.nullcontext() as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=True,  # our signal handler, not the terminal, stops it
                preexec_fn=_die_with_parent,
            )
        return self

    def wait_ready(self, models: list[str], timeout: float = 120.0) -> None:
        """Block until every model in `models` is ready; fail fast if Triton exits."""
        client = httpclient.InferenceServerClient(f"localhost:{self.ports.http}")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(
                        f"tritonserver exited with code {self.process.returncode} while loading "
                        f"{self.repository}:\n{self.log_tail()}"
                    )
                try:
                    if all(client.is_model_ready(m) for m in models):
                        return
                except Exception:  # connection refused until the HTTP endpoint is up
                    pass
                time.sleep(0.5)
        finally:
            client.close()  # an open connection would hold up Triton's shutdown
        raise ServerError(f"models {models} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return "(log went to the terminal)"
        text = Path(self.log_path).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`.

        On SIGTERM Triton stops taking requests and waits up to
        `exit_timeout_s` for in-flight requests and open HTTP connections.
        """
        code = None
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        elif self.process:
            code = self.process.returncode
        for region in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
            os.unlink(region)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def pinned_release(env_file: Path = Path(".env")) -> str:
    """The NGC release: $TRITON_RELEASE, else the pin in .env (docker compose reads both)."""
    if os.environ.get("TRITON_RELEASE"):
        return os.environ["TRITON_RELEASE"]
    lines = env_file.read_text().splitlines() if env_file.is_file() else []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "TRITON_RELEASE":
            return value.strip()
    raise ServerError(f"TRITON_RELEASE is neither set nor pinned in {env_file}")


class ContainerTritonServer(TritonServer):
    """The same server and serving policy in the pinned Triton image, on a GPU host.

    The image is docker-compose.yml's `tritonserver` (`docker compose build
    tritonserver`), which holds the Python-backend environment at
    /workspace/.venv; the repository is mounted read-only where the rendered
    EXECUTION_ENV_PATH expects it. CI's engine workflow smoke-tests with it.
    """

    MOUNT = "/workspace/model_repository"

    def __init__(self, *args, image: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.image = image or f"resnet-triton/tritonserver:{pinned_release()}"
        self.container = f"resnet-triton-{uuid.uuid4().hex[:8]}"

    @property
    def command(self) -> list[str]:
        published = [
            f"--publish=127.0.0.1:{host}:{inside}"
            for host, inside in ((self.ports.http, 8000), (self.ports.grpc, 8001),
                                 (self.ports.metrics, 8002))
        ]  # fmt: skip
        return [
            "docker", "run", "--rm", f"--name={self.container}", "--gpus=all", "--shm-size=1g",
            *published, f"--volume={self.repository}:{self.MOUNT}:ro", self.image,
            "tritonserver", f"--model-repository={self.MOUNT}", *policy_flags(self.admin_key),
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> ContainerTritonServer:
        if shutil.which("docker") is None:
            raise ServerError("the Triton container needs the docker command, not found here")
        return super().start()

    def stop(self, timeout: float = 60.0) -> int | None:
        code = super().stop(timeout)
        # The docker client may go before its container does.
        subprocess.run(["docker", "rm", "--force", self.container], capture_output=True)
        return code


def preflight(repository: Path) -> list[str]:
    """Catch what would make Triton fail to load, naming the file and field.

    Returns the ensemble names to wait for.
    """
    if not repository.is_dir():
        raise ServerError(f"model repository {repository} does not exist")
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = read_config(path)
        env = config.parameters.get("EXECUTION_ENV_PATH")
        if env is not None:
            resolved = Path(env.string_value.replace("$$TRITON_MODEL_DIRECTORY", str(path.parent)))
            if not (resolved / "bin" / "python").exists():
                raise ServerError(
                    f"{path}: parameter EXECUTION_ENV_PATH resolves to {resolved.resolve()}, "
                    "which is not a virtual environment; render with --env-path <venv>"
                )
        onnx_file = config.parameters.get("onnx_file")
        if onnx_file is not None:
            model = path.parent / "1" / onnx_file.string_value
            if not model.is_file():
                raise ServerError(
                    f"{model} does not exist; publish a model first "
                    "(`make demo`, or `resnet-triton build --checkpoint ...`)"
                )
    ensembles = ensemble_names(repository)
    if not ensembles:
        raise ServerError(f"{repository} holds no ensemble model")
    return ensembles
