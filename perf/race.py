"""`make bench-peers`: the Triton ensemble against the serving frameworks people would pick
instead, on the same work, in one run.

Every server serves the published classifier ONNX file (resnet18 and resnet50, FP32 and
INT8, built and gated by `resnet-triton build` as `make bench` builds them), behind the
project's own preprocessing (`resnet_triton.preprocess`), with top-3 labels out, and gets
the same 10 real photos from the same load generator (wrk over HTTP, bounded in time and
count) at concurrency 1, 4, 8 and 16. The peers (perf/peers/, each in its own virtual
environment under artifacts/peers/) are configured as their documentation recommends for
CPU throughput; each peer's grid of settings is searched on resnet18 INT8 at concurrency 8
and its best setting runs the race. Triton runs the project's defaults (serving/config.py,
searched by `make bench-batching`) twice: as the ensemble ("triton", the default layout)
and as one model decoding and scoring in one process ("triton-fused", serving.layout
fused), both asked over HTTP with the binary-data extension; a second line for each comes
from perf_analyzer over gRPC. Every server's top-1 answers for the photos must equal the
ensemble's.

Per server: images/s, p50 and p99, errors, CPU time per image of all its processes and of
the load generator, memory (PSS of all its processes) idle and under load, and the time
from start to the first answer. Writes artifacts/bench/peers/ (report.json with the
ratios of each Triton layout / each peer, report.md, throughput_vs_p99.png, settings.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF / "peers"))

from measure import Target, idle_memory, peer_bodies, run_level, triton_bodies  # noqa: E402
from peer import Launch, Peer  # noqa: E402
from peers import PEERS  # noqa: E402
from perf_tools import ensemble_input, run_perf_analyzer  # noqa: E402
from race_report import markdown, plot, ratios  # noqa: E402
from report import DEMO, checkpoint_for, prepare  # noqa: E402
from runner import PeerError, Server, ensure_venv, post, start_peer  # noqa: E402

from resnet_triton.data import package_photos  # noqa: E402
from resnet_triton.resnet import load_checkpoint  # noqa: E402
from resnet_triton.serving.config import ServingConfig  # noqa: E402
from resnet_triton.serving.repository import (  # noqa: E402
    ONNX_FILE,
    env_path_for,
    render,
    version_dir,
)
from resnet_triton.serving.server import Ports, TritonServer  # noqa: E402
from resnet_triton.spec import Names  # noqa: E402

NAMES = Names()
SEARCH_MODEL, SEARCH_LEVEL = ("resnet18", "int8"), 8
LAYOUTS = {"triton": "ensemble", "triton-fused": "fused"}  # the race's Triton rows


def fused_repository(repo: Path, arch: str) -> Path:
    """A copy of the published repository `repo`, rendered in the fused layout."""
    copy = repo.with_name("repo-fused")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repo, copy, symlinks=True)
    spec = load_checkpoint(checkpoint_for(arch, repo.parents[1]))[0]
    render(spec, copy, env_path_for(copy), serving=ServingConfig(layout="fused"))
    return copy


class Triton:
    """The wheel's tritonserver serving a repository, accounted for like a peer."""

    def __init__(self, repo: Path, work: Path):
        self.server = TritonServer(repo, Ports.free(), log_path=work / "triton.log")
        started = time.monotonic()
        self.server.start()
        self.tree = Server(self.server.process, work / "triton.log", started)

    def stop(self) -> None:
        self.server.stop()


def answers_of(target: Target, triton: bool) -> list[int]:
    """The top-1 class index a server gives each photo, in order."""
    out = []
    for body in target.bodies.read_text().splitlines():
        path, header = body.split("\t")
        headers = {"Inference-Header-Content-Length": header} if header else None
        status, text = post(target.url, Path(path).read_bytes(), headers)
        if status != 200:
            raise PeerError(f"{target.url} answered HTTP {status}: {text[:200]!r}")
        answer = json.loads(text)
        out.append(
            int(answer["outputs"][0]["data"][0].split(":")[1]) if triton else answer["index"]
        )
    return out


