"""Is B slower than A? The ratio of medians, with an interval, from several sittings.

A result is measured in sittings (``[measure] repeat``): each sitting is a job of its own, its
runs back to back. Run times within a sitting are close; sittings differ more, because the
device itself moves between them (clocks, heat, on a shared host its neighbours). The model
is the two-level one of Kalibera and Jones ("Rigorous benchmarking in reasonable time", 2013):

    log t[s, r] = μ_side + b[s] + e[s, r]

with a random effect ``b`` per sitting. Each sitting is summarised by the log of its median
run time (robust to a run's outliers); the difference of the two sides' mean log medians
estimates log(B/A), and its interval is Student's t on those sitting-level values with the
variance pooled over both sides: the model has one sitting variance for the device (the same
device, the same protocol on both sides), and Welch's separate variances collapse to one
degree of freedom when one side's few sittings happen to agree. For a random-intercept mixed
model this summary-statistics route is its REML estimate for balanced sittings (and nearly so
otherwise), and the run-level noise is in it through each sitting's median.

Why not a bootstrap over sittings and runs: with the three to five sittings one affords per
result, resampling sittings has 10 to 126 distinct outcomes, and its percentile interval is
too narrow by about (n − 1)/n in variance before the discreteness; the t interval pays for few
sittings honestly (×2.78 for 2 + 2 … ×2.45 for 3 + 3, against 1.96).

Drift: where every sitting carries a reference (:mod:`.reference`), each sitting has an
offset, how much slower the device ran the sentinels then than on average over both sides
(the median over sentinels of their centred log times). When the offsets of B's sittings
differ from A's beyond the references' own noise (Student's t on the offsets, at the same
level), the device itself had moved between the two (heat, clocks, a firmware), and that
difference is divided out (the latency tables' ``--rescale`` assumption: a device that runs
its sentinels 8 % slower runs everything 8 % slower), its own uncertainty added to the
interval. Sitting by sitting the offsets are not used: on this shared host the sentinels
caught a neighbour's burst that the sitting after them did not (dividing each sitting by its
own offset doubled the intervals), while a device that moved between two runs moves every
sitting's references alike.

Disturbed sittings: a disturbance only ever adds time (the rule the latency tables' sentinels
keep the faster pass by). On a loaded shared host one sitting in three ran 20-50 % slow, its
fastest runs too (the whole sitting fell in a neighbour's burst), and one such sitting makes
any interval useless. So a sitting more than ``disturbed_pct`` (5 %, the tables' limit) above
the fastest sitting of its side is left out, as long as two sittings remain (said). A side of
one sitting borrows the other side's sitting noise; two sides of one sitting each have only
their runs, and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEVEL = 0.95
DISTURBED_PCT = 5.0


def sitting_median(s: dict[str, Any]) -> float:
    raw = s.get("raw_ms")
    return float(np.median(raw)) if raw else float(s["median_ms"])


def drift_offsets(sittings: list[dict[str, Any]]) -> np.ndarray | None:
    """Per sitting, log(how much slower the device ran the reference sentinels then than on
    average over these sittings); None unless every sitting has a reference with common
    sentinels."""
    refs = [(s.get("reference") or {}).get("sentinels") for s in sittings]
    if not refs or any(not r for r in refs):
        return None
    names = sorted(set.intersection(*(set(r) for r in refs)))
    if not names:
        return None
    logs = np.log([[r[n] for n in names] for r in refs])
    return np.median(logs - logs.mean(axis=0), axis=1)


def _median_log_se(raw: list[float]) -> float:
    """Standard error of log(median) of one sitting's runs (order statistics, 95 % CI / 2·1.96)."""
    ordered = np.sort(np.asarray(raw, float))
    n = ordered.size
    spread = 1.96 * math.sqrt(n) / 2
    lo, hi = int(max(0, n / 2 - spread)), int(min(n - 1, n / 2 + spread))
    return float((math.log(ordered[hi]) - math.log(ordered[lo])) / (2 * 1.96))


@dataclass
class Comparison:
    ratio: float  # B / A of the medians (drift removed where references exist)
    low: float  # its interval
    high: float
    level: float
    sittings: tuple[int, int]
    df: float
    drift_corrected: bool
    drift_pct: list[float] = field(default_factory=list)  # per sitting, A's then B's
    basis: str = ""  # what the interval covers, in words
    significant: bool = False
    left_out: tuple[int, int] = (0, 0)  # disturbed sittings left out of each side

    @property
    def change_pct(self) -> float:
        return (self.ratio - 1) * 100

    def verdict(self) -> str:
        """"slower by 4.1 % (2.3–5.9 %)", "faster by …", or no difference."""
        lo, hi = (self.low - 1) * 100, (self.high - 1) * 100
        if self.low > 1:
            return f"slower by {self.change_pct:.1f} % ({lo:.1f}–{hi:.1f} %)"
        if self.high < 1:
            return f"faster by {-self.change_pct:.1f} % ({-hi:.1f}–{-lo:.1f} %)"
        return (f"no difference beyond the noise of this device (B/A ×{self.ratio:.3f}, "
                f"{self.level:.0%} interval {lo:+.1f} to {hi:+.1f} %)")

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "low": self.low, "high": self.high, "level": self.level,
                "sittings": list(self.sittings), "df": self.df,
                "drift_corrected": self.drift_corrected, "drift_pct": self.drift_pct,
                "basis": self.basis, "significant": self.significant,
                "left_out": list(self.left_out), "verdict": self.verdict()}


