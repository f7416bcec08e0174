"""The replicas' nginx balancer, driven through `docker`: its worker processes, its
upstream lists (container names, checked by `nginx -t`, live after a graceful reload),
and switching a candidate in, with everything undone when that fails (rollout.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from resnet_triton.endpoints import GRPC_PORT, HTTP_PORT
from resnet_triton.pipeline.config import PipelineError

# The balancer's upstream lists (deploy/docker/balancer.sh writes the first ones).
UPSTREAMS = {"http.conf": HTTP_PORT, "grpc.conf": GRPC_PORT}
LB_CONF = "/etc/resnet-triton/lb.conf"


class Candidate(Protocol):
    """What switch needs of a candidate (rollout.Replica): its name and its network."""

    @property
    def name(self) -> str: ...

    @property
    def network(self) -> str: ...


class RolloutError(PipelineError):
    pass


def docker(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RolloutError(f"docker {args[0]} failed: {result.stderr.strip()[-600:]}")
    return result.stdout


def one_line(error: BaseException) -> str:
    """An error's text on one line (docker's stderr has several), for the CLI's `error:`."""
    return " ".join(str(error).split())


@dataclass(frozen=True)
class Balancer:
    """The balancer container, driven through `docker` (any callable like the module's
    `docker`: tests give it one that records and fails on cue)."""

    name: str
    docker: Callable[..., str] = docker

    def workers(self) -> set[str]:
        """The balancer's nginx worker processes (their pids)."""
        listing = self.docker("exec", self.name, "sh", "-c",
                              'for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr "\\0" " " '
                              '< $p/cmdline 2>/dev/null)"; done')  # fmt: skip
        return {line.split()[0] for line in listing.splitlines() if "nginx: worker" in line}

    def point(self, names: list[str], weights: dict[str, int] | None = None) -> None:
        """The upstream lists: `names` (with nginx `weight=`s where given: a canary's
        share), checked by nginx, then a graceful reload."""
        weights = weights or {}
        for file, port in UPSTREAMS.items():
            lines = "".join(
                f"server {n}:{port}{f' weight={weights[n]}' if n in weights else ''} "
                f"max_fails=1 fail_timeout=10s;\n" for n in names
            )  # fmt: skip
            self.docker("exec", "--interactive", self.name, "sh", "-c",
                        f"cat > /tmp/nginx/upstreams/{file}", stdin=lines)  # fmt: skip
        self.docker("exec", self.name, "nginx", "-c", LB_CONF, "-t")
        self.docker("exec", self.name, "nginx", "-c", LB_CONF, "-s", "reload")

    def drain(self, workers: set[str], timeout_s: float, where: str) -> None:
        """Wait until the nginx `workers` from before a reload have finished and exited."""
        deadline = time.monotonic() + timeout_s
        while workers & self.workers():
            if time.monotonic() > deadline:
                raise RolloutError(
                    f"{where}: the balancer's old workers did not finish within "
                    f"{timeout_s:g} s; the old replica is still running"
                )
            time.sleep(0.5)


def switch(balancer: Balancer, new: Candidate, old: str, live: list[str], where: str) -> list[str]:
    """Give candidate `new` the `replica` alias and point the balancer at `live` with `new`
    in place of `old`; returns that list. On a failure anywhere in it, the balancer's lists
    are put back to `live` and the candidate removed (undo), and the error says so."""
    after = [new.name if name == old else name for name in live]
    join(balancer, new, after, live, where)
    return after


def admit(balancer: Balancer, new: Candidate, live: list[str], weights: dict[str, int],
          where: str) -> None:  # fmt: skip
    """A canary: `new` beside `live`, each with its nginx weight; undone as switch's is."""
    join(balancer, new, [*live, new.name], live, where, weights)


def join(balancer: Balancer, new: Candidate, after: list[str], live: list[str], where: str,
         weights: dict[str, int] | None = None) -> None:  # fmt: skip
    try:
        balancer.docker("network", "disconnect", new.network, new.name)
        balancer.docker("network", "connect", "--alias=replica", new.network, new.name)
        balancer.point(after, weights)
    except BaseException as exc:
        failure = f"{where}: pointing balancer {balancer.name} at candidate {new.name} failed"
        error = undo(balancer, new.name, live, f"{failure} ({one_line(exc)})")
        if isinstance(exc, Exception):
            raise error from exc
        print(f"interrupted: {error}", file=sys.stderr)  # undone all the same
        raise


def undo(balancer: Balancer, candidate: str, live: list[str], failure: str) -> RolloutError:
    """Put the balancer's upstream lists back to `live` and reload (the configuration it
    runs, so a no-op for its traffic), then remove the candidate, which never got traffic
    from it; the error names each step's outcome and what is left to do by hand."""
    try:
        balancer.point(live)
        restored = f"its upstream lists name {', '.join(live)} again"
    except RolloutError as exc:
        restored = (
            f"putting its upstream lists back failed too ({one_line(exc)}): it runs the "
            f"configuration it had, but its files may name {candidate}; restart it "
            f"(`docker restart {balancer.name}`) before anything reloads it"
        )
    try:
        balancer.docker("rm", "--force", candidate)
        removed = "the candidate was removed"
    except RolloutError as exc:
        removed = (
            f"removing the candidate failed ({one_line(exc)}): `docker rm --force {candidate}`"
        )
    return RolloutError(f"{failure}; {restored}; {removed}; {', '.join(live)} serve on; "
                        f"not rolled out")  # fmt: skip


def withdraw(balancer: Balancer, name: str, live: list[str], timeout_s: float, where: str) -> None:
    """Candidate `name` out of the lists (back to `live`), the requests it holds finished,
    then stopped and removed: a canary rolled back without losing a request."""
    workers = balancer.workers()
    balancer.point(live)
    balancer.drain(workers, timeout_s, where)
    balancer.docker("stop", name)
    balancer.docker("rm", name)
    print(f"{where}: canary {name} left the balancer, drained, stopped and removed")
