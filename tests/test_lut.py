"""Latency tables: the space, unit keys, collection against a real local agent (killed and
resumed), prediction, refusal of a foreign table, corrupted files, evaluation."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgepipe.device.identity import ARM_FEATURES, X86_FEATURES
from edgepipe.errors import EdgepipeError
from edgepipe.latency_tables.collect import space_units
from edgepipe.latency_tables.evaluate import error_metrics, kendall_tau
from edgepipe.latency_tables.programs import unit_programs
from edgepipe.latency_tables.table import REFERENCE_TABLE, LatencyTable, Target
from edgepipe.latency_tables.units import Unit, naive_ops, units_of
from edgepipe.models.space import SPACES, Architecture, SearchSpace, build_architecture

from .conftest import home_with_programs, own_cpu, run_cli


def test_default_space_holds_both_seeds_and_every_sample_has_table_units():
    space = SPACES["default"]
    keys = {u.key for u in space_units(space)}
    for seed in ("large", "small"):
        arch = space.seed_architecture(seed)
        assert space.contains(arch)
        assert {u.key for u in units_of(arch)} <= keys
    archs = space.architectures(40, seed=3)
    assert len({a.digest() for a in archs}) == 40  # distinct
    assert archs == space.architectures(40, seed=3)  # seeded
    for arch in archs:
        assert {u.key for u in units_of(arch)} <= keys
        assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    # a sampled network is a plain config models/ builds, with the right output
    import torch

    arch = archs[0]
    out = build_architecture(arch)(torch.zeros(1, 3, arch.resolution, arch.resolution))
    assert out.shape == (1, 1000)


def test_unit_keys_are_readable_and_name_what_changes_the_time():
    large = SPACES["default"].seed_architecture("large")
    keys = [u.key for u in units_of(large)]
    assert keys[0] == "stem-in:224x224x3-out:112x112x16-k:3-s:2-act:hs"
    assert keys[4] == "ir-in:56x56x24-out:28x28x40-e:72-k:5-s:2-se:1-act:re"
    assert keys[-1] == "head-in:7x7x160-conv:960-act:hs-fc:1280-fc:1000"
    assert len(keys) == 1 + 15 + 1
    # one ExecuTorch program per unit shape, measured at every resolution
    units = space_units(SPACES["default"])
    programs = unit_programs(units, dynamic=True)
    assert len(programs) < len(units) / 3
    # the naive alternative: convs, activations, SE, add measured apart
    ops = naive_ops(units_of(large)[3])
    assert [o.kind for o in ops] == ["conv", "act", "conv", "act", "conv", "add"]


def test_a_program_is_reused_only_for_the_sizes_it_takes(tmp_path):
    """Units sharing a program key are grouped differently by a collection, an adaptation's
    subset and an evaluation's naive ops: a program exported for sizes up to 32 must not be
    picked up for a unit at 48 (the runtime refused its input), a wider one serves both."""
    from edgepipe.latency_tables.programs import program_path, unit_sizes

    op = Unit("conv", 32, (8, 8, 3, 1, 8, None))
    narrow = unit_programs([replace(op, hw=hw) for hw in (16, 32)], dynamic=True)
    wide = unit_programs([replace(op, hw=hw) for hw in (16, 48)], dynamic=True)
    alone = unit_programs([replace(op, hw=24)], dynamic=True)  # one size: a static program
    (n_spec,), (w_spec,), (a_spec,) = narrow.values(), wide.values(), alone.values()
    assert n_spec.key == w_spec.key == a_spec.key  # the same program key, other sizes
    assert (unit_sizes(n_spec), unit_sizes(w_spec), unit_sizes(a_spec)) == ((4, 32), (4, 48),
                                                                             (24, 24))

    def convert(spec):  # as a conversion leaves it: the program, then its manifest
        path = program_path(tmp_path, spec, "executorch")
        path.write_bytes(b"pte")
        path.with_name(path.name + ".json").write_text("{}")
        return path

    narrow_file = convert(n_spec)
    assert program_path(tmp_path, a_spec, "executorch") == narrow_file  # 24 is in 4..32
    assert program_path(tmp_path, w_spec, "executorch") != narrow_file  # 48 is not
    wide_file = convert(w_spec)
    assert wide_file.name.endswith("-4-48.pte") and narrow_file.name.endswith("-4-32.pte")
    assert program_path(tmp_path, n_spec, "executorch") == narrow_file  # the narrowest that fits
    assert program_path(tmp_path, w_spec, "executorch") == wide_file
    # a program without its manifest is not converted yet
    wide_file.with_name(wide_file.name + ".json").unlink()
    assert program_path(tmp_path, w_spec, "executorch") == wide_file  # its own name, to write


def test_metrics():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(1)
    a = [rng.random() for _ in range(30)]
    b = [x + rng.gauss(0, 0.2) for x in a]
    assert kendall_tau(a, b) == pytest.approx(scipy_stats.kendalltau(a, b)[0], abs=1e-9)
    m = error_metrics([104, 96, 111, 100], [100, 100, 100, 100])
    assert (m["within_5pct"], m["within_10pct"]) == (0.75, 0.75)


def test_shipped_table_predicts_the_seeds_in_their_known_order():
    assert REFERENCE_TABLE.is_file(), "edgepipe ships an ExecuTorch fp32 1-thread table"
    table = LatencyTable.load(REFERENCE_TABLE)
    space = SearchSpace.from_dict(table.space)
    large = table.predict(space.seed_architecture("large"))
    small = table.predict(space.seed_architecture("small"))
    assert 2 * small < large  # V3-Small is ~3x faster than Large on CPUs (paper, table 3)
    assert table.predict(space.seed_architecture("large", 160)) < large
    model = table.network_model
    assert model is not None and len(model.networks) >= 12  # every size the space holds
    sizes = [n["median_ms"] for n in model.networks]
    assert max(sizes) > 5 * min(sizes)


def test_a_table_flagged_while_measured_says_so_where_it_is_used(tmp_path):
    """A shared core or segments that never settled during a collection are not silent later:
    predictions from the table carry a warning, `lut list` marks it."""
    from edgepipe.latency_tables.sentinels import use_table

    home = tmp_path / "home"
    path = home / "tables" / "t.json"
    path.parent.mkdir(parents=True)
    table = LatencyTable.load(REFERENCE_TABLE)
    assert table.flags() == []  # the shipped table was measured on a quiet device
    use = use_table(REFERENCE_TABLE, table, "skip", {}, home, 0, dict)
    assert not any("flagged" in w for w in use.warnings)

    shared = ("12 of 30 items' runs had the CPU only 61% of their wall time: another process "
              "shares the core")
    table.method["device_state_flags"] = [shared, shared]
    table.reference.update(flagged=True, unsettled_segments=3)
    table.save(path)
    table = LatencyTable.load(path)
    assert table.flags() == ["3 segment(s) of units never settled against the reference unit",
                             shared]
    use = use_table(path, table, "skip", {}, home, 0, dict)
    assert any(w.startswith("t.json was flagged while it was measured: 3 segment(s)")
               and "(and 1 more)" in w for w in use.warnings), use.warnings
    listing = " ".join(run_cli("lut", "list", env={"EDGEPIPE_HOME": str(home)}).stdout.split())
    assert "t.json: " in listing and "FLAGGED while measured (2: 3 segment(s)" in listing


def _predicted(words: str) -> float:
    """The median `lut predict` printed, in ms."""
    return float(re.search(r"predicted median ([0-9.]+) ms", " ".join(words.split()))[1])


def test_collect_killed_resumes(collected):
    home, table_file, partial, out = collected
    assert 6 <= len(partial["units"]) < len(space_units(SPACES["tiny"]))
    assert partial["model"] is None and partial["sentinels"] == []
    assert len(partial["method"]["sittings"]) >= 1  # the first sitting, before the units
    table = LatencyTable.load(table_file)
    assert set(table.units) == {u.key for u in space_units(SPACES["tiny"])}
    for key, stats in partial["units"].items():  # kept, not measured again
        assert table.units[key] == stats
    assert table.method["collection_s"]["convert"] < 5  # every program was already converted
    assert len(table.reference["samples"]) >= 2 and "accepted_spread_pct" in table.reference
    for stats in table.units.values():
        assert stats["count"] >= 15 and stats["median_ms"] > 0 and "ci95_pct" in stats
        assert stats["p90_ms"] <= stats["p99_ms"] and 0 < stats["cpu_share"] <= 1
    assert "units (" in out and "wrote" in out and "sentinels: reference unit" in out
    # the network model: fitted on networks measured in three sittings, left out by architecture
    words = " ".join(out.split())
    assert "network model: median ≈" in words and "left-out networks: median within" in words
    assert len(table.method["sittings"]) == 3
    model = table.network_model
    # --calibration 3: three networks, each at both resolutions of the space (one program)
    assert len(model.networks) == 6 and len(model.median.loo_errors) == 6
    for n in model.networks:
        # every sitting on record; the runs of those that agree (the median one always)
        assert len(n["sitting_medians_ms"]) == 3 and 0 <= n["sittings_left_out"] <= 2
        assert n["count"] >= (3 - n["sittings_left_out"]) * 15
        assert n["p90_ms"] >= n["median_ms"] >= n["min_ms"] > 0
    # the table knows the device by its identity, and carries its sentinels
    from edgepipe.device.info import device_info

    here = device_info()
    assert table.device["fingerprint"] == here["fingerprint"]
    assert table.device["identity"] == here["identity"]
    names = [s["name"] for s in table.sentinels]
    assert names[0].startswith("reference unit ") and names[1:3] == [
        "mobilenet_v3_small@96 x0.5", "mobilenet_v3_large@96 x0.5"]
    assert names[3].startswith("random small@")
    for s in table.sentinels:
        assert s["median_ms"] > 0 and s["sustained_ms"] >= s["median_ms"] * 0.9
        assert len(s["passes_ms"]) == 2


def test_predict_evaluate_and_refusals(collected, tmp_path):
    home, table_file, _, _ = collected
    table = LatencyTable.load(table_file)
    env = {"EDGEPIPE_HOME": str(home)}
    arch = tmp_path / "arch.json"  # a network of the tiny space, as a search would save it
    arch.write_text(json.dumps(SPACES["tiny"].architectures(1, seed=5)[0].to_dict()))
    run = run_cli("lut", "predict", "--table", str(table_file), "--arch", str(arch), env=env)
    assert run.returncode == 0, run.stderr
    words = " ".join(run.stdout.split())
    small96 = _predicted(words)
    assert small96 > 0
    assert f"table {table_file.name} (collected " in words and "checked" in words
    run = run_cli("lut", "predict", "--table", str(table_file), "--arch", "large", "--no-check",
                  env=env)
    assert run.returncode == 2 and "no entry for" in run.stderr  # not a network of this space

    # a table from another device is refused, naming what differs, unless forced; the
    # foreign identity is made of what this CPU lacks (any CPU, AMX and AVX-512 FP16 included)
    foreign = json.loads(table_file.read_text())
    identity = foreign["device"]["identity"]
    identity["family"] = (identity["family"] or 0) + 1
    lacked = next(f for f in (*X86_FEATURES, *ARM_FEATURES, "sme2") if f not in identity["isa"])
    identity["isa"] = identity["isa"] + [lacked]
    foreign["device"]["fingerprint"] = "0123456789abcdef"
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    run = run_cli("lut", "predict", "--table", str(tmp_path / "foreign.json"), "--arch",
                  str(arch), env=env)
    assert run.returncode == 2 and "another device (table: family" in run.stderr
    assert lacked in run.stderr and f"no {lacked}" in run.stderr
    assert "this device: family" in run.stderr
    assert "--force" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = run_cli("lut", "predict", "--table", str(tmp_path / "foreign.json"), "--arch",
                  str(arch), "--force", "--no-check", env=env)
    assert run.returncode == 0 and f"{small96:.3f}" in run.stdout
    assert "NOT CHECKED" in " ".join(run.stdout.split())
    with pytest.raises(EdgepipeError, match="threads"):
        table.check_target(Target(table.device["fingerprint"], "executorch", "fp32", 4))

    # corrupted files: one clear line each, nothing half-written
    for name, text in (("cut.json", table_file.read_text()[:500]),
                       ("other.json", json.dumps({"hello": 1})),
                       ("bad-entry.json", json.dumps({**json.loads(table_file.read_text()),
                                                      "units": {"ir-x": {"median_ms": -1}}})),
                       ("bad-sentinel.json", json.dumps({**json.loads(table_file.read_text()),
                                                         "sentinels": [{"name": "x"}]}))):
        (tmp_path / name).write_text(text)
        run = run_cli("lut", "predict", "--table", str(tmp_path / name), env=env)
        assert run.returncode == 2, name
        assert "latency table" in run.stderr or "not an edgepipe" in run.stderr, run.stderr
        assert "collect it again" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow  # 150-200 s; the first tier evaluates the adapted LiteRT table (below)
def test_evaluate_measures_networks_and_a_naive_per_op_sum(collected, tmp_path):
    """Whole networks measured on the agent, compared with the predictions and with a naive
    sum of ops measured one by one (the ops' programs named by the sizes they take)."""
    home, table_file, _, _ = collected
    env = {"EDGEPIPE_HOME": str(home)}
    run = run_cli("lut", "evaluate", "--table", str(table_file), "--count", "2", "--naive", "1",
                  "--out", str(tmp_path / "eval"), env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["prediction"]["count"] == 2 and len(report["networks"]) == 2
    for row in report["networks"]:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
    assert report["naive_per_op_sum"]["count"] == 1
    assert (tmp_path / "eval" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "within ±5 %" in run.stdout
    # more networks' naive ops: some of the same program keys at larger sizes than the
    # programs the first evaluation converted (one was given a 32 px program at 48 px once)
    run = run_cli("lut", "evaluate", "--table", str(table_file), "--count", "3", "--naive", "3",
                  "--out", str(tmp_path / "eval3"), env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "eval3" / "evaluation.json").read_text())
    assert report["naive_per_op_sum"]["count"] == 3


def test_check_finds_a_core_shared_with_a_busy_process(collected, tmp_path):
    """`lut check` once quietly, once with a CPU-bound process pinned to the measured core."""
    home, table_file, _, _ = collected
    env = {"EDGEPIPE_HOME": str(home)}
    cpu = own_cpu()
    quiet = run_cli("lut", "check", "--table", str(table_file), "--affinity", str(cpu),
                    env=env)
    assert quiet.returncode in (0, 1), quiet.stderr  # 1: drift (a noisy host, see below)
    assert "the device runs the table's sentinels at ×" in " ".join(quiet.stdout.split())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {cpu})
        loaded = run_cli("lut", "check", "--table", str(table_file), "--affinity", str(cpu),
                         env=env)
    finally:
        busy.kill()
        busy.wait()
    words = " ".join(loaded.stdout.split())
    assert loaded.returncode == 1 and "DRIFT — drift: the device runs" in words, words
    checks = LatencyTable.load(table_file).checks
    quiet_check, loaded_check = checks[-2:]
    assert loaded_check["verdict"] == "drift" and loaded_check["drift_pct"] > 5
    # a core shared with a busy process runs whole networks at about half speed. Compared with
    # the quiet check of a moment ago, not with the collection minutes before: on a shared host
    # that can itself have been disturbed (CI: a quiet check at ×0.62 of a collection measured
    # while slow), and a check says so as drift, which is right
    assert loaded_check["factor"] > 1.5 * quiet_check["factor"]
    assert checks[-1]["affinity"] == [cpu] and len(checks[-1]["sentinels"]) == 4
    (home / "tables").mkdir(exist_ok=True)  # where `lut list` looks
    shutil.copy(table_file, home / "tables" / "collected.json")
    listing = " ".join(run_cli("lut", "list", env=env).stdout.split())
    assert "collected.json: 32 units" in listing
    assert re.search(r"collected \d+ (s|min) ago; last checked \d+ s ago on ", listing)
    assert "last checked" in listing and ": drift (×" in listing


def _fast_table(table_file: Path, tmp_path: Path) -> tuple[Path, dict, Path]:
    """The table with its sentinels twice as fast as measured (as if collected on a faster
    CPU), unchecked: (its file, its content, a network of the tiny space to predict)."""
    fast = json.loads(table_file.read_text())
    for s in fast["sentinels"]:
        s["median_ms"] /= 2
        s["sustained_ms"] /= 2
    fast["checks"] = []
    fast_file = tmp_path / "fast.json"
    fast_file.write_text(json.dumps(fast))
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(SPACES["tiny"].architectures(1, seed=5)[0].to_dict()))
    return fast_file, fast, arch


