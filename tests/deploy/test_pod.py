"""The chart's pod, run for real by podman (`podman kube play`): the pod template of the
Deployment that Helm's library renders, with its Secrets. The init container copies a
store version from an S3-compatible store (moto's server); the serving container starts
as uid 1000 on a read-only root with its /dev/shm, passes the chart's readiness probe
and classifies. Rendered again with another model.version and replayed, it serves that
version, and says so in every answer.

No cluster runs on these machines; podman runs the pod spec (containers, init container,
volumes, security context, secrets), not a scheduler. Where podman 4.3 differs from a
kubelet, the test does what the kubelet would, and says so:
- it restarts init containers under restartPolicy Always, so the template plays as a Pod
  with restartPolicy OnFailure (a kubelet runs init containers to completion either way);
- its Secret objects are stored in a form its own env lookup cannot read, so the Secrets
  are created with `podman secret create` in the form it reads (key -> base64 value);
- an emptyDir is a named volume that copies the image's directory (owner and mode) onto
  it, so the test names the volumes for itself and creates /dev/shm's as the kubelet
  would for medium Memory: an empty tmpfs, mode 1777, of the chart's sizeLimit;
- a Secret volume reads the secret as a Secret object whose `data` values it writes as
  they are (not base64-decoded), ignores `items` and `defaultMode` (each data key is a
  file of that name, mode 0644) and leaves a named volume of the secret's name behind;
  so the inference keys Secret is created as `{"data": {"api-keys": <the file>}}`, the
  chart's file name, and its volume removed with the pod. (Without `optional` set it
  panics; the chart says `optional: false`, Kubernetes' default.)
The chart's rollout settings (maxUnavailable, the model.version annotation) are checked
by rendering (test_chart.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import ROOT, run
from manifests import render

from resnet_triton.client import Classifier
from resnet_triton.serving.server import Ports
from resnet_triton.spec import Names

pytestmark = pytest.mark.docker

BASE_IMAGES = ("python:3.11-slim-bookworm", "resnet-triton/python:3.11-bookworm")
AWS_IMAGE = "resnet-triton/aws-cli:test"
# A podman network of the test's own, so that the store listens on its gateway: an
# address the pod reaches and nothing outside this machine does.
NETWORK, SUBNET, GATEWAY = "resnet-triton-test", "10.89.77.0/24", "10.89.77.1"
# podman reads its settings here; DOCKER_CONFIG (the tests' Compose plugin) it would
# take for its registry login file.
PODMAN_ENV = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
PODMAN_ENV["CONTAINERS_CONF"] = str(ROOT / "docker" / "containers.conf")
BUCKET = "models"


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=PODMAN_ENV,
                          timeout=timeout)  # fmt: skip


def must(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stdout[-1000:]}{result.stderr[-2000:]}"
    return result.stdout


def to_podman(image: str) -> None:
    """Docker's `image` into podman, unless podman holds the same image already."""
    wanted = must(run(["docker", "image", "inspect", "--format={{.Id}}", image])).strip()
    held = podman("image", "inspect", "--format={{.Id}}", image).stdout.strip()
    if wanted.removeprefix("sha256:") != held:
        saved = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaded = subprocess.run(["podman", "load"], stdin=saved.stdout, capture_output=True,
                                text=True, env=PODMAN_ENV, timeout=900)  # fmt: skip
        saved.wait()
        must(loaded)


@pytest.fixture(scope="module")
def pod_images(cpu_image) -> dict[str, str]:
    """The serving image (Docker's, moved over) and the store copier, built by podman on
    the same base: amazon/aws-cli, the chart's default, cannot be pulled here."""
    if subprocess.run(["podman", "--version"], capture_output=True).returncode != 0:
        pytest.fail("podman is not installed: run `make docker-tools`")
    base = next(b for b in BASE_IMAGES if run(["docker", "image", "inspect", b]).returncode == 0)
    to_podman(base)
    to_podman(cpu_image)
    must(podman("build", "--quiet", f"--build-arg=BASE_IMAGE={base}", f"--tag={AWS_IMAGE}",
                "--file=docker/aws-cli.Dockerfile", str(ROOT), timeout=900))  # fmt: skip
    return {"serving": cpu_image, "copier": AWS_IMAGE}


@pytest.fixture(scope="module")
def network(pod_images):
    """The test's podman network, its bridge up (a container on it) so that its gateway
    address exists on this host."""
    podman("network", "rm", "--force", NETWORK)
    must(podman("network", "create", f"--subnet={SUBNET}", NETWORK))
    holder = f"{NETWORK}-up"
    must(podman("run", "--detach", "--rm", f"--name={holder}", f"--network={NETWORK}",
                AWS_IMAGE, "sleep", "infinity"))  # fmt: skip
    try:
        yield NETWORK
    finally:
        podman("rm", "--force", "--time=0", holder)
        podman("network", "rm", "--force", NETWORK)


