"""Per-operator profiles on a real agent on loopback: LiteRT's CompiledModel profiler (fp32,
int8, a builtin op XNNPACK does not take, a foreign .tflite) in ExecuTorch's table shape, ops
placed in the source model's blocks."""

from __future__ import annotations

import csv

import pytest

from edgepipe.errors import EdgepipeError
from edgepipe.host.op_table import litert_op_table, percentile

from . import foreign
from .conftest import artifact, run_cli
from .test_agent import agent, cli_env  # noqa: F401  (fixtures)

COLUMNS = {"name", "type", "delegated", "median_ms", "p90_ms", "share"}


def profile_rows(path, env, tmp_path, *extra: str) -> tuple[list[dict], str]:
    table = tmp_path / f"{path.stem}.csv"
    done = run_cli("profile", str(path), "--device", "loop", "--runs", "10", "--out",
                   str(table), *extra, env=env)
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(table.open())), done.stdout


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_litert_per_op_table(small_conversion, agent, cli_env, tmp_path, precision):  # noqa: F811
    out, report = small_conversion
    tflite = out / artifact(report, "tflite", precision)["file"]
    rows, stdout = profile_rows(tflite, cli_env, tmp_path)
    assert set(rows[0]) >= COLUMNS
    assert len(rows) > 60  # every XNNPACK kernel of the network, in execution order
    assert [int(r["name"].rsplit("#", 1)[1]) for r in rows] == list(range(len(rows)))
    assert all(r["delegated"] == "True" for r in rows)  # one XNNPACK partition, no builtin op
    types = {r["type"] for r in rows}
    assert "Convolution DWConv" in types, types
    assert any(t.startswith("Fully Connected") for t in types), types
    if precision == "int8":  # XNNPACK names its int8 HardSwish "Invalid Unary Op"
        assert any("QC8" in r["name"] or "QS8" in r["name"] for r in rows)
    else:
        assert "HardSwish" in types
    assert all(float(r["median_ms"]) <= float(r["p90_ms"]) for r in rows)
    # XNNPACK times whole microseconds and the runtime spends some time outside the ops:
    # the ops add up to most of the Invoke event, never to more than a little over it
    share = sum(float(r["share"]) for r in rows)
    assert 0.4 < share < 1.1, share
    assert "LiteRT profiler" in stdout and "profiling overhead" in stdout
    # every op placed in the model by litert-torch's tensor names, blocks in the order they run
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    assert all(r["block"] and r["module"] for r in rows), [r for r in rows if not r["block"]]
    assert blocks[:3] == ["features.0", "features.1", "features.2"], blocks
    assert blocks[-2:] == ["avgpool", "classifier"], blocks
    assert f"{len(rows)} of {len(rows)} ops placed" in stdout
    client, _ = agent
    per_op = client.jobs()[-1]["result"]["per_op"]
    assert per_op["available"] and per_op["runs"] == 10
    assert len(per_op["profiled_ms"]) == len(per_op["unprofiled_ms"]) == 10
    assert "Run Order" in per_op["summary"]  # LiteRT's own summary travels with the numbers


def test_builtin_op_runs_between_xnnpack_partitions_in_order(agent, cli_env,  # noqa: F811
                                                             tmp_path):
    model = foreign.with_builtin_op(tmp_path / "cumsum.tflite")
    done = run_cli("manifest", "init", str(model), "--task", "unknown")
    assert done.returncode == 0, done.stderr
    rows, _ = profile_rows(model, cli_env, tmp_path)
    builtin = [i for i, r in enumerate(rows) if r["delegated"] == "False"]
    assert [rows[i]["type"] for i in builtin] == ["CUMSUM"], rows
    at = builtin[0]
    assert rows[at]["block"] == "(model)"  # the cumsum is in the model's own forward
    assert rows[0]["block"] == "stem" and rows[-1]["block"] == "head", rows
    # the stem's convolution runs before it, the head's after: execution order, not grouped
    assert any(r["type"].startswith("Convolution") for r in rows[:at]), rows
    assert any(r["type"].startswith(("Convolution", "Fully Connected", "Mean"))
               for r in rows[at + 1:]), rows


def test_foreign_tflite_gets_a_table(agent, cli_env, tmp_path):  # noqa: F811
    """A .tflite that litert-torch wrote directly: four outputs, sigmoid, softmax, max."""
    model = foreign.detector(tmp_path / "detector.tflite")
    done = run_cli("manifest", "init", str(model), "--task", "unknown")
    assert done.returncode == 0, done.stderr
    rows, stdout = profile_rows(model, cli_env, tmp_path)
    assert len(rows) >= 4 and any(r["type"].startswith("Convolution") for r in rows)
    assert all(float(r["median_ms"]) >= 0 for r in rows)


def test_a_record_without_a_time_per_run_gives_no_numbers():
    record = {"runs": 3, "invoke_us": [100, 100, 100],
              "ops": [{"position": 0, "name": "Add (ND)", "delegated": True, "node": None,
                       "times_us": [5, 6]}]}
    with pytest.raises(EdgepipeError, match="no time per op and run"):
        litert_op_table(record)
    record["ops"][0]["times_us"] = [4, 6, 50]
    rows, total = litert_op_table(record)
    assert rows[0].median_ms == 0.006 and total == 0.1
    assert rows[0].p90_ms == pytest.approx(percentile([0.004, 0.006, 0.05], 90)) and \
        rows[0].p90_ms > rows[0].median_ms