def test_a_drifted_table_warns_refuses_or_rescales(collected, tmp_path):
    """A table whose sentinels ran twice as fast at collection as the device runs them now
    (as one collected on a faster CPU): each policy does what it says (--recollect: below)."""
    home, table_file, _, _ = collected
    env = {"EDGEPIPE_HOME": str(home)}
    fast_file, fast, arch = _fast_table(table_file, tmp_path)
    base = ("lut", "predict", "--table", str(fast_file), "--arch", str(arch))
    plain = run_cli(*base, "--no-check", env=env)
    assert plain.returncode == 0, plain.stderr
    unchecked = _predicted(plain.stdout)

    warned = run_cli(*base, env=env)  # measures the sentinels: about ×2
    words = " ".join(warned.stdout.split())
    assert warned.returncode == 0 and "warning: drift: the device runs" in words, words
    assert _predicted(words) == pytest.approx(unchecked)
    check = LatencyTable.load(fast_file).checks[-1]
    # about ×2 against the device as it runs now: the same table unhalved, checked right
    # after, takes out how far the host itself moved since the collection (against the
    # collection alone, CI found ×3.02 once and a fresh clone ×1.53)
    same = json.loads(table_file.read_text())
    same["checks"] = []
    (tmp_path / "same.json").write_text(json.dumps(same))

    def checked(path: Path) -> dict:
        assert run_cli("lut", "check", "--table", str(path), env=env).returncode in (0, 1)
        return LatencyTable.load(path).checks[-1]

    now = checked(tmp_path / "same.json")["factor"]
    # the ratio is 2 on a host at one speed; a host at two (Intel family 6 model 207,
    # references at 0.42 and 0.83 ms in turn) can put the two checks in different halves:
    # ×2.15 then ×0.74 in a fresh clone (2.9), ×1.64 then ×1.195 in another (1.37, Intel
    # family 6 model 106): the pair is measured again once. The bound below 2 is what this
    # test is for
    if not 1.6 < check["factor"] / now < 4.0:
        check = checked(fast_file)
        now = checked(tmp_path / "same.json")["factor"]
    assert check["verdict"] == "drift" and 1.6 < check["factor"] / now < 4.0, \
        (check["factor"], now)
    checks = len(LatencyTable.load(fast_file).checks)

    strict = run_cli(*base, "--strict", env=env)  # the check of a minute ago is reused
    assert strict.returncode == 2 and "refused (--strict)" in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1
    rescaled = run_cli(*base, "--rescale", env=env)
    words = " ".join(rescaled.stdout.split())
    assert rescaled.returncode == 0 and f"rescaled ×{check['factor']:.3f}" in words
    assert _predicted(words) == pytest.approx(
        unchecked * check["factor"], abs=0.0005 * (1 + check["factor"]))  # printed to 3 places
    assert len(LatencyTable.load(fast_file).checks) == checks  # reused, not measured again

    # sentinels that disagree (one of them as if twice as fast at collection) are measured
    # once more; a table that changed unevenly stays so, and the check says both
    uneven = json.loads(table_file.read_text())
    uneven["sentinels"][2]["median_ms"] /= 2
    uneven["sentinels"][2]["sustained_ms"] /= 2
    uneven["checks"] = []
    (tmp_path / "uneven.json").write_text(json.dumps(uneven))
    run = run_cli("lut", "check", "--table", str(tmp_path / "uneven.json"), env=env)
    words = " ".join(run.stdout.split())
    assert run.returncode in (0, 1) and "measured twice: they disagreed the first time" in words
    assert "they disagree (spread" in words, words
    check = LatencyTable.load(tmp_path / "uneven.json").checks[-1]
    assert check["measured_again"] and check["uneven"]
    assert all(len(s["passes_ms"]) == 4 for s in check["sentinels"])  # two passes, twice

    # a sentinel that cannot be converted: one line, and no prediction
    broken = json.loads(fast_file.read_text())
    broken["sentinels"][1]["arch"]["network"]["blocks"][1]["in_channels"] = 7  # no such net
    broken["checks"] = []
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    run = run_cli("lut", "predict", "--table", str(tmp_path / "broken.json"), "--arch",
                  str(arch), env=env)
    assert run.returncode == 2 and "sentinels cannot be converted" in run.stderr
    assert "nothing is predicted" in run.stderr and len(run.stderr.strip().splitlines()) == 1

    # a table of the first format has no sentinels: said, refused where a check is needed
    old = json.loads(table_file.read_text())
    old.update(format_version=1, sentinels=[], checks=[])
    del old["device"]["identity"]
    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps(old))
    run = run_cli("lut", "predict", "--table", str(old_file), "--arch", str(arch), env=env)
    assert run.returncode == 0 and "cannot be checked: it has no sentinels" in " ".join(
        run.stdout.split())
    run = run_cli("lut", "predict", "--table", str(old_file), "--arch", str(arch), "--strict",
                  env=env)
    assert run.returncode == 2 and "no sentinels" in run.stderr
    run = run_cli("lut", "check", "--table", str(old_file), env=env)
    assert run.returncode == 2 and "cannot be checked" in run.stderr


