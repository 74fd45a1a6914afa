"""Predictions from a table: median, p90 and best case, each with its interval and provenance.

A search that shrinks layers (NetAdapt) or scales widths asks for channel counts no table
enumerates (every expansion from 8 to 576 in steps of 8, at every position, is tens of
thousands of units). A missing unit is estimated from the unit of the same shape (kind, input
size, kernel, stride, SE, activation) nearest in channels, scaled by a cost model:
latency ≈ a·(1x1 and dense MACs) + b·(depthwise MACs) + c·(elements written) + d, fitted on
the whole table. The neighbour carries what the cost model misses (XNNPACK's per-shape
efficiency); the model only carries the difference in channels. A unit of a shape the table
never held (another resolution, kernel...) is refused: that is another space.

Every :class:`Prediction` says which statistic it is, how it was obtained (the table, measured
or transferred units, estimated units) and the interval the table's own errors give it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import EdgepipeError
from ..models.space import Architecture
from .features import cost_features, unit_from_key
from .table import LatencyTable, boundary_melements
from .units import Unit, units_of

__all__ = ["Estimator", "Prediction", "cost_features", "unit_from_key"]

STATISTIC_WORDS = {"median": "median", "p90": "p90 (90th percentile of runs)",
                   "best": "best case (fastest run)"}


@dataclass
class Prediction:
    """A network's predicted latency on the table's device, in ms.

    ``median``/``p90``/``best``: the statistics of the network's runs predicted (``p90`` and
    ``best`` are None for a format-2 table, which has no model of them); ``intervals``: the
    95 % interval of each, from the table's own errors (``interval_source``); the shares of the
    predicted unit time that was measured on this device, transferred from another table
    (``lut adapt``) or estimated from units of other channel counts; ``factor``: the drift
    correction applied (``--rescale``).
    """

    median: float
    p90: float | None
    best: float | None
    intervals: dict[str, tuple[float, float]]
    interval_source: str
    measured_share: float
    transferred_share: float
    estimated_share: float
    factor: float = 1.0

    def words(self, statistics: tuple[str, ...] = ("median",)) -> str:
        parts = []
        for name in statistics:
            value = getattr(self, name)
            if value is None:
                parts.append(f"{STATISTIC_WORDS[name]}: not available (a format-2 table has "
                             "no model of it: collect the table again)")
                continue
            bounds = self.intervals.get(name)
            if bounds is None:
                span = f" (no interval: {self.interval_source})"
            elif not math.isfinite(bounds[1]):
                span = " (no interval: too few networks measured whole)"
            else:
                span = f" (95 % interval {bounds[0]:.3f}–{bounds[1]:.3f} ms)"
            parts.append(f"{STATISTIC_WORDS[name]} {value:.3f} ms{span}")
        made = []
        if self.transferred_share > 0:
            made.append(f"{self.transferred_share:.0%} of its unit time transferred from "
                        "another table")
        if self.estimated_share > 0:
            made.append(f"{self.estimated_share:.0%} estimated from units of other channel "
                        "counts")
        made_words = f"; {', '.join(made)}" if made else ""
        source = f"; intervals from {self.interval_source}" if self.intervals else ""
        return f"{'; '.join(parts)}{source}{made_words}"

    def to_dict(self) -> dict:
        return asdict(self)


def _shape_key(u: Unit) -> tuple:
    """What must match for a neighbour: everything but the channel counts."""
    if u.kind == "ir":
        p = u.params
        return ("ir", u.hw, p[1], p[6], p[4], p[5], p[2] != p[0])
    if u.kind == "head":  # one linear layer (V2) or two (V3): different layers, not channels
        return ("head", u.hw, u.params[3] is None, u.params[2])
    if u.kind == "stem":  # V3's h-swish stem is not V2's ReLU6 one
        return ("stem", u.hw, u.params[2])
    return (u.kind, u.hw)


def _channels(u: Unit) -> tuple[int, ...]:
    return tuple(v for v in u.params if isinstance(v, int) and not isinstance(v, bool)) \
        if u.kind != "ir" else (u.params[0], u.params[2], u.params[3])


class Estimator:
    """Predicts any network of the table's block vocabulary, the table's units where it has
    them.

    ``factor`` multiplies every prediction: the drift a check of the table measured on the
    device (``--rescale``); ``provenance`` is how the table was checked (recorded with the
    predictions, see :class:`.sentinels.TableUse`).
    """

    def __init__(self, table: LatencyTable, factor: float = 1.0,
                 provenance: dict | None = None) -> None:
        self.table = table
        self.factor = factor
        self.provenance = provenance
        units = [u for u in (unit_from_key(k) for k in table.units) if u is not None]
        self._by_shape: dict[tuple, list[Unit]] = defaultdict(list)
        for u in units:
            self._by_shape[_shape_key(u)].append(u)
        self.coef = _fit(units, [table.unit_ms(u.key) for u in units])
        self._cache: dict[str, tuple[float, float, str]] = {}
        self._estimate_error: float | None = None

    def model_ms(self, u: Unit) -> float:
        return float(np.dot(self.coef, [*cost_features(u), 1.0]))

    def unit_ms(self, u: Unit) -> tuple[float, bool]:
        """(milliseconds as the table's statistic, measured on the device or transferred?)"""
        median, minimum, source = self.unit_times(u)
        return (minimum if self.table.statistic == "min_ms" else median), source != "estimated"

    def unit_times(self, u: Unit) -> tuple[float, float, str]:
        """(median ms, minimum ms, source): source is "measured", "transferred" (a unit of
        an adapted table) or "estimated" (from the nearest unit of other channel counts)."""
        entry = self.table.units.get(u.key)
        if entry is not None:
            return (entry["median_ms"], entry.get("min_ms", entry["median_ms"]),
                    entry.get("source", "measured"))
        if u.key not in self._cache:
            near = self._nearest(u)
            scale = self.model_ms(u) / self.model_ms(near)
            n = self.table.units[near.key]
            self._cache[u.key] = (n["median_ms"] * scale,
                                  n.get("min_ms", n["median_ms"]) * scale, "estimated")
        return self._cache[u.key]

    def _nearest(self, u: Unit, exclude: str | None = None) -> Unit:
        near = [n for n in self._by_shape.get(_shape_key(u), []) if n.key != exclude]
        if not near:  # another resolution, kernel, activation...: nothing to scale from
            raise EdgepipeError(
                f"the latency table has no entry for {u.key}, nor any unit of its shape (only "
                "channel counts are estimated): it was collected for another search space; "
                "collect one for this space with `edgepipe lut collect`")
        mine = _channels(u)
        return min(near, key=lambda n: sum(abs(math.log(a / b))
                                           for a, b in zip(_channels(n), mine, strict=True)))

    def estimate_error(self) -> float:
        """Relative RMS error of a channel estimate, from the table itself: each of up to 300
        units estimated from its nearest other unit of the same shape."""
        if self._estimate_error is None:
            errors = []
            for group in self._by_shape.values():
                for u in group[:: max(1, len(self.table.units) // 300)]:
                    if len(group) < 2:
                        continue
                    near = self._nearest(u, exclude=u.key)
                    guess = self.table.unit_ms(near.key) * self.model_ms(u) / self.model_ms(near)
                    errors.append(guess / self.table.unit_ms(u.key) - 1)
            self._estimate_error = float(np.sqrt(np.mean(np.square(errors)))) if errors \
                else 0.5
        return self._estimate_error

    def predict(self, arch: Architecture) -> float:
        """The predicted median (ms; format 2: the statistic its fit was made on), times
        ``factor``: what a search compares."""
        return self.factor * self._predict(arch)

    def _predict(self, arch: Architecture) -> float:
        units = units_of(arch)
        times = [self.unit_times(u) for u in units]
        model = self.table.network_model
        if model is not None:
            return model.predict(self.table.features(units, [t[:2] for t in times]))["median"]
        total = sum(self.unit_ms(u)[0] for u in units)
        o = self.table.overhead
        if o is None:
            return total
        fitted = o.scale * total + o.boundary_ms_per_m * boundary_melements(units) + o.offset_ms
        smallest = min(o.models, key=lambda m: m["sum_ms"], default=None)
        if smallest and total < smallest["sum_ms"]:
            # Far below the smallest network the fit saw, its negative offset takes over (a
            # 64 px network would be predicted below zero): there, the smallest calibration
            # network's measured/sum ratio is the better guess.
            ratio = total * smallest["measured_ms"] / smallest["sum_ms"]
            if fitted < 0.5 * ratio:
                return ratio
        return fitted

    def prediction(self, arch: Architecture) -> Prediction:
        """Median, p90 and best case with their 95 % intervals and provenance."""
        units = units_of(arch)
        times = [self.unit_times(u) for u in units]
        total = sum(t[0] for t in times) or 1.0
        shares = {s: sum(t[0] for t in times if t[2] == s) / total
                  for s in ("measured", "transferred", "estimated")}
        model = self.table.network_model
        if model is None:  # format 2: the median of its fit, no p90, no interval model
            return Prediction(self.predict(arch), None, None, {}, "a format-2 table keeps no "
                              "errors of its own fit", shares["measured"],
                              shares["transferred"], shares["estimated"], self.factor)
        values = model.predict(self.table.features(units, [t[:2] for t in times]))
        # estimated units add their own error, as if all of it went one way (conservative)
        extra = 196 * self.estimate_error() * shares["estimated"]
        intervals, source = {}, ""
        for name, value in values.items():
            lo, hi, source_name = model.interval(name, value * self.factor, extra)
            intervals[name] = (lo, hi)
            source = source if name != "median" else source_name
        return Prediction(values["median"] * self.factor, values["p90"] * self.factor,
                          values["best"] * self.factor, intervals, source,
                          shares["measured"], shares["transferred"], shares["estimated"],
                          self.factor)

    def measured_share(self, arch: Architecture) -> float:
        """The share of the network's units the table holds (the rest are estimates)."""
        units = units_of(arch)
        return sum(self.unit_times(u)[2] != "estimated" for u in units) / len(units)


def _fit(units: list[Unit], ms: list[float]) -> np.ndarray:
    """Non-negative least squares on relative error (small units count as much as large)."""
    from scipy.optimize import nnls

    x = np.array([[*cost_features(u), 1.0] for u in units])
    y = np.array(ms)
    coef, _ = nnls(x / y[:, None], np.ones_like(y))
    return coef
