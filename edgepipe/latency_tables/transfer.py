"""Transferring a latency table to a new target from a few of its units measured there.

The method (``lut adapt``), in three parts, with where each comes from:

* **Which source.** With several source tables (other CPUs, runtimes, precisions, thread
  counts), the one whose unit times agree best with the units measured on the target (least
  spread of ``ln(target / source)``) is the base; the others' times stay features. This is
  LitePred's similarity-based choice of a pre-trained predictor (Feng et al., MobiSys 2024),
  with the measured units as the similarity test instead of a device description.
* **What differs, learnt per unit.** ``ln(target / base)`` is regressed on each unit's shape
  (kind, kernel, stride, SE, activation, sizes, MACs, bytes) and the sources' times, by an
  ensemble of extremely randomised trees (Geurts et al. 2006), by ridge regression, or as one
  factor for all units, whichever explains best the whole networks measured on the target
  (:func:`fit_transfer`), or without them, whichever 5-fold cross-validation on the measured
  units says is best (with a dozen units, one factor often is; with hundreds, the trees).
  nn-Meter (Zhang et al., MobiSys 2021) fits one predictor per kernel type from scratch;
  here the source table carries the absolute times and the model only learns the ratio,
  which needs far fewer measurements (HELP, Lee et al. NeurIPS 2021, makes the same bet
  with a meta-learnt embedding of the device).
* **Which units to measure.** Greedy k-center on the same features, each unit's distance
  weighted by its time in the space's networks (nn-Meter's adaptive sampling covers the
  configuration space the same way; weighting by time puts the measurements where a
  network's latency is), interleaved with a seeded random order (the measured units then also
  look like the typical unit, which the ratio model learns from). Offline, AMD family 25 ↔
  Intel family 6 model 167, the interleaved order put 90–95 % of network sums within ±10 %
  with 1 % of the units measured, where weighted k-center alone gave 21–59 % and random
  order 54–64 % (``docs``: the latency-tables page).

Every transferred unit gets an expected error: the root-mean-square error of left-out
measured units of its family (kind and kernel), from 5-fold cross-validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.blocks import BlockConfig
from .features import cost_features, param_count
from .units import Unit

METHOD_NAME = ("ratio transfer: ln(target/source) per unit by extremely randomised trees, "
               "ridge or one factor on the unit's shape, chosen by the whole networks measured "
               "on the target (by unit cross-validation without them); the most "
               "similar source as base (LitePred-style choice, nn-Meter-style coverage "
               "sampling)")


def family(u: Unit) -> str:
    """The unit's family for expected errors and coverage: kind (and kernel for blocks)."""
    if u.kind == "ir":
        return f"ir-k{u.params[1]}"
    return u.kind


def shape_features(u: Unit) -> dict[str, float]:
    """The unit's shape as numbers (logs of sizes, one-hot choices)."""
    dense, depthwise, elements = cost_features(u)
    params = param_count(u)
    f = {"log_hw": math.log(u.hw), "log_dense": math.log(dense + 1e-4),
         "log_dw": math.log(depthwise + 1e-4), "log_elements": math.log(elements + 1e-4),
         "log_params": math.log(params), "intensity": math.log(
             (dense + depthwise + 1e-4) / (elements + params / 1e6 + 1e-4)),
         "stem": float(u.kind == "stem"), "head": float(u.kind == "head")}
    if u.kind == "ir":
        b = BlockConfig(*u.params)
        f.update({f"k{k}": float(b.kernel == k) for k in (3, 5, 7)})
        f.update({"stride2": float(b.stride == 2), "se": float(b.se),
                  "hswish": float(b.activation == "HS"),
                  "expand": float(b.expanded_channels != b.in_channels),
                  "log_cin": math.log(b.in_channels), "log_e": math.log(b.expanded_channels),
                  "log_cout": math.log(b.out_channels)})
    return f


FEATURE_NAMES = sorted({"log_hw", "log_dense", "log_dw", "log_elements", "log_params",
                        "intensity", "stem", "head", "k3", "k5", "k7", "stride2", "se",
                        "hswish", "expand", "log_cin", "log_e", "log_cout"})


def feature_matrix(units: list[Unit], sources: list[np.ndarray]) -> np.ndarray:
    """Rows: units; columns: shape features, then ln(ms) of each source, then the log ratios
    of each further source to the first (how the sources' devices differ, per unit)."""
    shape = np.array([[shape_features(u).get(n, 0.0) for n in FEATURE_NAMES] for u in units])
    logs = [np.log(s) for s in sources]
    extra = [logs[0]] + [lg - logs[0] for lg in logs[1:]]
    return np.column_stack([shape, *extra])


def most_similar(sources: list[np.ndarray], measured_idx: np.ndarray, measured: np.ndarray
                 ) -> int:
    """The source whose times on the measured units differ from the target's by the most
    constant factor (least standard deviation of the log ratio)."""
    spreads = [float(np.std(np.log(measured) - np.log(s[measured_idx]))) for s in sources]
    return int(np.argmin(spreads))


