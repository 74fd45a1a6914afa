"""From unit times to a whole network's latency: the median, the p90 and the best case.

A unit measured alone, back to back, runs with its weights and input hot in cache and at the
host's quietest; a network runs its units one after another, each reading weights the others
pushed out, and its runs meet the host's neighbours. So a network's latency is fitted on whole
networks measured on the device, of every size the space holds, each in several *sittings*
spread over the collection (their runs pooled: the statistic a user measures, not one quiet
moment):

    median ≈ a · Σ unit medians + b · (weight MB) + c · (units) + d

(a, b, d ≥ 0; c, the time per unit, may be negative: a unit run alone pays a call into the
runtime and a network pays one for all its units)
    p90    ≈ median · exp(α + β · ln median)
    best   ≈ a' · Σ unit minima + ... (the same terms, fitted on the networks' minima)

Which terms enter is decided by leave-one-out error, an architecture left out with all its
resolutions (a term that only fits noise on a few dozen networks makes left-out networks
worse), and the left-out errors are kept: they give
every prediction its interval, and their trend against network size is reported (a model whose
error grows with the network says so; it is not absorbed into the constant).

Intervals: the 2.5–97.5 % quantiles of the relative errors of left-out networks (Student's t
on their mean and spread when there are fewer than 40), or of ``lut evaluate``'s networks once
the table has been evaluated on the device (:meth:`NetworkModel.interval`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import EdgepipeError

# candidate term sets, in the order of preference when two are as good (fewer terms first)
TERMS = ("units", "weights_mb", "count", "one")
CANDIDATES = (("units",), ("units", "one"), ("units", "count"), ("units", "weights_mb"),
              ("units", "weights_mb", "one"), ("units", "count", "one"),
              ("units", "weights_mb", "count"), ("units", "weights_mb", "count", "one"))
STATISTICS = ("median", "p90", "best")


def architecture_group(arch: dict[str, Any]) -> str:
    """What an architecture's networks share at every resolution (an ``Architecture.to_dict``
    without its resolution): the group a cross-validation leaves out together."""
    return json.dumps(arch["network"], sort_keys=True)


@dataclass
class NetworkFeatures:
    """What the model reads of a network: Σ unit medians and minima (ms), weights read per
    inference (MB), unit count."""

    units_ms: float
    units_min_ms: float
    weights_mb: float
    count: int

    def row(self, terms: tuple[str, ...], best: bool = False) -> list[float]:
        values = {"units": self.units_min_ms if best else self.units_ms,
                  "weights_mb": self.weights_mb, "count": float(self.count), "one": 1.0}
        return [values[t] for t in terms]


@dataclass
class Fit:
    terms: tuple[str, ...]
    coef: tuple[float, ...]
    loo_errors: list[float]  # relative errors of left-out networks, (predicted - measured) / m

    def apply(self, f: NetworkFeatures, best: bool = False) -> float:
        return float(np.dot(self.coef, f.row(self.terms, best)))


def _lsq_relative(x: np.ndarray, y: np.ndarray, terms: tuple[str, ...]) -> np.ndarray:
    """Least squares of relative error (every network counts the same), every coefficient
    non-negative but the per-unit one."""
    from scipy.optimize import lsq_linear

    low = [-np.inf if t == "count" else 0.0 for t in terms]
    return lsq_linear(x / y[:, None], np.ones_like(y), bounds=(low, np.inf)).x


def fit_terms(features: list[NetworkFeatures], measured: list[float], best: bool = False,
              groups: list[Any] | None = None) -> Fit:
    """The smallest term set whose leave-one-out RMSE (relative) is within one standard error
    of the best set's (the one-standard-error rule: Breiman et al. 1984, Hastie et al., *The
    Elements of Statistical Learning*, 7.10), fitted on all networks.

    Networks measured on a shared host carry a few % of noise each: on 30 of them a term that
    lowered the left-out RMSE by 10 % (4.5 → 4.1 %) made 200 other networks worse (84 % within
    ±10 % against 91 % without it), so a term must do better than the RMSE's own uncertainty,
    about RMSE / √(2n).

    ``groups``: networks that share a group are left out together (one architecture at each
    of its resolutions: its weights and unit count are the same at every one, so leaving out
    one resolution at a time let an int8 table's model fit per-architecture constants on 6
    architectures, 18 networks: ``-1.35 ms per unit + 13.2 ms``, left-out RMSE 11 %, and it
    predicted other architectures down to -169 %). Default: each network its own group."""
    y = np.asarray(measured, float)
    n = len(y)
    labels = np.array([str(g) for g in groups] if groups is not None else
                      [str(i) for i in range(n)])
    distinct = list(dict.fromkeys(labels))
    candidates = [c for c in CANDIDATES if len(c) <= max(1, len(distinct) - 2)]
    best_fit = None
    scored: list[tuple[float, tuple[str, ...], list[float]]] = []
    for terms in candidates:
        x = np.array([f.row(terms, best) for f in features])
        errors = np.full(n, np.nan)
        for g in distinct:
            keep = labels != g
            if keep.sum() < len(terms):
                break
            coef = _lsq_relative(x[keep], y[keep], terms)
            errors[~keep] = x[~keep] @ coef / y[~keep] - 1
        if np.isnan(errors).any():
            continue
        scored.append((math.sqrt(float(np.mean(np.square(errors)))), terms,
                       [float(e) for e in errors]))
    if scored:
        lowest = min(rmse for rmse, _, _ in scored)
        within = lowest * (1 + 1 / math.sqrt(2 * len(distinct)))
        # CANDIDATES run from the fewest terms up: the first within one standard error
        best_fit = next(c for c in scored if c[0] <= within)
    if best_fit is None:  # a single network: the units' scale alone
        terms = ("units",)
        x = np.array([f.row(terms, best) for f in features])
        return Fit(terms, tuple(float(c) for c in _lsq_relative(x, y, terms)), [])
    _, terms, errors = best_fit
    x = np.array([f.row(terms, best) for f in features])
    return Fit(terms, tuple(float(c) for c in _lsq_relative(x, y, terms)), errors)


def fit_p90_ratio(medians: list[float], p90s: list[float]) -> tuple[tuple[float, float],
                                                                     list[float]]:
    """ln(p90 / median) = α + β · ln(median), β kept only where leave-one-out says it helps;
    (α, β) and the left-out relative errors of p90 predicted from the measured median."""
    m, r = np.log(np.asarray(medians)), np.log(np.asarray(p90s) / np.asarray(medians))
    n = len(m)

    def loo(with_slope: bool) -> list[float]:
        errors = []
        for i in range(n):
            keep = np.arange(n) != i
            if with_slope and keep.sum() >= 3:
                beta, alpha = np.polyfit(m[keep], r[keep], 1)
            else:
                alpha, beta = float(np.mean(r[keep])) if keep.any() else 0.0, 0.0
            errors.append(float(math.exp(alpha + beta * m[i] - r[i]) - 1))
        return errors

    flat = loo(False)
    sloped = loo(True) if n >= 5 else None
    if sloped is not None and _rmse(sloped) < 0.98 * _rmse(flat):
        beta, alpha = np.polyfit(m, r, 1)
        return (float(alpha), float(beta)), sloped
    return (float(np.mean(r)) if n else 0.0, 0.0), flat


def _rmse(errors: list[float]) -> float:
    return math.sqrt(float(np.mean(np.square(errors)))) if errors else float("nan")


def size_trend(errors: list[float], measured: list[float]) -> dict[str, float] | None:
    """How the relative error moves with network size: percentage points per doubling of the
    measured latency (least squares on log2 size) and the correlation."""
    if len(errors) < 5:
        return None
    x, e = np.log2(np.asarray(measured)), np.asarray(errors) * 100
    if np.ptp(x) == 0:
        return None
    slope = float(np.polyfit(x, e, 1)[0])
    corr = float(np.corrcoef(x, e)[0, 1])
    return {"pct_per_doubling": slope, "correlation": corr}


def error_summary(errors: list[float], measured: list[float] | None = None) -> dict[str, Any]:
    """Shares within ±5/±10 %, RMSE, mean, worst and the interval quantiles (relative, %)."""
    e = np.asarray(errors) * 100
    if not len(e):
        return {"count": 0}
    lo, hi = interval_quantiles(list(e / 100))
    out = {"count": len(e), "within_5pct": float(np.mean(np.abs(e) <= 5)),
           "within_10pct": float(np.mean(np.abs(e) <= 10)), "rmse_pct": _rmse(list(e)),
           "mean_error_pct": float(e.mean()), "max_abs_error_pct": float(np.abs(e).max()),
           "interval_pct": [lo * 100, hi * 100]}
    if measured is not None:
        out["size_trend"] = size_trend(errors, measured)
    return out


def interval_quantiles(errors: list[float], level: float = 0.95) -> tuple[float, float]:
    """(low, high) relative errors that hold ``level`` of predictions: empirical quantiles
    from 40 networks up, else Student's t on the errors' mean and spread (prediction
    interval for one new network)."""
    e = np.asarray(errors, float)
    if len(e) >= 40:
        tail = (1 - level) / 2 * 100
        return float(np.percentile(e, tail)), float(np.percentile(e, 100 - tail))
    if len(e) < 3:
        return float("-inf"), float("inf")
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(e) - 1) * e.std(ddof=1) * math.sqrt(1 + 1 / len(e)))
    return float(e.mean() - half), float(e.mean() + half)


@dataclass
class NetworkModel:
    """Fitted per statistic on the networks measured whole (``networks``: name, features,
    measured median/p90/min in ms, sittings). ``evaluation``: the last ``lut evaluate`` on the
    device (its errors supersede the left-out ones for intervals)."""

    median: Fit
    best: Fit
    p90_ratio: tuple[float, float]
    p90_loo_errors: list[float]
    networks: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None

    @classmethod
    def fit(cls, networks: list[dict[str, Any]]) -> NetworkModel:
        """``networks``: dicts with ``features`` (NetworkFeatures fields) and ``median_ms``,
        ``p90_ms``, ``min_ms`` measured (runs of every sitting pooled)."""
        feats = [NetworkFeatures(**n["features"]) for n in networks]
        medians = [n["median_ms"] for n in networks]
        # an architecture at all its resolutions is left out at once (see fit_terms)
        groups = [architecture_group(n["arch"]) if "arch" in n else i
                  for i, n in enumerate(networks)]
        median = fit_terms(feats, medians, groups=groups)
        best = fit_terms(feats, [n["min_ms"] for n in networks], best=True, groups=groups)
        ratio, ratio_errors = fit_p90_ratio(medians, [n["p90_ms"] for n in networks])
        # the p90's own left-out error: the left-out median's error and the ratio's together
        p90_errors = [(1 + a) * (1 + b) - 1 for a, b in zip(median.loo_errors, ratio_errors,
                                                            strict=False)]
        return cls(median, best, ratio, p90_errors, networks)

    def predict(self, f: NetworkFeatures) -> dict[str, float]:
        """Median, p90 and best case (ms). Raises :class:`EdgepipeError` where the median
        comes out at or below zero: a network far outside those the model was fitted on,
        which no number would describe honestly."""
        median = self.median.apply(f)
        if median <= 0:
            raise EdgepipeError(
                f"the table's network model predicts {median:.3f} ms for a network whose "
                f"units sum to {f.units_ms:.3f} ms: it lies outside the {len(self.networks)} "
                "networks the model was fitted on; collect the table again (`lut collect "
                "--calibration` more networks) or adapt it with more `--networks`")
        alpha, beta = self.p90_ratio
        p90 = median * math.exp(alpha + beta * math.log(max(median, 1e-6)))
        return {"median": median, "p90": max(p90, median), "best": self.best.apply(f, True)}

    def errors(self, statistic: str) -> tuple[list[float], str]:
        """The relative errors an interval is drawn from, and where they come from."""
        ev = self.evaluation or {}
        if ev.get(statistic, {}).get("errors"):
            return ev[statistic]["errors"], (
                f"`lut evaluate` on {len(ev[statistic]['errors'])} networks measured on the "
                "device")
        loo = {"median": self.median.loo_errors, "p90": self.p90_loo_errors,
               "best": self.best.loo_errors}[statistic]
        return loo, f"the table's cross-validation on {len(loo)} networks (each architecture " \
                    "left out in turn)"

    def interval(self, statistic: str, value: float, extra_pct: float = 0.0
                 ) -> tuple[float, float, str]:
        """95 % interval of a predicted ``value``: what the measured value is, given the
        errors predictions of this table made. ``extra_pct``: a further relative error to
        widen it by (units estimated from their neighbours' channels)."""
        errors, source = self.errors(statistic)
        lo, hi = interval_quantiles(errors)
        widen = extra_pct / 100
        lo, hi = lo - widen, hi + widen
        # predicted = measured · (1 + e)  ⇒  measured = predicted / (1 + e)
        low = value / (1 + hi) if 1 + hi > 0 else 0.0
        high = value / (1 + lo) if 1 + lo > 0 else float("inf")
        return low, high, source

    def describe(self) -> str:
        def words(fit: Fit, units: str) -> str:
            parts = []
            for t, c in zip(fit.terms, fit.coef, strict=True):
                parts.append({"units": f"{c:.3f} × Σ unit {units}",
                              "weights_mb": f"{c * 1000:.1f} µs per MB of weights",
                              "count": f"{c * 1000:+.1f} µs per unit",
                              "one": f"{c:.3f} ms"}[t])
            return " ".join(p if i == 0 or p.startswith(("+", "-")) else f"+ {p}"
                            for i, p in enumerate(parts))

        alpha, beta = self.p90_ratio
        ratio = f"×{math.exp(alpha):.3f}" + (f" · median^{beta:.3f}" if beta else "")
        return (f"median ≈ {words(self.median, 'medians')}; p90 ≈ median {ratio}; best case ≈ "
                f"{words(self.best, 'minima')} (fitted on {len(self.networks)} networks)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkModel:
        def fit(d: dict[str, Any]) -> Fit:
            return Fit(tuple(d["terms"]), tuple(d["coef"]), list(d["loo_errors"]))

        return cls(fit(data["median"]), fit(data["best"]), tuple(data["p90_ratio"]),
                   list(data["p90_loo_errors"]), list(data.get("networks", [])),
                   data.get("evaluation"))
