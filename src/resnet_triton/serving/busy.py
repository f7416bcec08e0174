"""Whether another instance of a model in this server is at work (FusedModel's, in
serving/triton_models.py): it runs in Triton's Python stub, but needs nothing of it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


class Busy:
    """Whether another instance of a model in this server is at work (FusedModel's).

    Each instance holds a shared flock on one lock file while at work; "alone" is an
    exclusive one that does not block. The file is this server's own: in /dev/shm
    (memory, and each container's own), named after the model and the tritonserver
    process that started the stubs (their parent), so replicas that mount one model
    folder never see each other's locks. A lock that cannot be taken, whatever the
    OSError, means "not alone": the instance's one-thread session is always safe to use.
    """

    def __init__(self, model: str, warn: Callable[[str], None]):
        shm = Path("/dev/shm")
        folder = shm if shm.is_dir() else Path(tempfile.gettempdir())
        self.path = folder / f"resnet-triton-{os.getppid()}-{model}.lock"
        try:
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self.fd = None
            warn(f"{model}: no lock file ({exc}); single images are scored with one thread")
        self.held = False

    def __enter__(self) -> Busy:
        self.held = self._flock(fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc_info) -> None:
        self._flock(fcntl.LOCK_UN)
        self.held = False

    def alone(self) -> bool:
        """No other instance is at work; the caller keeps its shared lock either way."""
        if not self.held:
            return False
        alone = self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.held = self._flock(fcntl.LOCK_SH)
        return alone

    def _flock(self, operation: int) -> bool:
        if self.fd is None:
            return False
        try:
            fcntl.flock(self.fd, operation)
        except OSError:  # BlockingIOError when another holds it; anything else: unknown
            return False
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        # The first instance to unload removes the name; the others' open files stay
        # locked together until they close.
        with contextlib.suppress(OSError):
            self.path.unlink()
