"""`resnet-triton serve`: the local Triton server, supervised.

Starts tritonserver on the repository, waits until every ensemble is ready,
then watches it until Ctrl-C or SIGTERM, which stop it cleanly (Triton
finishes in-flight requests first).

Supervision. Triton 2.51 does not restart a Python-backend stub that dies,
and may keep reporting the model ready while every request to it fails. The
supervisor therefore watches three things, every second: the tritonserver
process, each Python-backend stub process (found under tritonserver at
start), and the readiness of every model; and every `--probe-interval`
seconds it classifies the shipped warmup photo through each ensemble
(resnet_triton.serving.probe). On any failure it stops the server and exits 1 with
a message naming the model. It does not restart the server itself: the
process manager that runs it (systemd `Restart=on-failure`, Docker
`restart: unless-stopped`, Kubernetes) restarts, counts and alerts, which a
quiet restart loop inside would hide.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

import tritonclient.http as httpclient

from resnet_triton.endpoints import ADMIN_HEADER, LOOPBACK, RESTRICTED_APIS
from resnet_triton.serving import capture
from resnet_triton.serving.fence import check_unfenced
from resnet_triton.serving.probe import probe
from resnet_triton.serving.repository import read_config
from resnet_triton.serving.resources import check_shm
from resnet_triton.serving.server import (
    ALLOCATORS,
    Ports,
    ServerError,
    TritonServer,
    ensemble_names,
    preflight,
)
from resnet_triton.spec import CAPTURE_INPUT

STUB = "triton_python_backend_stub"


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and
    parentheses): state, ppid, ..., utime and stime at 11 and 12."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def python_stubs(server_pid: int) -> dict[int, str]:
    """pid -> model name of every Python-backend stub under the server process."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(proc_stat(int(entry.name))[1])
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if ppid == server_pid and args and args[0].decode(errors="replace").endswith(STUB):
            model_py = Path(args[1].decode())  # <repo>/<model>/<version>/model.py
            stubs[int(entry.name)] = model_py.parent.parent.name
    return stubs


