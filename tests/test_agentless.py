"""Devices driven without an agent (runners over adb or ssh), tested with STAND-INS: no phone
exists here. ``tests/standins/adb`` maps ``adb push/shell/pull`` to a local folder that plays
the phone; ``tests/standins/benchmark_model`` measures for real with ai-edge-litert and prints
what LiteRT's ``benchmark_model`` prints (its statistics lines and LiteRT's own profile
summary). The ExecuTorch runner is the real lean runner, built here. What these tests prove
is the plumbing and the parsing, not a phone's numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import pytest
from PIL import Image

from edgepipe.converters.images import builtin_calibration_images
from edgepipe.device.litert_profiler import profile_ops
from edgepipe.device.native_runner import build_runner
from edgepipe.host.benchmark_model import (
    UnreadableOutput,
    latency_record,
    op_times,
    parse_output,
    parse_run_order,
)

from .conftest import artifact, run_cli

STANDINS = Path(__file__).parent / "standins"
SERIAL = "standin-phone"


@pytest.fixture(scope="module")
def summary(small_conversion):
    """LiteRT's own profile summary of a real model, and the events it was made from."""
    out, report = small_conversion
    path = out / artifact(report, "tflite", "int8")["file"]
    profile = profile_ops(path, None, runs=6)
    return profile.summary, profile.to_dict()


def test_profile_text_reads_into_one_row_per_op(summary):
    text, events = summary
    rows = parse_run_order(text.splitlines())
    assert len(rows) == len(events["ops"]) > 60
    for row, op in zip(rows, events["ops"], strict=True):
        assert row.type.removeprefix("Delegate/") == op["name"]
        mean_ms = statistics.mean(op["times_us"]) / 1000
        assert abs(row.avg_ms - mean_ms) <= 0.0011  # printed to the µs
        assert row.times_called == events["runs"]  # LiteRT prints the total over the runs
    # the same rows as CSV, as StatsCalculator writes them (ColumnString, format_as_csv: the
    # name's commas become tabs)
    csv = ["Operator-wise Profiling Info for Regular Benchmark Runs:", "== Run Order ==",
           "node type, start, first, avg_ms, %, cdf%, mem KB, times called, name"]
    csv += [f"{r.type.replace(',', ';')}, 0, {r.first_ms}, {r.avg_ms}, {r.percent}%, 0%, 0, "
            f"{r.times_called}, {r.name.replace(',', chr(9))}" for r in rows]
    again = parse_run_order(csv)
    assert [(r.name, r.avg_ms, r.times_called) for r in again] == \
        [(r.name, r.avg_ms, r.times_called) for r in rows]
    # calls per run or over all runs: read from whether the rows fit in the run
    run_ms = statistics.mean(events["invoke_us"]) / 1000  # LiteRT's own whole-run event
    times, convention = op_times(rows, events["runs"], run_ms)
    assert convention == f"calls over all {events['runs']} runs"
    assert sum(times) <= 1.25 * run_ms
    with pytest.raises(UnreadableOutput, match="not within the run"):
        op_times(rows, events["runs"], run_ms / 100)  # a run shorter than its ops
    # benchmark_model's convention: calls per run (a row gathering 13 DWConv ops)
    lines = ["== Run Order ==", "\t [node type]\t [first]\t [avg ms]\t [%]\t [cdf%]\t "
             "[mem KB]\t[times called]\t[Name]",
             "\t QUANTIZE\t 0.199\t 0.203\t 1.3%\t 1.3%\t 0.000\t 1\t[tfl.quantize]:0",
             "\t Convolution (NHWC, QC8) DWConv\t 0.428\t 0.051\t 4.3%\t 5.6%\t 0.000\t 13"
             "\tDelegate/Convolution (NHWC, QC8) DWConv:1"]
    tflite_rows = parse_run_order(lines)
    assert tflite_rows[1].type == "Convolution (NHWC, QC8) DWConv"
    times, convention = op_times(tflite_rows, 64, 1.0)
    assert convention == "calls per run" and times == pytest.approx([0.203, 0.663])


