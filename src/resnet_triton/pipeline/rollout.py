"""`resnet-triton rollout`: a model from the store onto the running replicas of
deploy/docker/replicas.yml, one replica at a time, without losing a request.

For each replica that serves another model:
  1. start a candidate: the replica's image and settings, the new repository mounted
     read-only, on the project's network under its own name only, so that nothing
     (not even a restarted balancer, which resolves `replica`) sends it traffic;
  2. wait for its health check, then smoke-test it at its address from this host:
     every held-out image answered, by the version the repository serves, with top-1
     at least --min-top1. A candidate that fails is removed; nothing else changed;
  3. give it the `replica` alias, write the balancer's upstream lists (the replicas by
     container name) and reload nginx: new connections go to the new set, and the old
     nginx workers finish the requests they hold and exit (the drain). Should any of
     this fail, the balancer gets its lists back and the candidate is removed;
  4. once every old worker has exited, stop the old replica and remove it.

With --canary PERCENT, the first candidate joins the lists beside the replicas with
nginx weights that send it PERCENT of the requests for --analysis, and its live figures
are held against theirs (pipeline/canary.py). Promoted, it takes its replica's place
and the rollout goes on; rolled back, it is drained and removed, the rule named.

Every replica rollout starts carries labels naming its repository and the one it
replaced; `resnet-triton rollback` rolls out that previous repository again.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from resnet_triton.build.manifest import Manifest
from resnet_triton.endpoints import GRPC_PORT
from resnet_triton.pipeline import canary
from resnet_triton.pipeline.balancer import (
    Balancer,
    RolloutError,
    admit,
    docker,
    switch,
    withdraw,
)
from resnet_triton.pipeline.steps import classify_holdout
from resnet_triton.pipeline.store import published_versions, versions_dir
from resnet_triton.serving.repository import served_version
from resnet_triton.spec import Names, SpecError

PROJECT = "resnet-triton-replicas"  # deploy/docker/replicas.yml's name
MOUNT = "/workspace/model_repository"  # where the serving image reads its repository
SOURCE, PREVIOUS = "resnet-triton.repository", "resnet-triton.previous-repository"
COMPOSE = "com.docker.compose"


def describe(repository: Path) -> str:
    """ "version N, content <hash>": what a repository serves, as answers name it."""
    manifests = sorted(repository.glob("*/*/*.manifest.json"))
    if not manifests:
        raise RolloutError(f"{repository} holds no published model (no manifest)")
    model = Manifest.read(manifests[0].with_name(manifests[0].name[: -len(".manifest.json")]))
    content = model.content_hash[:12] if model else "unknown"
    return f"version {served_version(repository)}, content {content}"


def served_model(repository: Path) -> str:
    """describe() of what a running replica serves, which need not be a store's model."""
    try:
        return describe(repository)
    except (RolloutError, SpecError) as exc:
        return f"unknown model: {exc}"


@dataclass(frozen=True)
class Replica:
    """A running replica container and the repository it serves."""

    name: str
    inspect: dict  # `docker inspect`

    @property
    def repository(self) -> Path:
        (mount,) = [m for m in self.inspect["Mounts"] if m["Destination"] == MOUNT]
        return Path(mount["Source"])

    @property
    def previous(self) -> str | None:
        return self.inspect["Config"]["Labels"].get(PREVIOUS)

    @property
    def network(self) -> str:
        (network,) = self.inspect["NetworkSettings"]["Networks"]
        return network

    @property
    def address(self) -> str:
        return self.inspect["NetworkSettings"]["Networks"][self.network]["IPAddress"]


def containers(project: str, service: str) -> list[Replica]:
    ids = docker(
        "ps", "--quiet", f"--filter=label={COMPOSE}.project={project}",
        f"--filter=label={COMPOSE}.service={service}",
    ).split()  # fmt: skip
    if not ids:
        return []
    found = json.loads(docker("inspect", *ids))
    return sorted((Replica(c["Name"].lstrip("/"), c) for c in found), key=lambda r: r.name)


