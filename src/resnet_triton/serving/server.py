"""Run the real Triton server from the nvidia-pytriton wheel, without Docker.

The wheel ships `tritonserver` 2.51.0 (NGC 24.10) with the Python backend and
the ensemble scheduler. Triton expects a backend folder per backend holding
the backend library and its stub, so one is assembled, once per virtual
environment, from the files the wheel spreads over several folders.

Given another binary (`binary=`, `serve --tritonserver`), such as the NGC
image's /opt/tritonserver/bin/tritonserver, the server runs with that
installation's own backends and libraries instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import importlib.util
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import tritonclient.http as httpclient

from resnet_triton.endpoints import (
    ADMIN_HEADER,
    GRPC_PORT,
    HTTP_PORT,
    LOOPBACK,
    METRICS_PORT,
    RESTRICTED_APIS,
)
from resnet_triton.errors import UserError
from resnet_triton.serving.model_configs import LAYOUT_PARAM
from resnet_triton.serving.plans import backend_flags
from resnet_triton.serving.repository import read_config, served_dir
from resnet_triton.spec import check_choice


class ServerError(UserError, RuntimeError):
    """The server could not start, or stopped being usable."""


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
        # Per-model latency quantiles (nv_inference_request_summary_us, p50/p90/p99 over
        # the last minute or so) for the dashboard in deploy/grafana/.
        "--metrics-config=summary_latencies=true",
    ]


@dataclass(frozen=True)
class Ports:
    http: int = HTTP_PORT
    grpc: int = GRPC_PORT
    metrics: int = METRICS_PORT

    def taken(self, address: str) -> list[str]:
        """'<endpoint> port <n>' for each port that something already listens on."""
        taken = []
        for endpoint, port in asdict(self).items():
            with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
                # A port in TIME_WAIT is free to a server (which sets SO_REUSEADDR too);
                # a listening socket is not.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((address, port))
                except OSError:
                    taken.append(f"{endpoint} port {port}")
        return taken

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
    # Found, not imported: the serving image installs the wheel for its binaries only,
    # without the dependencies of pytriton's own Python code.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServerError("nvidia-pytriton is not installed; run `make setup`")
    return Path(spec.origin).parent


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


# The memory allocator tritonserver and every stub it starts (they inherit its
# environment) run with: glibc's malloc, or jemalloc (Debian's libjemalloc2) preloaded.
# `perf/soak.py --allocator` compares them (deploy/README.md, "Soak").
ALLOCATORS = {"glibc": None, "jemalloc": "libjemalloc.so.2"}


def allocator_environment(
    allocator: str, environment: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """What `environment` (the server's, before) needs to run with `allocator`: the
    library added after any LD_PRELOAD already there (a profiler's, a sanitizer's)."""
    check_choice("allocator", allocator, tuple(ALLOCATORS))
    library = ALLOCATORS[allocator]
    if library is None:
        return {}
    if ctypes.util.find_library(allocator) is None:
        raise ServerError(f"{allocator} is not installed: apt-get install libjemalloc2")
    # ld.so splits LD_PRELOAD at spaces and colons.
    preloaded = environment.get("LD_PRELOAD", "").replace(":", " ").split()
    if library not in preloaded:
        preloaded.append(library)
    return {"LD_PRELOAD": " ".join(preloaded)}


def ensemble_names(repository: Path) -> list[str]:
    """The models clients send images to (ensembles, or the model of serving.layout fused
    under the ensemble's name): what `serve` waits for and its supervisor probes."""
    return sorted(
        path.parent.name
        for path in repository.glob("*/config.pbtxt")
        if _takes_images(read_config(path))
    )


def _takes_images(config) -> bool:
    """An ensemble, or a model whose config says it is the fused layout's."""
    layout = config.parameters.get(LAYOUT_PARAM)
    return config.platform == "ensemble" or (layout is not None and layout.string_value == "fused")


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
        address: str = LOOPBACK,
        binary: Path | None = None,
        allocator: str = "glibc",
        extra_environment: Mapping[str, str] | None = None,
    ):
        self.repository = Path(repository).resolve()
        self.extra_environment = dict(extra_environment or {})  # e.g. capture's (capture.py)
        self.allocator = allocator
        self.binary = binary  # None: the nvidia-pytriton wheel's tritonserver
        self.ports = ports
        self.address = address
        self.log_path = log_path
        self.exit_timeout_s = exit_timeout_s
        self.admin_key = admin_key or secrets.token_urlsafe(16)
        # Unique shared-memory names, so a killed run's leftovers are ours to remove
        # and never collide with another server on the machine.
        # docker/nginx/ scrubs region names of this shape from errors (SECURITY.md).
        self.shm_prefix = f"resnet_triton_{uuid.uuid4().hex[:8]}_"
        # Triton reports this in its server metadata: readiness counts only from our
        # own process, never from another server that answers on the same port.
        self.server_id = f"resnet-triton-{uuid.uuid4().hex[:12]}"
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        """Where a client on this machine reaches the server."""
        return LOOPBACK if self.address in ("0.0.0.0", "::") else self.address

    @property
    def command(self) -> list[str]:
        if self.binary is None:
            binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
            backends = [f"--backend-directory={backend_directory()}"]
        else:
            binary, backends = self.binary, []  # the installation's own backends folder
        return [
            str(binary),
            f"--model-repository={self.repository}",
            *backends,
            f"--id={self.server_id}",
            f"--http-address={self.address}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.ports.metrics}",
            *policy_flags(self.admin_key),
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *backend_flags(self.repository),
        ]

    def environment(self) -> dict[str, str]:
        environment = server_environment() if self.binary is None else dict(os.environ)
        return {
            **environment, **allocator_environment(self.allocator, environment),
            **self.extra_environment,
        }  # fmt: skip

    def start(self) -> TritonServer:
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        if self.binary is not None and not os.access(self.binary, os.X_OK):
            raise ServerError(f"--tritonserver {self.binary} is not an executable file")
        dali_models = sorted(self.repository.glob("*/*/model.dali"))
        if self.binary is None and dali_models:
            raise ServerError(
                f"{dali_models[0]} needs Triton's DALI backend, which the nvidia-pytriton "
                "wheel's tritonserver does not have: serve it from the NGC image "
                "(docker-compose.gpu.yml, or --tritonserver with its binary), or render the "
                "repository with serving.preprocess_backend: python"
            )
        torchscript = sorted(self.repository.glob("*/*/model.pt"))
        if self.binary is None and torchscript:
            raise ServerError(
                f"{torchscript[0]} needs Triton's PyTorch backend, which the nvidia-pytriton "
                "wheel's tritonserver does not have: serve it with a Triton that has it (the NGC "
                "image, or --tritonserver with its binary), or build --target cpu"
            )
        taken = self.ports.taken(self.address)
        if taken:
            raise ServerError(
                f"{', '.join(taken)} on {self.address} already in use (another server?); "
                "stop it or choose other ports"
            )
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
        client = httpclient.InferenceServerClient(f"{self.host}:{self.ports.http}")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(
                        f"tritonserver exited with code {self.process.returncode} while loading "
                        f"{self.repository}:\n{self.log_tail()}"
                    )
                try:
                    if self._answering(client) and all(client.is_model_ready(m) for m in models):
                        return
                except Exception:  # connection refused until the HTTP endpoint is up
                    pass
                time.sleep(0.5)
        finally:
            client.close()  # an open connection would hold up Triton's shutdown
        raise ServerError(f"models {models} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def _answering(self, client: httpclient.InferenceServerClient) -> bool:
        """Whether the server on our port is this one (another may hold the port)."""
        return client.get_server_metadata()["name"] == self.server_id

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
        if self.process:
            # A Python stub outlives a server that crashed while unloading; the server's
            # process group (its own session, so its id) holds only what it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        for region in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
            os.unlink(region)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
            model = served_dir(repository, path.parent.name) / onnx_file.string_value
            if not model.is_file():
                raise ServerError(
                    f"{model} does not exist; publish a model first "
                    "(`make demo`, or `resnet-triton build --checkpoint ...`)"
                )
    ensembles = ensemble_names(repository)
    if not ensembles:
        raise ServerError(
            f"{repository} holds no ensemble model (a fused model rendered before its config "
            "named its layout counts as none: render it again with resnet-triton render)"
        )
    return ensembles
