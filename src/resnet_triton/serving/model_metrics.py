"""The Prometheus metrics the Python models add to Triton's own (pb_utils.MetricFamily).

Triton exports them beside its nv_* metrics on the metrics port. Every series carries
the model's name and version. What the models know and Triton does not:

- resnet_triton_preprocess_seconds (histogram): decode and crop time, per image;
- resnet_triton_rejected_inputs_total{reason}: inputs refused, by
  `preprocess.REJECT_REASONS` (empty, not_an_image, corrupt, format, too_many_*);
- resnet_triton_answers_total{class}: top-1 answers per class label;
- resnet_triton_top1_score (histogram): the top softmax score of every answer;
- resnet_triton_unknown_answers_total: answers below the model's calibrated
  `reject_below`, the ones clients report as "unknown" (0 while the model has none);
- resnet_triton_single_image_runs_total{session} (serving.layout fused): runs on one
  image, by the ONNX Runtime session that scored it (triton_models.FusedModel);
- resnet_triton_calibrated_unknown_ratio (gauge, calibrated models only): the share
  of held-out images below `reject_below` at calibration. The unknown answers' rate
  well above it means the inputs have drifted from the training data
  (deploy/prometheus/alerts.yml).

They exist where these Python models run: the CPU classifier and the Python preprocess
model. A TensorRT classifier or DALI preprocessing exports Triton's own series only.

Every metric update is a round trip from the stub to the server. Sent per image, three
of them cost resnet18 INT8 about 9% of its images/s at concurrency 1 (measured on 2
CPUs). So the models add to sums here, and a thread sends what was added once a
second (FLUSH_S): the series trail the traffic by up to a second, and the cost no
longer grows with it. Histograms are therefore exported as Prometheus' text format
spells them, counters `<name>_bucket{le}`, `<name>_sum` and `<name>_count`, which
PromQL's histogram_quantile reads as any histogram.

Metrics are a side channel: an update that fails (a labels file shorter than the
model's classes, say) is logged once and skipped, and never changes an answer.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

from resnet_triton.preprocess import REJECT_REASONS

PREFIX = "resnet_triton_"
FLUSH_S = 1.0
SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SCORE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def _best_effort(update):
    """`update`, which never raises: the first failure is logged, every failure skipped."""

    @functools.wraps(update)
    def guarded(self, *args, **kwargs):
        try:
            update(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever fails, answers go on
            self.failed(update.__name__, exc)

    return guarded


class _Metrics:
    """Counters summed in the stub and sent by a background thread every FLUSH_S."""

    def __init__(self, model: str, version: str):
        self.labels = {"model": model, "version": version}
        # A family must outlive its metrics (the stub refuses to update a metric whose
        # family was garbage-collected): all are kept here.
        self._families: dict[str, pb_utils.MetricFamily] = {}
        self._counters: list = []
        self._pending: dict[int, float] = {}
        self._lock = threading.Lock()
        self._failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def family(self, name: str, description: str, kind) -> pb_utils.MetricFamily:
        if name not in self._families:
            self._families[name] = pb_utils.MetricFamily(
                name=PREFIX + name, description=description, kind=kind
            )
        return self._families[name]

    def counter(self, name: str, description: str, **labels: str) -> int:
        """A counter series, exported from the start at 0; its index for add()."""
        family = self.family(name, description, pb_utils.MetricFamily.COUNTER)
        self._counters.append(family.Metric(labels={**self.labels, **labels}))
        return len(self._counters) - 1

    def failed(self, update: str, exc: Exception) -> None:
        """Log a failed update, the first one only: the next ones would repeat it per batch."""
        with self._lock:
            self._failures += 1
            first = self._failures == 1
        if first:
            pb_utils.Logger.log_error(
                f"{self.labels['model']}: metrics update {update} failed, so the model's "
                f"metrics are incomplete from now on (answers are not affected; logged once): "
                f"{type(exc).__name__}: {exc}"
            )

    @_best_effort
    def add(self, counter: int, value: float) -> None:
        if value:
            with self._lock:
                self._pending[counter] = self._pending.get(counter, 0.0) + float(value)

    @_best_effort
    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for counter, value in pending.items():
            self._counters[counter].increment(value)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self.flush()

    def close(self) -> None:
        """Send what is left and stop the thread (the model's finalize)."""
        self._stop.set()
        self._thread.join()
        self.flush()


class _Histogram:
    """A Prometheus histogram as its cumulative bucket, sum and count counters."""

    def __init__(self, metrics: _Metrics, name: str, description: str, buckets):
        self.metrics, self.buckets = metrics, np.asarray(buckets)
        bounds = [f"{b:g}" for b in buckets] + ["+Inf"]
        self.counters = [metrics.counter(f"{name}_bucket", description, le=b) for b in bounds]
        self.sum = metrics.counter(f"{name}_sum", description)
        self.count = metrics.counter(f"{name}_count", description)

    def observe(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        at_most = (values[:, None] <= self.buckets[None, :]).sum(axis=0)  # per bucket
        for counter, count in zip(self.counters, [*at_most, len(values)], strict=True):
            self.metrics.add(counter, count)
        self.metrics.add(self.sum, values.sum())
        self.metrics.add(self.count, len(values))


class PreprocessMetrics(_Metrics):
    def __init__(self, model: str, version: str):
        super().__init__(model, version)
        self._seconds = _Histogram(
            self, "preprocess_seconds", "Decode and crop time per image", SECONDS_BUCKETS
        )
        self._rejected = {
            reason: self.counter("rejected_inputs_total", "Inputs refused, by reason",
                                 reason=reason)
            for reason in REJECT_REASONS
        }  # fmt: skip

    @_best_effort
    def decoded(self, images: int, seconds: float) -> None:
        self._seconds.observe(np.full(images, seconds / images))

    @_best_effort
    def rejected(self, reason: str) -> None:
        self.add(self._rejected[reason], 1)


class AnswerMetrics(_Metrics):
    def __init__(
        self, model: str, version: str, labels: list[str], reject_below: float | None,
        reject_rate: float | None,
    ):  # fmt: skip
        super().__init__(model, version)
        self._answers = [
            self.counter("answers_total", "Top-1 answers, by class", **{"class": label})
            for label in labels
        ]
        self._score = _Histogram(
            self, "top1_score", "Top softmax score of each answer", SCORE_BUCKETS
        )
        self._unknown = self.counter(
            "unknown_answers_total", "Answers whose top score is below the calibrated "
            "reject_below",
        )  # fmt: skip
        self.reject_below = reject_below
        if reject_rate is not None:  # what the drift alert compares the unknown rate with
            self._calibrated = self.family(
                "calibrated_unknown_ratio",
                "Share of held-out images below reject_below at calibration",
                pb_utils.MetricFamily.GAUGE,
            ).Metric(labels=self.labels)
            self._calibrated.set(reject_rate)

    @_best_effort
    def answered(self, scores: np.ndarray) -> None:
        """Count a batch of answers from its (n, classes) softmax scores."""
        if scores.shape[1] != len(self._answers):  # checked first: nothing half counted
            raise ValueError(
                f"the scores have {scores.shape[1]} classes and the labels file "
                f"{len(self._answers)} labels"
            )
        top1 = scores.max(axis=1)
        counts = np.bincount(scores.argmax(axis=1), minlength=len(self._answers))
        for counter, count in zip(self._answers, counts, strict=True):
            self.add(counter, count)
        self._score.observe(top1)
        if self.reject_below is not None:
            self.add(self._unknown, int((top1 < self.reject_below).sum()))