def running(project: str) -> tuple[list[Replica], Balancer]:
    """The project's running replicas and its one balancer, or an error saying what is off."""
    replicas, balancers = containers(project, "replica"), containers(project, "balancer")
    if not replicas or not balancers:
        raise RolloutError(
            f"no running replicas and balancer in compose project {project!r} (replicas: "
            f"{len(replicas)}, balancers: {len(balancers)}): start them with "
            f"`docker compose -f deploy/docker/replicas.yml up -d --wait`"
        )
    if len(balancers) > 1:
        raise RolloutError(
            f"compose project {project!r} runs {len(balancers)} balancers "
            f"({', '.join(b.name for b in balancers)}); rollout points one: stop the others "
            f"(`docker compose -f deploy/docker/replicas.yml up -d --scale balancer=1`)"
        )
    return replicas, Balancer(balancers[0].name)


def run_options(old: Replica) -> list[str]:
    """`docker run` options that give a candidate the settings compose gave `old`."""
    config, host = old.inspect["Config"], old.inspect["HostConfig"]
    options = [
        f"--shm-size={host['ShmSize']}", f"--restart={host['RestartPolicy']['Name'] or 'no'}",
        *(f"--cap-drop={c}" for c in host.get("CapDrop") or []),
        *(f"--security-opt={o}" for o in host.get("SecurityOpt") or []),
        *(f"--tmpfs={path}:{o}" if o else f"--tmpfs={path}"
          for path, o in (host.get("Tmpfs") or {}).items()),
    ]  # fmt: skip
    if host.get("ReadonlyRootfs"):
        options.append("--read-only")
    if config.get("StopTimeout") is not None:
        options.append(f"--stop-timeout={config['StopTimeout']}")
    for key in ("NanoCpus", "Memory"):
        if host.get(key):
            options.append(
                f"--cpus={host[key] / 1e9}" if key == "NanoCpus" else f"--memory={host[key]}"
            )
    health = config.get("Healthcheck") or {}
    if health.get("Test", ["NONE"])[0] in ("CMD", "CMD-SHELL"):
        test = health["Test"]
        command = shlex.join(test[1:]) if test[0] == "CMD" else test[1]
        options += [f"--health-cmd={command}", f"--health-retries={health.get('Retries', 3)}"]
        for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                          ("start-period", "StartPeriod")):  # fmt: skip
            if health.get(key):
                options.append(f"--health-{flag}={health[key] // 1_000_000}ms")
    for mount in old.inspect["Mounts"]:
        if mount["Type"] == "bind" and mount["Destination"] != MOUNT:
            mode = "" if mount["RW"] else ":ro"
            options.append(f"--volume={mount['Source']}:{mount['Destination']}{mode}")
    return options


