"""The CPU container's life: a stop under load loses no accepted request, and bad
configuration fails at start with the item named."""

import re
import socket
import time
from collections import Counter
from functools import partial

import pytest
from conftest import ADMIN_KEY, NAMES, ComposeProject, run
from load import send_under_load

from resnet_triton.client import Classifier
from resnet_triton.serving.repository import ONNX_FILE

pytestmark = pytest.mark.docker

# What nginx logs for an inference of each protocol (docker/nginx.conf's log_format).
REQUEST_LINES = {
    "grpc": '"POST /inference.GRPCInferenceService/ModelInfer HTTP/2.0"',
    "http": f'"POST /v2/models/{NAMES.ensemble}/infer HTTP/1.1"',
}


def accepted_requests(logs: str, protocol: str) -> list[str]:
    """How nginx logged each client inference it accepted (the health probe inside the
    container, from 127.0.0.1, left out): 'answered', 'refused by Triton' or, for a
    request that got no answer from Triton, nginx's status and what it saw."""
    request = re.escape(REQUEST_LINES[protocol])
    line = re.compile(rf"\| (\S+) {request} (\d+) \S+ upstream=(\S+) grpc=(\S+)/(\S+) key=\S*$")
    outcomes = []
    for match in map(line.search, logs.splitlines()):
        if not match or match[1] == "127.0.0.1":
            continue
        status, upstream, trailer, header = match[2], match[3], match[4], match[5]
        if protocol == "grpc":
            grpc_status = trailer if trailer != "-" else header
            if (status, upstream, grpc_status) == ("200", "200", "0"):
                outcomes.append("answered")
            elif (status, upstream, grpc_status) == ("200", "200", "14"):
                outcomes.append("refused by Triton")  # UNAVAILABLE: it is stopping
            else:
                outcomes.append(match.group(0))
        elif (status, upstream) == ("200", "200"):
            outcomes.append("answered")
        elif status == upstream and status not in ("499", "502", "504"):
            outcomes.append("refused by Triton")  # its own error answer, relayed
        else:
            outcomes.append(match.group(0))  # nginx's own 499/502/504: no answer
    return outcomes


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stop_answers_every_accepted_request(protocol, cpu_image, demo_run, compose_project):
    """`docker compose stop` with 8 clients sending: every request either never reached
    the server (refused: the connection was turned away), or was refused by Triton as
    it stopped (UNAVAILABLE), or was answered; none was taken in and dropped."""
    project = compose_project(demo_run.repository)
    started = project.up()
    assert started.returncode == 0, started.stderr + project.logs()[-3000:]
    url = f"localhost:{project.ports.grpc if protocol == 'grpc' else project.ports.http}"
    images = [p.read_bytes() for p in sorted(demo_run.val.glob("*/*.png"))]
    # retries=0: every request is sent once and counted once.
    with Classifier(url, protocol, retries=0, timeout_s=60) as classifier:
        stop = partial(project, "stop", "tritonserver")
        outcomes, stopped = send_under_load(classifier, images, 40, stop)
    assert stopped.returncode == 0, stopped.stderr

    answered = outcomes.count(None)
    refused = Counter(error for error in outcomes if error is not None)
    assert len(outcomes) == len(images) == 360
    assert answered >= 40 and sum(refused.values()) > 0, (answered, refused)
    # Seen by the server: nginx logs each request it accepted, with how it was answered.
    logs = project.logs()
    accepted = accepted_requests(logs, protocol)
    # Every request Triton took in got an answer or an explicit refusal (counted among
    # the clients' errors); none went unanswered.
    lost = [a for a in accepted if a not in ("answered", "refused by Triton")]
    assert lost == []
    assert accepted.count("answered") == answered  # the clients saw every answer
    state = project("ps", "--all", "--format={{.State}} {{.ExitCode}}", "tritonserver")
    assert state.stdout.split() == ["exited", "0"]
    assert "tritonserver stopped (exit code 0)" in logs


def test_no_admin_key_is_named(demo_run):
    result = ComposeProject(demo_run.repository, admin_key=None).up()
    assert result.returncode != 0
    assert "required variable TRITON_ADMIN_KEY is missing a value: set TRITON_ADMIN_KEY" in (
        result.stderr
    )


def test_no_published_model_is_named(cpu_image, demo_run, compose_project, tmp_path):
    repository = tmp_path / "model_repository"
    for path in demo_run.repository.rglob("*"):
        target = repository / path.relative_to(demo_run.repository)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != ONNX_FILE:
            target.write_bytes(path.read_bytes())
    project = compose_project(repository)
    assert project.up().returncode != 0
    assert (
        "error: /workspace/model_repository/classifier/1/model.onnx does not exist; "
        "publish a model first"
    ) in project.logs()


def test_a_port_already_taken_is_named(cpu_image, demo_run, compose_project):
    project = compose_project(demo_run.repository)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", project.ports.grpc))
        taken.listen()
        result = project.up()
    assert result.returncode != 0
    assert re.search(rf"127\.0\.0\.1:{project.ports.grpc}\b.*address already in use", result.stderr)
    assert ADMIN_KEY not in result.stderr


def test_a_dead_python_stub_restarts_the_container(cpu_image, demo_run, compose_project):
    """Triton does not restart a dead stub; `serve` exits, the entrypoint ends the
    container, and `restart: unless-stopped` brings a healthy one back."""
    project = compose_project(demo_run.repository)
    started = project.up()
    assert started.returncode == 0, started.stderr + project.logs()[-3000:]
    instance = f"{NAMES.classifier}_0_0"  # Triton's name for the classifier's instance
    kill = (
        'for d in /proc/[0-9]*; do [ "$(cat $d/comm)" = triton_python_b ]'
        f" && grep -q {instance} $d/cmdline && kill -9 ${{d#/proc/}} && echo killed; done"
    )
    killed = project("exec", "-T", "tritonserver", "sh", "-c", kill)
    assert killed.stdout.split() == ["killed"], killed.stderr

    container = project("ps", "--all", "--quiet", "tritonserver").stdout.strip()
    state = "{{.RestartCount}} {{.State.Health.Status}}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        now = run(["docker", "inspect", f"--format={state}", container]).stdout.split()
        if now == ["1", "healthy"]:
            break
        time.sleep(1)
    assert now == ["1", "healthy"]
    logs = project.logs()
    assert f"the Python-backend stub of model '{NAMES.classifier}'" in logs
    assert "serve-cpu: resnet-triton serve exited; stopping the container" in logs
    url = f"localhost:{project.ports.grpc}"
    with Classifier(url, "grpc") as classifier:
        (answer,) = classifier.classify_bytes(
            [sorted(demo_run.val.glob("4/*.png"))[0].read_bytes()]
        )
    assert answer[0].label in {str(d) for d in range(10)}