def between_sides(da: np.ndarray, db: np.ndarray, level: float = LEVEL
                  ) -> tuple[float, float] | None:
    """How much slower (log) the device ran its references during B's sittings than during
    A's, and that figure's standard error; None unless the references themselves tell it
    apart from their own noise (at ``level``), with at least two sittings a side."""
    from scipy import stats

    if len(da) < 2 or len(db) < 2:
        return None
    gap = float(db.mean() - da.mean())
    df = len(da) + len(db) - 2
    spread = (((da - da.mean()) ** 2).sum() + ((db - db.mean()) ** 2).sum()) / df
    gap_se = math.sqrt(spread * (1 / len(da) + 1 / len(db)))
    if abs(gap) <= stats.t.ppf(0.5 + level / 2, df) * gap_se:
        return None
    return gap, gap_se


def undisturbed(logs: np.ndarray, limit_pct: float = DISTURBED_PCT) -> np.ndarray:
    """Which sittings count: those within ``limit_pct`` of the side's fastest, at least two
    (the two fastest when fewer are that close)."""
    keep = logs - logs.min() <= math.log1p(limit_pct / 100)
    if keep.sum() < min(2, logs.size):
        keep = np.zeros(logs.size, bool)
        keep[np.argsort(logs)[:2]] = True
    return keep


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], correct_drift: bool = True,
            level: float = LEVEL, disturbed_pct: float | None = DISTURBED_PCT) -> Comparison:
    """B against A from their sittings (``raw_ms`` or ``median_ms``, optional ``reference``):
    see the module doc. Raises ValueError when a side has no sitting."""
    from scipy import stats

    if not a or not b:
        raise ValueError("each side needs at least one sitting")
    ya = np.log([sitting_median(s) for s in a])
    yb = np.log([sitting_median(s) for s in b])
    offsets = drift_offsets(a + b) if correct_drift else None
    da = db = None
    if offsets is not None:
        da, db = offsets[:len(a)], offsets[len(a):]
    left_out = (0, 0)
    if disturbed_pct is not None:
        ka, kb = undisturbed(ya, disturbed_pct), undisturbed(yb, disturbed_pct)
        left_out = (int((~ka).sum()), int((~kb).sum()))
        ya, yb = ya[ka], yb[kb]
        if da is not None:
            da, db = da[ka], db[kb]
    na, nb = len(ya), len(yb)
    estimate = float(yb.mean() - ya.mean())
    if na >= 2 and nb >= 2:  # one sitting variance for the device: pooled (Student's t)
        pooled = (((ya - ya.mean()) ** 2).sum() + ((yb - yb.mean()) ** 2).sum()) / (na + nb - 2)
        se = math.sqrt(pooled * (1 / na + 1 / nb))
        df = na + nb - 2
        basis = f"{na} + {nb} sittings"
    elif na + nb >= 3:
        many = ya if na >= 2 else yb
        pooled = many.var(ddof=1)
        se = math.sqrt(pooled * (1 / na + 1 / nb))
        df = len(many) - 1
        basis = (f"{na} + {nb} sittings: the side of one sitting takes the other's noise "
                 "between sittings")
    else:
        se = math.hypot(*(_median_log_se(s["raw_ms"]) if s.get("raw_ms") else 0.0
                          for s in (a[0], b[0])))
        df = math.inf
        basis = ("one sitting each: the interval covers the runs only, not the device's noise "
                 "between sittings (measure with repeat = 3 or more)")
    corrected = False
    if da is not None and db is not None:
        shift = between_sides(da, db, level)
        if shift is not None:  # B's sittings met a device that ran slower (or faster)
            gap, gap_se = shift
            estimate -= gap
            se = math.hypot(se, gap_se)
            corrected = True
            basis += (f"; the device ran its reference sentinels {math.expm1(gap) * 100:+.1f} % "
                      "during B's sittings against A's: divided out")
        else:
            basis += "; no drift between A's and B's sittings beyond the references' noise"
    t = stats.t.ppf(0.5 + level / 2, max(df, 1.0)) if math.isfinite(df) else \
        stats.norm.ppf(0.5 + level / 2)
    low, high = math.exp(estimate - t * se), math.exp(estimate + t * se)
    drift = [] if offsets is None else [float((math.exp(o) - 1) * 100) for o in offsets]
    if any(left_out):
        basis += (f"; disturbed sittings left out (over {disturbed_pct:g} % above their "
                  f"side's fastest): {left_out[0]} of A's, {left_out[1]} of B's")
    return Comparison(math.exp(estimate), low, high, level, (na, nb), float(df),
                      corrected, drift, basis, low > 1 or high < 1, left_out)