@pytest.fixture(scope="module")
def s3_store(network, model_store, tmp_path_factory) -> str:
    """moto's S3 server on the network's gateway, holding the model store; its URL."""
    port = Ports.free().http
    endpoint = f"http://{GATEWAY}:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        moto = Path(sys.executable).parent / "moto_server"
        command = [str(moto), "-H", GATEWAY, "-p", str(port)]
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        for path in sorted(model_store.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                s3.upload_file(str(path), BUCKET, f"store/{path.relative_to(model_store)}")
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


def mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


class PlayedPod:
    """The chart's pod for one model.version, played under names of its own."""

    def __init__(self, prefix: str, endpoint: str, version: str):
        self.prefix = prefix
        self.secrets = {
            f"{prefix}-admin": {"admin-key": uuid.uuid4().hex},
            f"{prefix}-store": {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint},
        }  # fmt: skip
        # The inference keys file the fence reads (one named key), as a Secret volume.
        self.api_key = uuid.uuid4().hex
        self.keys_secret = f"{prefix}-keys"
        values = {
            "adminKey": {"secretName": f"{prefix}-admin"},
            "apiKeys": {"secretName": self.keys_secret, "secretKey": "api-keys"},
            "modelRepository": {
                "storeUri": f"s3://{BUCKET}/store",
                "syncImage": {"s3": f"localhost/{AWS_IMAGE}"},
                "syncEnvFrom": [{"secretRef": {"name": f"{prefix}-store"}}],
            },
            "model": {"version": version},
            "image": {"repository": "localhost/resnet-triton/tritonserver-cpu", "tag": "latest",
                      "pullPolicy": "Never"},
            "autoscaling": {"enabled": False},
            "replicas": 1,
        }  # fmt: skip
        (self.deployment,) = [o for o in render(values) if o["kind"] == "Deployment"]
        template = self.deployment["spec"]["template"]
        spec = json.loads(json.dumps(template["spec"]))
        spec["restartPolicy"] = "OnFailure"
        for volume in spec["volumes"]:
            volume["name"] = f"{prefix}-{volume['name']}"
        for container in spec["containers"] + spec["initContainers"]:
            for mount in container["volumeMounts"]:
                mount["name"] = f"{prefix}-{mount['name']}"
        self.name = f"{prefix}-pod"
        metadata = {**template["metadata"], "name": self.name}
        self.pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
        self.volumes = [v["name"] for v in spec["volumes"]] + [self.keys_secret]
        self.server = f"{self.name}-{spec['containers'][0]['name']}"

    def play(self, tmp_path) -> str:
        """Start the pod; its address on the network."""
        for name, data in self.secrets.items():
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            secret = tmp_path / f"{name}.json"
            secret.write_text(json.dumps(encoded))
            must(podman("secret", "create", name, str(secret)))
            secret.unlink()
        keys = tmp_path / f"{self.keys_secret}.json"
        keys.write_text(json.dumps({"data": {"api-keys": f"pod-test {self.api_key}\n"}}))
        must(podman("secret", "create", self.keys_secret, str(keys)))
        keys.unlink()
        (shm,) = [v for v in self.pod["spec"]["volumes"] if v["name"] == f"{self.prefix}-shm"]
        blocks = mebibytes(shm["emptyDir"]["sizeLimit"]) * 256  # 4 KiB pages
        must(podman("volume", "create", "--opt=type=tmpfs", "--opt=device=tmpfs",
                    f"--opt=o=mode=1777,nr_blocks={blocks}", shm["name"]))  # fmt: skip
        # A first mount where the image has nothing: no copy of /dev/shm's owner and mode.
        must(podman("run", "--rm", f"--volume={shm['name']}:/emptydir", AWS_IMAGE, "true"))
        manifest = tmp_path / f"{self.name}.yaml"
        manifest.write_text(yaml.safe_dump(self.pod, sort_keys=False))
        must(podman("kube", "play", f"--network={NETWORK}", str(manifest)))
        infra = must(podman("pod", "inspect", "--format={{.InfraContainerID}}", self.name))
        address = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return must(podman("inspect", f"--format={address}", infra.strip())).strip()

    def remove(self) -> None:
        podman("pod", "rm", "--force", "--time=5", self.name)
        podman("volume", "rm", "--force", *self.volumes)
        podman("secret", "rm", *self.secrets, self.keys_secret)


def wait_ready(url: str, pod: PlayedPod, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    ready = urllib.request.Request(f"{url}/v2/health/ready",
                                   headers={"Authorization": f"Bearer {pod.api_key}"})  # fmt: skip
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(ready, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    logs = podman("logs", "--tail=30", pod.server)
    pytest.fail(f"the pod never turned ready: {logs.stdout[-3000:]}{logs.stderr[-3000:]}")


def test_the_charts_pod_copies_a_store_version_and_serves_it(s3_store, digits, tmp_path):
    paths = sorted((digits / "val").glob("*/*.png"))[::9]  # 40 images, 10 classes
    for version in ("1", "2"):
        pod = PlayedPod(f"rt-pod-{uuid.uuid4().hex[:6]}", s3_store, version)
        try:
            address = pod.play(tmp_path)
            wait_ready(f"http://{address}:8000", pod)
            # The fence is on: the keys Secret was read, and no key is no answer.
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://{address}:8000/v2/health/ready", timeout=5)
            assert refused.value.code == 401
            server = pod.deployment["spec"]["template"]["spec"]["containers"][0]
            # The chart's own readiness probe, as the kubelet would run it.
            probe = podman("exec", pod.server, *server["readinessProbe"]["exec"]["command"])
            assert probe.returncode == 0, probe.stdout + probe.stderr
            assert probe.stdout.startswith(f"{Names().ensemble} answered ")
            assert must(podman("exec", pod.server, "id", "-u")) == "1000\n"
            writes = podman("exec", pod.server, "touch", "/workspace/x")
            assert writes.returncode != 0 and "Read-only file system" in writes.stderr
            with Classifier(f"{address}:8001", "grpc", api_key=pod.api_key) as classifier:
                results = classifier.classify(paths)
            assert all(r.ok for r in results) and len(results) == 40
            assert (
                sum(r.top1.label == p.parent.name for r, p in zip(results, paths, strict=True))
                >= 36
            )
            assert {r.model_version for r in results} == {version}  # the store version
        finally:
            pod.remove()
