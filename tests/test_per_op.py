"""Per-operator profiles on a real agent on loopback: LiteRT's CompiledModel profiler (fp32,
int8, a builtin op XNNPACK does not take, a foreign .tflite) in ExecuTorch's table shape, ops
placed in the source model's blocks, and runtimes compared block by block."""

from __future__ import annotations

import csv

import jsonschema
import pytest

from edgepipe import schemas
from edgepipe.errors import EdgepipeError
from edgepipe.host.compare import side_by_side
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
    jsonschema.validate(per_op, schemas.PER_OP)  # the shape /v1/openapi.json documents


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


def test_compare_four_artifacts_block_by_block(small_conversion, agent, cli_env,  # noqa: F811
                                               tmp_path):
    out, report = small_conversion
    files = [str(out / artifact(report, fmt, precision)["file"])
             for precision in ("fp32", "int8") for fmt in ("tflite", "executorch")]
    plot, table = tmp_path / "compare.png", tmp_path / "compare.csv"
    done = run_cli("profile", "--compare", *files, "--device", "loop", "--runs", "10",
                   "--plot", str(plot), "--out", str(table), env=cli_env)
    assert done.returncode == 0, done.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file
    rows = list(csv.DictReader(table.open()))
    labels = ["litert fp32", "executorch fp32", "litert int8", "executorch int8"]
    assert all(f"{label} ratio" in rows[0] for label in labels)
    blocks = [r for r in rows if r["level"] == "block"]
    names = [r["name"] for r in blocks]
    assert names[:2] == ["features.0", "features.1"] and "classifier" in names, names
    for r in blocks:
        base = float(r["litert fp32 ms"])
        for label in labels[1:]:
            if base > 0.001:  # whole microseconds: a ratio of tiny blocks is noise
                assert float(r[f"{label} ratio"]) == pytest.approx(
                    float(r[f"{label} ms"]) / base, rel=0.01, abs=0.002)
    features = [r for r in blocks if r["name"].startswith("features.")]
    assert all(float(r[f"{label} ms"]) > 0 for r in features[:3] for label in labels)
    assert any(r["level"] == "type" and r["name"] == "Convolution DWConv" for r in rows)
    assert "by block" in done.stdout and "by op type" in done.stdout
    assert all(label in done.stdout for label in labels)

    one = run_cli("profile", "--compare", files[0], "--device", "loop", env=cli_env)
    assert one.returncode == 2 and "two or more" in one.stderr
    neither = run_cli("profile", "--device", "loop", env=cli_env)
    assert neither.returncode == 2 and "--compare" in neither.stderr


def test_side_by_side_keeps_each_runtimes_own_ops():
    a = [{"block": "features.0", "count": 2, "ms": 0.5}, {"block": "classifier", "count": 1,
                                                          "ms": 0.1}]
    b = [{"block": "(not placed)", "count": 3, "ms": 0.2},
         {"block": "features.0", "count": 4, "ms": 1.0}]
    table = side_by_side([a, b], "block")
    assert [r["name"] for r in table] == ["features.0", "classifier", "(not placed)"]
    assert table[0]["ratio"] == [1.0, 2.0] and table[0]["ops"] == [2, 4]
    assert table[1]["ms"] == [0.1, 0.0] and table[1]["ratio"] == [1.0, 0.0]
    assert table[2]["ratio"] == [None, None]  # nothing in the baseline: no ratio
