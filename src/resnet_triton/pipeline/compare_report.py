"""The figures of `resnet-triton compare` and their report: report.md, report.json (whose
"versions", "captures" and "disagreements" the review page reads) and disagreements.png.

Every capture gets one answer from each version: its top-1 label, "unknown" (the top
score below the served model's calibrated threshold) or "error" (the version could not
answer it). Two versions agree on a capture when their answers are equal, so that a
version that fails images the other answers shows as disagreements; both failing the
same bytes is agreement.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

from resnet_triton.serving.capture import NOT_OURS

UNKNOWN, ERROR = "unknown", "error"
Z95 = NormalDist().inv_cdf(0.975)  # 1.96: a two-sided 95% interval
MOST_PICTURED = 24


@dataclass(frozen=True)
class Answer:
    """One version's answer to one captured image."""

    label: str | None  # top-1 label; None when the request failed
    score: float | None
    unknown: bool
    error: str | None
    latency_ms: float

    @property
    def answer(self) -> str:
        return ERROR if self.error is not None else UNKNOWN if self.unknown else self.label

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "unknown": self.unknown,
                "error": self.error, "latency_ms": round(self.latency_ms, 3)}  # fmt: skip


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without trials): unlike p +- z*se,
    it stays inside [0, 1] and is honest at 0 or n successes of few trials."""
    if trials == 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def answer_order(answers: list[str]) -> list[str]:
    """The answers present, classes first (sorted), then "unknown", then "error"."""
    present = set(answers)
    return sorted(present - {UNKNOWN, ERROR}) + [a for a in (UNKNOWN, ERROR) if a in present]


def confusion(a: list[str], b: list[str]) -> tuple[list[str], list[list[int]]]:
    """(answers, counts): counts[i][j] captures that A answered answers[i] and B answers[j]."""
    order = answer_order(a + b)
    index = {answer: i for i, answer in enumerate(order)}
    counts = [[0] * len(order) for _ in order]
    for x, y in zip(a, b, strict=True):
        counts[index[x]][index[y]] += 1
    return order, counts


def proportion(successes: int, trials: int) -> dict:
    """A share with its 95% Wilson interval, as the report gives every one."""
    interval = wilson(successes, trials)
    return {
        "successes": successes, "trials": trials,
        "rate": successes / trials if trials else None,
        "ci95": [round(x, 4) for x in interval] if interval else None,
    }  # fmt: skip


def version_figures(answers: list[Answer]) -> dict:
    """One version's figures over every capture."""
    answered = [a for a in answers if a.error is None]
    latencies = np.array([a.latency_ms for a in answers])
    unknown = sum(a.unknown for a in answered)
    return {
        "answered": len(answered),
        "errors": len(answers) - len(answered),
        "unknown": unknown,
        "unknown_rate": unknown / len(answered) if answered else None,
        "mean_score": float(np.mean([a.score for a in answered])) if answered else None,
        "latency_ms": {q: float(np.percentile(latencies, int(q[1:]))) for q in ("p50", "p95")},
        "answers": dict(Counter(a.answer for a in answers)),
    }


def labelled_figures(answers: list[Answer], labels: list[str | None]) -> dict:
    """Accuracy on the reviewed images of the model's classes ("unknown" and errors are
    wrong answers there), and the share answered "unknown" of those reviewed as none."""
    ours = [(a, label) for a, label in zip(answers, labels, strict=True)
            if label not in (None, NOT_OURS)]  # fmt: skip
    not_ours = [a for a, label in zip(answers, labels, strict=True) if label == NOT_OURS]
    return {
        "accuracy": proportion(sum(a.answer == label for a, label in ours), len(ours)),
        "not_ours_unknown": proportion(sum(a.answer == UNKNOWN for a in not_ours), len(not_ours)),
    }