@pytest.mark.slow  # a whole collection again (the first tier collects once: `collected`)
def test_a_drifted_table_recollects(collected, tmp_path):
    """--recollect: the space collected again on the device (its programs are cached), used."""
    home, table_file, _, _ = collected
    home = home_with_programs(home, tmp_path)  # the new table lands in its tables/
    fast_file, fast, arch = _fast_table(table_file, tmp_path)
    recollected = run_cli("lut", "predict", "--table", str(fast_file), "--arch", str(arch),
                          "--recollect", env={"EDGEPIPE_HOME": str(home)})
    words = " ".join(recollected.stdout.split())
    assert recollected.returncode == 0, recollected.stderr
    assert "collected again now into" in words and "collected now on this device" in words
    fresh_file = next((home / "tables").glob("*-executorch-fp32-t1.json"))
    fresh = LatencyTable.load(fresh_file)
    assert fresh.sentinels and len(fresh.units) == len(table_units := fast["units"])
    assert set(fresh.units) == set(table_units) and fresh.created > fast["created"]
    assert fresh.method["collection_s"]["convert"] < 5  # the programs were converted already
    assert not list((home / "tables").glob("*.collecting.json"))  # renamed into place


def test_batch_jobs_are_checked_by_the_agent(tmp_path):
    from edgepipe.host.client import AgentClient
    from edgepipe.host.local import start_agent, stop_agent

    url, proc = start_agent(tmp_path / "agent", "tok")
    try:
        client = AgentClient(url, "tok")
        # the agent's schema names the field that is wrong
        for items, needle in (([], "items: .* non-empty"),
                              ([{"artifact": "0" * 64}], r"items\[0\]: 'shape' is a required"),
                              ([{"artifact": "0" * 64, "shape": [1, -3]}],
                               r"items\[0\]\.shape\[1\]: -3"),
                              ([{"artifact": "0" * 64, "shape": [1, 3]}], "upload it first")):
            with pytest.raises(EdgepipeError, match=needle):
                client.submit(items=items)
        with pytest.raises(EdgepipeError, match="stable_pct: -1 is less than"):
            client.submit(items=[{"artifact": "0" * 64, "shape": [1]}], stable_pct=-1)
    finally:
        stop_agent(proc)


