"""Latency tables without a device: the network model (median, p90, best case, intervals,
size trend) and the transfer between devices, on known functions and on the two real tables
edgepipe ships (AMD family 25 and Intel family 6 model 167, the same units measured on both)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from edgepipe.errors import EdgepipeError
from edgepipe.latency_tables.estimate import Estimator
from edgepipe.latency_tables.features import param_count, unit_from_key
from edgepipe.latency_tables.model import (
    NetworkFeatures,
    NetworkModel,
    interval_quantiles,
    size_trend,
)
from edgepipe.latency_tables.table import REFERENCE_TABLE, SHIPPED, LatencyTable
from edgepipe.latency_tables.transfer import (
    fit_transfer,
    measurement_order,
    most_similar,
    time_weights,
    transfer,
)
from edgepipe.latency_tables.units import units_of
from edgepipe.models.space import SPACES


def _networks(rule, noise: float = 0.0, count: int = 30, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        s = rng.uniform(1, 40)
        f = {"units_ms": s, "units_min_ms": s * 0.97, "weights_mb": rng.uniform(2, 25),
             "count": rng.randint(10, 20)}
        median = rule(f) * (1 + rng.gauss(0, noise))
        out.append({"name": f"n{i}", "features": f, "median_ms": median,
                    "p90_ms": median * 1.06, "min_ms": median * 0.95})
    return out


def test_network_model_recovers_how_a_device_turns_units_into_networks():
    # weights that do not stay in cache add time per MB: the model finds that term
    nets = _networks(lambda f: 1.2 * f["units_ms"] + 0.08 * f["weights_mb"] + 0.1)
    model = NetworkModel.fit(nets)
    assert set(model.median.terms) >= {"units", "weights_mb"}
    assert model.median.coef[model.median.terms.index("units")] == pytest.approx(1.2, abs=1e-3)
    assert max(abs(e) for e in model.median.loo_errors) < 1e-3
    f = NetworkFeatures(10.0, 9.7, 5.0, 15)
    p = model.predict(f)
    assert p["median"] == pytest.approx(1.2 * 10 + 0.08 * 5 + 0.1, rel=1e-3)
    assert p["p90"] == pytest.approx(p["median"] * 1.06, rel=1e-3)
    assert p["best"] == pytest.approx(p["median"] * 0.95, rel=0.02)
    # without that term the fit is worse: a term enters only where left-out networks say so
    noisy = NetworkModel.fit(_networks(lambda f: 1.1 * f["units_ms"], noise=0.03))
    assert noisy.median.terms == ("units",) or len(noisy.median.terms) <= 2
    # the interval holds about 95 % of new networks of the same device
    lo, hi, source = noisy.interval("median", 10.0)
    assert lo < 10.0 < hi and "cross-validation on 30 networks" in source
    fresh = _networks(lambda f: 1.1 * f["units_ms"], noise=0.03, count=400, seed=9)
    inside = np.mean([noisy.interval("median", noisy.predict(NetworkFeatures(**n["features"]))
                                     ["median"])[0] <= n["median_ms"]
                      <= noisy.interval("median", noisy.predict(
                          NetworkFeatures(**n["features"]))["median"])[1] for n in fresh])
    assert 0.88 < inside <= 1.0
    # round trip through the table file's JSON
    again = NetworkModel.from_dict(model.to_dict())
    assert again.predict(f) == pytest.approx(p)


def test_size_trend_and_intervals_say_what_the_model_cannot_explain():
    measured = [2 ** (i / 4) for i in range(40)]
    growing = [-0.02 * math.log2(m) for m in measured]  # 2 points lower per doubling
    trend = size_trend(growing, measured)
    assert trend["pct_per_doubling"] == pytest.approx(-2.0) and trend["correlation"] < -0.99
    assert size_trend([0.01] * 5 + [-0.01] * 5, [1, 2, 3, 4, 5] * 2)["pct_per_doubling"] \
        == pytest.approx(0, abs=1)
    lo, hi = interval_quantiles(list(np.random.default_rng(0).normal(0, 0.05, 1000)))
    assert lo == pytest.approx(-0.098, abs=0.01) and hi == pytest.approx(0.098, abs=0.01)
    assert interval_quantiles([0.1]) == (float("-inf"), float("inf"))


def test_estimator_names_the_statistic_and_where_a_prediction_comes_from():
    table = LatencyTable.load(REFERENCE_TABLE)
    est = Estimator(table)
    arch = SPACES["default"].seed_architecture("large")
    p = est.prediction(arch)
    words = p.words(("median", "p90"))
    assert p.median == pytest.approx(est.predict(arch)) and p.measured_share == 1.0
    if table.network_model is not None:  # format 3: p90 and intervals
        assert p.p90 > p.median and p.intervals["median"][0] < p.median < \
            p.intervals["median"][1]
        assert "95 % interval" in words and "p90 (90th percentile of runs)" in words
    else:
        assert p.p90 is None and "not available" in words
    # a network with channel counts the table never measured: said, and the interval wider
    narrow = SPACES["default"].seed_architecture("large", 224, 0.75)
    q = est.prediction(narrow)
    assert q.estimated_share > 0.5 and "estimated from units of other channel counts" in \
        q.words()


def _shipped_pair() -> tuple[LatencyTable, LatencyTable]:
    amd = LatencyTable.load(REFERENCE_TABLE)
    intel = LatencyTable.load(next(SHIPPED.glob("60a219bdfc5a6978-*.json")))
    return amd, intel


def test_transfer_between_two_real_cpus_from_a_few_units():
    """AMD family 25 → Intel family 6 model 167 (and back) from 5 % of the units: network
    sums within ±10 % of the other CPU's own table far more often than one global factor."""
    amd, intel = _shipped_pair()
    keys = sorted(set(amd.units) & set(intel.units))
    units = [unit_from_key(k) for k in keys]
    index = {k: i for i, k in enumerate(keys)}
    archs = SPACES["default"].architectures(120, seed=7)
    nets = [[index[u.key] for u in units_of(a)] for a in archs]
    for source, target in ((amd, intel), (intel, amd)):
        s = np.array([source.units[k]["median_ms"] for k in keys])
        t = np.array([target.units[k]["median_ms"] for k in keys])
        order = measurement_order(units, s, time_weights(units, s, archs[:60]))
        idx = np.array(order[:len(keys) // 20])
        model = fit_transfer(units, [s], idx, t[idx])
        moved = transfer(units, [s], model)
        moved[idx] = t[idx]
        predicted = np.array([moved[n].sum() for n in nets])
        actual = np.array([t[n].sum() for n in nets])
        within = np.mean(np.abs(predicted / actual - 1) <= 0.10)
        factor = np.exp(np.median(np.log(t[idx] / s[idx])))
        flat = np.mean(np.abs(np.array([s[n].sum() * factor for n in nets]) / actual - 1)
                       <= 0.10)
        assert within >= 0.85 and within > flat + 0.1, (within, flat)
        assert model.cv_summary["units"] == len(idx)
        assert 0 < model.expected_error_pct("ir-k5") < 50


def test_the_most_similar_source_is_the_base():
    amd, intel = _shipped_pair()
    keys = sorted(amd.units)
    units = [unit_from_key(k) for k in keys]
    s_amd = np.array([amd.units[k]["median_ms"] for k in keys])
    s_intel = np.array([intel.units[k]["median_ms"] for k in keys])
    # a target that is Intel's CPU, 1.3x slower: Intel's table is the base, not AMD's
    target = s_intel * 1.3 * np.random.default_rng(0).lognormal(0, 0.02, len(keys))
    idx = np.arange(0, len(keys), 25)
    assert most_similar([s_amd, s_intel], idx, target[idx]) == 1
    model = fit_transfer(units, [s_amd, s_intel], idx, target[idx])
    assert model.base == 1
    moved = transfer(units, [s_amd, s_intel], model)
    assert np.median(np.abs(moved / target - 1)) < 0.03


def test_param_count_matches_the_built_unit():
    """Every conv's and linear layer's weights, and one bias per output channel (BatchNorm
    folded into the conv before it, or the layer's own bias)."""
    from torch import nn

    amd, _ = _shipped_pair()
    for key in random.Random(3).sample(sorted(amd.units), 12):
        unit = unit_from_key(key)
        layers = [m for m in unit.module().modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert param_count(unit) == sum(m.weight.numel() + m.weight.shape[0] for m in layers)


def test_source_tables_by_file_name_or_shipped(tmp_path):
    from edgepipe.errors import EdgepipeError
    from edgepipe.latency_tables.table import resolve_tables

    shipped = sorted(SHIPPED.glob("*.json"))
    assert resolve_tables("shipped", tmp_path) == shipped
    mine = tmp_path / "tables" / "mine.json"
    mine.parent.mkdir()
    mine.write_text("{}")
    name = shipped[0].name
    assert resolve_tables(f"mine,{name.removesuffix('.json')}", tmp_path) == [mine, shipped[0]]
    assert resolve_tables(str(mine), tmp_path) == [mine]
    with pytest.raises(EdgepipeError, match=r"no table 'nope'.*mine\.json"):
        resolve_tables("nope", tmp_path)


def test_units_far_from_their_familys_ratio_are_suspect():
    """The two shipped tables (two real CPUs, the same units): a real CPU's ratios are not
    suspect, a unit measured 30× slow (as a disturbed one was on a shared host) is."""
    from edgepipe.latency_tables.transfer import suspect_units

    amd = LatencyTable.load(next(SHIPPED.glob("82660cc886a34a83-*.json")))
    intel = LatencyTable.load(next(SHIPPED.glob("60a219bdfc5a6978-*.json")))
    keys = sorted(set(amd.units) & set(intel.units))
    units = [unit_from_key(k) for k in keys]
    source = [np.array([amd.units[k]["median_ms"] for k in keys])]
    idx = np.array(random.Random(0).sample(range(len(keys)), 400))
    target = np.array([intel.units[keys[i]]["median_ms"] for i in idx])
    real = suspect_units(units, source, idx, target)
    assert real.mean() < 0.03  # a real CPU's own ratios: at most a few flagged
    disturbed = target.copy()
    disturbed[:20] = 8.0 + disturbed[:20] * 0  # the 8 ms a disturbed segment measured
    flagged = suspect_units(units, source, idx, disturbed)
    slow = disturbed[:20] / source[0][idx[:20]] > 3
    assert flagged[:20][slow].all() and slow.sum() >= 10



def test_a_space_of_one_resolution_gets_static_network_programs():
    """One resolution makes a size range whose ends are equal, which torch.export cannot
    express ("Cannot create Dim with inconsistent min=64, max=64"): a static program then."""
    from dataclasses import replace

    from edgepipe.latency_tables.collect import calibration_architectures, network_points
    from edgepipe.latency_tables.programs import arch_program

    one = replace(SPACES["tiny"], resolutions=(64,))
    points = network_points(calibration_architectures(one, 3), one, dynamic=True)
    assert len(points) == 3 and {p.arch.resolution for p in points} == {64}
    for p in points:
        arch, size_range = p.spec.payload
        assert size_range is None and p.spec.key.startswith("arch-")
        assert arch.resolution == 64 and p.spec.input_shape == (1, 3, 64, 64)
    # two sizes: one dynamic program taking both
    two = network_points(calibration_architectures(SPACES["tiny"], 3), SPACES["tiny"], True)
    assert {p.spec.payload[1] for p in two} == {(64, 96)}
    assert arch_program(two[0].arch, (96, 96)).payload[1] is None
    # the converters' own description of the range: static for one size as well
    import torch

    from edgepipe.converters.source import source_from_module

    module = torch.nn.Conv2d(3, 4, 3)
    assert source_from_module("c", module, [1, 3, 64, 64], (64, 64)).dynamic_shapes() is None
    dims = source_from_module("c", module, [1, 3, 64, 64], (64, 96)).dynamic_shapes()
    assert dims is not None and set(dims[0]) == {2, 3}


def test_table_programs_fold_batchnorm_into_the_same_xnnpack_graph(tmp_path):
    """A table's programs are lowered with BatchNorm folded first (fold_batchnorm): faster to
    lower, and the program XNNPACK runs must stay node for node the one a user's model gets,
    or the table would time another graph."""
    import torch

    from edgepipe.converters import CONVERTERS
    from edgepipe.converters.source import source_from_module
    from edgepipe.device.inspect_artifact import pte_delegation
    from edgepipe.latency_tables.collect import space_units
    from edgepipe.latency_tables.programs import _convert_one, program_path, unit_programs
    from edgepipe.manifest import load_manifest

    specs = unit_programs(space_units(SPACES["tiny"]), dynamic=True)
    spec = next(s for s in specs.values() if "se:1" in s.key)  # conv/BN/act, SE, projection
    unit, size_range = spec.payload
    _convert_one(spec, "executorch", "fp32", str(tmp_path))
    folded = program_path(tmp_path, spec, "executorch")
    plain = tmp_path / "plain.pte"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        src = source_from_module(spec.key, unit.module().eval(), list(spec.input_shape),
                                 size_range)
    CONVERTERS["executorch"].convert(src, "fp32", [], plain, debug_info=False)
    a, b = pte_delegation(plain), pte_delegation(folded)
    assert a.delegated_ops and a.to_dict() == b.to_dict()  # same partitions, nodes, leftovers
    assert load_manifest(folded).extra["graph"]["delegation"]["delegated_ops"] == a.delegated_ops


def test_int8_adaptation_replayed_chooses_by_whole_networks_and_leaves_architectures_out():
    """fp32 → int8 on Intel family 6 model 207 (tests/data), replayed: the regressor chosen
    by the networks adapt measured whole, the network model cross-validated by architecture.
    As measured then (trees by unit error, one network left out at a time): 27.5 % of the 40
    networks within ±10 %, some predicted below zero."""
    import json
    from pathlib import Path

    from edgepipe.latency_tables.collect import space_units
    from edgepipe.latency_tables.model import fit_terms

    data = json.loads((Path(__file__).parent / "data" /
                       "int8_adaptation_intel207.json").read_text())
    units = space_units(SPACES["default"])
    fp32 = np.array(data["fp32_units_ms"])
    idx = np.array(sorted(int(i) for i in data["int8_measured_ms"]))
    target = np.array([data["int8_measured_ms"][str(i)] for i in idx])
    nets = data["model_networks"]
    networks = [(np.array(n["units"]), n["median_ms"], str(n["group"])) for n in nets]

    by_units = fit_transfer(units, [fp32], idx, target)
    model = fit_transfer(units, [fp32], idx, target, networks=networks)
    assert by_units.kind == "trees"  # the least cross-validated unit error
    rmse = model.cv_summary["network_rmse_pct"]
    assert model.kind == min(rmse, key=rmse.get) == "ridge" and rmse["ridge"] < rmse["trees"]
    assert model.cv_summary["chosen_by"] == "whole networks measured on the target"

    def features(times: np.ndarray, n: dict) -> NetworkFeatures:
        s = float(times[n["units"]].sum())
        return NetworkFeatures(s, s, n["weights_mb"], n["count"])

    def errors(fit, times: np.ndarray) -> np.ndarray:
        return np.array([fit.apply(features(times, n)) / n["median_ms"] - 1
                         for n in data["eval_networks"]])

    medians = [n["median_ms"] for n in nets]
    groups = [n["group"] for n in nets]
    # the table adapt wrote then: per-architecture terms that fit noise when one network is
    # left out at a time, and predictions below zero; by architecture, the units alone
    then = [NetworkFeatures(n["units_ms_then"], n["units_ms_then"], n["weights_mb"],
                            n["count"]) for n in nets]
    plain, grouped = fit_terms(then, medians), fit_terms(then, medians, groups=groups)
    assert len(plain.terms) == 4 and grouped.terms == ("units",)
    for fit, negative in ((plain, True), (grouped, False)):
        predicted = [fit.apply(NetworkFeatures(n["units_ms_then"], n["units_ms_then"],
                                               n["weights_mb"], n["count"]))
                     for n in data["eval_networks"]]
        assert (min(predicted) < 0) == negative
    # such a number is never given: the model refuses it in one line
    worst = min(data["eval_networks"], key=lambda n: plain.apply(NetworkFeatures(
        n["units_ms_then"], n["units_ms_then"], n["weights_mb"], n["count"])))
    with pytest.raises(EdgepipeError, match="outside the 18 networks the model was fitted"):
        NetworkModel(plain, plain, (0.0, 0.0), [], nets).predict(NetworkFeatures(
            worst["units_ms_then"], worst["units_ms_then"], worst["weights_mb"],
            worst["count"]))

    times = transfer(units, [fp32], model)  # now: ridge's units, by architecture
    times[idx] = target
    grouped = fit_terms([features(times, n) for n in nets], medians, groups=groups)
    final = errors(grouped, times)
    assert grouped.terms == ("units",)
    assert np.mean(np.abs(final) <= 0.10) >= 0.6  # 65 % (goal 90 %: not met, docs)
    assert abs(np.mean(final)) < 0.05
