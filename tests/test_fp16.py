"""fp16 artifacts (ExecuTorch XNNPACK fp16, LiteRT fp16 weights with XNNPACK's fp16 flag):
conversion, parity, the runners, the device's fp16 flag with its per-op evidence, bad input,
the run's recommendation, and the artifacts on an emulated aarch64 CPU with and without fp16
arithmetic (qemu-aarch64-static: its "max" CPU has FEAT_FP16, its Cortex-A72 has not)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgepipe.converters.half import litert_metadata
from edgepipe.device.identity import fp16_support, local_identity, parse_identity
from edgepipe.device.runtimes import open_runner
from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent
from edgepipe.host.profiling import profile
from edgepipe.manifest import load_manifest
from edgepipe.pipeline.recommend import recommend_device

from .conftest import artifact, run_cli
from .test_identity import PI4, PI5, ZEN3, ZEN5, x86_cpuinfo

TOKEN = "fp16-token"
REPO = Path(__file__).resolve().parent.parent


def test_fp16_artifacts_keep_top1_and_say_how(fp16_conversion):
    out, report = fp16_conversion
    for fmt in ("executorch", "tflite"):
        a16, a32 = artifact(report, fmt, "fp16"), artifact(report, fmt, "fp32")
        parity = a16["parity"]
        # top-1 equal to fp32 PyTorch on the parity photos, the error reported and not zero
        assert parity["top1_agreement"] == 1.0
        assert 1e-5 < parity["max_abs_error"] < 0.1
        assert parity["max_abs_error"] > a32["parity"]["max_abs_error"] * 10
        assert "fp16" in parity["arithmetic"]
        assert a16["size_mb"] < 0.75 * a32["size_mb"]  # float16 weights
        assert a16["graph"]["delegate_partitions"] == 1 and not a16["graph"][
            "ops_outside_delegate"]
        manifest = load_manifest(out / a16["file"])
        assert manifest.precision == "fp16" and manifest.quantization["weights"].startswith(
            "fp16")
    pte = load_manifest(out / artifact(report, "executorch", "fp16")["file"])
    assert pte.inputs[0].dtype == "float16" and pte.outputs[0].dtype == "float16"
    tflite = out / artifact(report, "tflite", "fp16")["file"]
    assert litert_metadata(tflite)["reduced_precision_support"] == "fp16accfp16"
    fp32_tflite = out / artifact(report, "tflite", "fp32")["file"]
    assert "reduced_precision_support" not in litert_metadata(fp32_tflite)
    graph = artifact(report, "tflite", "fp16")["graph"]
    assert graph["fp16_weight_tensors"] == graph["ops"]["DEQUANTIZE"] > 10


def test_fp16_program_answers_the_same_on_both_executorch_paths(fp16_conversion, tmp_path):
    """The Python bindings and the lean C++ runner round the input to float16 alike and give
    float32 back (the runner's output file, the bindings' array)."""
    from edgepipe.device.native_runner import build_runner, run_runner

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (.ci/run installs it)")
    out, report = fp16_conversion
    pte = out / artifact(report, "executorch", "fp16")["file"]
    x = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
    python = open_runner(pte).run(x)[0]
    assert python.dtype == np.float32 and python.shape == (1, 1000)
    native = run_runner(build_runner(tmp_path / "bin"), pte, x, runs=2, warmup=0,
                        output=True)
    np.testing.assert_array_equal(native["output"], python.ravel())
    fp32 = open_runner(out / artifact(report, "executorch", "fp32")["file"]).run(x)[0]
    assert python.argmax() == fp32.argmax()
    assert 0 < np.abs(python - fp32).max() < 0.1 * np.abs(fp32).max()


def test_precisions_asked_for_per_format():
    from edgepipe.converters import CONVERTERS
    from edgepipe.converters.convert import conversion_jobs

    every = [CONVERTERS[f] for f in ("executorch", "tflite", "coreml")]

    def jobs(**asked: bool) -> list[str]:
        return [f"{c.format} {p}" for c, p in conversion_jobs(every, **asked)]

    assert jobs() == ["executorch fp32", "tflite fp32", "coreml fp16"]
    assert jobs(fp16=True) == ["executorch fp32", "executorch fp16", "tflite fp32",
                               "tflite fp16", "coreml fp16"]
    assert jobs(int8=True, fp16=True) == [
        "executorch fp32", "executorch fp16", "executorch int8", "tflite fp32", "tflite fp16",
        "tflite int8", "coreml fp16", "coreml int8"]


def test_fp16_support_read_from_the_isa():
    pi5 = parse_identity(PI5, "aarch64")
    pi4 = parse_identity(PI4, "aarch64")
    zen3, zen5 = parse_identity(ZEN3, "x86_64"), parse_identity(ZEN5, "x86_64")
    sapphire = parse_identity(x86_cpuinfo(6, 143, "avx2 avx512f avx512_fp16 amx_bf16"),
                              "x86_64")
    assert fp16_support(pi5)["native"] is True and "asimdhp" in fp16_support(pi5)["words"]
    assert fp16_support(sapphire)["native"] is True
    for lacking, feature in ((pi4, "asimdhp"), (zen3, "avx512_fp16"), (zen5, "avx512_fp16")):
        support = fp16_support(lacking)
        assert support["native"] is False and f"no {feature}" in support["words"]
    assert fp16_support({})["native"] is None and "unknown" in fp16_support(None)["words"]
    # fp16 is read from the identity, not added to it: fingerprints stay as they were
    assert "fp16" not in pi5


def test_fp16_results_carry_the_flag_and_the_kernels_that_ran(fp16_conversion, tmp_path):
    """A real agent on loopback: the job result, the host's ProfileResult and its per-op
    evidence. On x86 LiteRT keeps fp32 kernels (XNNPACK switches to fp16 only on ARM with
    fp16 arithmetic); ExecuTorch runs XNNPACK's F16 kernels (converting around each on a CPU
    without AVX512-FP16)."""
    out, report = fp16_conversion
    native = fp16_support(local_identity())
    url, proc = start_agent(tmp_path / "agent", TOKEN)
    try:
        client = AgentClient(url, TOKEN)
        assert client.info()["fp16"] == native
        results = {fmt: profile(client, out / artifact(report, fmt, "fp16")["file"], runs=5,
                                warmup=1) for fmt in ("tflite", "executorch")}
        fp32 = profile(client, out / artifact(report, "tflite", "fp32")["file"], runs=5,
                       warmup=1)
    finally:
        stop_agent(proc)
    for r in results.values():
        assert r.precision == "fp16" and r.fp16 == native and r.per_op
    litert, et = results["tflite"].kernels, results["executorch"].kernels
    if os.uname().machine == "x86_64":
        assert litert.get("F32", 0) > 10 and "F16" not in litert
    assert et.get("F16", 0) > 10 and "F32" not in et
    assert fp32.fp16 is None and fp32.kernels.get("F32", 0) > 10


def test_evaluate_takes_fp16_and_flags_it(fp16_conversion, tmp_path):
    """`evaluate` over photos on an agent here: the fp16 artifacts answer as fp32's do, and
    the summary and its table carry the device's fp16 flag."""
    from PIL import Image

    from edgepipe.converters.images import parity_photos
    from edgepipe.evaluation.run import evaluate
    from edgepipe.ui import console, print_evaluation

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, rgb in parity_photos().items():
        Image.fromarray(rgb).save(photos / f"{name}.png")
    out, report = fp16_conversion
    summary = evaluate([out], str(photos), out=tmp_path / "eval")
    native = fp16_support(local_identity())
    assert summary["fp16"] == native
    rows = {a["artifact"]: a for a in summary["artifacts"]}
    for fmt in ("executorch", "tflite"):
        row = rows[artifact(report, fmt, "fp16")["file"]]
        assert row["precision"] == "fp16" and row["images"] == 4
        # against the reference rebuilt on the host (its own BatchNorm estimate of this
        # random-init model), the fp16 artifact answers as the fp32 one does
        fp32 = rows[artifact(report, fmt, "fp32")["file"]]
        assert row["flip_rate"]["value"] == fp32["flip_rate"]["value"]
    with console.capture() as printed:
        print_evaluation(summary)
    said = " ".join(printed.get().split())
    assert f"fp16 on this-machine: {native['words']}" in said
    # the fp16 rows' flag (the table may fold it over two lines of its cell)
    assert ("(fp16" in said) is (not native["native"])