def test_drift_guard_measures_a_disturbed_segment_again():
    """The retry policy, on a simulated device that is 1.6x slower during its second job
    (what the shared host here does for seconds at a time)."""
    from edgepipe.latency_tables.drift import DriftGuard

    calls = []

    def measure(items):
        calls.append(items)
        slow = 1.6 if len(calls) == 2 else 1.0
        return [{"median_ms": (0.3 if i["ref"] else i["ms"]) * slow} for i in items]

    guard = DriftGuard({"ref": True}, limit_pct=3, retries=2)
    segments = [[{"ref": False, "ms": 1.0}], [{"ref": False, "ms": 2.0}]]
    assert [s[0]["median_ms"] for s in guard.measure(measure, segments)] == [1.0, 2.0]
    assert [s[0]["median_ms"] for s in guard.measure(measure, segments)] == [1.0, 2.0]
    assert len(calls) == 3  # the second batch was slow everywhere: measured again
    assert guard.summary()["disturbed_references"] == 3 and not guard.summary()["flagged"]
    assert guard.summary()["slower_references"] == 3  # a slow episode: none faster

    # a resumed collection (its references so far at 0.3 ms) on a device now slower
    always_slow = DriftGuard({"ref": True}, limit_pct=3, retries=1,
                             samples=[{"median_ms": 0.3, "accepted": True}] * 20)
    result = always_slow.measure(lambda items: [{"median_ms": 0.5} for _ in items], segments)
    assert result[0][0]["unsettled"] and always_slow.summary()["flagged"]

    # the first job in a slow episode (x1.5), the host calm after it: the baseline is the
    # calm level by the second job (it was the first job's for good before), and what the
    # first job measured is found for measuring again
    calls.clear()

    def first_slow(items):
        calls.append(items)
        slow = 1.5 if len(calls) == 1 else 1.0
        return [{"median_ms": (0.3 if i["ref"] else i["ms"]) * slow} for i in items]

    later = DriftGuard({"ref": True}, limit_pct=3, retries=2)
    first = later.measure(first_slow, segments)
    assert [s[0]["median_ms"] for s in first] == [1.5, 3.0]  # it knew no better yet
    second = later.measure(first_slow, segments * 2)
    assert [s[0]["median_ms"] for s in second] == [1.0, 2.0, 1.0, 2.0]
    assert later.baseline_ms == 0.3 and not later.summary()["flagged"]
    assert all(later.off_baseline(s[0]) for s in first)
    from edgepipe.latency_tables.collect import accepted_early

    assert all(accepted_early(later, s[0]) for s in first)  # a collection measures them again
    assert not accepted_early(always_slow, result[0][0])  # retried already: kept, flagged
    assert not any(later.off_baseline(s[0]) for s in second)
    assert later.summary()["disturbed_references"] == 3  # the first job's, judged at the end
    # a faster reference is off the baseline too, and said to be faster, not slower
    quick = DriftGuard({"ref": True}, limit_pct=3,
                       samples=[{"median_ms": 0.3}] * 9 + [{"median_ms": 0.25}])
    assert quick.summary()["faster_references"] == 1 and quick.summary()["slower_references"] == 0


