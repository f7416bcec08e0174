"""Install, start, ask, account for and stop a peer (or any server process tree).

Every server starts in a session of its own: its processes (workers, Ray's raylet,
TorchServe's JVM) are the processes of that session, whose CPU time and memory are
summed, and which are stopped by their ids when the server is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from peer import REQUIREMENTS, Launch, Peer

from resnet_triton.serving.serve import proc_stat

ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class PeerError(RuntimeError):
    """A peer could not be installed or started; the message says why."""


def ensure_venv(peer: Peer, root: Path) -> Path:
    """artifacts/peers/<name>/venv with the peer's pinned requirements; reinstalled only
    when a requirements file changed."""
    venv = root / peer.name / "venv"
    files = [REQUIREMENTS / "base.txt", peer.requirements]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    stamp = venv / f".installed-{digest}"
    if stamp.is_file():
        return venv
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", *(f"-r{f}" for f in files)],
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode:
            said = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise PeerError(f"installing {peer.name} failed: {' | '.join(said)}")
    stamp.touch()
    return venv


def server_pids(root: int) -> list[int]:
    """Every process of a server: its session (processes that double-fork stay in it, as
    Ray's do) and every descendant of those (BentoML's workers start sessions of their
    own)."""
    parents, sessions = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = proc_stat(int(entry.name))
            except OSError:
                continue  # gone while we looked
            parents[int(entry.name)], sessions[int(entry.name)] = int(fields[1]), int(fields[3])
    found = {pid for pid, sid in sessions.items() if sid == root}
    while True:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not children:
            return sorted(found)
        found |= children


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = proc_stat(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def pss_mib(pids: list[int]) -> float:
    """Proportional set size of the processes, MiB: shared pages counted once in all."""
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def post(url: str, body: bytes, headers: dict | None = None, timeout: float = 30.0) -> tuple:
    """(status, body bytes) of one POST; status 0 when nothing answered."""
    headers = {"Content-Type": "application/octet-stream", **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Server:
    """A server process tree in its own session."""

    process: subprocess.Popen
    log: Path
    started: float  # time.monotonic() at Popen
    stop_command: list[str] | None = None

    @property
    def pids(self) -> list[int]:
        return server_pids(self.process.pid)

    def wait_answering(self, url: str, body: bytes, timeout: float, headers=None) -> float:
        """Seconds from start until `url` answers `body` with 200; PeerError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = post(url, body, headers, timeout=10)
            if status == 200:
                return time.monotonic() - self.started
            if self.process.poll() is not None and not self.pids:
                break
            time.sleep(0.25)
        tail = [line[:300] for line in self.log.read_text(errors="replace").splitlines()[-15:]]
        raise PeerError(f"no answer from {url} within {timeout:.0f} s:\n" + "\n".join(tail))

    def stop(self, grace: float = 15.0) -> None:
        if self.stop_command:
            subprocess.run(self.stop_command, capture_output=True, timeout=60)
        with _suppress():
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids and time.monotonic() < deadline:
            self.process.poll()
            time.sleep(0.2)
        for pid in self.pids:  # what did not exit, by its id
            with _suppress():
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, ProcessLookupError | PermissionError)


def start(argv: list[str], env: dict[str, str], log: Path, stop_command=None) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=log.parent,
        )  # fmt: skip
    return Server(process, log, time.monotonic(), stop_command)


def start_peer(peer: Peer, launch: Launch) -> Server:
    argv, extra = peer.command(launch)
    env = {**launch.environment(), **extra, "PEER_SETTINGS": json.dumps(launch.settings)}
    stop = peer.stop(launch) if peer.stop else None
    return start([str(a) for a in argv], env, launch.work / "server.log", stop)