def test_fp16_bad_input_is_one_line(tmp_path):
    only_coreml = run_cli("convert", "tests.factories:tiny_cnn", "--size", "32", "--to",
                          "coreml", "--fp16", "-o", str(tmp_path / "a"))
    assert only_coreml.returncode == 2
    assert only_coreml.stderr.strip().splitlines()[-1].startswith(
        "edgepipe: error: --fp16 adds nothing to --to coreml: Core ML artifacts are fp16 "
        "already")
    overflow = run_cli("convert", "tests.factories:overflowing_cnn", "--size", "32", "--to",
                       "tflite", "--fp16", "-o", str(tmp_path / "b"))
    assert overflow.returncode == 2
    last = overflow.stderr.strip().splitlines()[-1]
    assert "fp16:" in last and "stem (Conv2d)" in last and "65504" in last
    gelu = run_cli("convert", "tests.factories:gelu_cnn", "--size", "32", "--to",
                   "executorch", "--fp16", "-o", str(tmp_path / "c"))
    assert gelu.returncode == 2
    assert "XNNPACK does not take gelu in float16" in gelu.stderr.strip().splitlines()[-1]
    for folder in "abc":
        assert not (tmp_path / folder).exists()
    assert not list(tmp_path.glob(".*partial*"))


def _result(artifact: str, precision: str, median: float, ci: tuple[float, float],
            fp16: dict | None = None, threads: int = 1) -> dict:
    fmt = "tflite" if artifact.endswith(".tflite") else "executorch"
    return {"artifact": artifact, "format": fmt, "precision": precision,
            "runtime": "litert" if fmt == "tflite" else "executorch", "threads": threads,
            "latency": {"median_ms": median, "mean_ms": median, "p10_ms": ci[0],
                        "p90_ms": ci[1], "median_ci95_ms": list(ci)}, "fp16": fp16}