def test_retries_are_approved_by_what_they_cost_not_one_look_at_the_budget():
    """A job whose four segments were all disturbed, with room left for two of them: two are
    measured again, the others kept and marked unsettled (one look at the budget approved all
    four before, a whole job over it: 172 s of a 120 s int8 adaptation, Intel family 6 model
    106); and a budget overrun is said with the phases that took it."""
    import time

    from edgepipe.latency_tables.adapt import Budget, over_budget_words
    from edgepipe.latency_tables.drift import DriftGuard

    calls = []

    def measure(items):  # a simulated device: each segment 0.1 s of runs, references 1 ms
        calls.append(items)
        time.sleep(sum(i["ms"] * 100 / 1000 for i in items))
        slow = 1.6 if len(calls) == 1 else 1.0
        return [{"median_ms": i["ms"] * slow, "count": 100} for i in items]

    guard = DriftGuard({"ms": 0.01}, limit_pct=3, retries=2,
                       samples=[{"median_ms": 0.01, "accepted": True}] * 20)
    asked = []

    def may_retry(seconds: float) -> bool:
        asked.append(seconds)
        return seconds < 0.25  # room for two segments' retries of 0.1 s each

    segments = [[{"ms": 1.0}] for _ in range(4)]
    result = guard.measure(measure, segments, may_retry=may_retry)
    assert len(calls) == 2 and len(calls[1]) == 2 * 2 + 1  # two segments measured again
    assert [bool(r[0].get("unsettled")) for r in result] == [False, False, True, True]
    assert asked == sorted(asked) and 0.08 < asked[0] < 0.14 and asked[2] > 0.25
    assert guard.summary()["unsettled_segments"] == 2

    budget = Budget(1.0)
    inside = budget.run(lambda: (time.sleep(0.3), budget.left())[1], "sitting 1")
    assert 0.2 < inside < 0.75  # a phase's retries see the jobs it ran before them
    budget = Budget(1.0)
    budget.run(lambda: time.sleep(0.05), "sitting 1")
    budget.run(lambda: time.sleep(0.02), "units")
    budget.run(lambda: time.sleep(0.02), "units")
    assert set(budget.phases) == {"sitting 1", "units"} and budget.spent >= 0.09
    assert over_budget_words(110, 120, {"units": 60, "sitting 1": 50}) is None
    words = over_budget_words(172, 120, {"sitting 1": 40, "units": 90, "sentinels": 12})
    assert words.startswith("the measurement took 172 s, over the 120 s budget (units 90 s, "
                            "sitting 1 40 s, sentinels 12 s)")


