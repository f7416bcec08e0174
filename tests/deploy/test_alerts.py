"""The alert rules (deploy/helm/resnet-triton/files/alerts.yml): Prometheus' own unit
test on synthetic series, the chart's PrometheusRule carrying the same rules, and the
input-drift alert in a real Prometheus scraping the real server with the calibrated
test model: in-class digits leave it quiet, images of no class fire it."""

import subprocess
import time

import pytest
import yaml
from conftest import OUTSIDE
from manifests import CHART, DEPLOY, REQUIRED, render
from scraper import alerts, prometheus, query

from resnet_triton.client import Classifier

RULES = CHART / "files" / "alerts.yml"
DRIFT = "ResnetTritonInputDrift"


def test_promtool_unit_tests_pass():
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_chart_and_compose_users_get_the_same_rules():
    (rule,) = [o for o in render(REQUIRED) if o["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert (DEPLOY / "prometheus" / "alerts.yml").resolve() == RULES.resolve()
    names = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    assert names == [DRIFT, "ResnetTritonRequestsFailing", "ResnetTritonQueueTime",
                     "ResnetTritonReplicaDown"]  # fmt: skip
    assert not [o for o in render({**REQUIRED, "prometheusRule": {"enabled": False}})
                if o["kind"] == "PrometheusRule"]  # fmt: skip


WINDOW_S, FOR_S = 10, 4  # the rules' 5m windows and 10m hold, cut to what a test can wait
RATIO = (
    f"sum(rate(resnet_triton_unknown_answers_total[{WINDOW_S}s]))"
    f" / sum(rate(resnet_triton_answers_total[{WINDOW_S}s]))"
)


def fast_rules(folder):
    text = RULES.read_text().replace("[5m]", f"[{WINDOW_S}s]").replace("for: 10m", f"for: {FOR_S}s")
    path = folder / "alerts.yml"
    path.write_text(text)
    return path


def send(client: Classifier, images, seconds: float) -> list:
    """Classify `images` over and over for `seconds`; every result."""
    results, stop = [], time.monotonic() + seconds
    while time.monotonic() < stop:
        results += client.classify(images, top_k=1)
    return results


def drift_alerts(url: str) -> list[dict]:
    return [a for a in alerts(url) if a["labels"]["alertname"] == DRIFT]


@pytest.mark.integration
def test_the_drift_alert_fires_on_images_of_no_class_only(calibrated, calibrated_server, digits,
                                                          tmp_path):  # fmt: skip
    _, report = calibrated
    server, _ = calibrated_server
    in_class = sorted((digits / "val").rglob("*.png"))
    with (
        prometheus(server.ports.metrics, tmp_path, rules=[fast_rules(tmp_path)]) as url,
        Classifier(f"localhost:{server.ports.grpc}") as client,
    ):
        results = send(client, in_class, WINDOW_S + FOR_S + 6)
        quiet = query(url, RATIO)
        assert drift_alerts(url) == [], quiet
        seen = sum(r.unknown for r in results) / len(results)
        assert seen < 2 * report["val_frr"]  # what the alert compares, from the answers
        results = send(client, OUTSIDE, WINDOW_S + FOR_S + 6)
        fired = drift_alerts(url)
        loud = query(url, RATIO)
        line = query(url, "2 * max(resnet_triton_calibrated_unknown_ratio)")  # the dashboard's
    print(f"unknown share: in-class {quiet}, outside {loud}; calibrated {report['val_frr']}")
    assert [a["state"] for a in fired] == ["firing"]
    assert list(line.values()) == [pytest.approx(2 * report["val_frr"])]
    assert sum(r.unknown for r in results) / len(results) > 2 * report["val_frr"]