@dataclass
class TransferModel:
    """``ln(target / base)`` per unit, learnt on the measured units."""

    base: int
    kind: str  # "trees" | "ridge" | "factor"
    mean: np.ndarray
    scale: np.ndarray
    regressor: Any
    cv_errors: dict[str, list[float]] = field(default_factory=dict)  # by family, relative
    cv_summary: dict[str, Any] = field(default_factory=dict)

    def predict_log_ratio(self, x: np.ndarray) -> np.ndarray:
        return self.regressor.predict((x - self.mean) / self.scale)

    def expected_error_pct(self, fam: str) -> float:
        """RMS relative error (%) of left-out measured units of this family (all units' where
        the family had fewer than 3 measured)."""
        errors = self.cv_errors.get(fam)
        if not errors or len(errors) < 3:
            errors = [e for v in self.cv_errors.values() for e in v]
        return float(np.sqrt(np.mean(np.square(errors))) * 100) if errors else float("nan")


class _Constant:
    """One factor for every unit: the median log ratio (robust to a few disturbed units)."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Constant:
        self.value = float(np.median(y))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value)


def _regressor(kind: str, n: int, seed: int = 0):
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.linear_model import RidgeCV

    if kind == "factor":
        return _Constant()
    if kind == "trees":
        return ExtraTreesRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed,
                                   n_jobs=1)
    return RidgeCV(alphas=np.logspace(-2, 3, 20))


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    return mean, scale


def suspect_units(units: list[Unit], sources: list[np.ndarray], measured_idx: np.ndarray,
                  measured: np.ndarray, min_ratio: float = 1.6, mads: float = 5.0
                  ) -> np.ndarray:
    """The measured units whose ratio to the sources lies far outside their family's: a
    boolean mask over ``measured_idx``.

    A unit's ratio ``ln(target / source)`` (the geometric mean over the sources) is compared
    with the median of its family's (:func:`family`; all measured units where the family has
    fewer than 8): suspect when it is more than ``mads`` scaled median absolute deviations and
    more than ``ln(min_ratio)`` away. Two real CPUs' ratios stay within 0.57–1.95 of each other
    over all 1,773 units of the default space (AMD family 25 against Intel family 6 model
    167), and within a family much closer; a unit measured 30× slower than its source while
    its neighbours agree was disturbed (a shared host's neighbour, a page reclaimed), not
    measured.
    """
    base = np.exp(np.mean([np.log(s[measured_idx]) for s in sources], axis=0))
    r = np.log(measured / base)
    fams = np.array([family(units[i]) for i in measured_idx])
    out = np.zeros(len(r), bool)
    for f in set(fams):
        mine = fams == f
        ref = r[mine] if mine.sum() >= 8 else r
        center = float(np.median(ref))
        spread = 1.4826 * float(np.median(np.abs(ref - center)))
        out[mine] = np.abs(r[mine] - center) > max(mads * spread, np.log(min_ratio))
    return out


def fit_transfer(units: list[Unit], sources: list[np.ndarray], measured_idx: np.ndarray,
                 measured: np.ndarray, seed: int = 0,
                 networks: list[tuple[np.ndarray, float, str]] | None = None
                 ) -> TransferModel:
    """Learn ``ln(target / base source)`` on the measured units (indices into ``units``);
    the expected errors from 5-fold cross-validation.

    The kind of regressor: the one whose transferred table best explains ``networks``, whole
    networks measured on the target (each: the indices of its units, its median in ms, its
    group: one architecture's resolutions share one), where at least three groups are given;
    else the one with the least cross-validated unit error. A network's time is a sum of
    units dominated by its largest, and a regressor that fits the measured units best need not
    sum right: fp32 → int8 on Intel family 6 model 207, 195 units measured, the trees had the
    least unit error and put 47.5 % of 40 networks within ±10 % (one factor per table), ridge
    75 %. The score: each group left out in turn, the median ratio of the others' measured
    medians to their unit sums applied to it (the network model's one-term form)."""
    base = most_similar(sources, measured_idx, measured)
    ordered = [sources[base]] + [s for i, s in enumerate(sources) if i != base]
    x = feature_matrix(units, ordered)
    y = np.log(measured) - np.log(sources[base][measured_idx])
    xm = x[measured_idx]
    mean, scale = _standardise(xm)
    z = (xm - mean) / scale
    n = len(measured_idx)
    kinds = ["factor", "ridge", "trees"] if n >= 30 else ["factor", "ridge"]
    folds = np.random.default_rng(seed).permutation(n) % min(5, n)
    scored = {}
    for kind in kinds:
        oof = np.zeros(n)
        for k in range(min(5, n)):
            test = folds == k
            if test.all():
                oof[test] = np.median(y)
                continue
            oof[test] = _regressor(kind, n, seed).fit(z[~test], y[~test]).predict(z[test])
        rel = np.exp(oof - y) - 1
        scored[kind] = (float(np.sqrt(np.mean(rel ** 2))), rel)
    by_networks: dict[str, float] = {}
    fitted: dict[str, Any] = {}  # on every measured unit: the chosen one is kept, not refitted
    if networks and len({g for _, _, g in networks}) >= 3:
        for kind in kinds:
            fitted[kind] = _regressor(kind, n, seed).fit(z, y)
            moved = sources[base] * np.exp(fitted[kind].predict((x - mean) / scale))
            moved[measured_idx] = measured
            by_networks[kind] = _network_rmse(moved, networks)
    kind = min(by_networks, key=by_networks.get) if by_networks else \
        min(scored, key=lambda k: scored[k][0])
    rmse, rel = scored[kind]
    fams = [family(units[i]) for i in measured_idx]
    by_family: dict[str, list[float]] = {}
    for f, e in zip(fams, rel, strict=True):
        by_family.setdefault(f, []).append(float(e))
    summary = {"units": n, "regressor": kind, "rmse_pct": rmse * 100,
               "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
               "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
               "global_factor_within_10pct": float(np.mean(
                   np.abs(np.exp(np.median(y) - y) - 1) <= 0.10)),
               "unit_rmse_pct": {k: round(v[0] * 100, 2) for k, v in scored.items()},
               "chosen_by": "whole networks measured on the target" if by_networks else
               "cross-validated unit error"}
    if by_networks:
        summary["network_rmse_pct"] = {k: round(v * 100, 2) for k, v in by_networks.items()}
    regressor = fitted[kind] if kind in fitted else _regressor(kind, n, seed).fit(z, y)
    return TransferModel(base, kind, mean, scale, regressor, by_family, summary)


def _network_rmse(times: np.ndarray, networks: list[tuple[np.ndarray, float, str]]) -> float:
    """RMS relative error of whole networks predicted as ``factor × Σ unit times``, the factor
    the median ratio of the networks of the other groups (each group left out in turn)."""
    sums = np.array([times[ix].sum() for ix, _, _ in networks])
    medians = np.array([m for _, m, _ in networks])
    groups = np.array([g for _, _, g in networks])
    ratio = medians / sums
    errors = np.empty(len(networks))
    for g in set(groups.tolist()):
        out = groups == g
        errors[out] = sums[out] * np.median(ratio[~out]) / medians[out] - 1
    return float(np.sqrt(np.mean(errors ** 2)))


def transfer(units: list[Unit], sources: list[np.ndarray], model: TransferModel
             ) -> np.ndarray:
    """Every unit's time on the target (ms) as the model transfers it."""
    ordered = [sources[model.base]] + [s for i, s in enumerate(sources) if i != model.base]
    x = feature_matrix(units, ordered)
    return sources[model.base] * np.exp(model.predict_log_ratio(x))


def coverage_order(units: list[Unit], source: np.ndarray, weights: np.ndarray,
                   first: list[int] | None = None) -> list[int]:
    """Indices in the order to measure them: greedy k-center on standardised features, each
    distance weighted by the unit's weight (its share of time in the space's networks), so
    the next unit is the one the measured ones describe worst. ``first``: already chosen."""
    x = feature_matrix(units, [source])
    mean, scale = _standardise(x)
    z = (x - mean) / scale
    n = len(units)
    w = np.sqrt(weights / weights.max())
    chosen = list(first or [])
    dist = np.full(n, np.inf)
    for i in chosen:
        dist = np.minimum(dist, np.linalg.norm(z - z[i], axis=1))
    if not chosen:  # start from the unit that matters most
        chosen.append(int(np.argmax(weights)))
        dist = np.linalg.norm(z - z[chosen[0]], axis=1)
    order = list(chosen)
    taken = np.zeros(n, bool)
    taken[order] = True
    while len(order) < n:
        score = np.where(taken, -1.0, dist * w)
        i = int(np.argmax(score))
        order.append(i)
        taken[i] = True
        dist = np.minimum(dist, np.linalg.norm(z - z[i], axis=1))
    return order


def measurement_order(units: list[Unit], source: np.ndarray, weights: np.ndarray,
                      seed: int = 0) -> list[int]:
    """Indices in the order ``lut adapt`` measures them: :func:`coverage_order` and a seeded
    random permutation, alternately (see the module doc for why)."""
    covered = coverage_order(units, source, weights)
    shuffled = np.random.default_rng(seed).permutation(len(units))
    order: list[int] = []
    seen: set[int] = set()
    for pair in zip(covered, shuffled, strict=True):
        for i in pair:
            if int(i) not in seen:
                seen.add(int(i))
                order.append(int(i))
    return order


def time_weights(units: list[Unit], source: np.ndarray, archs: list[Any]) -> np.ndarray:
    """Each unit's time in the networks ``archs`` (how often it occurs × its source time)."""
    from .units import units_of

    index = {u.key: i for i, u in enumerate(units)}
    count = np.zeros(len(units))
    for arch in archs:
        for u in units_of(arch):
            if u.key in index:
                count[index[u.key]] += 1
    return count * source + 1e-9
