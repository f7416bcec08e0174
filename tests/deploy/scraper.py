"""A real Prometheus (Debian's; make setup installs it) scraping a test server every
second, with rule files if given, and its HTTP API."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from conftest import running

from resnet_triton.serving.server import Ports

PROMETHEUS = "/usr/bin/prometheus"


@contextlib.contextmanager
def prometheus(metrics_port: int, folder: Path, labels: dict | None = None, rules=()):
    """Yields Prometheus' URL; it scrapes 127.0.0.1:`metrics_port` (adding `labels`) and
    evaluates the rule files `rules` every second."""
    scraped = {"targets": [f"127.0.0.1:{metrics_port}"], "labels": labels or {}}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "triton", "static_configs": [scraped]}],
        "rule_files": [str(r) for r in rules],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = Ports.free().http
    command = [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
               f"--storage.tsdb.path={folder / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running(command, folder / "prometheus.log", f"{url}/-/ready", "Prometheus", 30):
        yield url


def api(url: str, path: str, **params) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(url: str, expr: str, at: float | None = None) -> dict[str, float]:
    """The instant vector of `expr` at time `at` (now if None): {labels as text: value}."""
    data = api(url, "query", query=expr, time=f"{time.time() if at is None else at:.3f}")
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in data["result"]}


def alerts(url: str) -> list[dict]:
    """The alerts pending or firing now: labels, state, annotations."""
    return api(url, "alerts")["alerts"]