@dataclass
class Comparison:
    """Two versions' answers to the same captures, in capture order."""

    versions: list[str]  # [A, B]
    ids: list[str]  # capture ids
    answers: dict[str, list[Answer]]  # version -> one per capture
    labels: dict[str, str]  # capture id -> reviewed label, where there is one
    images: list[Path]  # the captured bytes, one per capture
    source: dict = field(default_factory=dict)

    def answer_lists(self) -> tuple[list[str], list[str]]:
        a, b = self.versions
        return [x.answer for x in self.answers[a]], [x.answer for x in self.answers[b]]

    @property
    def agree(self) -> list[bool]:
        a, b = self.answer_lists()
        return [x == y for x, y in zip(a, b, strict=True)]

    @property
    def disagreements(self) -> list[str]:
        return [i for i, same in zip(self.ids, self.agree, strict=True) if not same]

    def summary(self) -> dict:
        order, counts = confusion(*self.answer_lists())
        labels = [self.labels.get(i) for i in self.ids]
        figures = {}
        for v in self.versions:
            figures[v] = version_figures(self.answers[v])
            if self.labels:
                figures[v] |= labelled_figures(self.answers[v], labels)
        return {
            "captures": len(self.ids), "agreements": sum(self.agree),
            "agreement": sum(self.agree) / len(self.ids) if self.ids else None,
            "confusion": {"answers": order, "counts": counts},
            "labelled": len(self.labels), "per_version": figures,
        }  # fmt: skip

    def to_dict(self) -> dict:
        captures = [
            {"capture": i, "answers": {v: self.answers[v][n].to_dict() for v in self.versions},
             "agree": same, **({"label": self.labels[i]} if i in self.labels else {})}
            for n, (i, same) in enumerate(zip(self.ids, self.agree, strict=True))
        ]  # fmt: skip
        return {"versions": self.versions, **self.source, "summary": self.summary(),
                "captures": captures, "disagreements": self.disagreements}  # fmt: skip

    def headline(self) -> str:
        a, b = self.versions
        agreed, total = sum(self.agree), len(self.ids)
        return (f"version {a} vs version {b}: {agreed} of {total} captures answered alike "
                f"({agreed / total:.1%}), {total - agreed} disagreements")  # fmt: skip


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def share(figure: dict) -> str:
    """ "12/14 = 85.7% (95% CI 60.1-96.0%)" """
    if not figure["trials"]:
        return "none reviewed"
    low, high = figure["ci95"]
    return (f"{figure['successes']}/{figure['trials']} = {percent(figure['rate'])} "
            f"(95% CI {low:.1%}-{high:.1%})")  # fmt: skip


def figures_table(comparison: Comparison, summary: dict) -> list[str]:
    a, b = comparison.versions
    per = summary["per_version"]
    rows = [
        ("answered", lambda f: str(f["answered"])),
        ("errors", lambda f: str(f["errors"])),
        ('"unknown" rate', lambda f: percent(f["unknown_rate"])),
        ("mean top-1 score", lambda f: score(f["mean_score"])),
        ("latency p50 / p95", lambda f: "{p50:.1f} / {p95:.1f} ms".format(**f["latency_ms"])),
    ]
    if comparison.labels:
        rows += [("accuracy on reviewed images of our classes", lambda f: share(f["accuracy"])),
                 (f'"unknown" on images reviewed {NOT_OURS}',
                  lambda f: share(f["not_ours_unknown"]))]  # fmt: skip
    lines = [f"| | version {a} | version {b} |", "|---|---|---|"]
    return lines + [f"| {name} | {cell(per[a])} | {cell(per[b])} |" for name, cell in rows]