@dataclass
class Rollout:
    project: str
    images: Path  # held-out images, one folder per class
    smoke_images: int = 100
    min_top1: float = 0.9
    model: str = Names().ensemble
    ready_timeout_s: float = 300
    drain_timeout_s: float = 120
    canary_percent: int | None = None  # --canary: the first candidate's share of requests
    analysis: canary.Analysis = canary.Analysis()

    def to(self, repository: Path) -> list[str]:
        """Every replica serving `repository`; returns the replicas' names. One rollout
        of a project at a time on this host: a second one is refused while it runs."""
        lock = Path(tempfile.gettempdir()) / f"resnet-triton-rollout-{self.project}.lock"
        with lock.open("a+") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.seek(0)
                raise RolloutError(
                    f"another rollout of {self.project!r} is running "
                    f"(pid {held.read().strip() or 'unknown'}; lock {lock})"
                ) from None
            held.truncate(0)
            held.write(str(os.getpid()))
            held.flush()
            return self._to(repository)

    def _to(self, repository: Path) -> list[str]:
        repository = repository.resolve()
        if not repository.is_dir():
            raise RolloutError(f"model repository {repository} does not exist")
        target = describe(repository)  # a repository that is not one fails here
        replicas, balancer = running(self.project)
        live = [r.name for r in replicas]
        stable = [r for r in replicas if r.repository != repository]  # the canary's peers
        for number, old in enumerate(replicas, 1):
            where = f"replica {number}/{len(replicas)} ({old.name}, {served_model(old.repository)})"
            if old.repository == repository:
                print(f"{where}: already serves {repository}")
                continue
            new = self.candidate(old, repository, number, where)
            workers = balancer.workers()
            if self.canary_percent and old == stable[0]:
                live, workers = self.trial(balancer, new, old.name, live, stable, where)
            else:
                live = switch(balancer, new, old.name, live, where)
            balancer.drain(workers, self.drain_timeout_s, where)
            docker("stop", old.name)
            docker("rm", old.name)
            print(f"{where}: replaced by {new.name}; the old replica drained and stopped")
        print(f"{self.project}: {len(live)} replicas serve {repository} ({target})")
        return live

    def candidate(self, old: Replica, repository: Path, number: int, where: str) -> Replica:
        """A healthy candidate for `old` that passed its smoke test; removed if it did not."""
        name = self.start(old, repository, number)
        try:
            new = self.wait_healthy(name)
            self.smoke(new, repository, where)
        except BaseException:  # the candidate never got traffic: remove it
            subprocess.run(["docker", "rm", "--force", name], capture_output=True)
            raise
        return new

    def start(self, old: Replica, repository: Path, number: int) -> str:
        name = f"{self.project}-replica-{uuid.uuid4().hex[:8]}"
        # Compose's labels, so that `docker compose ps` and `down` see it as a replica.
        labels = {k: v for k, v in old.inspect["Config"]["Labels"].items() if k.startswith(COMPOSE)}
        labels |= {f"{COMPOSE}.container-number": str(100 + number),
                   SOURCE: str(repository), PREVIOUS: str(old.repository)}  # fmt: skip
        # The environment (the admin key among it) through a private file, not the
        # command line that every user of this host can read.
        with tempfile.NamedTemporaryFile("w", suffix=".env") as env:
            os.fchmod(env.fileno(), 0o600)
            env.write("".join(f"{item}\n" for item in old.inspect["Config"]["Env"]))
            env.flush()
            docker(
                "run", "--detach", f"--name={name}", f"--network={old.network}",
                f"--env-file={env.name}", *(f"--label={k}={v}" for k, v in labels.items()),
                *run_options(old), f"--volume={repository}:{MOUNT}:ro", old.inspect["Image"],
            )  # fmt: skip
        return name

    def wait_healthy(self, name: str) -> Replica:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            (state,) = json.loads(docker("inspect", name))
            health = state["State"].get("Health", {}).get("Status")
            if health == "healthy":
                return Replica(name, state)
            if state["RestartCount"] or not state["State"]["Running"] or health == "unhealthy":
                break  # it exited (serve refused to start, say) or failed its health check
            time.sleep(2)
        logs = subprocess.run(["docker", "logs", "--tail=20", name], capture_output=True, text=True)
        raise RolloutError(
            f"candidate {name} did not turn healthy within {self.ready_timeout_s:g} s "
            f"(state {state['State']['Status']}, health {health}); its last lines:\n"
            f"{(logs.stdout + logs.stderr)[-2000:]}"
        )

    def smoke(self, new: Replica, repository: Path, where: str) -> None:
        version = served_version(repository)
        url = f"{new.address}:{GRPC_PORT}"
        check = classify_holdout(url, self.model, self.images, self.smoke_images)
        line = (
            f"{where}: candidate {new.name} at {url}: {check.images} held-out images, "
            f"top-1 {check.top1:.4f} (min {self.min_top1}), {len(check.failed)} failed, "
            f"answered by version {', '.join(sorted(check.versions)) or 'none'}"
        )
        print(line)
        if check.failed:
            raise RolloutError(f"{line}; first: {check.failed[0].error}; not rolled out")
        if check.top1 < self.min_top1:
            raise RolloutError(f"{line}: below --min-top1; not rolled out")
        if check.versions != {version}:
            raise RolloutError(f"{line}, not {version} as {repository} says; not rolled out")

    def trial(self, balancer: Balancer, new: Replica, old: str, live: list[str],
              stable: list[Replica], where: str) -> tuple[list[str], set[str]]:  # fmt: skip
        """The canary: `new` beside `live` with --canary percent of the requests, watched
        for --analysis beside the `stable` replicas. Promoted, it takes `old`'s place:
        returns the lists and the balancer's workers before that reload. Else it is
        drained and removed, and the error names the rule that decided."""
        own, each = canary.weights(self.canary_percent, len(live))
        admit(balancer, new, live, {new.name: own} | dict.fromkeys(live, each), where)
        print(
            f"{where}: canary {new.name} takes {self.canary_percent}% of the requests (nginx "
            f"weight {own}, each of {len(live)} replicas {each}): {self.analysis.warmup_s:g} s "
            f"warm-up, then {self.analysis.seconds:g} s counted"
        )
        try:
            (found,) = json.loads(docker("inspect", new.name))  # its address on the alias
            verdict = canary.watch(Replica(new.name, found).address,
                                   [r.address for r in stable], self.model,
                                   self.analysis)  # fmt: skip
            print(f"{where}: canary analysis: {verdict.decided_by}\n{verdict.table()}")
            if verdict.promote:
                workers = balancer.workers()
                after = [new.name if name == old else name for name in live]
                balancer.point(after)
                return after, workers
        except BaseException:
            withdraw(balancer, new.name, live, self.drain_timeout_s, where)
            raise
        withdraw(balancer, new.name, live, self.drain_timeout_s, where)
        raise RolloutError(f"{where}: canary {new.name} rolled back, {verdict.decided_by}; "
                           f"{', '.join(live)} serve on; not rolled out")  # fmt: skip


