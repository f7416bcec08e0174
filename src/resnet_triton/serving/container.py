"""The Triton server of docker-compose.yml's `tritonserver` service, started like a local one."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import tritonclient.http as httpclient

from resnet_triton.serving.server import ServerError, TritonServer


class ContainerTritonServer(TritonServer):
    """docker-compose.yml's `tritonserver` service, on free loopback ports.

    target "cpu": the CPU image (docker-compose.yml, plus docker-compose.override.yml
    where the machine has one); "gpu": the pinned NGC image (docker-compose.gpu.yml
    on top). The container runs exactly as compose defines it, the repository
    mounted read-only, under a project name of its own, so that stop() removes
    everything it made. CI's engine workflow smoke-tests with it.
    """

    TARGETS = ("cpu", "gpu")

    def __init__(self, *args, target: str = "cpu", compose_dir: Path = Path("."), **kwargs):
        super().__init__(*args, **kwargs)
        if target not in self.TARGETS:
            raise ServerError(f"unknown container target {target!r}; choose from {self.TARGETS}")
        self.target = target
        self.compose_dir = Path(compose_dir)
        self.project = f"resnet-triton-{uuid.uuid4().hex[:8]}"

    @property
    def compose(self) -> list[str]:
        files = ["docker-compose.yml"]
        if self.target == "gpu":
            files.append("docker-compose.gpu.yml")
        if (self.compose_dir / "docker-compose.override.yml").is_file():
            files.append("docker-compose.override.yml")
        return [
            "docker", "compose", f"--project-name={self.project}",
            *(f"--file={self.compose_dir / name}" for name in files),
        ]  # fmt: skip

    @property
    def command(self) -> list[str]:
        # --build: the image matches this checkout (a cached rebuild takes seconds).
        return [*self.compose, "up", "--build", "--no-deps", "--exit-code-from=tritonserver",
                "tritonserver"]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "MODEL_REPOSITORY": str(self.repository),
            "TRITON_ADMIN_KEY": self.admin_key,
            "TRITON_BIND_ADDRESS": self.address,
            "HTTP_PORT": str(self.ports.http),
            "GRPC_PORT": str(self.ports.grpc),
            "METRICS_PORT": str(self.ports.metrics),
        }

    def _answering(self, client: httpclient.InferenceServerClient) -> bool:
        return True  # Docker refuses to publish a port that something else holds

    def start(self) -> ContainerTritonServer:
        if shutil.which("docker") is None:
            raise ServerError("the Triton container needs the docker command, not found here")
        if not (self.compose_dir / "docker-compose.yml").is_file():
            raise ServerError(
                f"{self.compose_dir.resolve()} has no docker-compose.yml; "
                "run from the repository root"
            )
        return super().start()

    def stop(self, timeout: float = 60.0) -> int | None:
        # SIGTERM makes `compose up` stop the container gracefully; it stops printing
        # the container's output as it does, so the log is then replaced by the whole
        # of it. `down` removes the container and the project's network.
        code = super().stop(timeout)
        if self.log_path:
            with open(self.log_path, "wb") as log:
                subprocess.run([*self.compose, "logs", "--no-color"], env=self.environment(),
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        subprocess.run(
            [*self.compose, "down", "--volumes", "--timeout=5"],
            env=self.environment(),
            capture_output=True,
        )
        return code