def test_a_disturbed_sitting_is_outvoted_not_pooled():
    """Two sittings of a network 2.3x apart (a slow episode of a shared host between calm
    references): neither is trusted alone; a third sitting decides and the far one is left out
    of the runs the median is taken from."""
    from edgepipe.latency_tables.evaluate import agreeing
    from edgepipe.latency_tables.measure import pooled

    def sitting(ms: float) -> dict:
        return {"median_ms": ms, "raw_ms": [ms * f for f in (0.98, 1.0, 1.03)]}

    calm, slow = sitting(4.76), sitting(11.16)
    assert agreeing([calm, sitting(4.9)]) == [calm, sitting(4.9)]  # 3 % apart: both kept
    assert agreeing([calm, slow]) == []  # neither can be told the disturbed one
    kept = agreeing([calm, slow, sitting(4.8)])
    assert kept == [calm, sitting(4.8)]
    assert abs(pooled(kept)["median_ms"] / 4.78 - 1) < 0.02
    outvoted = pooled([calm, slow, sitting(4.8)], outvote=True)
    assert outvoted["median_ms"] == pooled(kept)["median_ms"]
    assert outvoted["sittings_left_out"] == 1 and len(outvoted["sitting_medians_ms"]) == 3
    assert agreeing([calm]) == [calm]


@pytest.mark.slow  # LiteRT units are measured in the first tier by `lut adapt` below
def test_litert_table_one_program_per_unit(tmp_path):
    """LiteRT programs have one input size each: a table converts one per unit, and the
    worker (no torch needed for LiteRT) measures them."""
    home = tmp_path / "home"
    run = run_cli("lut", "collect", "--space", "tiny", "--runtime", "litert", "--calibration",
                  "3", "--out", str(home / "lite.json"), env={"EDGEPIPE_HOME": str(home)})
    assert run.returncode == 0, run.stderr
    table = LatencyTable.load(home / "lite.json")
    assert table.runtime == "litert" and table.runtime_version.startswith("ai-edge-litert")
    times = table.method["collection_s"]
    assert times["programs"] == times["units"] == len(table.units)
    arch = SPACES["tiny"].architectures(1, seed=2)[0]
    assert table.predict(arch) > 0 and table.network_model.median.coef[0] > 0


@pytest.fixture(scope="module")
def adapted(collected, tmp_path_factory):
    """The tiny ExecuTorch table adapted to LiteRT on the same agent from 10 units measured:
    (EDGEPIPE_HOME, adapted table file, the command's stdout)."""
    home, table_file, _, _ = collected
    out = tmp_path_factory.mktemp("adapted") / "lite.json"
    run = run_cli("lut", "adapt", "--from", str(table_file), "--runtime", "litert",
                  "--units", "10", "--networks", "2", "--budget-s", "120", "--out", str(out),
                  env={"EDGEPIPE_HOME": str(home)}, timeout=1800)
    assert run.returncode == 0, run.stderr
    return home, out, run.stdout


