"""Bad input: one clear line, a non-zero exit, no traceback, no half-written folder."""

import pytest
import torch

from edgepipe.models import create_model

from .conftest import run_cli

FAST = ("--width", "0.35", "--size", "64", "--to", "executorch")


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgepipe: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_model(tmp_path):
    proc = run_cli("convert", "mobilenet_v9", "-o", str(tmp_path / "o"))
    _one_line_error(proc, "unknown model 'mobilenet_v9'", "mobilenet_v3_small")
    assert not (tmp_path / "o").exists()


def test_missing_weights_file(tmp_path):
    proc = run_cli("convert", "mobilenet_v3_small", "--weights", str(tmp_path / "nope.pth"),
                   "-o", str(tmp_path / "o"))
    _one_line_error(proc, "nope.pth does not exist")


def test_mismatched_weights_file(tmp_path):
    model, _ = create_model("mobilenet_v3_small")
    torch.save(model.state_dict(), tmp_path / "small.pth")
    proc = run_cli("convert", "mobilenet_v3_large", "--weights", str(tmp_path / "small.pth"),
                   "-o", str(tmp_path / "o"))
    _one_line_error(proc, "do not match", "missing keys", "features.")
    assert not (tmp_path / "o").exists()


def test_corrupt_weights_file(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    proc = run_cli("convert", "mobilenet_v3_small", "--weights", str(tmp_path / "bad.pth"),
                   "-o", str(tmp_path / "o"))
    _one_line_error(proc, "cannot read weights file")


def test_unsupported_format(tmp_path):
    proc = run_cli("convert", "mobilenet_v3_small", "--to", "onnx,tflite",
                   "-o", str(tmp_path / "o"))
    _one_line_error(proc, "unsupported format onnx", "executorch, tflite, coreml")


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt"])
def test_unreadable_calibration_folder(tmp_path, case):
    calib = tmp_path / "calib"
    if case != "missing":
        calib.mkdir()
    if case == "corrupt":
        (calib / "a.jpg").write_bytes(b"not a jpeg")
    proc = run_cli("convert", "mobilenet_v3_small", *FAST, "--int8", "--calib", str(calib),
                   "-o", str(tmp_path / "o"))
    expected = {"missing": "does not exist", "empty": "has no images",
                "corrupt": "cannot be read"}[case]
    _one_line_error(proc, "calibration", expected)
    assert not (tmp_path / "o").exists()


def test_converter_library_not_installed_names_the_extra(tmp_path):
    # The library is made unimportable in that process, as on a machine without it.
    proc = run_cli("convert", "mobilenet_v3_small", "--to", "coreml", "-o", str(tmp_path / "o"),
                   prelude="sys.modules['coremltools'] = None")
    _one_line_error(proc, "coremltools", "pip install 'edgepipe[coreml]'")


def test_failed_conversion_keeps_the_previous_output_and_leaves_no_partial(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.json").write_text('{"artifacts": [{"file": "previous.pte"}]}')
    (out / "previous.pte").write_text("an earlier run")
    # runs in eager PyTorch, fails inside the converter once the temporary folder exists
    proc = run_cli("convert", "tests.factories:data_dependent", "--size", "32",
                   "--to", "executorch", "-o", str(out))
    _one_line_error(proc, "executorch fp32 conversion of tests.factories:data_dependent failed",
                    "full log:")
    assert (out / "previous.pte").read_text() == "an earlier run"
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


def test_an_output_folder_holding_other_files_is_refused_and_kept(tmp_path):
    """The conversion replaces -o whole: a folder with the user's own files is not taken."""
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    proc = run_cli("convert", "mobilenet_v3_small", *FAST, "-o", str(out))
    _one_line_error(proc, "holds files edgepipe did not write (thesis.txt)", "new folder")
    assert (out / "thesis.txt").read_text() == "years of work"
    (tmp_path / "afile").write_text("x")
    proc = run_cli("convert", "mobilenet_v3_small", *FAST, "-o", str(tmp_path / "afile"))
    _one_line_error(proc, "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "thesis"]


@pytest.mark.parametrize("args, message", [
    (("--max-frames", "-3"), "--max-frames -3: must be 1 or more"),
    (("--duration", "-1"), "--duration -1.0: must be more than 0"),
    (("--threads", "0"), "--threads 0: must be 1 or more"),
    (("--log", "LOGDIR"), "is a folder"),
])
def test_demo_refuses_bad_values_before_running(tmp_path, args, message):
    (tmp_path / "LOGDIR").mkdir()
    args = tuple(str(tmp_path / a) if a == "LOGDIR" else a for a in args)
    proc = run_cli("demo", str(tmp_path / "none.tflite"), "--source", str(tmp_path),
                   "--display", "none", *args)
    _one_line_error(proc, message)


def test_packaged_weights_alias_for_other_models(tmp_path):
    proc = run_cli("convert", "mobilenet_v3_small", "--weights", "imagenet",
                   "-o", str(tmp_path / "o"))
    _one_line_error(proc, "no packaged imagenet weights for mobilenet_v3_small")


@pytest.mark.parametrize("text, message", [
    ("[model\nname=", "not valid TOML"),
    ("[model]\nnmae = 'x'", "unknown setting(s) in [model]: nmae"),
    ("[measure]\nthreads = [0]", "threads must be a list of positive integers"),
    ("[extras]\n", "unknown section(s)"),
    ("devices = ['nowhere']", "no device named 'nowhere'"),
    ("[evaluate]\ndata = 'nowhere'", "[evaluate] data 'nowhere' is not a folder"),
    ("[evaluate]\ndata = 'digits'\nlimit = 0", "[evaluate] limit must be 1 or more"),
])
def test_bad_pipeline_config_fails_before_any_work(tmp_path, text, message):
    config = tmp_path / "run.toml"
    config.write_text(text)
    proc = run_cli("run", str(config), "-o", str(tmp_path / "out"),
                   env={"EDGEPIPE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
