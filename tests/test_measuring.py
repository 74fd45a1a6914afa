"""The measuring protocol: p90/p99 and raw times in every job, repeats with MLPerf Mobile's
replicability verdict, a floor on the measured span, and the device's state at the start and
end of every job, flagged when it changed.

No board here has cpufreq, thermal zones or `vcgencmd`; throttling is driven by a stand-in
`vcgencmd` (a script on PATH, named so) that answers what a Raspberry Pi's firmware answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepipe.device.info import state_changes, throttled
from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent
from edgepipe.pipeline.report import _device_section

from .conftest import artifact, run_cli

STAND_IN_VCGENCMD = """#!/bin/sh
# stand-in for the Raspberry Pi firmware's vcgencmd (no Pi here): answers get_throttled with
# what the file $EDGEPIPE_TEST_THROTTLE holds (a hex value), 0x0 when it is empty or missing
value=$(cat "$EDGEPIPE_TEST_THROTTLE" 2>/dev/null)
echo "throttled=${value:-0x0}"
"""


@pytest.fixture
def stand_in_vcgencmd(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "stand-in-bin"
    folder.mkdir()
    tool = folder / "vcgencmd"
    tool.write_text(STAND_IN_VCGENCMD)
    tool.chmod(0o755)
    state = tmp_path / "throttle"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("EDGEPIPE_TEST_THROTTLE", str(state))
    return state


def test_state_changes_name_what_went_wrong():
    start = {"cpu": [{"cpu": 0, "cur_mhz": 2400, "governor": "performance"},
                     {"cpu": 1, "cur_mhz": None, "governor": None}],
             "throttled": {"raw": "0x0", "now": [], "since_boot": []}}
    end = {"cpu": [{"cpu": 0, "cur_mhz": 1500, "governor": "ondemand"},
                   {"cpu": 1, "cur_mhz": None, "governor": None}],
           "throttled": {"raw": "0x20002", "now": ["ARM frequency capped"],
                         "since_boot": ["ARM frequency capped"]}}
    flags = state_changes(start, end)
    assert flags == ["cpu0 frequency fell 2400 → 1500 MHz",
                     "cpu0 governor changed performance → ondemand",
                     "throttling began: ARM frequency capped (vcgencmd 0x20002)"]
    assert state_changes(start, start) == []
    unknown = {"cpu": [{"cpu": 0, "cur_mhz": None, "governor": None}], "throttled": None}
    assert state_changes(unknown, unknown) == []  # nothing readable: nothing claimed


def test_throttling_flags_from_the_stand_in_vcgencmd(stand_in_vcgencmd):
    stand_in_vcgencmd.write_text("0x50005")
    assert throttled() == {"raw": "0x50005", "now": ["under-voltage", "throttled"],
                           "since_boot": ["under-voltage", "throttled"]}
    stand_in_vcgencmd.write_text("garbage")
    assert throttled() is None  # an answer it cannot read is not a state


def test_profile_repeat_prints_repeats_percentiles_and_the_verdict(small_conversion, tmp_path):
    out, report = small_conversion
    tflite = out / artifact(report, "tflite", "fp32")["file"]
    url, proc = start_agent(tmp_path / "agent", "tok")
    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    try:
        assert run_cli("device", "add", "loop", "--url", url, "--token", "tok",
                       env=env).returncode == 0
        raw = tmp_path / "raw.json"
        done = run_cli("profile", str(tflite), "--device", "loop", "--repeat", "3",
                       "--cooldown", "0.2", "--min-runs", "30", "--min-seconds", "0.3",
                       "--raw", str(raw), env=env)
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split())
        for n in (1, 2, 3):
            assert f"repeat {n}: median" in text
        assert "p90" in text and "p99" in text
        assert "replicable: the 3 repeats' medians are" in text  # or "NOT replicable: ..."
        assert "MLPerf Mobile: within 5 %" in text and "device state:" in text
        repeats = json.loads(raw.read_text())["repeats"]
        client = AgentClient(url, "tok")
        jobs = client.jobs()[-3:]
        assert [r["job_id"] for r in repeats] == [j["id"] for j in jobs]
        for r, job in zip(repeats, jobs, strict=True):
            lat = job["result"]["latency"]
            assert len(r["raw_ms"]) == lat["count"] >= 30 and lat["span_s"] >= 0.3
            assert lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
            assert sum(r["raw_ms"]) / 1000 == pytest.approx(lat["span_s"], rel=1e-3)
            state = job["result"]["device_state"]
            assert set(state) == {"start", "end", "flags", "readable"}
            assert state["start"]["time"] < state["end"]["time"]
            assert 0.5 < lat["cpu_share"] <= 1 and lat["sustained_ms"] >= lat["mean_ms"] * 0.99
        medians = [j["result"]["latency"]["median_ms"] for j in jobs]
        spread = (max(medians) - min(medians)) / min(medians) * 100
        assert f"{spread:.1f} % apart" in text
        assert ("NOT replicable" in text) == (spread > 5)
    finally:
        stop_agent(proc)


def test_throttling_during_a_job_is_flagged_in_result_cli_and_report(
        small_conversion, stand_in_vcgencmd, tmp_path):
    out, report = small_conversion
    tflite = out / artifact(report, "tflite", "int8")["file"]
    url, proc = start_agent(tmp_path / "agent", "tok")  # inherits the stand-in on PATH
    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    try:
        assert run_cli("device", "add", "loop", "--url", url, "--token", "tok",
                       env=env).returncode == 0
        code = "import sys\nfrom edgepipe.cli import main\nsys.exit(main(sys.argv[1:]))"
        cli = subprocess.Popen(
            [sys.executable, "-c", code, "profile", str(tflite), "--device", "loop",
             "--no-per-op", "--min-seconds", "3"], env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = AgentClient(url, "tok")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # throttling begins while the job measures
            jobs = client.jobs()
            if jobs and jobs[-1]["progress"].get("phase") == "measuring":
                stand_in_vcgencmd.write_text("0x20002")
                break
            time.sleep(0.05)
        stdout, stderr = cli.communicate(timeout=120)
        assert cli.returncode == 0, stderr
        job = client.jobs()[-1]
        flags = job["result"]["device_state"]["flags"]
        assert flags == ["throttling began: ARM frequency capped (vcgencmd 0x20002)"]
        assert job["result"]["device_state"]["readable"]["throttling"]
        assert "FLAGGED: throttling began: ARM frequency capped" in " ".join(stdout.split())
        entry = {"name": "loop", "info": {}, "errors": [], "results": [{
            "artifact": tflite.name, "runtime": "litert", "threads": 1, "format": "tflite",
            "precision": "int8", "latency": job["result"]["latency"],
            "memory": job["result"]["memory"], "load_ms": job["result"]["load_ms"],
            "per_op": None, "per_op_note": "not asked", "flags": flags,
            "device_state": job["result"]["device_state"]}]}
        assert "FLAGGED: throttling began" in _device_section(entry)
    finally:
        stop_agent(proc)