def test_adapt_measures_a_few_units_and_transfers_the_rest(collected, adapted, tmp_path):
    """`lut adapt` on the local agent: ExecuTorch's table to LiteRT from 10 measured units;
    every unit says where it comes from, predictions say how much was transferred, and they
    are checked against networks measured whole."""
    home, table_file, _, _ = collected
    _, lite_file, out = adapted
    env = {"EDGEPIPE_HOME": str(home)}
    words = " ".join(out.split())
    assert "units measured on" in words and "the rest transferred from t.json" in words
    # the regressor chosen by the networks measured whole (4 architectures: the seeds and two)
    assert "chosen by the networks measured whole (each architecture left out)" in words
    table = LatencyTable.load(lite_file)
    source = LatencyTable.load(table_file)
    assert table.runtime == "litert" and set(table.units) == set(source.units)
    kinds = [u.get("source") for u in table.units.values()]
    assert 10 <= kinds.count("measured") <= 11 and kinds.count("transferred") >= 20
    for u in table.units.values():
        if u["source"] == "transferred":
            assert u["expected_error_pct"] > 0 and u["median_ms"] > 0
    a = table.adapted
    assert a["sources"][0]["name"] == "t.json" and a["sources"][0]["runtime"] == "executorch"
    assert a["measured_units"] == kinds.count("measured") and a["regressor"] in (
        "factor", "ridge", "trees")
    cv = a["transfer_cv"]
    assert cv["chosen_by"] == "whole networks measured on the target"
    assert a["regressor"] == min(cv["network_rmse_pct"], key=cv["network_rmse_pct"].get)
    assert a["measurement_s"] <= 120 + 15  # the budget (one job may run over it a little)
    phases = a["measurement_phases_s"]  # where the budget went, phase by phase
    assert {"sitting 1", "units", "sitting 2", "sentinels"} <= set(phases)
    assert abs(sum(phases.values()) - a["measurement_s"]) < 0.5
    assert table.network_model is not None and len(table.sentinels) == 4
    flags = table.flags()  # what the adaptation said about the device while it measured

    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(SPACES["tiny"].architectures(1, seed=5)[0].to_dict()))
    run = run_cli("lut", "predict", "--table", str(lite_file), "--runtime", "litert",
                  "--arch", str(arch), "--p90", env=env)
    words = " ".join(run.stdout.split())
    assert run.returncode == 0, run.stderr
    assert "predicted median" in words and "p90 (90th percentile of runs)" in words
    assert "95 % interval" in words and "of its unit time transferred" in words
    assert "adapted from t.json" in words and "checked now" in words
    # a table measured while the device was disturbed says so wherever it predicts
    assert ("was flagged while it was measured" in words) == bool(flags), words

    def worst_error(out: Path) -> tuple[subprocess.CompletedProcess, dict, float]:
        run = run_cli("lut", "evaluate", "--table", str(lite_file), "--count", "4", "--naive",
                      "0", "--out", str(out), env=env)
        assert run.returncode == 0, run.stderr
        report = json.loads((out / "evaluation.json").read_text())
        assert report["table_flags"] == flags
        factor = report["check"]["factor"]  # the device now against the table's sentinels
        worst = 0.0
        for row in report["networks"]:
            # as the table predicts or as rescaled by the check `lut evaluate` makes first
            errors = [abs(row["predicted_ms"] * f / row["measured_ms"] - 1) for f in (1, factor)]
            worst = max(worst, min(errors))
            # at least 40 runs for each sitting pooled (three that all disagree pool only
            # the middle one), and two sittings measured at least
            pooled_sittings = len(row["passes_ms"]) - row["sittings_left_out"]
            assert len(row["passes_ms"]) >= 2 and pooled_sittings >= 1
            assert row["runs"] >= 40 * pooled_sittings and row["transferred_share"] > 0
        return run, report, worst

    # A sub-millisecond network on a shared 2-core host: within a quarter of its median. A
    # table flagged while it was measured (on CI the other test worker shares the host) says
    # so beside every prediction (asserted above) and is held to half of it: its units carry
    # the disturbance, and the check's one factor does not undo all of it (CI: small@64
    # 0.22 ms measured against 0.28 ms predicted twice, the adaptation flagged), while a
    # prediction that much off still catches a wrong unit or a lost term.
    bound = 0.5 if flags else 0.25
    run, report, worst = worst_error(tmp_path / "eval")
    if worst >= bound:
        # one CI evaluation measured small@64 at 0.17 ms against the 0.24 ms predicted (+39 %;
        # the check just before it: x0.99). Measured again once, as `lut evaluate` measures a
        # network again whose sittings disagree.
        run, report, worst = worst_error(tmp_path / "eval-again")
    assert worst < bound, (flags, report["networks"])
    assert "recorded in" in run.stdout
    assert LatencyTable.load(lite_file).network_model.evaluation["count"] == 4

    (home / "tables").mkdir(exist_ok=True)
    shutil.copy(lite_file, home / "tables" / "adapted.json")
    listing = " ".join(run_cli("lut", "list", env=env).stdout.split())
    assert "adapted.json: 32 units" in listing and "adapted from t.json" in listing
    assert "evaluated" in listing and "on 4 networks" in listing


def test_netadapt_searches_on_an_adapted_table(collected, adapted, tmp_path):
    home, _, _, _ = collected
    _, lite_file, _ = adapted
    arch = SPACES["tiny"].architectures(1, seed=5)[0]  # with digits' 10 classes: its head
    seed = replace(arch, network=replace(arch.network, num_classes=10))  # is estimated
    model = tmp_path / "seed.json"
    model.write_text(json.dumps(seed.to_dict()))
    run = run_cli("search", "netadapt", "--model", str(model), "--resolution",
                  str(seed.resolution), "--target-pct", "95", "--workers", "1",
                  "--delta-pct", "5", "--finetune-steps", "2", "--pretrain-steps", "10",
                  "--final-steps", "5", "--table", str(lite_file), "--runtime", "litert",
                  "--no-check", "--no-verify", "-o", str(tmp_path / "search"),
                  env={"EDGEPIPE_HOME": str(home)})
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "search" / "search.json").read_text())
    words = " ".join(result["table_checks"][0]["words"].split())
    assert "adapted from t.json" in words and "litert fp32" in words
    final = next(iter(result["finals"].values()))
    # 95 %: one step. The tiny space's layers shrink a 0.11-0.16 ms network by 5-19 % at most
    # in 5 % steps (the units' share of the prediction; the rest is the network model's
    # fixed term, fitted on the networks adapt measured: 90 % was out of reach once)
    assert final["predicted_ms"] <= 0.95 * result["steps"][0]["predicted_ms"]


