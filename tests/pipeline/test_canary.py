"""The canary's analysis (pipeline/canary.py) without Docker: Triton's metrics text as a
replica serves it, each rule deciding both ways, the weights, the flags; and the canary
taken out of the balancer's lists before it is stopped (balancer.withdraw)."""

import math
from pathlib import Path

import pytest

from resnet_triton.pipeline import canary
from resnet_triton.pipeline.balancer import Balancer, admit, withdraw
from resnet_triton.pipeline.canary import Analysis, Figures, Metrics, Verdict
from resnet_triton.pipeline.rollout import Replica, get_args_parser

# Two scrapes of one replica's /metrics (a Triton 2.51 CPU replica of the docker tests,
# behind its nginx on port 8002), 10 s apart under load; trimmed to the ensemble's and the
# classifier's answer metrics.
DATA = Path(__file__).parent / "data"
TEXTS = [(DATA / f"triton_metrics_{n}.txt").read_text() for n in (1, 2)]
BEFORE, AFTER = (Metrics(text) for text in TEXTS)
ENSEMBLE = "resnet_ensemble"


def test_the_text_triton_serves_is_read_series_by_series():
    success = AFTER.series("nv_inference_request_success", model=ENSEMBLE)
    assert {dict(labels)["version"] for labels in success} == {"1", "2"}  # 2: never loaded
    p99 = AFTER.series("nv_inference_request_summary_us", model=ENSEMBLE, quantile="0.99")
    values = sorted(p99.values(), key=math.isnan)  # "Nan": version 2 was never asked
    assert values[0] > 0 and math.isnan(values[1])
    answers = AFTER.series("resnet_triton_answers")  # a counter: by its family's name
    assert sorted(dict(labels)["class"] for labels in answers) == [str(n) for n in range(10)]


def test_a_window_is_the_difference_of_two_scrapes():
    window = canary.figures([(BEFORE, AFTER)], ENSEMBLE)
    served = [AFTER, BEFORE]
    requests = [sum(m.series("nv_inference_request_success", model=ENSEMBLE).values())
                for m in served]  # fmt: skip
    assert window.requests == requests[0] - requests[1] > 0
    assert window.failures == 0
    assert window.mean_us > 0 and window.p99_us > 0
    # Answers by class, ten digits; the models send them once a second, so they trail.
    assert sorted(window.classes) == [str(n) for n in range(10)]
    assert 0 < window.answers <= window.requests
    assert window.unknown == 0  # the test model has no calibrated threshold


def test_without_triton_s_summary_the_latency_is_the_window_s_mean():
    before, after = (
        Metrics("\n".join(line for line in text.splitlines() if "_summary_" not in line))
        for text in TEXTS
    )
    window = canary.figures([(before, after)], ENSEMBLE)
    duration = [sum(m.series("nv_inference_request_duration_us", model=ENSEMBLE).values())
                for m in (AFTER, BEFORE)]  # fmt: skip
    assert window.mean_us == pytest.approx((duration[0] - duration[1]) / window.requests)
    assert window.p99_us is None


def test_a_counter_that_fell_counts_from_zero_and_a_new_series_in_full():
    before = Metrics('c{model="m",version="1"} 90\nc{model="m",version="2"} 5\n')
    after = Metrics('c{model="m",version="1"} 7\nc{model="m",version="2"} 8\n'
                    'c{model="m",version="3"} 4\n')  # fmt: skip
    assert sorted(canary.increase(before, after, "c", model="m").values()) == [3, 4, 7]


def test_text_that_is_no_prometheus_text_is_refused():
    with pytest.raises(ValueError, match="could not convert string to float: 'a'"):
        Metrics("# HELP x y\nnot a sample at all\n")  # prometheus_client's parser says


STABLE = Figures(requests=1000, failures=2, mean_us=40_000, p99_us=90_000,
                 classes={str(n): 100 for n in range(10)}, unknown=30)  # fmt: skip


def verdict(**candidate) -> Verdict:
    """The verdict on a candidate like STABLE scaled to 200 requests, with `candidate`'s
    figures instead, under the default thresholds."""
    like = {"requests": 200, "failures": 0, "mean_us": 42_000, "p99_us": 95_000,
            "classes": {str(n): 20 for n in range(10)}, "unknown": 6}  # fmt: skip
    return Verdict(canary.rules(Figures(**{**like, **candidate}), STABLE, Analysis()))


def test_a_candidate_like_the_stable_replicas_is_promoted():
    decided = verdict()
    assert decided.promote and decided.decided_by == "every rule passed"
    assert [rule.name for rule in decided.rules] == [
        "traffic", "errors", "latency", "unknown", "classes"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("candidate", "passes", "fails", "decided_by"),
    [
        ({"requests": 50}, {}, {"requests": 49, "classes": {"1": 49}},
         "rule traffic: not enough traffic: candidate 49 requests, stable 1000 requests "
         "(limit: at least 50 candidate requests)"),
        # stable 0.2%: +1 point is 1.2%
        ({}, {"failures": 2}, {"failures": 3},
         "rule errors: candidate 1.50% (3 failed), stable 0.20% (2 failed) (limit: at most 1 "
         "points above stable)"),
        ({}, {"mean_us": 60_000}, {"mean_us": 60_400},
         "rule latency: candidate mean 60.4 ms (1.51x), p99 95 ms, stable mean 40.0 ms, p99 "
         "90 ms (limit: mean at most 1.5x stable's)"),
        # stable 3% unknown: +5 points is 8% of 200 answers, 16
        ({}, {"unknown": 16}, {"unknown": 17},
         "rule unknown: candidate 8.50% of 200, stable 3.00% of 1000 (limit: at most 5 points "
         "above stable)"),
    ],
)  # fmt: skip
def test_each_rule_decides_both_ways(candidate, passes, fails, decided_by):
    assert verdict(**{**candidate, **passes}).promote
    failed = verdict(**{**candidate, **fails})
    assert not failed.promote
    assert failed.decided_by == decided_by