def serve_and_measure(server: Server, target: Target, levels, seconds, triton=False) -> dict:
    first = Path(target.bodies.read_text().splitlines()[0].split("\t")[0]).read_bytes()
    header = target.bodies.read_text().splitlines()[0].split("\t")[1]
    ready = server.wait_answering(
        target.url, first, 300, {"Inference-Header-Content-Length": header} if header else None
    )
    answers = answers_of(target, triton)
    result = {"ready_s": round(ready, 1), "answers": answers}
    result["pss_mib_idle"] = idle_memory(server)
    result["rows"] = [run_level(server, target, level, seconds) for level in levels]
    return result


def measure_triton(repo: Path, photos, levels, seconds, work: Path) -> dict:
    bodies = triton_bodies(photos, work / "bodies", NAMES.image, NAMES.scores)
    triton = Triton(repo, work)
    try:
        target = Target(triton.server.ports.http, f"/v2/models/{NAMES.ensemble}/infer", bodies)
        result = serve_and_measure(triton.tree, target, levels, seconds, triton=True)
        data = ensemble_input(photos, NAMES.image, work / "perf_analyzer.json")
        try:
            result["perf_analyzer_grpc"] = [
                row
                for level in levels
                for row in run_perf_analyzer(
                    NAMES.ensemble, triton.server.ports, data, f"{level}:{level}",
                    work / f"pa_{level}.csv", 4000,
                )
            ]  # fmt: skip
        except RuntimeError as exc:  # no stable window on a busy machine: said, not fatal
            result["perf_analyzer_grpc_error"] = str(exc)
        return result
    finally:
        triton.stop()


def measure_peer(peer: Peer, venv: Path, onnx: Path, settings, photos, levels, seconds, work):
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)  # peers write their configs there before starting
    launch = Launch(venv, onnx, Ports.free().http, settings, work)
    server = start_peer(peer, launch)
    try:
        target = Target(launch.port, peer.path, peer_bodies(photos, work / "bodies"))
        return serve_and_measure(server, target, levels, seconds)
    finally:
        server.stop()


def install(names: list[str], root: Path) -> dict[str, Path | str]:
    """Each peer's environment, or why it could not be installed."""
    venvs = {}
    for name in names:
        print(f"== installing {name}", flush=True)
        try:
            venvs[name] = ensure_venv(PEERS[name], root)
        except PeerError as exc:
            venvs[name] = str(exc)
            print(f"{name}: {exc}", flush=True)
    return venvs


def search(peer: Peer, venv: Path, onnx: Path, photos, seconds, work: Path) -> dict:
    """Every setting of the peer's grid at SEARCH_LEVEL: the best is the one that races."""
    tried = []
    for n, settings in enumerate(peer.grid):
        try:
            run = measure_peer(peer, venv, onnx, settings, photos, [SEARCH_LEVEL], seconds,
                               work / f"{peer.name}-{n}")  # fmt: skip
            row = run["rows"][0]
            tried.append({"settings": settings, "throughput_img_s": row["throughput_img_s"],
                          "p99_ms": row["p99_ms"], "errors": row["errors"]})  # fmt: skip
        except (PeerError, RuntimeError, OSError) as exc:
            tried.append({"settings": settings, "error": str(exc)[:500]})
        print(f"{peer.name} {settings}: {tried[-1]}", flush=True)
    ran = [t for t in tried if "error" not in t]
    if not ran:
        raise PeerError(f"no setting of {peer.name} ran: {tried[0]['error']}")
    # Without errors first; a peer that fails some requests in every setting still races,
    # with its errors in the table.
    best = max(ran, key=lambda t: (not t["errors"], t["throughput_img_s"], -t["p99_ms"]))
    return {"best": best["settings"], "tried": tried}


