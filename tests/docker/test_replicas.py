"""Two replicas behind the balancer of deploy/docker/replicas.yml: one is killed while
clients send, and every request they sent is answered (but a reply the killed replica had
begun to send, which nginx logs and cannot resend)."""

import re
from collections import Counter
from functools import partial

import pytest
from conftest import run, up_replicas
from load import send_under_load

from resnet_triton.client import Classifier

pytestmark = pytest.mark.docker

# The balancer's log line for a client's inference (deploy/docker/lb.conf's log_format;
# the health probe inside the balancer, from 127.0.0.1, and metadata calls left out).
ATTEMPTS = re.compile(
    r'\| (?!127\.0\.0\.1 )\S+ "POST \S+(?:/ModelInfer|/infer) HTTP/\S+" (\d+) '
    r"upstream=(.+) status=(.+) key=\S*$"
)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_killed_replica_loses_no_request(protocol, cpu_image, demo_run, compose_project):
    project = up_replicas(compose_project, demo_run.repository)
    replicas = project("ps", "--quiet", "replica").stdout.split()
    assert len(replicas) == 2
    address = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    dead = run(["docker", "inspect", f"--format={address}", replicas[0]]).stdout.strip()
    url = f"localhost:{project.ports.grpc if protocol == 'grpc' else project.ports.http}"
    images = [p.read_bytes() for p in sorted(demo_run.val.glob("*/*.png"))]
    # The clients never retry (retries=0): whatever is answered, the balancer saved.
    with Classifier(url, protocol, retries=0, timeout_s=60) as classifier:
        kill = partial(run, ["docker", "kill", replicas[0]])  # SIGKILL: no goodbye
        outcomes, killed = send_under_load(classifier, images, 60, kill)
    assert killed.returncode == 0, killed.stderr
    errors = Counter(outcome for outcome in outcomes if outcome is not None)
    assert len(outcomes) == len(images) == 360
    logs = project("logs", "--no-color", "balancer").stdout.splitlines()
    # Every request the clients sent was answered, but for a reply the killed replica had
    # begun to send: nginx had relayed part of it and cannot send it again (lb.conf). Each
    # such loss has nginx's error line for it, "while reading upstream" (the reply's body;
    # a failure before any of it is retried). Seen once in CI, 2026-12-07 (gRPC, RST_STREAM).
    relayed = [line for line in logs if "[error]" in line and "while reading upstream" in line]
    assert sum(errors.values()) <= len(relayed), (errors, relayed)
    # Seen by the balancer: each client request answered once (status 200), some after
    # the balancer resent them to the other replica ("502, 200"; gRPC bodies too, read
    # in full first: lb.conf's mirror), and none failed back to the client.
    attempts = [m.groups() for m in map(ATTEMPTS.search, logs) if m]
    answered = [a for a in attempts if a[0] == "200"]
    assert [a for a in attempts if a[0] != "200"] == []
    assert len(answered) == len(images)
    retried_by_balancer = [a for a in answered if "," in a[2]]
    assert retried_by_balancer, "no request was on the killed replica"
    assert {u.split(":")[0] for _, u, _ in retried_by_balancer} == {dead}  # first tried there
    served_by = {
        u.strip().split(":")[0] for _, upstreams, _ in attempts for u in upstreams.split(",")
    }
    assert len(served_by) == 2
    print(f"{protocol}: {len(answered)} answered with no client retry, "
          f"{len(retried_by_balancer)} after a retry by the balancer, "
          f"{sum(errors.values())} lost mid-reply")  # fmt: skip