def test_statistics_lines_give_a_median_only_where_printed():
    old = parse_output("INFO: count=13 first=57064 curr=37466 min=37180 max=57064 "
                       "avg=39224.6 std=5336\n\nINFO: count=50 first=37483 curr=37520 "
                       "min=37185 max=38165 avg=37464.5 std=198\nINFO: Inference timings in "
                       "us: Init: 45400, First inference: 57064, Warmup (avg): 39224.6, "
                       "Inference (avg): 37464.5\n")
    lat = latency_record(old.runs)
    assert lat["median_ms"] is None and lat["p90_ms"] is None and lat["count"] == 50
    assert lat["mean_ms"] == pytest.approx(37.4645) and old.init_ms == pytest.approx(45.4)
    assert old.warmup["count"] == 13 and old.ops is None
    new = parse_output("count=50 first=1 curr=2 min=1 max=3 avg=2 std=1 p5=1 median=2 p95=3")
    assert latency_record(new.runs)["median_ms"] == pytest.approx(0.002)
    same = parse_output("count=5 curr=900(all same)")
    assert latency_record(same.runs)["min_ms"] == latency_record(same.runs)["max_ms"] == 0.9
    with pytest.raises(UnreadableOutput, match="no statistics line"):
        parse_output("Segmentation fault\n")


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """A registry with a stand-in phone whose runners are the stand-in benchmark_model and
    the lean ExecuTorch runner built here; the environment that reaches it."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to build the lean runner")
    base = tmp_path_factory.mktemp("phone")
    (base / "bin").mkdir()
    shutil.copy(STANDINS / "adb", base / "bin" / "adb")
    tool = base / "runners" / "benchmark_model"
    tool.parent.mkdir()
    source = (STANDINS / "benchmark_model").read_text().split("\n", 1)[1]
    tool.write_text(f"#!{sys.executable}\n{source}")
    tool.chmod(0o755)
    et = build_runner(base / "built")
    shutil.copy2(et, base / "runners" / "et_runner")
    env = {"EDGEPIPE_HOME": str(base / "home"), "EDGEPIPE_STANDIN_ADB_ROOT": str(base / "fs"),
           "PATH": f"{base / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    (base / "fs").mkdir()
    done = run_cli("device", "add", "phone", "--adb", SERIAL, "--runner", str(tool),
                   "--runner", str(base / "runners" / "et_runner"), env=env)
    assert done.returncode == 0, done.stderr
    assert "no agent: benchmark_model, et_runner" in done.stdout
    return base, env


def test_standin_phone_measures_litert_with_benchmark_model(phone, small_conversion, tmp_path):
    base, env = phone
    out, report = small_conversion
    tflite = out / artifact(report, "tflite", "int8")["file"]
    table = tmp_path / "ops.json"
    done = run_cli("profile", str(tflite), "--device", "phone", "--runs", "30",
                   "--out", str(table), env=env)
    assert done.returncode == 0, done.stderr
    words = " ".join(done.stdout.split())
    assert "measured by LiteRT benchmark_model over adb standin-phone (no agent)" in words
    # this build prints no median: null, shown as —, never the mean in its place
    assert "median — ms" in words and "n=30" in words
    assert "no fingerprint (no agent)" in words and "clocks, governors" in words
    rows = json.loads(table.read_text())
    assert len(rows) > 60 and all(r["median_ms"] is None and r["p90_ms"] is None
                                  for r in rows)
    assert all(r["mean_ms"] is not None and r["mean_ms"] >= 0 for r in rows)
    assert 0.1 < sum(r["share"] for r in rows) <= 1.25
    # the work folder is removed when the session ends
    assert not (base / "fs" / "data/local/tmp/edgepipe").exists()
    # a build that prints percentiles gives its median
    done = run_cli("profile", str(tflite), "--device", "phone", "--runs", "20", "--no-per-op",
                   env={**env, "EDGEPIPE_STANDIN_PERCENTILES": "1"})
    assert done.returncode == 0, done.stderr
    median = " ".join(done.stdout.split()).split("median ")[1].split(" ms")[0]
    assert float(median) > 0


def test_standin_phone_runs_a_tflite_of_free_size_at_its_manifest_size(phone, tmp_path):
    """A .tflite of free height and width (shape_signature [1, -1, -1, 3]) made with
    `manifest init --size 64x64`: benchmark_model is given --input_layer_shape (without it,
    it runs the placeholder [1, 1, 1, 3]), and its op profile is of that size."""
    from edgepipe.device.inspect_artifact import init_manifest

    base, env = phone
    model = tmp_path / "free.tflite"
    model.write_bytes((Path(__file__).parent / "data" / "free_hw_keras.tflite").read_bytes())
    init_manifest(model, task="classification", size=(64, 64))
    table = tmp_path / "ops.json"
    done = run_cli("profile", str(model), "--device", "phone", "--runs", "5", "--out",
                   str(table), env=env)
    assert done.returncode == 0, done.stderr
    # the op profile exists only at a size: of the placeholder there is none to write
    rows = json.loads(table.read_text())
    conv = sum(r["mean_ms"] for r in rows if r["type"].startswith("Convolution"))
    assert conv > 0, rows


def test_standin_phone_runs_executorch_on_the_lean_runner(phone, small_conversion, tmp_path):
    base, env = phone
    out, report = small_conversion
    pte = out / artifact(report, "executorch", "int8")["file"]
    table = tmp_path / "ops.csv"
    done = run_cli("profile", str(pte), "--device", "phone", "--runs", "20",
                   "--out", str(table), env=env)
    assert done.returncode == 0, done.stderr
    words = " ".join(done.stdout.split())
    assert "lean C++ runner et_runner" in words and "over adb standin-phone (no agent)" in words
    assert len(table.read_text().splitlines()) > 60  # the ETDump, pulled back and read
    rss = float(words.split("peak RSS ")[1].split(" MB")[0])
    assert 0 < rss < 200
    assert not (base / "fs" / "data/local/tmp/edgepipe").exists()
    # batches need the agent; the Python path does not exist there; nor does evaluation
    done = run_cli("profile", str(pte), "--device", "phone", "--runner", "python", env=env)
    assert done.returncode != 0 and "has no Python" in done.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(builtin_calibration_images(2)):
        Image.fromarray(image).save(photos / f"{i}.png")
    done = run_cli("evaluate", str(pte), "--device", "phone", "--data", str(photos),
                   "--no-reference", "-o", str(tmp_path / "eval"), env=env)
    assert done.returncode == 2 and "evaluate jobs need the agent" in done.stderr
    assert "not fully evaluated" in done.stderr and "run again to resume" in done.stderr
    (a,) = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["artifacts"]
    assert a["images"] == 0 and "evaluate jobs need the agent" in a["stopped"]


def _fake_tool(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_unusable_runners_and_output_are_refused_in_one_line(phone, small_conversion,
                                                             tmp_path):
    base, env = phone
    out, report = small_conversion
    tflite = out / artifact(report, "tflite", "int8")["file"]
    home = {**env, "EDGEPIPE_HOME": str(tmp_path / "home")}

    def add(*runners: str, name: str = "p2", where: tuple = ("--adb", SERIAL)):
        return run_cli("device", "add", name, *where,
                       *[a for r in runners for a in ("--runner", r)], env=home)

    missing = add(str(tmp_path / "nowhere" / "benchmark_model"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    plain = tmp_path / "plain" / "benchmark_model"
    plain.parent.mkdir()
    plain.write_text("#!/bin/sh\n")
    done = add(str(plain))
    assert done.returncode == 2 and "not executable (chmod +x it)" in done.stderr
    done = add(str(_fake_tool(tmp_path / "x" / "mystery", "true")))
    assert done.returncode == 2 and "cannot tell which runtime" in done.stderr
    done = add(str(_fake_tool(tmp_path / "u" / "benchmark_model", "true")),
               where=("--url", "http://127.0.0.1:1"))
    assert done.returncode == 2 and "--adb SERIAL or --ssh" in done.stderr
    done = run_cli("device", "add", "p3", "--adb", SERIAL, env=home)
    assert done.returncode == 2 and "--token is required" in done.stderr
    # a runner for another architecture: an ELF header saying aarch64
    other = tmp_path / "arm" / "benchmark_model"
    other.parent.mkdir()
    other.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + (183).to_bytes(2, "little")
                      + bytes(44))
    other.chmod(0o755)
    assert add(str(other), name="arm").returncode == 0
    done = run_cli("profile", str(tflite), "--device", "arm", env=home)
    assert done.returncode == 2
    assert "built for aarch64; device arm is x86_64" in done.stderr.strip().splitlines()[-1]
    # output that cannot be read: the job fails quoting the runner's last lines
    junk = _fake_tool(tmp_path / "junk" / "benchmark_model",
                      "echo 'INFO: STARTING!'; echo 'oops: model not supported'")
    assert add(str(junk), name="junk").returncode == 0
    done = run_cli("profile", str(tflite), "--device", "junk", env=home)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()[-1]
    assert "output cannot be read" in err and "oops: model not supported" in err
    assert "Traceback" not in done.stderr
    # a runner that fails: its exit code and last lines
    fails = _fake_tool(tmp_path / "fails" / "benchmark_model",
                       "echo 'ERROR: Failed to allocate tensors' >&2; exit 1")
    assert add(str(fails), name="fails").returncode == 0
    done = run_cli("profile", str(tflite), "--device", "fails", env=home)
    assert done.returncode == 2 and "(exit 1): ERROR: Failed to allocate" in done.stderr
    # a .pte on a device with LiteRT's runner only
    pte = out / artifact(report, "executorch", "int8")["file"]
    done = run_cli("profile", str(pte), "--device", "fails", env=home)
    assert done.returncode == 2 and "has no runner for" in done.stderr


def test_runner_runtime_by_the_names_runners_are_published_under(tmp_path):
    from edgepipe.host.agentless import runner_runtime

    for name, runtime in (("android_aarch64_benchmark_model", "litert"),
                          ("benchmark_model", "litert"), ("et_runner-aarch64", "executorch")):
        path = tmp_path / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        assert runner_runtime(path) == (runtime, None), name