# Half the classes answered, the other half never: as far apart as the mislabelled
# version's answers from the stable ones on traffic of a few classes at a time.
SHIFTED = {str(n): 40 for n in range(1, 6)}


def test_answered_classes_that_moved_fail_where_the_sample_shows_it():
    """Distance 0.5 over 200 answers is no chance (fails); the same classes at 20 answers
    each are distance 0 (passes); and ten answers 0.3 apart might be
    (passes), where 200 are not."""
    moved = verdict(classes=SHIFTED)
    assert not moved.promote and moved.decided_by.startswith("rule classes: candidate ")
    (rule,) = [r for r in moved.rules if r.name == "classes"]
    assert "distance 0.50" in rule.candidate
    assert verdict(classes={str(n): 20 for n in range(10)}).promote
    few = canary.class_shift({"1": 8, "2": 2}, {"1": 100, "2": 100})
    assert few[0] > 0.2 and few[1] > 0.01
    assert not verdict(classes={"1": 160, "2": 40}).promote  # 200 answers that far apart


def test_a_rule_with_nothing_counted_passes_and_says_so():
    """A classifier without answer metrics (TensorRT): unknown and classes not measured."""
    decided = verdict(classes={}, unknown=0)
    assert decided.promote
    assert [r.candidate for r in decided.rules[-2:]] == ["no answers counted"] * 2


@pytest.mark.parametrize(("percent", "replicas"), [(10, 2), (10, 1), (50, 3), (1, 4), (99, 2)])
def test_the_weights_give_the_candidate_its_percent(percent, replicas):
    own, each = canary.weights(percent, replicas)
    assert own / (own + replicas * each) == pytest.approx(percent / 100)


def test_the_weights_are_the_smallest_integers():
    assert canary.weights(10, 2) == (2, 9)
    assert canary.weights(50, 1) == (1, 1)
    with pytest.raises(ValueError, match="between 1 and 99 percent of the traffic, not 100"):
        canary.weights(100, 2)


def test_the_flags_as_typed():
    args = get_args_parser().parse_args(
        ["--store=s", "--images=i", "--canary", "10", "--analysis", "5m", "--min-requests",
         "20", "--max-class-shift=0.3"]
    )  # fmt: skip
    assert canary.analysis(args) == Analysis(seconds=300, warmup_s=30, min_requests=20,
                                             max_class_shift=0.3)  # fmt: skip
    assert args.canary == 10
    assert canary.duration_s("20s") == 20 and canary.duration_s("90") == 90


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--canary", "100"], "--canary '100': a whole percent from 1 to 99 (a canary takes "
                              "between 1 and 99 percent of the traffic, not 100)"),
        (["--canary", "10", "--analysis", "5h"], "'5h' is no duration: a positive number of "
                                                 "seconds or minutes, like 30s or 5m"),
    ],
)  # fmt: skip
def test_bad_flags_are_named(flags, message, capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--store=s", "--images=i", *flags])
    assert message in capsys.readouterr().err


class Commands:
    """A `docker(*args, stdin=None)` that records each call; `balancer.workers()` sees
    the worker pids of `workers`, one list per call, the last one repeated."""

    def __init__(self, workers: list[str]):
        self.calls, self.workers = [], workers

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        self.calls.append((args, stdin))
        if args[-1].startswith("for p in /proc"):  # Balancer.workers() lists them
            pids = self.workers.pop(0) if len(self.workers) > 1 else self.workers[0]
            return pids
        return ""


def test_a_canary_joins_with_its_weight_and_leaves_drained_before_it_stops():
    docker = Commands(["7 nginx: worker process\n", "8 nginx: worker process\n"])
    balancer = Balancer("lb", docker)
    new = Replica("cand", {"NetworkSettings": {"Networks": {"net": {"IPAddress": "10.0.0.9"}}}})
    admit(balancer, new, ["r1", "r2"], {"cand": 2, "r1": 9, "r2": 9}, "replica 1/2")
    (lists,) = [stdin for args, stdin in docker.calls if args[-1].endswith("grpc.conf")]
    assert lists == (
        "server r1:8001 weight=9 max_fails=1 fail_timeout=10s;\n"
        "server r2:8001 weight=9 max_fails=1 fail_timeout=10s;\n"
        "server cand:8001 weight=2 max_fails=1 fail_timeout=10s;\n"
    )
    assert docker.calls[1][0] == ("network", "connect", "--alias=replica", "net", "cand")
    docker.calls.clear()
    withdraw(balancer, "cand", ["r1", "r2"], timeout_s=10, where="replica 1/2")
    steps = [args[0] if args[0] != "exec" else args[-1][:20] for args, _ in docker.calls]
    # the workers before; the lists without it, checked, reloaded; the old worker (7) gone
    # (the listing shows only 8); then stopped and removed
    assert steps[-2:] == ["stop", "rm"]
    (written,) = [stdin for args, stdin in docker.calls if args[-1].endswith("grpc.conf")]
    assert "cand" not in written and "weight" not in written
    reload = next(i for i, (args, _) in enumerate(docker.calls) if args[-1] == "reload")
    listings = [
        i for i, (args, _) in enumerate(docker.calls) if args[-1].startswith("for p in /proc")
    ]
    assert listings[0] < reload < listings[-1] < len(docker.calls) - 2
