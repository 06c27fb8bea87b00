"""The benchmark's results as plain values: samples, their summary, goals and verdicts.

Everything here is pure (no clock, no I/O) so the report code is tested on its own. A result is
one figure measured for one system (veil, OVN, plain OVS); a comparison is a goal on the ratio
of two results of the same run, which is the only thing that counts on a noisy shared machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Stat = Literal["median", "p95", "p99", "max", "min", "mean"]
Op = Literal["<=", ">=", "<"]
Verdict = Literal["pass", "miss", "n/a", "info"]
STATS: tuple[Stat, ...] = ("median", "p95", "p99", "max", "min", "mean")


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p% of samples <= it."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is not in (0, 100]")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(samples: Sequence[float]) -> float:
    """The usual median (mean of the two middle samples for an even count)."""
    if not samples:
        raise ValueError("median of no samples")
    s = sorted(samples)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p95: float
    p99: float
    max: float
    min: float | None = None  # None when only percentiles were reported (fig 1)
    mean: float | None = None

    def get(self, stat: Stat) -> float:
        value: float | None = getattr(self, stat)
        if value is None:
            raise ValueError(f"{stat} was not reported")
        return value


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("summary of no samples")
    return Summary(
        n=len(samples), median=median(samples), p95=percentile(samples, 95),
        p99=percentile(samples, 99), max=max(samples), min=min(samples),
        mean=sum(samples) / len(samples),
    )


def max_gap(timestamps: Sequence[float]) -> float:
    """The longest interval between consecutive timestamps (an outage as replies saw it)."""
    if len(timestamps) < 2:
        raise ValueError("a gap needs at least two timestamps")
    ordered = sorted(timestamps)
    return max(b - a for a, b in zip(ordered, ordered[1:]))


def _compare(value: float, op: Op, limit: float) -> bool:
    if op == "<=":
        return value <= limit
    if op == "<":
        return value < limit
    return value >= limit


@dataclass(frozen=True)
class Goal:
    """``stat`` of the samples must be ``op`` ``limit`` (in the result's unit)."""

    stat: Stat
    op: Op
    limit: float

    def text(self, unit: str) -> str:
        return f"{self.stat} {self.op} {self.limit:g} {unit}".strip()


@dataclass(frozen=True)
class Result:
    """One figure for one system. ``error`` set means it could not be measured (and why)."""

    figure: str  # "2", "3a", ...
    title: str
    system: str  # "veil", "ovn", "plain"
    unit: str
    samples: tuple[float, ...] = ()
    goals: tuple[Goal, ...] = ()
    method: str = ""
    notes: str = ""
    error: str | None = None
    extra: Mapping[str, float] = field(default_factory=dict)
    reported: Summary | None = None  # a summary measured elsewhere, when raw samples are not given

    @property
    def key(self) -> tuple[str, str]:
        return (self.figure, self.system)

    @property
    def summary(self) -> Summary | None:
        if self.error is not None:
            return None
        return summarize(self.samples) if self.samples else self.reported

    def verdicts(self) -> list[tuple[Goal, Verdict]]:
        s = self.summary
        return [(g, "n/a" if s is None else ("pass" if _compare(s.get(g.stat), g.op, g.limit) else "miss"))
                for g in self.goals]


@dataclass(frozen=True)
class Comparison:
    """``stat`` of (figure, system) divided by the same of (figure, against) must be ``op`` limit;
    ``against_figure`` compares with another figure of the same run instead (e.g. the hook's
    parallel case against its sequential one)."""

    figure: str
    system: str
    against: str
    stat: Stat
    op: Op | None = None  # None: the ratio is reported, there is no goal on it
    limit: float = 1.0
    against_figure: str | None = None

    def ratio(self, results: Mapping[tuple[str, str], Result]) -> float | None:
        a = results.get((self.figure, self.system))
        b = results.get((self.against_figure or self.figure, self.against))
        sa, sb = (a.summary if a else None), (b.summary if b else None)
        if sa is None or sb is None:
            return None
        x, y = sa.get(self.stat), sb.get(self.stat)
        if x < 0 or y <= 0:
            # a quantity that can be negative (fig 3c: outage minus QEMU's downtime) has no
            # meaningful ratio: the report shows both values, not a quotient of signs
            return None
        return x / y

    def verdict(self, results: Mapping[tuple[str, str], Result]) -> Verdict:
        r = self.ratio(results)
        if r is None:
            return "n/a"
        if self.op is None:
            return "info"
        return "pass" if _compare(r, self.op, self.limit) else "miss"

    def text(self) -> str:
        goal = f" {self.op} {self.limit:g}x" if self.op else ""
        against = f"{self.against} fig {self.against_figure}" if self.against_figure else self.against
        return f"{self.system}/{against} {self.stat}{goal}"


def index(results: Iterable[Result]) -> dict[tuple[str, str], Result]:
    """Results by (figure, system); a duplicate is a harness bug."""
    out: dict[tuple[str, str], Result] = {}
    for r in results:
        if r.key in out:
            raise ValueError(f"figure {r.figure} measured twice for {r.system}")
        out[r.key] = r
    return out
