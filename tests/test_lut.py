"""Latency tables: the space, unit keys, collection against a real local agent (killed and
resumed), prediction, refusal of a foreign table, corrupted files, evaluation."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepipe.device.identity import ARM_FEATURES, X86_FEATURES
from edgepipe.errors import EdgepipeError
from edgepipe.latency_tables.collect import fit_overhead, space_units
from edgepipe.latency_tables.evaluate import error_metrics, kendall_tau
from edgepipe.latency_tables.programs import unit_programs
from edgepipe.latency_tables.table import SHIPPED, LatencyTable, Target
from edgepipe.latency_tables.units import naive_ops, units_of
from edgepipe.models.space import SPACES, Architecture, SearchSpace, build_architecture

from .conftest import run_cli


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


def test_metrics_and_overhead_fit():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(1)
    a = [rng.random() for _ in range(30)]
    b = [x + rng.gauss(0, 0.2) for x in a]
    assert kendall_tau(a, b) == pytest.approx(scipy_stats.kendalltau(a, b)[0], abs=1e-9)
    m = error_metrics([104, 96, 111, 100], [100, 100, 100, 100])
    assert (m["within_5pct"], m["within_10pct"]) == (0.75, 0.75)
    # the overhead fit recovers how a known device turns unit sums into network times
    models = [{"sum_ms": s, "boundary_m": e, "measured_ms": 0.9 * s - 0.4 * e + 0.3}
              for s, e in ((5, 1.4), (8, 1.7), (11, 1.5), (13, 2.0), (6, 1.8))]
    fit = fit_overhead(models)
    assert (fit.scale, fit.boundary_ms_per_m, fit.offset_ms) == pytest.approx((0.9, -0.4, 0.3))
    # where the boundary elements explain nothing but noise, left-out networks say so
    noise = random.Random(2)
    models = [{"sum_ms": s, "boundary_m": noise.uniform(0.8, 2.0),
               "measured_ms": (0.9 * s + 0.3) * noise.uniform(0.97, 1.03)}
              for s in (2, 3, 5, 6, 8, 9, 11, 13, 17, 20, 26, 31)]
    fit = fit_overhead(models)
    assert fit.boundary_ms_per_m == 0 and fit.scale == pytest.approx(0.9, abs=0.05)


def test_shipped_table_predicts_the_seeds_in_their_known_order():
    tables = sorted(SHIPPED.glob("*executorch-fp32-t1.json"))
    assert tables, "edgepipe ships an ExecuTorch fp32 1-thread table"
    table = LatencyTable.load(tables[0])
    space = SearchSpace.from_dict(table.space)
    large = table.predict(space.seed_architecture("large"))
    small = table.predict(space.seed_architecture("small"))
    assert 2 * small < large  # V3-Small is ~3x faster than Large on CPUs (paper, table 3)
    assert table.predict(space.seed_architecture("large", 160)) < large
    assert table.overhead is not None and len(table.overhead.models) >= 5


def _collect(home: Path, *extra: str) -> subprocess.Popen:
    code = "import sys\nfrom edgepipe.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "lut", "collect", "--space", "tiny", "--out",
         str(home / "t.json"), "--calibration", "5", *extra],
        env={**os.environ, "EDGEPIPE_HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """The tiny space's table, collected on a local agent, killed after 6 units and resumed:
    (EDGEPIPE_HOME, table file, the partial table at the kill, the resumed run's stdout)."""
    home = tmp_path_factory.mktemp("lut") / "home"
    table_file = home / "t.json"
    first = _collect(home, "--batch", "6")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if table_file.is_file() and len(json.loads(table_file.read_text())["units"]) >= 6:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()
    os.killpg(first.pid, signal.SIGKILL)  # the command, its converters and its agent
    first.wait()
    partial = json.loads(table_file.read_text())  # written atomically: whole, readable
    second = _collect(home, "--batch", "6")
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, err
    return home, table_file, partial, out


def test_collect_killed_resumes(collected):
    home, table_file, partial, out = collected
    assert 6 <= len(partial["units"]) < len(space_units(SPACES["tiny"]))
    assert partial["overhead"] is None and partial["sentinels"] == []
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
    small96 = float(words.split("predicted ")[1].split(" ms")[0])
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
                       ("bad-entry.json", table_file.read_text().replace(
                           '"median_ms": ', '"median_ms": -', 1)),
                       ("bad-sentinel.json", json.dumps({**json.loads(table_file.read_text()),
                                                         "sentinels": [{"name": "x"}]}))):
        (tmp_path / name).write_text(text)
        run = run_cli("lut", "predict", "--table", str(tmp_path / name), env=env)
        assert run.returncode == 2, name
        assert "latency table" in run.stderr or "not an edgepipe" in run.stderr, run.stderr
        assert "collect it again" in run.stderr and "Traceback" not in run.stderr

    # evaluation: whole networks measured on the agent, compared with the predictions
    run = run_cli("lut", "evaluate", "--table", str(table_file), "--count", "5", "--naive", "1",
                  "--out", str(tmp_path / "eval"), env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["prediction"]["count"] == 5 and len(report["networks"]) == 5
    for row in report["networks"]:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
    assert report["naive_per_op_sum"]["count"] == 1
    assert (tmp_path / "eval" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "within ±5 %" in run.stdout


def test_check_finds_a_core_shared_with_a_busy_process(collected, tmp_path):
    """`lut check` once quietly, once with a CPU-bound process pinned to the measured core."""
    home, table_file, _, _ = collected
    env = {"EDGEPIPE_HOME": str(home)}
    quiet = run_cli("lut", "check", "--table", str(table_file), "--affinity", "0", env=env)
    assert quiet.returncode in (0, 1), quiet.stderr  # 1: drift (a noisy host, see below)
    assert "the device runs the table's sentinels at ×" in " ".join(quiet.stdout.split())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {0})
        loaded = run_cli("lut", "check", "--table", str(table_file), "--affinity", "0",
                         env=env)
    finally:
        busy.kill()
        busy.wait()
    words = " ".join(loaded.stdout.split())
    assert loaded.returncode == 1 and "DRIFT — drift: the device runs" in words, words
    checks = LatencyTable.load(table_file).checks
    quiet_check, loaded_check = checks[-2:]
    assert loaded_check["verdict"] == "drift" and loaded_check["drift_pct"] > 5
    # a core shared with a busy process runs whole networks at about half speed; a quiet one
    # is within the noise of this shared host (±5 % usually; 12-15 % seen while other work ran)
    assert abs(quiet_check["drift_pct"]) < 25
    assert loaded_check["factor"] > 1.5 * quiet_check["factor"]
    assert checks[-1]["affinity"] == [0] and len(checks[-1]["sentinels"]) == 4
    (home / "tables").mkdir(exist_ok=True)  # where `lut list` looks
    shutil.copy(table_file, home / "tables" / "collected.json")
    listing = " ".join(run_cli("lut", "list", env=env).stdout.split())
    assert "collected.json: 32 units" in listing
    assert re.search(r"collected \d+ (s|min) ago; last checked \d+ s ago on ", listing)
    assert "last checked" in listing and ": drift (×" in listing


def test_a_drifted_table_warns_refuses_or_rescales(collected, tmp_path):
    """A table whose sentinels ran twice as fast at collection as the device runs them now
    (as one collected on a faster CPU): each policy does what it says."""
    home, table_file, _, _ = collected
    env = {"EDGEPIPE_HOME": str(home)}
    fast = json.loads(table_file.read_text())
    for s in fast["sentinels"]:
        s["median_ms"] /= 2
        s["sustained_ms"] /= 2
    fast["checks"] = []
    fast_file = tmp_path / "fast.json"
    fast_file.write_text(json.dumps(fast))
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(SPACES["tiny"].architectures(1, seed=5)[0].to_dict()))
    base = ("lut", "predict", "--table", str(fast_file), "--arch", str(arch))
    plain = run_cli(*base, "--no-check", env=env)
    assert plain.returncode == 0, plain.stderr
    unchecked = float(plain.stdout.split("predicted ")[1].split(" ms")[0])

    warned = run_cli(*base, env=env)  # measures the sentinels: about ×2
    words = " ".join(warned.stdout.split())
    assert warned.returncode == 0 and "warning: drift: the device runs" in words, words
    assert float(words.split("predicted ")[1].split(" ms")[0]) == pytest.approx(unchecked)
    check = LatencyTable.load(fast_file).checks[-1]
    assert check["verdict"] == "drift" and 1.6 < check["factor"] < 2.5

    strict = run_cli(*base, "--strict", env=env)  # the check of a minute ago is reused
    assert strict.returncode == 2 and "refused (--strict)" in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1
    rescaled = run_cli(*base, "--rescale", env=env)
    words = " ".join(rescaled.stdout.split())
    assert rescaled.returncode == 0 and f"rescaled ×{check['factor']:.3f}" in words
    assert float(words.split("predicted ")[1].split(" ms")[0]) == pytest.approx(
        unchecked * check["factor"], abs=0.0005 * (1 + check["factor"]))  # printed to 3 places
    assert len(LatencyTable.load(fast_file).checks) == 1  # reused, not measured again

    # --recollect: the space collected again on the device (its programs are cached), used
    recollected = run_cli(*base, "--recollect", env=env)
    words = " ".join(recollected.stdout.split())
    assert recollected.returncode == 0, recollected.stderr
    assert "collected again now into" in words and "collected now on this device" in words
    fresh_file = next((home / "tables").glob("*-executorch-fp32-t1.json"))
    fresh = LatencyTable.load(fresh_file)
    assert fresh.sentinels and len(fresh.units) == len(table_units := fast["units"])
    assert set(fresh.units) == set(table_units) and fresh.created > fast["created"]
    assert not list((home / "tables").glob("*.collecting.json"))  # renamed into place

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

    always_slow = DriftGuard({"ref": True}, limit_pct=3, retries=1,
                             samples=[{"median_ms": 0.3, "accepted": True}])
    result = always_slow.measure(lambda items: [{"median_ms": 0.5} for _ in items], segments)
    assert result[0][0]["unsettled"] and always_slow.summary()["flagged"]


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
    assert table.predict(arch) > 0 and table.overhead.scale > 0
