"""The canary's analysis (`resnet-triton rollout --canary PERCENT --analysis DURATION`):
the candidate's live figures beside the stable replicas', each from the difference of
their Prometheus counters between the start and the end of the window, and the rules
that promote it or roll it back.

The figures, per side (the stable side sums its replicas):
- requests and errors: nv_inference_request_success and _failure of the model clients
  call (the ensemble);
- latency: the mean of the window's requests, from nv_inference_request_duration_us.
  Not the p99 of Triton's summary (nv_inference_request_summary_us, which the serving
  image exports): a summary's quantiles cover its own sliding window, which takes in
  the canary's first requests, slow while it warms up, and they can be neither
  differenced to the window nor added over replicas. The p99 is shown beside it;
- answers: resnet_triton_answers_total by class, and resnet_triton_unknown_answers_total
  (serving/model_metrics.py).

The window opens after a warm-up (--warmup), during which the canary already takes its
share. A rule with nothing to measure (no answers counted: a TensorRT classifier exports
no answer metrics) passes and says so; too little candidate traffic is a failure: a
canary that was never tried is not promoted.
"""

from __future__ import annotations

import argparse
import math
import re
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import chi2_contingency

from resnet_triton.endpoints import METRICS_PORT
from resnet_triton.pipeline.balancer import RolloutError

SUCCESS, FAILURE = "nv_inference_request_success", "nv_inference_request_failure"
DURATION, SUMMARY = "nv_inference_request_duration_us", "nv_inference_request_summary_us"
ANSWERS, UNKNOWN = "resnet_triton_answers", "resnet_triton_unknown_answers"  # counters
UNITS = {"s": 1, "m": 60}


