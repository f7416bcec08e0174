"""`resnet-triton rollout` and `rollback` on the replicas of deploy/docker/replicas.yml,
under load: every request is answered, each answer names the one store version it came
from, and a model that fails its smoke test never answers a client."""

import json
import re
import uuid
from collections import Counter

import pytest
from conftest import run, up_replicas
from load import send_during

from resnet_triton import cli
from resnet_triton.client import Classifier
from resnet_triton.pipeline.store import versions_dir

pytestmark = pytest.mark.docker


def rollout(capsys, project, *args: str) -> tuple[int, str, str]:
    code = cli.main([*args, f"--project={project.name}", "--smoke-images=40"])
    out, err = capsys.readouterr()
    return code, out, err


def rollout_under_load(capsys, project, protocol: str, images: list[bytes], *args: str):
    """`resnet-triton <args>` while 8 clients send `images` through the balancer, one per
    request: (per request (Result, sent after the command returned), exit code, out, err).
    The clients never retry (retries=0): a request the rollout loses is an error here."""
    port = project.ports.grpc if protocol == "grpc" else project.ports.http
    with Classifier(f"localhost:{port}", protocol, retries=0, timeout_s=60) as classifier:
        sent, answer = send_during(classifier, images, lambda: rollout(capsys, project, *args))
    return sent, *answer


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(line)


def replicas(project) -> dict[str, str]:
    """name -> the repository each running replica mounts."""
    ids = project("ps", "--quiet", "replica").stdout.split()
    found = json.loads(run(["docker", "inspect", *ids]).stdout)
    return {
        c["Name"].lstrip("/"): next(m["Source"] for m in c["Mounts"] if m["Type"] == "bind")
        for c in found
    }


def test_rollout_and_rollback_under_load_lose_no_request(
    cpu_image, digits, model_store, compose_project, capsys
):
    store = model_store
    kept = versions_dir(store, "cpu")
    project = up_replicas(compose_project, kept / "1")
    images = [p.read_bytes() for p in sorted((digits / "val").glob("*/*.png"))]
    val = f"--images={digits / 'val'}"

    # Version 2 onto both replicas while 8 gRPC clients send.
    sent, code, out, err = rollout_under_load(
        capsys, project, "grpc", images, "rollout", f"--store={store}", "--version=2", val
    )
    assert code == 0, err + out
    assert [r.error for r, _ in sent if not r.ok] == []  # every request answered
    versions = Counter(r.model_version for r, _ in sent)
    assert set(versions) == {"1", "2"} and versions["2"] > 0, versions
    assert {r.model_version for r, after in sent if after} == {"2"}
    assert len(re.findall(r"replaced by \S+; the old replica drained and stopped", out)) == 2
    passed = r"top-1 (0\.9\d+|1\.0+) \(min 0\.9\), 0 failed, answered by version 2"
    assert len(re.findall(passed, out)) == 2, out
    assert set(replicas(project).values()) == {str(kept / "2")}
    rolled = replicas(project)
    report(capsys, f"rollout: {len(sent)} requests, all answered, by version {dict(versions)}")

    # Version 3 (mislabelled) fails its smoke test on the first replica: nothing changes,
    # and no client ever gets an answer from it.
    sent, code, out, err = rollout_under_load(
        capsys, project, "grpc", images, "rollout", f"--store={store}", "--version=3", val
    )
    assert code == 1
    assert re.search(r"top-1 0\.[0-5]\d+ \(min 0\.9\), 0 failed, answered by version 3: below "
                     r"--min-top1; not rolled out", err), err  # fmt: skip
    assert [r.error for r, _ in sent if not r.ok] == []
    assert {r.model_version for r, _ in sent} == {"2"}
    assert replicas(project) == rolled  # the candidate is gone, the replicas untouched
    report(capsys, f"refused rollout: {len(sent)} requests, all answered by version 2")

    # Rollback: version 1 again, while 8 HTTP clients send.
    sent, code, out, err = rollout_under_load(capsys, project, "http", images, "rollback", val)
    assert code == 0, err + out
    assert [r.error for r, _ in sent if not r.ok] == []
    versions = Counter(r.model_version for r, _ in sent)
    assert set(versions) == {"1", "2"}
    assert {r.model_version for r, after in sent if after} == {"1"}
    assert set(replicas(project).values()) == {str(kept / "1")}
    report(capsys, f"rollback: {len(sent)} requests, all answered, by version {dict(versions)}")


def test_rollout_and_rollback_refuse_what_docker_shows_before_changing_anything(
    cpu_image, model_store, tmp_path, capsys
):
    """As Docker reports them (tests/pipeline/test_rollout_refusals.py has the rest): no
    replica to roll back, and two balancers, each one `error:` line; no container touched."""
    project = f"resnet-triton-test-{uuid.uuid4().hex[:8]}"
    code = cli.main(["rollback", f"--project={project}", f"--images={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1 and err == (
        f"error: no running replicas in compose project {project!r}: nothing to roll back "
        "(start them with `docker compose -f deploy/docker/replicas.yml up -d --wait`)\n"
    )
    names = [f"{project}-{service}-{n}" for service, n in
             (("replica", 1), ("balancer", 1), ("balancer", 2))]  # fmt: skip
    try:
        for name in names:
            service = name.split("-")[-2]
            started = run(
                [
                    "docker",
                    "run",
                    "--detach",
                    f"--name={name}",
                    "--entrypoint=sleep",
                    f"--label=com.docker.compose.project={project}",
                    f"--label=com.docker.compose.service={service}",
                    cpu_image,
                    "600",
                ]
            )
            assert started.returncode == 0, started.stderr  # fmt: skip
        before = run(["docker", "inspect", *names]).stdout
        code = cli.main(["rollout", f"--project={project}", f"--store={model_store}",
                         f"--images={tmp_path}"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and err == (
            f"error: compose project {project!r} runs 2 balancers ({names[1]}, {names[2]}); "
            "rollout points one: stop the others "
            "(`docker compose -f deploy/docker/replicas.yml up -d --scale balancer=1`)\n"
        )
        assert run(["docker", "inspect", *names]).stdout == before  # same containers, state
    finally:
        run(["docker", "rm", "--force", *names])
