"""The metrics the dashboard, the autoscaler and the adapter rule use, against the real
server: a real Prometheus (Debian's) scrapes the test server every second and evaluates
their queries, idle and under a perf_analyzer load that saturates the server."""

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import NAMES, PHOTOS, wait_for_http
from manifests import CHART, DEPLOY

sys.path.insert(0, str(Path(__file__).parents[2] / "perf"))
from perf_tools import ensemble_input, run_perf_analyzer  # noqa: E402

from resnet_triton.serving.server import Ports  # noqa: E402

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"  # Debian's package (make setup installs it)
LABELS = {"namespace": "test", "pod": "replica-0"}  # what Kubernetes' service discovery adds
WINDOW_S = 10  # rate() window here; the adapter rule's 1m needs a minute of samples


@pytest.fixture
def prometheus(triton, tmp_path):
    scraped = {"targets": [f"127.0.0.1:{triton.ports.metrics}"], "labels": LABELS}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "triton", "static_configs": [scraped]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port, log = Ports.free().http, tmp_path / "prometheus.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", process, log, "Prometheus", timeout=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(url: str, expr: str, at: float) -> dict[str, float]:
    """The instant vector of `expr` at time `at`: {labels as text: value}."""
    params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return {
        json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
        for r in body["data"]["result"]
    }


def autoscaling_query() -> str:
    """The adapter rule's query as the adapter sends it for this pod (its 1m window cut)."""
    rule = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    matchers = ",".join(f'{k}="{v}"' for k, v in LABELS.items())
    query = rule["rules"]["custom"][0]["metricsQuery"]
    query = query.replace("<<.GroupBy>>", "pod").replace("<<.LabelMatchers>>", matchers)
    return query.replace("[1m]", f"[{WINDOW_S}s]")


def dashboard_queries() -> dict[str, str]:
    dashboard = json.loads((DEPLOY / "grafana" / "resnet-triton.json").read_text())
    values = {"$namespace": LABELS["namespace"], "$model": ".*", "$__rate_interval": f"{WINDOW_S}s"}
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("[1m]", f"[{WINDOW_S}s]")
            for name, value in values.items():
                expr = expr.replace(name, value)
            queries[f"{panel['title']} {target['refId']}"] = expr
    return queries


def test_dashboard_and_autoscaler_queries_on_the_live_server(triton, prometheus, tmp_path):
    target_us = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"][
        "targetQueueMicroseconds"
    ]
    time.sleep(WINDOW_S + 3)  # an idle window, scraped
    idle_at = time.time() - 1
    data = ensemble_input(PHOTOS, NAMES.image, tmp_path / "input.json")
    # 32 requests in flight (the max batch size) keep both models' queues full on 2 cores:
    # 20 ms of queue a request at 16 with the test's small model, about twice that at 32.
    run_perf_analyzer(NAMES.ensemble, triton.ports, data, "32:32", tmp_path / "load.csv", 4000)
    loaded_at = time.time() - 1
    time.sleep(2)  # the last scrape

    idle = query(prometheus, autoscaling_query(), idle_at)
    loaded = query(prometheus, autoscaling_query(), loaded_at)
    print(f"autoscaling metric: idle {idle}, under load {loaded} (target {target_us} us)")
    assert list(idle.values()) == [0.0]  # one pod, no requests: no queue time
    assert list(loaded.values())[0] > target_us  # saturated: the autoscaler would add pods

    for title, expr in dashboard_queries().items():
        result = query(prometheus, expr, loaded_at)
        assert result, f"dashboard panel {title!r} shows nothing: {expr}"
    names = set(
        re.findall(r"\bnv_\w+", " ".join([*dashboard_queries().values(), autoscaling_query()]))
    )
    for name in names:
        assert query(prometheus, f'count({{__name__="{name}"}})', loaded_at), f"{name} not exported"
    models = query(prometheus, "sum by (model) (nv_inference_request_success)", loaded_at)
    assert {json.loads(k)["model"] for k in models} == {
        NAMES.ensemble,
        NAMES.preprocess,
        NAMES.classifier,
    }