def race_model(model, repo, venvs, settings, photos, args, work: Path) -> dict:
    arch, precision = model
    onnx = version_dir(repo, NAMES.classifier) / ONNX_FILE
    servers = {}
    for name, layout in LAYOUTS.items():
        print(f"== {arch} {precision}: {name}", flush=True)
        served = fused_repository(repo, arch) if layout == "fused" else repo
        servers[name] = measure_triton(served, photos, args.levels, args.seconds, work / name)
        servers[name]["layout"] = layout
        if name != "triton":
            same = servers[name]["answers"] == servers["triton"]["answers"]
            servers[name]["answers_match"] = same
    for name, venv in venvs.items():
        print(f"== {arch} {precision}: {name}", flush=True)
        if isinstance(venv, str) or "error" in settings[name]:
            servers[name] = {"error": venv if isinstance(venv, str) else settings[name]["error"]}
            continue
        try:
            run = measure_peer(PEERS[name], venv, onnx, settings[name]["best"], photos,
                               args.levels, args.seconds, work / name)  # fmt: skip
        except (PeerError, RuntimeError, OSError) as exc:
            servers[name] = {"error": str(exc)[:500]}
            continue
        run["answers_match"] = run["answers"] == servers["triton"]["answers"]
        servers[name] = {**run, "settings": settings[name]["best"]}
    return {"arch": arch, "precision": precision, "servers": servers}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", nargs="+", default=sorted(PEERS), choices=sorted(PEERS))
    parser.add_argument("--models", nargs="+", default=["resnet18:fp32", "resnet18:int8",
                        "resnet50:fp32", "resnet50:int8"])  # fmt: skip
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=15, help="wrk run per level")
    parser.add_argument("--search-seconds", type=float, default=6)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/peers"))
    parser.add_argument("--settings", type=Path, help="a settings.json from an earlier "
                        "search: its best settings race, without searching again")  # fmt: skip
    args = parser.parse_args()
    if not (DEMO / "train" / "checkpoint.pt").is_file():
        print("error: no demo model (artifacts/demo/train/checkpoint.pt): run `make demo` first")
        return 1
    started, photos = time.perf_counter(), package_photos()
    models = [tuple(m.split(":")) for m in args.models]
    repos = {m: prepare(*m, PERF.parent / "artifacts" / "bench") for m in {*models, SEARCH_MODEL}}
    venvs = install(args.peers, PERF.parent / "artifacts" / "peers")
    saved = json.loads(args.settings.read_text()) if args.settings else {}
    settings = {name: saved[name] for name in args.peers if name in saved}
    for name, venv in venvs.items():
        if isinstance(venv, Path) and name not in settings:
            onnx = version_dir(repos[SEARCH_MODEL], NAMES.classifier) / ONNX_FILE
            try:
                settings[name] = search(PEERS[name], venv, onnx, photos, args.search_seconds,
                                        args.out / "search")  # fmt: skip
            except PeerError as exc:
                settings[name] = {"error": str(exc)[:500]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps(settings, indent=2))
    runs = [race_model(m, repos[m], venvs, settings, photos, args, args.out / "-".join(m))
            for m in models]  # fmt: skip
    report = {
        "cpu_count": os.cpu_count(), "photos": [p.name for p in photos], "levels": args.levels,
        "seconds_per_level": args.seconds, "search": {"model": list(SEARCH_MODEL),
        "concurrency": SEARCH_LEVEL}, "peers": {n: PEERS[n].version for n in args.peers},
        "docs": {n: PEERS[n].docs for n in args.peers}, "settings": settings, "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    report["ratios"] = {
        "-".join((r["arch"], r["precision"])): {name: ratios(r, name) for name in LAYOUTS}
        for r in runs
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    (args.out / "report.md").write_text(markdown(report))
    plot(report, args.out / "throughput_vs_p99.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