def test_adapt_bad_input_is_one_line(collected, tmp_path):
    home, table_file, _, _ = collected
    env = {"EDGEPIPE_HOME": str(home)}
    (tmp_path / "cut.json").write_text(table_file.read_text()[:300])
    for args, needle in (
            (("--from", f"{table_file},{REFERENCE_TABLE}"), "of another search space"),
            (("--from", str(tmp_path / "cut.json")), "is corrupted"),
            (("--from", str(tmp_path / "none.json")), "does not exist"),
            (("--from", str(table_file), "--runtime", "litert", "--budget-s", "0.5"),
             "too small to fit anything"),
            (("--from", str(table_file), "--runtime", "litert", "--units", "3"),
             "at least 8 measured units")):
        out = tmp_path / "never.json"
        run = run_cli("lut", "adapt", *args, "--out", str(out), env=env)
        assert run.returncode == 2 and needle in run.stderr, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
        assert not out.exists()
    budget = run_cli("lut", "adapt", "--from", str(table_file), "--runtime", "litert",
                     "--budget-s", "0.5", "--out", str(tmp_path / "x.json"), env=env)
    minimum = int(budget.stderr.split("give --budget-s ")[1].split()[0])
    assert minimum > 0.5


def test_a_budget_spent_before_the_units_says_what_took_it_and_what_would_do():
    """`lut adapt --precision int8 --budget-s 120` (Intel family 6 model 106, a disturbed
    host): the networks' first sitting took 96 s, no unit was measured, and the line said
    "this device is slower than table.json's … at least 960 s" (the same CPU; 120 × 8 / 1)."""
    from edgepipe.latency_tables.adapt import MIN_UNITS, too_few_units_words

    line = too_few_units_words(0, 120, 96.0, 30.0, 18.0, 0.05, "table.json")
    assert line.startswith("only 0 units could be measured in --budget-s 120")
    assert "first sitting took 96 s of it, 3.2× the 30 s table.json's times gave" in line
    minimum = int(line.split("give --budget-s ")[1].split()[0])
    # two sittings as long as the first, the sentinels and the units fit in what it asks
    assert minimum >= 2 * 96 + 18 + MIN_UNITS * 0.05 and minimum < 300
    line = too_few_units_words(3, 60, 20.0, 18.0, 6.0, 4.0, "t.json")
    assert "a unit 4.00 s" in line and "slower device" not in line
    assert int(line.split("give --budget-s ")[1].split()[0]) >= 2 * 20 + 6 + MIN_UNITS * 4


def test_the_drift_limit_follows_the_references_noise():
    """A host whose reference wanders ±5 % from one measurement to the next (a shared Intel
    host): after ten references the limit widens to three times that noise and segments stop
    being measured again; a 1.6x slow episode is still beyond it (the cap) and measured again."""
    from edgepipe.latency_tables.drift import DriftGuard

    calls = []
    wander = [1.0, 1.05, 0.95, 1.04, 0.96, 1.05, 0.95]

    def measure(items):
        calls.append(items)
        out = []
        for n, i in enumerate(items):
            host = wander[(len(calls) + n) % len(wander)]
            out.append({"median_ms": (0.3 if i["ref"] else i["ms"]) * host})
        return out

    segments = [[{"ref": False, "ms": 1.0}] for _ in range(12)]
    fixed = DriftGuard({"ref": True}, limit_pct=3, retries=2, cap_pct=3)
    fixed.measure(measure, segments, per_job=4)
    fixed_jobs, calls[:] = len(calls), []
    noisy = DriftGuard({"ref": True}, limit_pct=3, retries=2)
    noisy.measure(measure, segments, per_job=4)
    assert len(calls) < fixed_jobs  # fewer segments measured again
    summary = noisy.summary()
    assert 4 < summary["noise_pct"] < 6 and summary["limit_pct"] == 10.0  # 3 x noise, capped
    assert summary["disturbed_references"] == 0 and not summary["flagged"]
    assert fixed.summary()["limit_pct"] == 3 and fixed.summary()["disturbed_references"] > 0

    # the same wander, then a slow episode: beyond the cap, measured again and flagged
    slow = DriftGuard({"ref": True}, limit_pct=3, retries=1, samples=list(noisy.samples))
    result = slow.measure(lambda items: [{"median_ms": (0.3 if i["ref"] else i["ms"]) * 1.6}
                                         for i in items], segments[:2])
    assert all(s[0]["unsettled"] for s in result) and slow.summary()["flagged"]


def test_the_baseline_is_the_devices_own_speed_on_a_host_at_two_speeds():
    """A shared host at its own speed half the time and at half of it the other half (the
    references of a collection on 2026-12-06: 0.42 and 0.83 ms): the baseline is the fast
    half's, whichever half has the majority, and its noise is the fast half's; a device that
    settles at a new speed for good (heat) gets a new baseline within the window."""
    from edgepipe.latency_tables.drift import WINDOW, DriftGuard, baseline_of, noise_of

    fast = [0.42 * (1 + 0.01 * (i % 5 - 2)) for i in range(40)]
    slow_majority = fast[:15] + [0.83] * 25
    assert abs(baseline_of(slow_majority) / 0.42 - 1) < 0.02
    assert noise_of(slow_majority) < 2  # the fast half's spread, not the two halves'
    guard = DriftGuard({"ref": True}, limit_pct=3, retries=1,
                       samples=[{"median_ms": v} for v in slow_majority])
    assert guard.current_limit_pct == 3  # 3 x noise < the floor
    result = guard.measure(lambda items: [{"median_ms": 0.83 if i["ref"] else 2.0}
                                          for i in items], [[{"ref": False}]])
    assert result[0][0]["unsettled"]  # measured between slow references: not trusted
    throttled = fast + [0.6] * WINDOW
    assert baseline_of(throttled) == 0.6
    assert baseline_of([0.3] * 8 + [0.2]) == 0.3  # one odd fast reference is not a speed