def store_version(store: Path, repository: str, version: str) -> Path:
    """The kept copy of `repository` (pipeline publish) numbered `version`, or the latest."""
    kept = published_versions(store, repository)
    if not kept:
        raise RolloutError(f"{versions_dir(store, repository)} holds no published version")
    number = kept[-1] if version == "latest" else version
    if str(number) not in map(str, kept):
        raise RolloutError(
            f"version {version} of {repository} is not in the store {store}; "
            f"published: {', '.join(map(str, kept))}"
        )
    return versions_dir(store, repository) / str(number)


def previous_repository(project: str, replicas: list[Replica]) -> Path:
    """The one repository `replicas` served before the last rollout, or why there is none."""
    if not replicas:
        raise RolloutError(
            f"no running replicas in compose project {project!r}: nothing to roll back "
            f"(start them with `docker compose -f deploy/docker/replicas.yml up -d --wait`)"
        )
    previous = {r.previous for r in replicas}
    if None in previous:
        raise RolloutError(
            f"nothing to roll back to: the replicas of {project!r} were not "
            f"started by `resnet-triton rollout`"
        )
    if len(previous) > 1:
        raise RolloutError(
            f"the replicas of {project!r} came from different repositories "
            f"({', '.join(sorted(previous))}): finish with `resnet-triton rollout`"
        )
    return Path(previous.pop())


def rollback(rollout: Rollout) -> list[str]:
    """Roll the replicas back to the repository they served before the last rollout."""
    replicas = containers(rollout.project, "replica")
    return rollout.to(previous_repository(rollout.project, replicas))


def get_args_parser(back: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"resnet-triton {'rollback' if back else 'rollout'}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(back=back)
    parser.add_argument("--project", default=PROJECT, help="the replicas' compose project")
    if not back:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--store", type=Path, help="the model store (pipeline's `store`)")
        source.add_argument("--path", type=Path, help="a model repository folder instead")
        parser.add_argument("--repository", default="cpu", help="the store's repository")
        parser.add_argument("--version", default="latest", help="a store version, or latest")
    parser.add_argument(
        "--images", type=Path, required=True, help="held-out images, one folder per class"
    )
    parser.add_argument("--smoke-images", type=int, default=100, help="how many to classify")
    parser.add_argument("--min-top1", type=float, default=0.9, help="a candidate's least top-1")
    parser.add_argument("--model", default=Names().ensemble, help="the model clients call")
    if not back:
        canary.add_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    trial = {} if args.back else {"canary_percent": args.canary,
                                  "analysis": canary.analysis(args)}  # fmt: skip
    rollout = Rollout(args.project, args.images, args.smoke_images, args.min_top1, args.model,
                      **trial)  # fmt: skip
    if args.back:
        rollback(rollout)
    elif args.store is not None:
        rollout.to(store_version(args.store, args.repository, args.version))
    else:
        rollout.to(args.path)
    return 0
