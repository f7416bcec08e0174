"""resnet-triton rollout's refusals that need no Docker (tests/docker/test_rollout.py
runs it on real replicas). Where a refusal comes from what Docker reports, a stand-in
`docker` command on PATH answers `ps` and `inspect` from a list of containers and fails
every other command, so a test also sees that nothing was started, stopped or changed."""

import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from resnet_triton import cli
from resnet_triton.build.manifest import Manifest, file_sha256, manifest_path
from resnet_triton.pipeline.rollout import (
    Balancer,
    Replica,
    Rollout,
    RolloutError,
    describe,
    served_model,
    store_version,
    switch,
)
from resnet_triton.pipeline.store import keep_version


def test_a_store_version_is_found_or_named_missing(tmp_path):
    with pytest.raises(RolloutError, match=r"versions/cpu holds no published version"):
        store_version(tmp_path, "cpu", "latest")
    (tmp_path / "cpu" / "classifier" / "1").mkdir(parents=True)
    for _ in range(2):
        keep_version(tmp_path, "cpu", {})
    assert store_version(tmp_path, "cpu", "latest") == tmp_path / "versions" / "cpu" / "2"
    assert store_version(tmp_path, "cpu", "1") == tmp_path / "versions" / "cpu" / "1"
    with pytest.raises(
        RolloutError, match=r"^version 7 of cpu is not in the store .*; published: 1, 2$"
    ):
        store_version(tmp_path, "cpu", "7")


def test_a_folder_that_is_no_published_repository_is_refused_before_docker(tmp_path, capsys):
    with pytest.raises(RolloutError, match=r"model repository .*/nowhere does not exist"):
        Rollout("p", tmp_path).to(tmp_path / "nowhere")
    (tmp_path / "empty" / "classifier" / "3").mkdir(parents=True)
    with pytest.raises(RolloutError, match=r"/empty holds no published model \(no manifest\)"):
        describe(tmp_path / "empty")
    code = cli.main(["rollout", "--path", str(tmp_path / "nowhere"), "--images", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: model repository ")


def test_describe_names_the_served_version_and_content(tmp_path):
    model = tmp_path / "classifier" / "4" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"onnx")
    Manifest("ab" * 32, {}, "fp32", "cpu", file_sha256(model)).write(model)
    assert describe(tmp_path) == f"version 4, content {'ab' * 6}"
    manifest_path(model).write_text("{")  # damaged: the content is not known
    assert describe(tmp_path) == "version 4, content unknown"


def test_a_second_rollout_of_a_project_is_refused_while_one_runs(tmp_path):
    lock = Path(tempfile.gettempdir()) / "resnet-triton-rollout-locked-test.lock"
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write("4242")
        held.flush()
        with pytest.raises(
            RolloutError, match=r"another rollout of 'locked-test' is running \(pid 4242; "
        ):
            Rollout("locked-test", tmp_path).to(tmp_path)
    with pytest.raises(RolloutError, match=r"holds no published model"):  # free again
        Rollout("locked-test", tmp_path).to(tmp_path)
    lock.unlink()


def test_a_replica_serving_no_published_model_is_named_not_fatal(tmp_path):
    """The replicas compose started may mount any repository: rollout goes on."""
    (tmp_path / "classifier" / "1").mkdir(parents=True)
    assert (
        served_model(tmp_path)
        == f"unknown model: {tmp_path} holds no published model (no manifest)"
    )
    with pytest.raises(RolloutError):
        describe(tmp_path)  # a rollout's target must be one


# Error paths that Docker decides: what `docker ps` and `docker inspect` report.

FAKE_DOCKER = """#!{python}
import json, sys
containers = json.load(open({state!r}))
with open({calls!r}, "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
command, args = sys.argv[1], sys.argv[2:]
if command == "ps":
    labels = [a.split("label=", 1)[1] for a in args if a.startswith("--filter=label=")]
    for id, c in containers.items():
        if all("=".join(kv) in [f"{{k}}={{v}}" for k, v in c["Config"]["Labels"].items()]
               for kv in (label.split("=", 1) for label in labels)):
            print(id)
elif command == "inspect":
    print(json.dumps([containers[id] for id in args]))
else:
    sys.exit("fake docker: only ps and inspect here")
"""


def container(name: str, service: str, project: str = "p", previous: str | None = None) -> dict:
    """What `docker inspect` says of a compose container (the fields rollout reads)."""
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": service}
    if previous:
        labels["resnet-triton.previous-repository"] = previous
    return {
        "Name": f"/{name}",
        "Config": {"Labels": labels},
        "Mounts": [{"Type": "bind", "Source": f"/models/{name}", "RW": False,
                    "Destination": "/workspace/model_repository"}],
        "NetworkSettings": {"Networks": {f"{project}_default": {"IPAddress": "172.18.0.9"}}},
    }  # fmt: skip


@pytest.fixture
def docker_reports(tmp_path, monkeypatch):
    """docker_reports(*containers) -> the commands the stand-in `docker` was given."""
    bin_dir, state, calls = tmp_path / "bin", tmp_path / "containers.json", tmp_path / "calls"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable, state=str(state),
                                         calls=str(calls)))  # fmt: skip
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def report(*found: dict) -> Path:
        state.write_text(json.dumps({f"id{i}": c for i, c in enumerate(found)}))
        return calls

    return report


def only_looked(calls: Path) -> bool:
    return {line.split()[0] for line in calls.read_text().splitlines()} <= {"ps", "inspect"}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line, no traceback
    return err


