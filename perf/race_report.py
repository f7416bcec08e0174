"""The race's report (perf/race.py): a table per model, the ratios of each Triton layout
("triton": the ensemble; "triton-fused": one model) / each peer, and throughput against
p99 for every server."""

from __future__ import annotations

from matplotlib.figure import Figure


def ratios(run: dict, triton_row: str = "triton") -> dict:
    """Per peer and concurrency: the Triton row's throughput over the peer's, and its p99
    over the peer's (below 1: lower latency)."""
    servers = run["servers"]
    triton = {r["concurrency"]: r for r in servers[triton_row].get("rows", [])}
    out = {}
    for name, server in servers.items():
        if name.startswith("triton") or "rows" not in server:
            continue
        out[name] = {
            f"c{r['concurrency']}": {
                "throughput": round(triton[r["concurrency"]]["throughput_img_s"]
                                    / r["throughput_img_s"], 2),
                "p99": round(triton[r["concurrency"]]["p99_ms"] / r["p99_ms"], 2),
            }
            for r in server["rows"] if r["concurrency"] in triton and r["throughput_img_s"]
        }  # fmt: skip
    return out


def _cell(row: dict) -> str:
    errors = f", {row['errors']} errors" if row["errors"] else ""
    return f"{row['throughput_img_s']:.1f} ({row['p50_ms']:.0f} / {row['p99_ms']:.0f}{errors})"


def _cost(server: dict, level: int) -> str:
    row = next((r for r in server["rows"] if r["concurrency"] == level), None)
    if row is None:
        return ""
    cpu = row["cpu_ms_per_image"]
    return f"{cpu['server']:.1f} + {cpu['load generator']:.1f}"


def model_table(run: dict, levels: list[int]) -> list[str]:
    head = " | ".join(f"c{c}: img/s (p50 / p99 ms)" for c in levels)
    lines = [
        f"### {run['arch']} {run['precision'].upper()}",
        "",
        f"| server | {head} | CPU ms/img at c8 (server + wrk) | PSS MiB idle / load | "
        "ready s | same top-1 |",
        "|---|" + "---|" * (len(levels) + 4),
    ]
    for name, server in run["servers"].items():
        if "rows" not in server:
            lines.append(f"| {name} | not measured: {server['error'][:150]} |")
            continue
        cells = " | ".join(_cell(r) for r in server["rows"])
        peak = max(r["pss_mib_under_load"] for r in server["rows"])
        same = "(reference)" if name == "triton" else str(server.get("answers_match"))
        lines.append(
            f"| {name} | {cells} | {_cost(server, 8)} | {server['pss_mib_idle']:.0f} / "
            f"{peak:.0f} | {server['ready_s']} | {same} |"
        )
    for name, server in run["servers"].items():
        pa = server.get("perf_analyzer_grpc") if name.startswith("triton") else None
        if pa:
            line = ", ".join(f"c{r['concurrency']} {r['throughput_img_s']:.1f} "
                             f"({r['p99_ms']:.0f})" for r in pa)  # fmt: skip
            lines += ["", f"{name} under perf_analyzer over gRPC, img/s (p99 ms): {line}."]
    return lines


def markdown(report: dict) -> str:
    lines = [
        f"## The race: {report['cpu_count']} CPUs, {len(report['photos'])} real photos, "
        f"wrk over HTTP, {report['seconds_per_level']:.0f} s a level",
        "",
        "Settings (each peer's best of its grid on "
        f"{' '.join(report['search']['model'])} at c{report['search']['concurrency']}):",
        "",
    ]
    for name, found in report["settings"].items():
        lines.append(f"- {name} {report['peers'][name]}: {found.get('best', found.get('error'))}")
    for run in report["runs"]:
        lines += ["", *model_table(run, report["levels"])]
        for triton in (name for name in run["servers"] if name.startswith("triton")):
            table = ratios(run, triton)
            if table:
                lines += ["", f"{triton} / peer, throughput (p99):", ""]
                for name, cells in table.items():
                    shown = ", ".join(
                        f"{c} {v['throughput']} ({v['p99']})" for c, v in cells.items()
                    )
                    lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path) -> None:
    runs = report["runs"]
    fig = Figure(figsize=(6 * len(runs), 5))
    for ax, run in zip(fig.subplots(1, len(runs), squeeze=False)[0], runs, strict=True):
        for name, server in run["servers"].items():
            rows = server.get("rows", [])
            if rows:
                width = 2.5 if name.startswith("triton") else 1
                ax.plot([r["p99_ms"] for r in rows], [r["throughput_img_s"] for r in rows],
                        marker="o", label=name, linewidth=width)  # fmt: skip
        title = f"{run['arch']} {run['precision'].upper()} (c {report['levels']})"
        ax.set(xlabel="p99 latency (ms)", ylabel="throughput (images/s)", xscale="log",
               title=title)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{report['cpu_count']} CPUs, the same photos and load generator")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