class Metrics:
    """One scrape of a metrics endpoint: the samples of Prometheus' text format."""

    def __init__(self, text: str):
        # A counter's samples by its family's name: prometheus_client reads them with
        # a "_total" suffix whether or not the text has one.
        self.samples: dict[tuple[str, frozenset], float] = {
            (family.name if sample.name == f"{family.name}_total" else sample.name,
             frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }  # fmt: skip

    def series(self, name: str, **labels: str) -> dict[frozenset, float]:
        """The series of `name` that carry `labels` (and any others): labels -> value."""
        wanted = set(labels.items())
        return {pairs: v for (n, pairs), v in self.samples.items() if n == name and wanted <= pairs}


def increase(before: Metrics, after: Metrics, name: str, **labels: str) -> dict[frozenset, float]:
    """Each series' increase over the window. A series that fell (its server restarted)
    counts from zero, as Prometheus' increase() does; one that is new counts in full."""
    start = before.series(name, **labels)
    return {
        pairs: value - start.get(pairs, 0.0) if value >= start.get(pairs, 0.0) else value
        for pairs, value in after.series(name, **labels).items()
    }


@dataclass(frozen=True)
class Figures:
    """One side's traffic over the window."""

    requests: float = 0
    failures: float = 0
    mean_us: float | None = None  # of the successful requests; None without one
    p99_us: float | None = None  # Triton's summary at the window's end, shown only
    classes: dict[str, float] = field(default_factory=dict)  # answers by class
    unknown: float = 0

    @property
    def answers(self) -> float:
        return sum(self.classes.values())

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def unknown_rate(self) -> float | None:
        return self.unknown / self.answers if self.answers else None


def figures(windows: list[tuple[Metrics, Metrics]], model: str) -> Figures:
    """One side's Figures from its replicas' (start, end) scrapes; `model` is the model
    clients call. Several replicas' p99 is the largest of theirs."""
    served = failures = duration = unknown = 0.0
    p99s, classes = [], defaultdict(float)
    for before, after in windows:
        served += sum(increase(before, after, SUCCESS, model=model).values())
        failures += sum(increase(before, after, FAILURE, model=model).values())
        duration += sum(increase(before, after, DURATION, model=model).values())
        p99 = after.series(SUMMARY, model=model, quantile="0.99").values()
        p99s += [v for v in p99 if not math.isnan(v)]  # NaN: none in the summary's window
        for pairs, count in increase(before, after, ANSWERS).items():
            classes[dict(pairs)["class"]] += count
        unknown += sum(increase(before, after, UNKNOWN).values())
    mean = duration / served if served else None
    return Figures(served + failures, failures, mean, max(p99s, default=None), dict(classes),
                   unknown)  # fmt: skip


def scrape(address: str, timeout_s: float = 10) -> Metrics:
    """The metrics endpoint of a replica at `address` (its container address)."""
    url = f"http://{address}:{METRICS_PORT}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return Metrics(answer.read().decode())
    except (OSError, ValueError) as exc:  # URLError is an OSError
        raise RolloutError(f"reading the canary's figures from {url} failed: {exc}") from exc


@dataclass(frozen=True)
class Analysis:
    """How a canary is judged: its warm-up, the window, the rules' limits (the flags'
    defaults; deploy/README.md has the table)."""

    seconds: float = 300.0
    warmup_s: float = 30.0
    min_requests: int = 50
    max_error_increase: float = 1.0  # percentage points over the stable error rate
    max_latency_ratio: float = 1.5  # candidate mean latency over the stable's
    max_unknown_increase: float = 5.0  # percentage points over the stable unknown rate
    max_class_shift: float = 0.2  # total-variation distance of the answered classes
    class_shift_alpha: float = 0.01  # ... and a chi-square test's p-value below this


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    candidate: str
    stable: str
    limit: str


def class_shift(candidate: dict[str, float], stable: dict[str, float]) -> tuple[float, float]:
    """(total-variation distance, chi-square p-value) between two answer counts by class.
    The distance is how far apart the shares are (0 same, 1 disjoint); the p-value how
    likely a distance like it is from sampling alone, which for few answers is likely."""
    labels = sorted(k for k in set(candidate) | set(stable)
                    if candidate.get(k, 0) + stable.get(k, 0) > 0)  # fmt: skip
    a, b = sum(candidate.values()), sum(stable.values())
    distance = 0.5 * sum(abs(candidate.get(k, 0) / a - stable.get(k, 0) / b) for k in labels)
    if len(labels) < 2:
        return distance, 1.0
    table = [[candidate.get(k, 0) for k in labels], [stable.get(k, 0) for k in labels]]
    return distance, float(chi2_contingency(table, correction=False).pvalue)


def latency_text(side: Figures, ratio: float | None = None) -> str:
    if side.mean_us is None:
        return "none measured"
    text = f"mean {side.mean_us / 1000:.1f} ms" + (f" ({ratio:.2f}x)" if ratio else "")
    return text + (f", p99 {side.p99_us / 1000:.0f} ms" if side.p99_us is not None else "")


def rules(candidate: Figures, stable: Figures, limits: Analysis) -> list[Rule]:
    """Every rule's outcome, in the order that decides (the first failed one)."""
    found = [Rule("traffic", candidate.requests >= limits.min_requests,
                  f"{candidate.requests:.0f} requests", f"{stable.requests:.0f} requests",
                  f"at least {limits.min_requests} candidate requests")]  # fmt: skip
    errors = 100 * (candidate.error_rate - stable.error_rate)
    found.append(Rule("errors", errors <= limits.max_error_increase,
                      f"{100 * candidate.error_rate:.2f}% ({candidate.failures:.0f} failed)",
                      f"{100 * stable.error_rate:.2f}% ({stable.failures:.0f} failed)",
                      f"at most {limits.max_error_increase:g} points above stable"))  # fmt: skip
    measured = candidate.mean_us is not None and stable.mean_us
    ratio = candidate.mean_us / stable.mean_us if measured else None
    found.append(Rule("latency", ratio is None or ratio <= limits.max_latency_ratio,
                      latency_text(candidate, ratio), latency_text(stable),
                      f"mean at most {limits.max_latency_ratio:g}x stable's"))  # fmt: skip
    found.append(unknown_rule(candidate, stable, limits))
    found.append(class_rule(candidate, stable, limits))
    return found


def unknown_rule(candidate: Figures, stable: Figures, limits: Analysis) -> Rule:
    limit = f"at most {limits.max_unknown_increase:g} points above stable"
    if candidate.unknown_rate is None or stable.unknown_rate is None:
        return Rule("unknown", True, "no answers counted", "no answers counted", limit)
    shift = 100 * (candidate.unknown_rate - stable.unknown_rate)
    return Rule("unknown", shift <= limits.max_unknown_increase,
                f"{100 * candidate.unknown_rate:.2f}% of {candidate.answers:.0f}",
                f"{100 * stable.unknown_rate:.2f}% of {stable.answers:.0f}", limit)  # fmt: skip


def top_classes(side: Figures, n: int = 3) -> str:
    ranked = sorted(side.classes.items(), key=lambda item: -item[1])[:n]
    return ", ".join(f"{label} {100 * count / side.answers:.0f}%" for label, count in ranked)


def class_rule(candidate: Figures, stable: Figures, limits: Analysis) -> Rule:
    limit = (f"total variation at most {limits.max_class_shift:g}, or a chi-square "
             f"p-value of {limits.class_shift_alpha:g} or more")  # fmt: skip
    if not candidate.answers or not stable.answers:
        return Rule("classes", True, "no answers counted", "no answers counted", limit)
    distance, p = class_shift(candidate.classes, stable.classes)
    shifted = distance > limits.max_class_shift and p < limits.class_shift_alpha
    return Rule("classes", not shifted,
                f"{top_classes(candidate)} (distance {distance:.2f}, p {p:.2g})",
                top_classes(stable), limit)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    rules: list[Rule]

    @property
    def promote(self) -> bool:
        return all(rule.passed for rule in self.rules)

    @property
    def decided_by(self) -> str:
        failed = [rule for rule in self.rules if not rule.passed]
        if not failed:
            return "every rule passed"
        rule = failed[0]
        cause = "not enough traffic: " if rule.name == "traffic" else ""
        return (f"rule {rule.name}: {cause}candidate {rule.candidate}, stable {rule.stable} "
                f"(limit: {rule.limit})")  # fmt: skip

    def table(self) -> str:
        lines = [f"  {'rule':<15} {'':<6} {'candidate':<45} stable"]
        lines += [f"  {r.name:<15} {'pass' if r.passed else 'FAIL':<6} {r.candidate:<45} "
                  f"{r.stable}   [{r.limit}]" for r in self.rules]  # fmt: skip
        return "\n".join(lines)


def weights(percent: int, stable: int) -> tuple[int, int]:
    """nginx weights (candidate, each stable replica) that send the candidate `percent`
    of the requests beside `stable` replicas: c / (c + stable * s) = percent / 100."""
    if not 0 < percent < 100:
        raise ValueError(f"a canary takes between 1 and 99 percent of the traffic, not {percent}")
    candidate, each = percent * stable, 100 - percent
    common = math.gcd(candidate, each)
    return candidate // common, each // common


def duration_s(text: str) -> float:
    """A duration as --analysis takes it: "90s", "5m", or seconds ("20")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([sm]?)", text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is no duration: a positive number of seconds or minutes, like 30s or 5m"
        )
    return float(match[1]) * UNITS[match[2] or "s"]


def percent(text: str) -> int:
    try:
        value = int(text)
        weights(value, 1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--canary {text!r}: a whole percent from 1 to 99 ({exc})"
        ) from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """rollout's canary flags."""
    group = parser.add_argument_group("canary", "one candidate takes a share of live traffic "
                                      "first, promoted or rolled back by its figures")  # fmt: skip
    group.add_argument(
        "--canary",
        type=percent,
        metavar="PERCENT",
        help="the share of requests the candidate takes during the analysis",
    )
    default = Analysis()
    for flag, name, help_text in (
        ("analysis", "seconds", "how long its figures are counted: 30s, 5m (default: 5m)"),
        ("warmup", "warmup_s", "how long it takes its share before that (default: 30s)"),
    ):
        group.add_argument(f"--{flag}", type=duration_s, metavar="DURATION",
                           default=getattr(default, name), help=help_text)  # fmt: skip
    for flag, help_text in (
        ("min-requests", "the fewest candidate requests to decide on; fewer: rolled back"),
        ("max-error-increase", "percentage points the candidate's error rate may exceed stable's"),
        ("max-latency-ratio", "the candidate's mean latency over stable's, at most"),
        ("max-unknown-increase", "percentage points its 'unknown' rate may exceed stable's"),
        ("max-class-shift", "total-variation distance of the answered classes, at most"),
        ("class-shift-alpha", "a larger distance fails only when a chi-square test's p is below"),
    ):
        name = flag.replace("-", "_")
        value = getattr(default, name)
        group.add_argument(f"--{flag}", type=type(value), default=value, metavar="N",
                           help=f"{help_text} (default: {value:g})")  # fmt: skip


def analysis(args: argparse.Namespace) -> Analysis:
    limits = {name: getattr(args, name) for name in Analysis.__dataclass_fields__
              if name not in ("seconds", "warmup_s")}  # fmt: skip
    return Analysis(args.analysis, args.warmup, **limits)


def watch(candidate: str, stable: list[str], model: str, limits: Analysis) -> Verdict:
    """The Verdict on the candidate at address `candidate` beside the `stable` replicas'
    addresses: after the warm-up, their metrics scraped at the window's start and end."""
    time.sleep(limits.warmup_s)
    before = [scrape(address) for address in [candidate, *stable]]
    time.sleep(limits.seconds)
    after = [scrape(address) for address in [candidate, *stable]]
    sides = list(zip(before, after, strict=True))
    return Verdict(rules(figures(sides[:1], model), figures(sides[1:], model), limits))
