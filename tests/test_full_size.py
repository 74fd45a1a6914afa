"""Full-size models through every converter: the real thing, a few minutes each (the trained
MobileNetV2 and `edgepipe run` in the first tier; LR-ASPP in the second, `-m slow`)."""

import json

import pytest

from edgepipe.converters.convert import ConvertRequest
from edgepipe.latency_tables.table import REFERENCE_TABLE, LatencyTable
from edgepipe.manifest import file_sha256
from edgepipe.models.pretrained import resolve_weights

from .artifacts import convert_cached
from .conftest import artifact, run_cli

RUNNABLE = [("executorch", "fp32"), ("executorch", "int8"), ("tflite", "fp32"),
            ("tflite", "int8")]
ALL_SIX = {*RUNNABLE, ("coreml", "fp16"), ("coreml", "int8")}


def test_real_mobilenet_v2_every_format_agrees_with_pytorch(real_v2):
    """torchvision's trained ImageNet MobileNetV2, through the real command line."""
    out, proc = real_v2
    assert proc.returncode == 0, proc.stderr
    assert "Egyptian cat" not in proc.stderr and "executorch" in proc.stdout  # the table
    report = json.loads((out / "report.json").read_text())
    assert {(a["format"], a["precision"]) for a in report["artifacts"]} == ALL_SIX
    assert report["weights_sha256"] == file_sha256(resolve_weights("mobilenet_v2", "imagenet"))
    for fmt, precision in RUNNABLE:
        parity = artifact(report, fmt, precision)["parity"]
        top1 = {p["image"]: p for p in parity["per_image"]}
        assert top1["chelsea"]["torch"] == "Egyptian cat"
        assert 0.65 < top1["chelsea"]["torch_score"] < 0.8
        # the confident photos agree everywhere, int8 included
        assert top1["chelsea"]["artifact"] == "Egyptian cat", (fmt, precision)
        assert top1["coffee"]["artifact"] == "espresso", (fmt, precision)
        if precision == "fp32":
            assert parity["top1_agreement"] == 1.0 and parity["max_rel_error"] < 1e-4
        else:
            # rocket (PyTorch: space shuttle at 0.30) is the one photo int8 may flip
            assert parity["top1_agreement"] >= 0.75
            assert parity["min_cosine_similarity"] > 0.93  # measured 0.950 (worst photo)
        assert artifact(report, fmt, precision)["graph"]["delegate_partitions"] == 1


# MobileNetV3-Small full size is what `edgepipe run` converts by default (tested below), and
# MobileNetV2 full size is the trained network above; LR-ASPP carries the whole V3-Large
# backbone, so V3-Large itself is not converted again here (it cost ~4 minutes of CI). The
# whole network at 224 px rather than VOC's 520: the same graph, ops and partitions (what
# this test is for) at a fifth of the pixels to calibrate and compare (236 s at 520).
@pytest.mark.slow
@pytest.mark.parametrize("model", ["lraspp_mobilenet_v3_large"])
def test_full_size_model_to_all_six_artifacts(tmp_path, model):
    report = convert_cached(ConvertRequest(model=model, out=tmp_path / model, int8=True,
                                           size=224))
    assert {(a["format"], a["precision"]) for a in report["artifacts"]} == ALL_SIX
    for fmt, precision in RUNNABLE:
        a = artifact(report, fmt, precision)
        if report["task"] == "classification":
            key, fp32_bound, int8_cosine = "top1_agreement", 1.0, 0.9
        else:  # a random-init segmenter's 21 maps are flat: int8 noise weighs more
            key, fp32_bound, int8_cosine = "pixel_agreement", 0.99, 0.8
        if precision == "fp32":
            assert a["parity"][key] >= fp32_bound
        else:
            assert a["parity"]["min_cosine_similarity"] > int8_cosine
        assert a["graph"]["ops_outside_delegate"] == {}, (fmt, precision)


TABLE = REFERENCE_TABLE


def test_run_with_no_arguments_is_the_whole_job(tmp_path):
    """`edgepipe run`: MobileNetV3-Small to six artifacts, a local agent started for real,
    deploy, profile, per-op table, one HTML report."""
    proc = run_cli("run", cwd=tmp_path, env={"EDGEPIPE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / "run"
    run = json.loads((out / "run.json").read_text())
    assert {(a["format"], a["precision"]) for a in run["conversion"]["artifacts"]} == ALL_SIX
    assert artifact(run["conversion"], "executorch", "fp32")["parity"]["top1_agreement"] == 1.0
    (device,) = run["devices"]
    assert device["name"] == "this-machine" and not device["errors"]
    measured = {(r["format"], r["precision"]): r for r in device["results"]}
    assert set(measured) == set(RUNNABLE)  # Core ML is listed as not measured
    assert any("Core ML" in s for s in run["skipped"])
    for r in measured.values():
        assert r["latency"]["count"] == 50 and r["latency"]["median_ms"] > 0
        assert r["device"]["fingerprint"] == device["info"]["fingerprint"]
    assert len(measured[("executorch", "int8")]["per_op"]) > 50
    assert len(measured[("tflite", "int8")]["per_op"]) > 50  # LiteRT's CompiledModel profiler
    assert all(o["block"] for o in measured[("tflite", "int8")]["per_op"])
    html = (out / "report.html").read_text()
    for text in ("Device this-machine", "Per operator", "<svg", "Median latency",
                 "mobilenet_v3_small_int8.pte", "LiteRT profiler", "p99 ms", "device state",
                 "Runtimes side by side: int8", "features.11", "Profiling overhead",
                 "<th>op type</th>"):
        assert text in html, text
    # the .pte takes its input channels-last: no X8 transpose of the input, which cost
    # 0.12 ms of ~1.4 when it took NCHW-contiguous
    pte_int8 = measured[("executorch", "int8")]
    assert pte_int8["per_op"] and not [o for o in pte_int8["per_op"]
                                       if o["type"].startswith("Transpose (ND, X8)")]
    for r in measured.values():
        assert r["latency"]["p90_ms"] <= r["latency"]["p99_ms"] and r["device_state"]
    # the shipped table is checked where the device is the CPU it was collected on; anywhere
    # else the report says there is no table for this device
    shipped = LatencyTable.load(TABLE)
    if shipped.device["fingerprint"] == device["info"]["fingerprint"]:
        (table,) = device["tables"]
        assert table["check"]["verdict"] in ("ok", "drift") and "checked" in table["words"]
        pred = table["model_prediction"]
        assert pred["model"] == "mobilenet_v3_small" and pred["predicted_ms"] > 0
        assert "Latency tables" in html and "predicts" in html
    else:
        assert device["tables"] == [] and "No latency table for this device" in html