def confusion_table(comparison: Comparison, summary: dict) -> list[str]:
    a, b = comparison.versions
    order, counts = summary["confusion"]["answers"], summary["confusion"]["counts"]
    lines = [f"| v{a} \\ v{b} | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
    for answer, row in zip(order, counts, strict=True):
        cells = [f"**{n}**" if answer == other and n else str(n or ".")
                 for other, n in zip(order, row, strict=True)]  # fmt: skip
        lines.append(f"| {answer} | " + " | ".join(cells) + " |")
    return lines


def shifts_table(comparison: Comparison, summary: dict) -> list[str]:
    """The answers given more or less often by B than by A, the largest changes first."""
    a, b = comparison.versions
    count_a = summary["per_version"][a]["answers"]
    count_b = summary["per_version"][b]["answers"]
    given = answer_order([*count_a, *count_b])
    changed = [x for x in given if count_a.get(x) != count_b.get(x)]
    if not changed:
        return ["Both versions gave every answer equally often."]
    changed.sort(key=lambda x: -abs(count_b.get(x, 0) - count_a.get(x, 0)))
    lines = [f"| answer | version {a} | version {b} | change |", "|---|---|---|---|"]
    for answer in changed:
        x, y = count_a.get(answer, 0), count_b.get(answer, 0)
        lines.append(f"| {answer} | {x} | {y} | {y - x:+d} |")
    same = len(given) - len(changed)
    return lines + (["", f"The other {same} answers were given equally often."] if same else [])


def errors_lines(comparison: Comparison) -> list[str]:
    lines = []
    for v in comparison.versions:
        failed = [(i, x.error) for i, x in zip(comparison.ids, comparison.answers[v], strict=True)
                  if x.error is not None]  # fmt: skip
        for i, error in failed[:5]:
            lines.append(f"- version {v}, capture {i}: {error}")
        if len(failed) > 5:
            lines.append(f"- version {v}: {len(failed) - 5} more (report.json)")
    return lines or ["none"]


def markdown(comparison: Comparison) -> str:
    summary = comparison.summary()
    a, b = comparison.versions
    source = comparison.source
    lines = [
        f"# Version {a} vs version {b} on captured traffic", "",
        f"{summary['captures']} captures from `{source.get('captured')}`, replayed to the store "
        f"`{source.get('store')}` repository `{source.get('repository')}`, one request per "
        f"image, each version served alone; {summary['labelled']} reviewed.", "",
        f"**{comparison.headline()}** (disagreements.png shows them).", "",
        *figures_table(comparison, summary), "",
        f"## Answers: version {a} (rows) against version {b} (columns)", "",
        *confusion_table(comparison, summary), "",
        "## Per-class shifts: answers given more or less often", "",
        *shifts_table(comparison, summary), "",
        "## Errors", "", *errors_lines(comparison), "",
    ]  # fmt: skip
    return "\n".join(lines)


def title(version: str, answer: Answer) -> str:
    if answer.error is not None:
        return f"v{version}: error"
    said = f"{answer.label} ({answer.score:.2f})"
    return f"v{version}: unknown, {said}" if answer.unknown else f"v{version}: {said}"


def picture(comparison: Comparison, path: Path) -> int:
    """A grid of the disagreeing images, each titled with both answers; returns how many
    it shows (undecodable bytes are left out)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt
    from PIL import Image

    a, b = comparison.versions
    shown = []
    for n, same in enumerate(comparison.agree):
        if same or len(shown) == MOST_PICTURED:
            continue
        try:
            with Image.open(io.BytesIO(comparison.images[n].read_bytes())) as image:
                pixels = np.asarray(image.convert("RGB"))
        except Exception:  # noqa: BLE001 - any bytes Pillow cannot read are left out
            continue
        reviewed = comparison.labels.get(comparison.ids[n])
        text = [title(v, comparison.answers[v][n]) for v in (a, b)]
        shown.append((pixels, "\n".join(text + ([f"reviewed: {reviewed}"] if reviewed else []))))
    columns = min(6, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (pixels, text) in zip(axes.flat, shown, strict=False):
        axis.imshow(pixels)
        axis.set_title(text, fontsize=8)
    if not shown:
        axes[0][0].text(0.5, 0.5, "no disagreement to show", ha="center", va="center")
    figure.suptitle(f"version {a} vs {b}: {len(shown)} of {len(comparison.disagreements)} "
                    "disagreements", fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return len(shown)


def write_report(comparison: Comparison, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
    (out / "report.md").write_text(markdown(comparison))
    picture(comparison, out / "disagreements.png")