def _alive(pid: int) -> bool:
    try:
        state = proc_stat(pid)[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by Triton


# What `serve` alone has of the fence (SECURITY.md), said in its banner: Triton's own
# admin-key check on the restricted APIs. The rest is nginx's, in the CPU image.
BARE_SERVER = (
    "fence: Triton's own admin-key check only; the CPU container's nginx adds the rest "
    "(SECURITY.md): canonical paths only, the admin key checked at nginx, shared memory "
    "closed, inference keys, rate limits, internal names scrubbed from errors, bodies "
    "read whole before Triton (chunked floods)"
)


class Supervisor:
    def __init__(self, server: TritonServer, probe_interval_s: float = 10.0):
        self.server = server
        self.probe_interval_s = probe_interval_s
        self.models = sorted(p.parent.name for p in server.repository.glob("*/config.pbtxt"))
        self.ensembles = ensemble_names(server.repository)
        self.stubs = python_stubs(server.process.pid)
        self.client = httpclient.InferenceServerClient(f"{server.host}:{server.ports.http}")
        self.last_probe = time.monotonic()

    def check(self) -> str | None:
        """None while everything is healthy, else what went wrong."""
        process = self.server.process
        if process.poll() is not None:
            return f"tritonserver exited with code {process.returncode}"
        for pid, model in self.stubs.items():
            if not _alive(pid):
                return (
                    f"the Python-backend stub of model '{model}' (pid {pid}) died; Triton does "
                    f"not restart it, so '{model}' can no longer answer"
                )
        try:
            not_ready = [m for m in self.models if not self.client.is_model_ready(m)]
        except Exception as exc:  # noqa: BLE001 - any failure to ask is a failure
            return f"readiness check failed: {exc}"
        if not_ready:
            return f"model(s) {not_ready} are no longer ready"
        if time.monotonic() - self.last_probe >= self.probe_interval_s:
            self.last_probe = time.monotonic()
            for ensemble in self.ensembles:
                try:
                    probe(f"{self.server.host}:{self.server.ports.http}", ensemble)
                except RuntimeError as exc:
                    return f"probe of '{ensemble}' failed: {exc}"
        return None

    def close(self) -> None:
        self.client.close()


def capturing_models(repository: Path) -> list[str]:
    """The models of `repository` that can capture live traffic (model_configs.captures)."""
    return sorted(
        path.parent.name for path in repository.glob("*/config.pbtxt")
        if CAPTURE_INPUT in read_config(path).parameters
    )  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--address",
        default=LOOPBACK,
        help="address the HTTP, gRPC and metrics endpoints bind to (default: %(default)s, this "
        "machine only; 0.0.0.0 exposes them). Triton 2.51 lacks the fixes for "
        "CVE-2025-23310/23311 and later: expose it only behind a proxy that bounds request "
        "bodies, as the CPU container does",
    )
    parser.add_argument(
        "--tritonserver",
        type=Path,
        help="the tritonserver binary to run, with its installation's backends (e.g. "
        "/opt/tritonserver/bin/tritonserver in NVIDIA's image; default: the nvidia-pytriton "
        "wheel's 2.51, CPU only)",
    )
    parser.add_argument("--http-port", type=int, default=Ports.http)
    parser.add_argument("--grpc-port", type=int, default=Ports.grpc)
    parser.add_argument("--metrics-port", type=int, default=Ports.metrics)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for ready")
    parser.add_argument(
        "--allocator", choices=sorted(ALLOCATORS), default="glibc",
        help="malloc of tritonserver and its stubs (jemalloc holds memory flatter: "
        "deploy/README.md, Soak; the CPU image runs it)",
    )  # fmt: skip
    parser.add_argument(
        "--probe-interval", type=float, default=10.0, help="seconds between inference probes"
    )
    parser.add_argument(
        "--capture", type=Path, metavar="DIR",
        help="keep a bounded sample of live traffic in DIR (every unknown answer and a share "
        f"of the rest: serving/capture.py); default: ${capture.DIR_ENV}, else off",
    )  # fmt: skip
    parser.add_argument("--capture-share", type=float, help="of the answers not unknown (0.01)")
    parser.add_argument("--capture-max-mb", type=float, help="the capture folder's cap (1024)")
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("TRITON_ADMIN_KEY"),
        help=f"value of the {ADMIN_HEADER} header that the restricted APIs ({RESTRICTED_APIS}) "
        "need (default: $TRITON_ADMIN_KEY, else a random key printed at start)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    fenced = os.environ.get("RESNET_TRITON_FENCE") == "nginx"  # the CPU image's serve-cpu
    if not fenced:
        check_unfenced(dict(os.environ), args.address)
    ensembles = preflight(args.repository)
    check_shm(args.repository)
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    capturing = capture.environment(args.capture, args.capture_share, args.capture_max_mb)
    settings = capture.from_environment({**os.environ, **capturing})  # fails here, not in a stub
    if settings.directory is not None and not capturing_models(args.repository):
        raise ServerError(
            f"capture is on ({settings.directory}) but no model of {args.repository} captures: "
            "render it with serving.capture: true (the ensemble then passes the classifier "
            "the encoded images) or serving.layout: fused, on the cpu target "
            "(serving/capture.py); or switch capture off"
        )
    server = TritonServer(
        args.repository, ports, admin_key=args.admin_key, address=args.address,
        binary=args.tritonserver, allocator=args.allocator, extra_environment=capturing,
    )  # fmt: skip
    server.start()
    failure = None
    try:
        server.wait_ready(ensembles, args.timeout)
        supervisor = Supervisor(server, args.probe_interval)
        at = args.address
        print(
            f"ready: {', '.join(ensembles)} on HTTP {at}:{ports.http}, "
            f"gRPC {at}:{ports.grpc}, metrics http://{at}:{ports.metrics}/metrics; "
            f"supervising {len(supervisor.stubs)} Python-backend stubs; Ctrl-C stops",
            flush=True,
        )
        print("fence: nginx in front (docker/nginx/)" if fenced else BARE_SERVER, flush=True)
        print(capture.describe(settings), flush=True)
        if not args.admin_key:
            print(f"restricted APIs ({RESTRICTED_APIS}) need header {ADMIN_HEADER}: "
                  f"{server.admin_key}", flush=True)  # fmt: skip
        while not stop.wait(1.0) and failure is None:
            failure = supervisor.check()
        supervisor.close()
    finally:
        code = server.stop()
    print(f"tritonserver stopped (exit code {code})", flush=True)
    if failure:
        raise ServerError(f"{failure}; stopped the server (exit 1 for the process manager)")
    return 0
