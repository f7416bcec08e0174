"""The metrics the dashboard, the autoscaler and the adapter rule use, against the real
server: a real Prometheus (Debian's) scrapes the test server every second and evaluates
their queries, idle and under a perf_analyzer load that saturates the server."""

import json
import re
import sys
import time
from pathlib import Path

import pytest
import scraper
import yaml
from conftest import NAMES, PHOTOS
from manifests import CHART, DEPLOY
from scraper import query

sys.path.insert(0, str(Path(__file__).parents[2] / "perf"))
from perf_tools import ensemble_input, run_perf_analyzer  # noqa: E402

pytestmark = pytest.mark.integration

LABELS = {"namespace": "test", "pod": "replica-0"}  # what Kubernetes' service discovery adds
WINDOW_S = 10  # rate() window here; the adapter rule's 1m needs a minute of samples


@pytest.fixture
def prometheus(triton, tmp_path):
    with scraper.prometheus(triton.ports.metrics, tmp_path, LABELS) as url:
        yield url


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
        if "calibrated_unknown_ratio" in expr:  # this test's model is not calibrated
            assert not result, f"{title!r}: a calibrated rate for a model without one"
            continue  # tests/deploy/test_alerts.py reads it from the calibrated model
        assert result, f"dashboard panel {title!r} shows nothing: {expr}"
    names = set(
        re.findall(
            r"\b(?:nv|resnet_triton)_\w+",
            " ".join([*dashboard_queries().values(), autoscaling_query()]),
        )
    ) - {"resnet_triton_calibrated_unknown_ratio", "resnet_triton_queue_us_per_request"}
    for name in names:
        assert query(prometheus, f'count({{__name__="{name}"}})', loaded_at), f"{name} not exported"
    models = query(prometheus, "sum by (model) (nv_inference_request_success)", loaded_at)
    assert {json.loads(k)["model"] for k in models} == {
        NAMES.ensemble,
        NAMES.preprocess,
        NAMES.classifier,
    }