def test_rollback_with_no_replica_running_says_so(tmp_path, docker_reports, capsys):
    calls = docker_reports(container("lb", "balancer"))
    assert cli.main(["rollback", "--project=p", f"--images={tmp_path}"]) == 1
    assert error_line(capsys) == (
        "error: no running replicas in compose project 'p': nothing to roll back (start "
        "them with `docker compose -f deploy/docker/replicas.yml up -d --wait`)\n"
    )
    assert only_looked(calls)


def test_two_balancers_are_refused_before_anything_changes(
    tmp_path, docker_reports, capsys
):  # fmt: skip
    repository = published(tmp_path / "repository")
    calls = docker_reports(
        container("r1", "replica"), container("r2", "replica"),
        container("lb1", "balancer"), container("lb2", "balancer"),
    )  # fmt: skip
    code = cli.main(["rollout", "--project=p", f"--path={repository}", f"--images={tmp_path}"])
    assert code == 1
    assert error_line(capsys).startswith(
        "error: compose project 'p' runs 2 balancers (lb1, lb2); rollout points one: stop the "
        "others (`docker compose -f deploy/docker/replicas.yml up -d --scale balancer=1`)"
    )
    assert only_looked(calls)
    calls.write_text("")
    previous = str(repository)  # a rollback meets the same refusal
    docker_reports(container("r1", "replica", previous=previous),
                   container("lb1", "balancer"), container("lb2", "balancer"))  # fmt: skip
    assert cli.main(["rollback", "--project=p", f"--images={tmp_path}"]) == 1
    assert "runs 2 balancers" in error_line(capsys)
    assert only_looked(calls)


def published(repository: Path) -> Path:
    model = repository / "classifier" / "2" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"onnx")
    Manifest("cd" * 32, {}, "fp32", "cpu", file_sha256(model)).write(model)
    return repository


# Pointing the balancer at a candidate (rollout.switch). What goes wrong there is nginx
# or the Docker daemon refusing a command; a recording stand-in for the `docker` call
# refuses on cue, and the test reads what was done to put things back.


class Commands:
    """A `docker(*args, stdin=None)` that records each call and fails those `refuse` picks."""

    def __init__(self, refuse):
        self.calls, self.refuse = [], refuse

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        self.calls.append((args, stdin))
        if self.refuse(args, len(self.calls)):
            raise RolloutError(f"docker {args[0]} failed: refused\non cue")
        return ""

    def upstreams(self, after: int = 0) -> dict[str, str]:
        """The upstream files as the calls since call `after` last wrote them."""
        return {args[-1].rsplit("/", 1)[-1]: stdin for args, stdin in self.calls[after:]
                if stdin is not None}  # fmt: skip


def nginx_check(args) -> bool:
    return args[-1] == "-t"


def test_a_balancer_that_refuses_the_candidate_gets_its_lists_back():
    first = {"n": None}

    def refuse(args, number) -> bool:  # nginx refuses the new lists, once
        if nginx_check(args) and first["n"] is None:
            first["n"] = number
            return True
        return False

    docker = Commands(refuse)
    new = Replica("cand", container("cand", "replica"))
    with pytest.raises(RolloutError) as error:
        switch(Balancer("lb", docker), new, "old", ["done", "old"], "replica 2/2 (old, v1)")
    message = str(error.value)
    assert message == (
        "replica 2/2 (old, v1): pointing balancer lb at candidate cand failed (docker exec "
        "failed: refused on cue); its upstream lists name done, old again; the candidate was "
        "removed; done, old serve on; not rolled out"
    )
    assert docker.upstreams()["http.conf"].count("server ") == 2
    restored = docker.upstreams(after=first["n"])
    assert restored == {
        "http.conf": "server done:8000 max_fails=1 fail_timeout=10s;\n"
        "server old:8000 max_fails=1 fail_timeout=10s;\n",
        "grpc.conf": "server done:8001 max_fails=1 fail_timeout=10s;\n"
        "server old:8001 max_fails=1 fail_timeout=10s;\n",
    }
    after = [args for args, _ in docker.calls[first["n"] :]]
    assert ("exec", "lb", "nginx", "-c", "/etc/resnet-triton/lb.conf", "-s", "reload") in after
    assert after[-1] == ("rm", "--force", "cand")


def test_a_balancer_gone_mid_switch_is_explained_with_what_is_left_to_do():
    def refuse(args, number) -> bool:  # the alias is given, then the balancer is gone
        return args[0] == "exec"

    docker = Commands(refuse)
    new = Replica("cand", container("cand", "replica"))
    with pytest.raises(RolloutError) as error:
        switch(Balancer("lb", docker), new, "old", ["old"], "replica 1/1 (old, v1)")
    message = str(error.value)
    assert "\n" not in message
    assert (
        "putting its upstream lists back failed too (docker exec failed: refused on cue): it "
        "runs the configuration it had, but its files may name cand; restart it (`docker "
        "restart lb`) before anything reloads it; the candidate was removed; old serve on"
    ) in message
    assert [args[0] for args, _ in docker.calls] == [
        "network", "network", "exec", "exec", "rm"
    ]  # fmt: skip


def test_a_candidate_that_cannot_be_removed_is_named():
    docker = Commands(lambda args, number: nginx_check(args) or args[0] == "rm")
    new = Replica("cand", container("cand", "replica"))
    with pytest.raises(RolloutError, match=r"removing the candidate failed \(docker rm failed: "
                       r"refused on cue\): `docker rm --force cand`; old serve on"):  # fmt: skip
        switch(Balancer("lb", docker), new, "old", ["old"], "replica 1/1")