def _parity(file: str, agreement: float) -> dict:
    return {"file": file, "parity": {"executed": True, "images": 4, "max_abs_error": 0.01,
                                     "top1_agreement": agreement}}


def test_recommendation_picks_the_fastest_within_the_budget():
    not_native = {"native": False, "words": "no native fp16 arithmetic (no asimdhp)"}
    entry = {"name": "pi4", "results": [
        _result("m_fp16.tflite", "fp16", 1.0, (0.98, 1.02), not_native),
        _result("m_int8.tflite", "int8", 1.2, (1.18, 1.22)),
        _result("m_int8.pte", "int8", 1.4, (1.38, 1.41)),
        _result("m_int8.pte", "int8", 0.9, (0.85, 1.5), threads=2),  # its fastest count
        _result("m_fp32.tflite", "fp32", 2.0, (1.9, 2.1))]}
    conversion = {"artifacts": [_parity("m_fp16.tflite", 1.0), _parity("m_int8.tflite", 1.0),
                                _parity("m_int8.pte", 1.0), _parity("m_fp32.tflite", 1.0)]}
    evaluation = {"name": "pi4", "data": "photos/ (200 images)", "artifacts": [
        {"artifact": "m_int8.tflite", "images": 200,
         "flip_rate": {"value": 0.005, "low": 0.001, "high": 0.02, "n": 200}},
        {"artifact": "m_int8.pte", "images": 200,
         "flip_rate": {"value": 0.03, "low": 0.01, "high": 0.06, "n": 200}},
        {"artifact": "m_fp32.tflite", "images": 200,
         "flip_rate": {"value": 0.0, "low": 0.0, "high": 0.018, "n": 200}}]}
    rec = recommend_device(entry, conversion, evaluation, max_flip_rate=0.01)
    assert rec["pick"]["artifact"] == "m_int8.tflite" and rec["decided_on"] == "evaluation"
    assert "ship m_int8.tflite (litert int8, 1 thread): median 1.2 ms (1.18–1.22" in rec["line"]
    why = {o["artifact"]: o["why"] for o in rec["others"]}
    assert why["m_fp16.tflite"].startswith("fp16 on a CPU with no native fp16 arithmetic "
                                           "(no asimdhp): never picked for speed")
    assert why["m_int8.pte"].startswith("over the accuracy budget: flip rate vs PyTorch fp32 "
                                        "3.0 % (1.0–6.0)")
    assert "> 1 %" in why["m_int8.pte"] and "×0.75 the pick's" in why["m_int8.pte"]
    assert why["m_fp32.tflite"].startswith("slower ×1.67: median 2 ms")
    assert "overlap" not in why["m_fp32.tflite"]
    # the fp16 artifact has no evaluation row: parity would have let it in, if it were native
    native = {**not_native, "native": True, "words": "native fp16 arithmetic (asimdhp)"}
    entry["results"][0]["fp16"] = native
    rec = recommend_device(entry, conversion, evaluation, max_flip_rate=0.01)
    assert rec["pick"]["artifact"] == "m_fp16.tflite" and rec["decided_on"] == "parity alone"
    assert "decided on parity alone" in rec["line"]
    why = {o["artifact"]: o["why"] for o in rec["others"]}
    assert why["m_int8.tflite"].startswith("slower ×1.20") and "overlap" not in why[
        "m_int8.tflite"]
    # nothing within a budget of 0: each loses for a reason, none is picked
    conversion["artifacts"][0]["parity"]["top1_agreement"] = 0.75
    evaluation["artifacts"][2]["flip_rate"]["value"] = 0.004
    rec = recommend_device(entry, conversion, evaluation, max_flip_rate=0.0)
    assert rec["pick"] is None and "no artifact within the 0 % accuracy budget" in rec["line"]
    assert len(rec["others"]) == 4


