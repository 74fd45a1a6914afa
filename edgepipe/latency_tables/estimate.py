"""Latency of units the table does not hold, from the nearest ones it does.

A search that shrinks layers (NetAdapt) or scales widths asks for channel counts no table
enumerates (every expansion from 8 to 576 in steps of 8, at every position, is tens of
thousands of units). A missing unit is estimated from the measured unit of the same shape
(kind, input size, kernel, stride, SE, activation) nearest in channels, scaled by a cost model:
latency ≈ a·(1x1 and dense MACs) + b·(depthwise MACs) + c·(elements written) + d, fitted on
the whole table. The measured neighbour carries what the cost model misses (XNNPACK's
per-shape efficiency); the model only carries the difference in channels. A unit of a shape the
table never measured (another resolution, kernel...) is refused: that is another space.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..errors import EdgepipeError
from ..models.blocks import BlockConfig, se_channels
from ..models.space import Architecture
from .table import LatencyTable, boundary_melements
from .units import Unit, _out_hw, units_of


def cost_features(u: Unit) -> tuple[float, float, float]:
    """(dense MACs, depthwise MACs, elements written), in millions."""
    p = u.params
    if u.kind == "ir":
        b = BlockConfig(*p)
        ho = _out_hw(u.hw, b.stride)
        expand = b.expanded_channels != b.in_channels
        dense = (u.hw ** 2 * b.in_channels * b.expanded_channels * expand
                 + ho ** 2 * b.expanded_channels * b.out_channels)
        if b.se:
            dense += 2 * b.expanded_channels * se_channels(b.expanded_channels)
        depthwise = ho ** 2 * b.expanded_channels * b.kernel ** 2
        elements = (u.hw ** 2 * b.expanded_channels * expand
                    + ho ** 2 * b.expanded_channels * (2 if b.se else 1)
                    + ho ** 2 * b.out_channels)
        return dense / 1e6, depthwise / 1e6, elements / 1e6
    if u.kind == "stem":
        cin, cout, _ = p
        ho = _out_hw(u.hw, 2)
        return ho ** 2 * cout * cin * 9 / 1e6, 0.0, ho ** 2 * cout / 1e6
    if u.kind == "head":
        cin, conv, _, hidden, classes = p
        dense = u.hw ** 2 * cin * conv + conv * hidden + hidden * classes
        return dense / 1e6, 0.0, (u.hw ** 2 * conv + hidden + classes) / 1e6
    raise ValueError(f"no cost model for unit kind {u.kind!r}")


def _shape_key(u: Unit) -> tuple:
    """What must match for a neighbour: everything but the channel counts."""
    if u.kind == "ir":
        b = BlockConfig(*u.params)
        return ("ir", u.hw, b.kernel, b.stride, b.se, b.activation,
                b.expanded_channels != b.in_channels)
    return (u.kind, u.hw)


def _channels(u: Unit) -> tuple[int, ...]:
    return tuple(v for v in u.params if isinstance(v, int) and not isinstance(v, bool)) \
        if u.kind != "ir" else (u.params[0], u.params[2], u.params[3])


class Estimator:
    """Predicts any network of the table's block vocabulary, measured units where it has them.

    ``factor`` multiplies every prediction: the drift a check of the table measured on the
    device (``--rescale``); ``provenance`` is how the table was checked (recorded with the
    predictions, see :class:`.sentinels.TableUse`).
    """

    def __init__(self, table: LatencyTable, factor: float = 1.0,
                 provenance: dict | None = None) -> None:
        self.table = table
        self.factor = factor
        self.provenance = provenance
        units = [_unit_from_key(k) for k in table.units]
        self._by_shape: dict[tuple, list[Unit]] = defaultdict(list)
        for u in units:
            if u is not None:
                self._by_shape[_shape_key(u)].append(u)
        self.coef = _fit([u for u in units if u is not None],
                         [table.unit_ms(u.key) for u in units if u is not None])
        self._cache: dict[str, tuple[float, bool]] = {}

    def model_ms(self, u: Unit) -> float:
        return float(np.dot(self.coef, [*cost_features(u), 1.0]))

    def unit_ms(self, u: Unit) -> tuple[float, bool]:
        """(milliseconds, measured?)"""
        if u.key in self.table.units:
            return self.table.unit_ms(u.key), True
        if u.key not in self._cache:
            self._cache[u.key] = (self._estimate(u), False)
        return self._cache[u.key]

    def _estimate(self, u: Unit) -> float:
        near = self._by_shape.get(_shape_key(u))
        if not near:  # another resolution, kernel, activation...: nothing to scale from
            raise EdgepipeError(
                f"the latency table has no entry for {u.key}, nor any measured unit of its "
                "shape (only channel counts are estimated): it was collected for another "
                "search space; collect one for this space with `edgepipe lut collect`")
        mine = _channels(u)
        best = min(near, key=lambda n: sum(abs(math.log(a / b))
                                           for a, b in zip(_channels(n), mine, strict=True)))
        return self.table.unit_ms(best.key) * self.model_ms(u) / self.model_ms(best)

    def predict(self, arch: Architecture) -> float:
        """As :meth:`LatencyTable.predict`, with estimates for units the table lacks, times
        ``factor``."""
        return self.factor * self._predict(arch)

    def _predict(self, arch: Architecture) -> float:
        units = units_of(arch)
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

    def measured_share(self, arch: Architecture) -> float:
        """The share of the network's units the table measured (the rest are estimates)."""
        units = units_of(arch)
        return sum(self.unit_ms(u)[1] for u in units) / len(units)


def _fit(units: list[Unit], ms: list[float]) -> np.ndarray:
    """Non-negative least squares on relative error (small units count as much as large)."""
    from scipy.optimize import nnls

    x = np.array([[*cost_features(u), 1.0] for u in units])
    y = np.array(ms)
    coef, _ = nnls(x / y[:, None], np.ones_like(y))
    return coef


def _unit_from_key(key: str) -> Unit | None:
    """A Unit back from its key (the table stores keys only)."""
    kind, _, rest = key.partition("-")
    fields = dict(f.split(":", 1) for f in rest.split("-"))
    try:
        hw, _, cin = fields["in"].split("x")
        if kind == "ir":
            out = int(fields["out"].split("x")[2])
            return Unit("ir", int(hw), (int(cin), int(fields["k"]), int(fields["e"]), out,
                                        fields["se"] == "1", fields["act"].upper(),
                                        int(fields["s"]), 1))
        if kind == "stem":
            return Unit("stem", int(hw), (int(cin), int(fields["out"].split("x")[2]),
                                          fields["act"].upper()))
        if kind == "head":
            fc = [int(v) for v in rest.split("-fc:")[1:]]
            return Unit("head", int(hw), (int(cin), int(fields["conv"]), fields["act"].upper(),
                                          fc[0], fc[1]))
    except (KeyError, ValueError, IndexError):
        return None
    return None
