"""`make soak`: minutes of saturating traffic, bad images mixed in, against the real
server; every request accounted for, and the memory of tritonserver and each
Python-backend stub from the end of warm-up to the end.

Clients (threads of the project's client, gRPC, no retries: each request is sent and
counted once) send the package's real photos one per request; every tenth request is
a bad image (empty, not an image, a truncated JPEG, a 1x1 PNG whose header claims
60000x60000 pixels). Expected: every photo answered, every bad image refused with its
named error. Anything else is an unexpected error. Targets (deploy/README.md): 0
unexpected errors, under 5% RSS growth per process after warm-up. RSS swings with the
work in flight (buffers of the requests being served), so growth compares peaks: the
highest sample of the run's second half against the highest of its first half, after
warm-up; a leak raises the later peak, a swing does not.

Prints a table and saves artifacts/bench/soak.json. Needs a published repository
(`make demo`, or --repository).
"""

from __future__ import annotations

import argparse
import itertools
import json
import struct
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from resnet_triton.client import Classifier, ClientError
from resnet_triton.data import package_photos
from resnet_triton.serving.serve import python_stubs
from resnet_triton.serving.server import (
    ALLOCATORS,
    Ports,
    ServerError,
    TritonServer,
    allocator_environment,
    preflight,
)


def huge_png() -> bytes:
    """A valid PNG header claiming 60000x60000 pixels (a decompression bomb's shape)."""
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def bad_images(photo: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "not an image": b"GIF? no: plain text, " * 20,
        "truncated JPEG": photo[: len(photo) // 3],
        "pixel bomb": huge_png(),
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(server: TritonServer) -> dict[str, int]:
    """RSS in KiB: tritonserver and each stub, by model."""
    pid = server.process.pid
    return {"tritonserver": rss_kib(pid)} | {
        f"stub {model}": rss_kib(stub) for stub, model in python_stubs(pid).items()
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    # 30: the preprocess stub's RSS climbs for its first 10 minutes, then holds (deploy/README)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=30.0, help="RSS sampled this often")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/soak.json"))
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc",
                        help="the server's and its stubs' malloc")  # fmt: skip
    return parser


def traffic_schedule() -> list[tuple[str, bytes]]:
    """(name, encoded image) in the order each client sends them, round and round: the
    package's photos, every tenth request a bad image (its name starts with "bad")."""
    photos = [(p.name, p.read_bytes()) for p in package_photos()]
    jpeg = next(data for name, data in photos if name.endswith(".jpg"))
    bad = bad_images(jpeg)
    schedule = list(itertools.islice(itertools.cycle(photos), 9 * len(bad)))
    for i, (kind, data) in enumerate(bad.items()):
        schedule.insert(10 * i + 9, (f"bad: {kind}", data))
    return schedule


class Traffic:
    """Client threads sending the schedule until stopped, each outcome counted once."""

    def __init__(self, url: str, clients: int, schedule: list[tuple[str, bytes]]):
        self.outcomes: Counter[str] = Counter()
        self._lock, self._stop, self._schedule = threading.Lock(), threading.Event(), schedule
        self._threads = [
            threading.Thread(target=self._client, args=(url, i * 7), daemon=True)
            for i in range(clients)
        ]

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)

    def _client(self, url: str, offset: int) -> None:
        with Classifier(url, "grpc", retries=0, timeout_s=120) as classifier:
            for name, data in itertools.islice(itertools.cycle(self._schedule), offset, None):
                if self._stop.is_set():
                    return
                bad = name.startswith("bad")
                try:
                    classifier.classify_bytes([data])
                    outcome = f"UNEXPECTED answer: {name}" if bad else "answered"
                except ClientError as exc:
                    outcome = f"refused ({name})" if bad else f"UNEXPECTED: {exc}"
                with self._lock:
                    self.outcomes[outcome] += 1


def soak(args: argparse.Namespace, ensembles: list[str]) -> tuple[Traffic, list, float, int]:
    """Traffic for args.minutes against a server of its own, memory sampled from the end of
    warm-up: (the traffic, [(seconds, memory(server))], elapsed seconds, requests sent by
    the end of warm-up)."""
    log = args.out.with_suffix(".triton.log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = TritonServer(args.repository, Ports.free(), log_path=log, allocator=args.allocator)
    with server:
        server.wait_ready(ensembles, timeout=300)
        traffic = Traffic(f"{server.host}:{server.ports.grpc}", args.clients, traffic_schedule())
        started = time.monotonic()
        traffic.start()
        time.sleep(args.warmup_s)
        sent_at_warmup = traffic.sent
        samples = [(round(time.monotonic() - started), memory(server))]  # a leak keeps growing
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(
                min(args.sample_s, max(0.0, args.minutes * 60 - (time.monotonic() - started)))
            )
            samples.append((round(time.monotonic() - started), memory(server)))
        traffic.stop()
        return traffic, samples, time.monotonic() - started, sent_at_warmup


def growth_percent(samples: list, first: slice, last: slice, measure) -> dict[str, float]:
    """Per process, how much `measure` of the `last` samples exceeds that of the `first`."""
    names = samples[0][1]
    levels = [
        {name: measure([m.get(name, 0) for _, m in samples[part]]) for name in names}
        for part in (first, last)
    ]
    return {name: round(100 * (levels[1][name] - kib) / kib, 2) for name, kib in levels[0].items()}


def summary(args, traffic: Traffic, samples: list, elapsed: float, sent_at_warmup: int) -> dict:
    """The report soak.json holds, and the targets met."""
    total, outcomes = traffic.sent, traffic.outcomes
    unexpected = sum(n for kind, n in outcomes.items() if kind.startswith("UNEXPECTED"))
    half, third = len(samples) // 2, max(1, len(samples) // 3)
    growth = growth_percent(samples, slice(None, half), slice(half, None), max)
    peaks = [{name: max(m.get(name, 0) for _, m in part) for name in samples[0][1]}
             for part in (samples[:half], samples[half:])]  # fmt: skip
    # A second view, not the target: the typical level of the last third against the first
    # third. A leak raises both; a swing with the work in flight raises only the peaks.
    median = growth_percent(samples, slice(None, third), slice(-third, None),
                            lambda values: float(np.median(values)))  # fmt: skip
    return {
        "repository": str(args.repository), "allocator": args.allocator,
        "minutes": round(elapsed / 60, 2),
        "clients": args.clients, "requests": total,
        "requests_per_s": round(total / elapsed, 1), "after_warmup": total - sent_at_warmup,
        "outcomes": dict(outcomes.most_common()), "unexpected_errors": unexpected,
        "rss_kib_after_warmup": samples[0][1], "rss_kib_at_end": samples[-1][1],
        "rss_kib_peak_first_half": peaks[0], "rss_kib_peak_second_half": peaks[1],
        "rss_growth_percent": growth,
        "rss_median_growth_percent_last_vs_first_third": median,
        "rss_kib_samples": [{"s": t, **m} for t, m in samples],
        "targets_met": {
            "no unexpected errors": unexpected == 0,
            "under 5% memory growth": all(g < 5 for g in growth.values()),
        },
    }  # fmt: skip


def print_report(report: dict, sample_s: float) -> None:
    print(f"{report['requests']} requests in {report['minutes']:.1f} min "
          f"({report['requests_per_s']}/s), {report['clients']} clients; "
          f"{report['unexpected_errors']} unexpected")  # fmt: skip
    for kind, count in report["outcomes"].items():
        print(f"  {count:>7}  {kind}")
    columns = ("after warm-up", "at end", "peak, 1st half", "2nd half", "growth", "median 3/1")
    print("{:<22}{:>14}{:>8}{:>16}{:>10}{:>8}{:>12}".format("process (RSS MiB)", *columns))
    at_end, growth = report["rss_kib_at_end"], report["rss_growth_percent"]
    peaks = (report["rss_kib_peak_first_half"], report["rss_kib_peak_second_half"])
    median = report["rss_median_growth_percent_last_vs_first_third"]
    for name, kib in report["rss_kib_after_warmup"].items():
        print(
            f"{name:<22}{kib / 1024:>14.1f}{at_end.get(name, 0) / 1024:>8.1f}"
            f"{peaks[0][name] / 1024:>16.1f}{peaks[1][name] / 1024:>10.1f}{growth[name]:>7.2f}%"
            f"{median[name]:>11.2f}%"
        )
    print("RSS MiB every", f"{sample_s:.0f} s:")
    for name in report["rss_kib_after_warmup"]:
        values = [sample.get(name, 0) / 1024 for sample in report["rss_kib_samples"]]
        print(f"  {name:<26}" + " ".join(f"{v:.1f}" for v in values))
    print(f"targets: {report['targets_met']}")


def main() -> int:
    args = get_args_parser().parse_args()
    try:
        ensembles = preflight(args.repository)  # a missing model is named before any traffic
        allocator_environment(args.allocator)  # and a missing allocator
    except ServerError as exc:
        print(f"soak: {exc}")
        return 2
    report = summary(args, *soak(args, ensembles))
    print_report(report, args.sample_s)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0 if all(report["targets_met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