def test_recommendation_says_when_intervals_overlap():
    entry = {"name": "pixel", "results": [_result("a_fp32.pte", "fp32", 1.00, (0.95, 1.06)),
                                          _result("a_fp32.tflite", "fp32", 1.03, (1.0, 1.1))]}
    conversion = {"artifacts": [_parity("a_fp32.pte", 1.0), _parity("a_fp32.tflite", 1.0)]}
    rec = recommend_device(entry, conversion, None)
    (other,) = rec["others"]
    assert rec["pick"]["artifact"] == "a_fp32.pte"
    assert other["why"].startswith("slower ×1.03") and "intervals overlap" in other["why"]


def test_run_recommends_and_flags_fp16(tmp_path):
    """`edgepipe run` with fp16 on this machine: the recommendation in run.json, first in
    the report and last on the terminal; the fp16 artifact's rows carry the device's flag."""
    config = tmp_path / "run.toml"
    config.write_text("[model]\nname = 'mobilenet_v3_small'\nwidth = 0.5\nsize = 96\n"
                      "formats = ['tflite']\nint8 = false\nfp16 = true\n[measure]\nruns = 8\n"
                      "check_tables = false\n[recommend]\nmax_flip_rate = 0.05\n")
    done = run_cli("run", str(config), "-o", str(tmp_path / "out"),
                   env={"EDGEPIPE_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    (rec,) = run["recommendations"]
    assert rec["decided_on"] == "parity alone" and rec["budget"]["max_flip_rate"] == 0.05
    native = fp16_support(local_identity())["native"]
    (fp16,) = [r for r in run["devices"][0]["results"] if r["precision"] == "fp16"]
    assert fp16["fp16"]["native"] is native and fp16["kernels"]
    if not native:
        assert rec["pick"]["artifact"] == "mobilenet_v3_small_fp32.tflite"
        assert "never picked for speed" in rec["others"][0]["why"]
    said = " ".join(done.stdout.split())
    # after every table: the last thing before the files written
    assert said.rindex("│") < said.index("recommended this-machine: ship") < said.index(
        "wrote ")
    assert "decided on parity alone" in said[said.index("recommended"):]
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.index("<h2>Recommendation</h2>") < html.index("<h2>Artifacts</h2>")
    if not native:
        assert "fp16 not native: no native fp16 arithmetic" in html
        assert "fp16 on this-machine: no native fp16 arithmetic" in said


def aarch64_python(cpu: str) -> tuple[list[str], dict[str, str]]:
    """The emulated arm64 Python (tests/test_remote.py builds it) on qemu's ``cpu``."""
    from .test_remote import aarch64_python as build

    python, env = build()
    return python, {**env, "QEMU_CPU": cpu}


@pytest.mark.slow
def test_fp16_on_emulated_aarch64_with_and_without_fp16_arithmetic(fp16_conversion,
                                                                     tmp_path):
    """The artifacts on an arm64 CPU with fp16 arithmetic (qemu's max, FEAT_FP16) and
    without (a Cortex-A72, the Raspberry Pi 4's core): LiteRT computes in fp16 where it can
    (its answer moves away from fp32 arithmetic's) and in fp32 where it cannot (the same
    answer as fp32 arithmetic on fp16 weights); top-1 equal to fp32 everywhere. An agent on
    the emulated CPU answers an evaluate job of the fp16 artifact with fp32's top-1."""
    out, report = fp16_conversion
    tflite = {p: out / artifact(report, "tflite", p)["file"] for p in ("fp16", "fp32")}
    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np\nfrom edgepipe.device.runtimes import open_runner\n"
              "x = np.load(sys.argv[1])\nfor i, p in enumerate(sys.argv[3:]):\n"
              "    np.save(f'{sys.argv[2]}{i}.npy', open_runner(p).run(x)[0])\n")
    answers = {}
    for cpu in ("max", "cortex-a72"):
        python, env = aarch64_python(cpu)
        done = subprocess.run([*python, "-c", script, str(tmp_path / "x.npy"),
                               str(tmp_path / cpu), str(tflite["fp16"]), str(tflite["fp32"])],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, **env})
        assert done.returncode == 0, done.stderr[-2000:]
        answers[cpu] = [np.load(tmp_path / f"{cpu}{i}.npy") for i in range(2)]
    weights_fp32_arithmetic = open_runner(tflite["fp16"]).run(x)[0]  # x86 Interpreter: fp32
    fp32 = open_runner(tflite["fp32"]).run(x)[0]
    a72, full = answers["cortex-a72"][0], answers["max"][0]
    assert np.abs(a72 - weights_fp32_arithmetic).max() < 1e-4  # no fp16 arithmetic there
    assert np.abs(full - weights_fp32_arithmetic).max() > 1e-3  # fp16 arithmetic here
    for cpu in answers:
        assert np.abs(answers[cpu][1] - fp32).max() < 1e-4  # fp32 artifacts: fp32 anywhere
        assert answers[cpu][0].argmax() == fp32.argmax()
    # the agent on the emulated fp16 CPU: an evaluate job of the fp16 artifact over photos
    from edgepipe.converters.images import parity_photos
    from edgepipe.evaluation.data import EvalImage
    from edgepipe.evaluation.run import _payload

    python, env = aarch64_python("max")
    url, agent = start_agent(tmp_path / "data", TOKEN, python=python, env=env, timeout=300)
    try:
        client = AgentClient(url, TOKEN, timeout=300)
        images = []
        for name, rgb in parity_photos().items():
            from PIL import Image

            Image.fromarray(rgb).save(tmp_path / f"{name}.png")
            images.append(_payload(EvalImage(name, (tmp_path / f"{name}.png").read_bytes(),
                                             None)))
        tops = {}
        for p in ("fp16", "fp32"):
            sha = client.upload(tflite[p])["sha256"]
            job = client.wait(client.submit(artifact=sha, kind="evaluate", images=images,
                                            top_k=1)["id"], timeout=900, poll=1.0)
            tops[p] = [r["top"][0][0] for r in job["result"]["results"]]
            assert job["result"]["precision"] == p
            assert ("fp16" in job["result"]) == (p == "fp16")  # the flag, with fp16 only
        assert tops["fp16"] == tops["fp32"]
    finally:
        stop_agent(agent)


