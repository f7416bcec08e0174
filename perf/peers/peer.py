"""A serving framework in the race (`make bench-peers`): how it is installed, started and
asked, and which of its settings are searched.

Each peer lives in its own virtual environment (artifacts/peers/<name>/venv, from
perf/peers/requirements/<name>.txt on top of base.txt) and serves the same thing:
perf/peers/apps/model.py, the published ONNX classifier behind the project's own
preprocessing, top-k labels out. It answers POST <path> with the encoded image as the body
with JSON carrying at least "index" (the top-1 class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
APPS = PEERS_DIR / "apps"
REQUIREMENTS = PEERS_DIR / "requirements"


@dataclass(frozen=True)
class Launch:
    """One start of a peer: where its environment is and what it serves, how."""

    venv: Path  # the peer's virtual environment
    onnx: Path  # the classifier it serves
    port: int  # HTTP, on 127.0.0.1
    settings: dict  # one entry of the peer's grid
    work: Path  # a scratch folder of this start (logs, model stores)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def environment(self) -> dict[str, str]:
        """What every peer's processes get: the model, ONNX Runtime's threads per process,
        and the apps folder on the path (apps/model.py)."""
        return {
            "ONNX_MODEL": str(self.onnx),
            "ORT_THREADS": str(self.settings.get("ort_threads", 0)),
            "PYTHONPATH": str(APPS),
            "OMP_NUM_THREADS": "1",  # nothing else spins up a thread pool of its own
        }


@dataclass(frozen=True)
class Peer:
    name: str
    version: str  # the release pinned in requirements/<name>.txt
    path: str  # where the image is POSTed
    # What the peer's own documentation recommends for CPU throughput, with the knobs the
    # grid varies (shown in perf/README.md).
    docs: str
    # The settings tried, the documentation's recommendation first; the best at
    # concurrency 8 on resnet18 INT8 is what the race runs.
    grid: tuple[dict, ...]
    # (argv, extra environment) that start the server in the foreground, or a launcher
    # that returns once the server is up in the background (torchserve).
    command: Callable[[Launch], tuple[list[str], dict[str, str]]]
    # An extra command that stops the server (torchserve --stop), before its processes
    # are signalled.
    stop: Callable[[Launch], list[str]] | None = None
    os_packages: tuple[str, ...] = field(default=())

    @property
    def requirements(self) -> Path:
        return REQUIREMENTS / f"{self.name}.txt"