@pytest.mark.slow
def test_fp16_program_on_emulated_aarch64_runs_f16_kernels_where_it_can(fp16_conversion,
                                                                         tmp_path):
    """ExecuTorch's fp16 program through the lean runner cross-built for aarch64: F16
    kernels on a CPU with fp16 arithmetic, F32 kernels behind converts on a Cortex-A72
    (XNNPACK falls back), top-1 equal to fp32 on both (per-op evidence from the ETDump)."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("g++-aarch64-linux-gnu is not installed (.ci/run installs it)")
    from edgepipe.host.op_table import executorch_op_table, kernel_precisions
    from edgepipe.host.runner_build import build_for

    python, env = aarch64_python("max")
    cache = Path(env["PYTHONPATH"].split(":")[0]).parent
    runner = build_for("aarch64", tmp_path / "et_runner", cache)
    out, report = fp16_conversion
    x = np.random.default_rng(3).standard_normal((1, 3, 96, 96)).astype(np.float32)
    x.tofile(tmp_path / "x.f32")
    fp32 = open_runner(out / artifact(report, "executorch", "fp32")["file"]).run(x)[0]
    pte = out / artifact(report, "executorch", "fp16")["file"]
    kernels = {}
    for cpu in ("max", "cortex-a72"):
        dump, y = tmp_path / f"{cpu}.etdp", tmp_path / f"{cpu}.f32"
        done = subprocess.run([python[0], "-L", python[2], str(runner), str(pte), "--runs", "1",
                               "--warmup", "0", "--input", str(tmp_path / "x.f32"), "--output",
                               str(y), "--etdump", str(dump), "--profiled-runs", "1"],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "QEMU_CPU": cpu})
        assert done.returncode == 0, done.stderr[-2000:]
        answer = np.fromfile(y, dtype=np.float32)
        assert answer.argmax() == fp32.argmax()
        assert np.abs(answer - fp32.ravel()).max() < 0.1 * np.abs(fp32).max()
        kernels[cpu] = kernel_precisions(executorch_op_table(dump, None)[0])
    assert kernels["max"].get("F16", 0) > 10 and "F32" not in kernels["max"]
    assert kernels["cortex-a72"].get("F32", 0) > 10 and "F16" not in kernels["cortex-a72"]

