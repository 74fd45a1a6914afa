"""Models and media as users bring them (issue 13): each kind of input that once gave a wrong
answer that looked right now converts, runs and answers right, or is refused in one line.

Real converters, runtimes and files throughout; the foreign .tflite files are made with
litert-torch directly (tests/foreign.py), as another tool's export would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edgepipe.apps.demo import run_demo
from edgepipe.converters.convert import ConvertRequest
from edgepipe.converters.images import folder_images
from edgepipe.device.inspect_artifact import init_manifest
from edgepipe.device.runtimes import open_runner
from edgepipe.errors import EdgepipeError
from edgepipe.manifest import load_manifest, manifest_path
from edgepipe.preprocess import crop_box, preprocess

from . import foreign
from .artifacts import convert_cached, convert_cli_cached
from .conftest import artifact, run_cli
from .media import make_video, photo
from .test_bad_input import _one_line_error

# the console script, whose sys.path[0] is its own folder (not the current one, as `python -c`)
EDGEPIPE = str(Path(sys.executable).with_name("edgepipe"))


def _read(path: Path) -> np.ndarray:
    """An 8-bit RGB file as Pillow reads it (the tests' own reader, not edgepipe's)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _log(path: Path, folder: Path | None = None) -> list[dict]:
    """The demo's per-frame log; with ``folder``, each line's "file" is the image it was
    (the demo reads a folder in name order and may drop frames)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        for line in lines:
            line["file"] = files[line["frame"] - 1]
    return lines


def _frames(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (got := capture.read())[0]:
        frames.append(got[1])
    capture.release()
    return frames


def _photo_folder(path: Path, names=("chelsea", "coffee"), size=(160, 120)) -> Path:
    """Photos as PNG files (the demo reads a folder in name order)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(photo(name, size)).save(path / f"{name}.png")
    return path


# 1. Models from elsewhere get the graph forms edgepipe's own models have

# second tier (four conversions each, 100-160 s): the forms themselves are checked just below
@pytest.mark.slow
@pytest.mark.parametrize("factory, swapped", [
    ("tv_mobilenet_v3_small", {"nn.Hardswish", "nn.Hardsigmoid"}),
    ("tv_efficientnet_b0", {"nn.SiLU"}),
])
def test_foreign_mobilenet_v3_and_efficientnet_graphs_are_whole(tmp_path, factory, swapped):
    """torchvision's own MobileNetV3 (nn.Hardswish/nn.Hardsigmoid) and EfficientNet-B0
    (nn.SiLU), narrowed: one XNNPACK partition, nothing outside it, no float op left in
    int8 (before: LiteRT int8 in 20 partitions, 18 _to_dim_order_copy outside ExecuTorch's
    delegate, 49 LOGISTIC + 49 MUL in float). int8 against fp32 speed: benchmarks/."""
    report = convert_cached(ConvertRequest(model=f"tests.factories:{factory}", out=tmp_path / "o",
                                           formats=["executorch", "tflite"], int8=True,
                                           size=64, calib_count=8))
    graphs = {f"{a['format']} {a['precision']}": a["graph"] for a in report["artifacts"]}
    assert all(g["delegate_partitions"] == 1 for g in graphs.values()), graphs
    assert all(g["ops_outside_delegate"] == {} for g in graphs.values()), graphs
    assert graphs["tflite int8"]["float_ops"] == {}, graphs
    assert graphs["executorch int8"]["float_ops"] == {}, graphs
    assert all(set(g["forms_swapped"]) == swapped for g in graphs.values()), graphs
    for a in report["artifacts"]:
        if a["precision"] == "fp32":
            assert a["parity"]["max_rel_error"] < 1e-4  # the forms compute the same function
        else:
            # narrow random-init nets at 64 px: near-uniform logits; measured 0.52-0.75, the
            # same with the modules as they were (quantization noise); a broken form gives ~0
            assert a["parity"]["min_cosine_similarity"] > 0.4


def test_forms_compute_what_they_replace_and_are_put_back():
    import torch

    from edgepipe.converters.forms import Forms, runtime_forms

    from .factories import tv_efficientnet_b0, tv_mobilenet_v3_small

    x = torch.randn(2, 3, 64, 64)
    for model in (tv_mobilenet_v3_small().eval(), tv_efficientnet_b0().eval()):
        kinds = [type(m) for m in model.modules()]
        with torch.no_grad():
            before = model(x)
            for forms in (Forms(), Forms(decomposed_hswish=True, decomposed_silu=True)):
                with runtime_forms(model, x, forms) as swapped:
                    assert swapped and not any(type(m) in (torch.nn.Hardswish,
                                                           torch.nn.Hardsigmoid, torch.nn.SiLU)
                                               for m in model.modules())
                    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
        assert [type(m) for m in model.modules()] == kinds


def test_convert_table_names_ops_outside_the_delegate_and_float_ops(tmp_path):
    """An activation called as a function (F.hardsigmoid) is not a module and keeps its
    cost: the printed table counts it and names the ops, not only report.html."""
    out = tmp_path / "o"
    done = convert_cli_cached("tests.factories:functional_gate", "--size", "64", "--int8",
                              "--to", "executorch,tflite", "-o", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    named = 0
    for a in report["artifacts"]:
        name = f"{a['format']} {a['precision']}"
        outside = a["graph"]["ops_outside_delegate"]
        floats = a["graph"].get("float_ops") if a["precision"] == "int8" else None
        if outside:
            named += 1
            assert f"{name}: {sum(outside.values())} op(s) outside the delegate" in done.stdout
            assert all(op in done.stdout for op in outside)
        if floats:
            named += 1
            assert f"{name}: {sum(floats.values())} op(s) left in float" in done.stdout
    assert named >= 1, done.stdout  # the functional gate shows somewhere
    header = next(line for line in done.stdout.splitlines() if "partitions" in line)
    assert "outside" in header and "float (int8)" in header


def test_float_ops_are_named_by_op_not_overload():
    """aten.mean.dim is "mean" (it was counted as "dim"), aten.transpose.int a layout op that
    keeps its input's precision (it was a float op named "int")."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torch.nn import functional as F

    from edgepipe.converters.quantize import float_ops, op_name, quantize_pt2e

    assert [op_name(t) for t in (torch.ops.aten.mean.dim, torch.ops.aten.add.Tensor,
                                 torch.ops.aten.transpose.int)] == ["mean", "add", "transpose"]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Linear(8, 4)

        def forward(self, x):
            y = F.silu(self.conv(x)).transpose(2, 3)  # silu as a function: not swapped
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    x = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    found = float_ops(quantize_pt2e(Net().eval(), x[0], quantizer, x))
    assert found and set(found) <= {"silu", "mean"}, found


# 2. Several outputs: converted with a note, or one line on how to pick

def test_dict_and_tuple_outputs_convert_and_say_which(tmp_path):
    common = ("--size", "64", "--to", "tflite")
    out = tmp_path / "dict"
    done = convert_cli_cached("tests.factories:dict_seg", "--task", "segmentation", *common,
                              "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "converted 'out'" in done.stdout and "--output KEY" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert any("'aux'" in n for n in report["notes"])
    fp32 = artifact(report, "tflite", "fp32")
    assert fp32["parity"]["pixel_agreement"] > 0.99
    manifest = load_manifest(out / fp32["file"])
    assert manifest.outputs[0].shape == [1, 4, 64, 64] and manifest.extra["output"] == "out"

    aux = convert_cli_cached("tests.factories:dict_seg", "--task", "segmentation", *common,
                             "--output", "aux", "-o", str(tmp_path / "aux"))
    assert aux.returncode == 0, aux.stderr
    assert load_manifest(next((tmp_path / "aux").glob("*.tflite"))).outputs[0].shape == \
        [1, 2, 64, 64]
    wrong = run_cli("convert", "tests.factories:dict_seg", "--task", "segmentation", *common,
                    "--output", "logits", "-o", str(tmp_path / "wrong"))
    _one_line_error(wrong, "keys 'out' (1x4x64x64), 'aux' (1x2x64x64)", "--output logits")
    assert "input" not in wrong.stderr  # the model's outputs are the matter, not the input

    pair = convert_cli_cached("tests.factories:tuple_cls", *common, "-o", str(tmp_path / "t"))
    assert pair.returncode == 0, pair.stderr
    assert "returns a tuple of 2 (1x10, 1x8): converted output 0" in pair.stdout
    t_report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert artifact(t_report, "tflite", "fp32")["parity"]["top1_agreement"] == 1.0


def test_namedtuple_outputs_are_named_and_picked_by_field():
    from collections import namedtuple

    import torch

    from edgepipe.converters.source import pick_output

    out = namedtuple("Out", ["logits", "embedding"])(torch.zeros(1, 7), torch.zeros(1, 8))
    key, note = pick_output("m", out, None)
    assert key == 0  # it said "a Out of 2 (1x7, 1x8)", without the fields
    assert "namedtuple Out of 2 ('logits' 1x7, 'embedding' 1x8): converted output 0 " \
        "('logits')" in note
    assert pick_output("m", out, "embedding")[0] == pick_output("m", out, "1")[0] == 1
    with pytest.raises(EdgepipeError, match=r"a field \(logits, embedding\) or an index"):
        pick_output("m", out, "features")


# 3. One-channel models

def test_grey_model_converts_and_runs_on_grey_frames(tmp_path):
    out = tmp_path / "g"
    report = convert_cached(ConvertRequest(model="tests.factories:gray_cnn", out=out,
                                           formats=["tflite", "executorch"], int8=True,
                                           size=64, calib_count=8))
    for a in report["artifacts"]:
        m = load_manifest(out / a["file"])
        assert m.preprocessing.color == "GRAY" and len(m.preprocessing.mean) == 1
        assert m.inputs[0].shape in ([1, 64, 64, 1], [1, 1, 64, 64])
    assert artifact(report, "tflite", "fp32")["parity"]["top1_agreement"] == 1.0
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(photo("chelsea")).convert("L").save(frames / "grey.png")  # mode L
    Image.fromarray(photo("coffee")).save(frames / "rgb.png")
    for a in ("tflite", "executorch"):  # the .pte runs in a process of its own
        file = out / artifact(report, a, "fp32")["file"]
        log = tmp_path / f"{a}.jsonl"
        summary = run_demo(str(file), str(frames), "none", log=log)
        assert summary.inferred >= 1
        m = load_manifest(file)
        runner = open_runner(file)
        for line in _log(log, frames):
            scores = runner.run(preprocess(_read(line["file"]), m.preprocessing))[0]
            assert line["top"][0][0] == f"class {int(scores.argmax())}"
    # the same .tflite as a foreign file: manifest init sees one channel
    foreign_copy = tmp_path / "grey_foreign.tflite"
    shutil.copy(out / artifact(report, "tflite", "int8")["file"], foreign_copy)
    _, guesses = init_manifest(foreign_copy)
    assert load_manifest(foreign_copy).preprocessing.color == "GRAY"
    assert any(g.name == "color" and g.value == "GRAY" for g in guesses)
    assert run_demo(str(foreign_copy), str(frames), "none").inferred >= 1


# 4. uint8 input without quantization: raw 0-255 pixels

def test_raw_uint8_input_is_fed_as_is(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = foreign.raw_uint8_classifier(tmp_path / "raw.tflite")
    init_manifest(model)
    m = load_manifest(model)
    assert m.inputs[0].dtype == "uint8" and m.inputs[0].quantization is None
    assert m.preprocessing.input_range() == "0,255"
    frames = _photo_folder(tmp_path / "frames", ("chelsea", "coffee", "astronaut"))
    log = tmp_path / "p.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide by zero on the way
        run_demo(str(model), str(frames), "none", log=log)
    interp = Interpreter(model_path=str(model))
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    runner = open_runner(model)
    for line in _log(log, frames):
        image = Image.open(line["file"]).convert("RGB")
        pixels = np.asarray(image.resize((64, 64), Image.BILINEAR,
                                         box=crop_box(*image.size, m.preprocessing)))
        interp.set_tensor(detail["index"], pixels[None])  # uint8 0-255, as the model wants
        interp.invoke()
        direct = interp.get_tensor(interp.get_output_details()[0]["index"])[0]
        via = runner.run(preprocess(np.asarray(image), m.preprocessing))[0][0]
        np.testing.assert_array_equal(via, direct)
        assert line["top"][0][0] == f"class {int(direct.argmax())}"


def test_a_low_confidence_range_is_said_and_minus_one_to_one_can_be_given(tmp_path):
    """A float input does not say its range: the demo names the guess it runs on (a [-1, 1]
    model fed ImageNet mean/std answers wrong and looks right); `--range -1,1` (a value that
    starts with a dash) is taken on the command line and gives the right answers."""
    model = foreign.signed_classifier(tmp_path / "signed.tflite")
    init_manifest(model)
    frames = _photo_folder(tmp_path / "frames", ("chelsea",))
    Image.fromarray(np.zeros((120, 160, 3), np.uint8)).save(frames / "zz_black.png")
    guessed = run_demo(str(model), str(frames), "none")
    assert any(g.startswith("range imagenet is a low-confidence guess") for g in guessed.guesses)
    done = run_cli("manifest", "init", str(model), "--force", "--range", "-1,1")
    assert done.returncode == 0, done.stderr
    assert load_manifest(model).preprocessing.input_range() == "-1,1"
    log = tmp_path / "p.jsonl"
    given = run_demo(str(model), str(frames), "none", log=log)
    assert not any(g.startswith("range") for g in given.guesses)
    import torch

    pre = load_manifest(model).preprocessing
    lines = _log(log, frames)
    assert lines
    for line in lines:  # the model itself on [-1, 1] pixels (black: "dark", class 3)
        image = Image.open(line["file"]).convert("RGB")
        pixels = np.asarray(image.resize((32, 32), Image.BILINEAR,
                                         box=crop_box(*image.size, pre)), np.float32)
        expected = foreign._Signed()(torch.from_numpy(pixels[None] / 127.5 - 1)).argmax()
        assert line["top"][0][0] == f"class {int(expected)}"


def test_multi_label_sigmoid_scores_are_shown_as_they_are_without_a_false_warning(tmp_path):
    """Several sigmoids (LOGISTIC) are per-class probabilities: no "sum to 1" warning, and the
    demo shows each as the model gives it (no softmax over them)."""
    model = foreign.multi_label(tmp_path / "tags.tflite")
    _, guesses = init_manifest(model, input_range="0,1")
    kind = next(g for g in guesses if g.name == "output kind")
    assert kind.value == "probabilities" and "multi-label" in kind.reason
    frames = _photo_folder(tmp_path / "frames", ("chelsea", "coffee"))
    log = tmp_path / "p.jsonl"
    summary = run_demo(str(model), str(frames), "none", log=log)
    assert summary.warnings == []
    runner, m = open_runner(model), load_manifest(model)
    for line in _log(log, frames):
        scores = runner.run(preprocess(_read(line["file"]), m.preprocessing))[0][0]
        assert scores.sum() > 1.5  # not a distribution
        label, p = line["top"][0]
        assert label == f"class {int(scores.argmax())}" and p == pytest.approx(scores.max(),
                                                                               abs=1e-4)


# 5. A foreign segmentation .tflite: [1, H, W, 1] sigmoid output, input in [0, 1]

def test_manifest_init_guesses_a_sigmoid_mask_with_reasons(tmp_path):
    model = foreign.bright_segmenter(tmp_path / "bright.tflite")
    _, guesses = init_manifest(model)
    written = load_manifest(model)  # a [1, 64, 64, 1] sigmoid output: an NHWC mask
    assert (written.outputs[0].layout, written.output_kind) == ("NHWC", "probabilities")
    g = {x.name: x for x in guesses}
    assert (g["task"].value, g["layout"].value, g["layout"].confidence) == \
        ("segmentation", "NHWC", "high")
    assert g["output kind"].value == "probabilities" and "LOGISTIC" in g["output kind"].reason
    assert g["range"].confidence == "low"  # a float input does not state its range
    done = run_cli("manifest", "init", str(model), "--force", "--range", "0,1")
    assert done.returncode == 0, done.stderr
    printed = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "NHWC" in printed["layout"] and "high" in printed["layout"]
    assert "0,1" in printed["range"] and "given" in printed["range"]
    m = load_manifest(model)
    assert m.preprocessing.input_range() == "0,1" and m.output_kind == "probabilities"
    frames = _photo_folder(tmp_path / "frames", ("chelsea", "coffee", "astronaut"))
    log = tmp_path / "p.jsonl"
    summary = run_demo(str(model), str(frames), "none", log=log)
    assert summary.warnings == []
    for line in _log(log, frames):
        x = preprocess(_read(line["file"]), m.preprocessing)
        expected = float((x.mean(axis=1) > 0.6).mean())
        assert line["classes"].get("foreground", 0.0) == pytest.approx(expected, abs=0.03)


def test_implausible_masks_are_warned_about_or_refused(tmp_path):
    from edgepipe.decode import OutputDecoder, Plausibility

    model = foreign.bright_segmenter(tmp_path / "bright.tflite")
    # not astronaut: its pure-black background stays dark in any range (a mask of two
    # classes), and whether the demo dropped it decided the warning
    frames = _photo_folder(tmp_path / "frames", ("chelsea", "coffee"))
    # the wrong range (0-255 for a [0, 1] model): every pixel is "bright"
    init_manifest(model, input_range="0,255")
    summary = run_demo(str(model), str(frames), "none")
    assert any("all one class" in w for w in summary.warnings), summary.warnings
    # the wrong layout makes a 64x1 "mask": refused before any frame, in one line
    init_manifest(model, force=True, layout="NCHW")
    done = run_cli("demo", str(model), "--source", str(frames), "--display", "none")
    _one_line_error(done, "64x1 mask", "likely NHWC")
    # a mask of more than 50 classes (as image rows read as classes would give)
    m = load_manifest(model)
    m.outputs[0].shape, m.outputs[0].layout, m.output_kind = [1, 64, 64, 64], "NCHW", "logits"
    check = Plausibility(m)
    y = np.random.default_rng(0).standard_normal((1, 64, 64, 64)).astype(np.float32)
    warned = check.check([y], OutputDecoder(m)([y]))
    assert len(warned) == 1 and "64 classes" in warned[0]


# 6. Outputs edgepipe cannot decode

def test_detector_outputs_are_refused_in_one_line(tmp_path):
    model = foreign.detector(tmp_path / "det.tflite")
    done = run_cli("manifest", "init", str(model))
    _one_line_error(done, "4 outputs", "[1x10x4 float32]", "detector", "--task unknown")
    assert not manifest_path(model).exists()
    latency_only = run_cli("manifest", "init", str(model), "--task", "unknown")
    assert latency_only.returncode == 0, latency_only.stderr
    frames = _photo_folder(tmp_path / "frames")
    demo = run_cli("demo", str(model), "--source", str(frames), "--display", "none")
    _one_line_error(demo, "task 'unknown'", "deploy and profile")
    # one output that is neither scores nor a mask: refused too
    boxes = run_cli("manifest", "init", str(foreign.boxes_only(tmp_path / "boxes.tflite")))
    _one_line_error(boxes, "[1x10x4 float32]", "neither class scores")


# 7. module:factory from the current folder, seeded

USER_MODEL = '''
import torch, torchvision

def lraspp():
    """torchvision's LR-ASPP: its forward returns {"out": ...}; random init, not seeded here."""
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21)
'''


def test_module_factory_found_from_the_current_folder_and_seeded(tmp_path):
    (tmp_path / "tvseg.py").write_text(USER_MODEL)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # edgepipe, not tmp_path
    parity = []
    for run in ("a", "b"):
        done = subprocess.run([EDGEPIPE, "convert", "tvseg:lraspp", "--task", "segmentation",
                               "--size", "64", "--to", "tflite", "-o", run], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "converted 'out'" in done.stdout
        report = json.loads((tmp_path / run / "report.json").read_text())
        parity.append(artifact(report, "tflite", "fp32")["parity"])
    assert parity[0] == parity[1]  # the same random init both times


# 8. Non-square inputs, portrait frames

def test_non_square_input_through_convert_manifest_demo_and_agent(tmp_path):
    from edgepipe.host.client import AgentClient
    from edgepipe.host.local import local_agent

    out = tmp_path / "wide"
    done = convert_cli_cached("tests.factories:tiny_cnn", "--size", "96x128",
                              "--to", "tflite,executorch", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "tests.factories:tiny_cnn 96x128" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["input_size"] == [96, 128]
    tflite = out / artifact(report, "tflite", "fp32")["file"]
    pte = out / artifact(report, "executorch", "fp32")["file"]
    assert load_manifest(tflite).inputs[0].shape == [1, 96, 128, 3]
    assert load_manifest(pte).preprocessing.size == (96, 128)
    assert artifact(report, "tflite", "fp32")["parity"]["top1_agreement"] == 1.0
    wide = foreign.nhwc_classifier(tmp_path / "wide_96x128.tflite", 96, 128)
    init_manifest(wide)
    for w, h in ((640, 480), (480, 640)):
        clip = tmp_path / f"clip_{w}x{h}.mp4"
        names = make_video(clip, frames_each=2, size=(w, h))
        for model in (tflite, pte, wide):
            video = tmp_path / f"{model.stem}_{w}x{h}.mp4"
            summary = run_demo(str(model), str(clip), f"file:{video}")
            assert summary.captured == len(names) and summary.inferred >= 1
            frames = _frames(video)
            assert len(frames) == summary.written and frames[0].shape == (h, w, 3)
    with local_agent(tmp_path / "agent") as (url, token):
        client = AgentClient(url, token)
        job = client.wait(client.submit(artifact=client.upload(tflite)["sha256"], runs=3,
                                        profile=False)["id"], timeout=120)
        assert job["result"]["latency"]["count"] == 3
        assert job["result"]["input"]["shape"] == [1, 96, 128, 3]


# 9. EXIF orientation

def test_exif_rotated_photo_is_read_upright(small_conversion, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    upright = foreign.exif_portrait(folder / "phone.jpg")
    assert Image.open(folder / "phone.jpg").size == (400, 300)  # stored sideways
    calibration = folder_images(folder)[0]  # what --calib reads
    assert calibration.shape == (400, 300, 3)
    assert np.abs(calibration.astype(int) - upright).mean() < 8  # JPEG noise only
    out, report = small_conversion
    video = tmp_path / "o.mp4"
    summary = run_demo(str(out / artifact(report, "tflite", "fp32")["file"]), str(folder),
                       f"file:{video}")
    # one frame has no rate: unknown, not 0.0/s
    assert summary.fps is None and set(summary.rates.values()) == {None}
    frame = _frames(video)[0]
    assert frame.shape == (400, 300, 3)
    top = frame[:4].reshape(-1, 3).mean(axis=0)  # above the HUD: the red bar, BGR
    assert top[2] > 180 and top[0] < 90 and top[1] < 90
    from edgepipe.images import read_image  # the one reader both go through

    np.testing.assert_array_equal(read_image(folder / "phone.jpg"), calibration)
    # the photo alone as --source: the same reader (OpenCV's video reader ignores EXIF)
    single = tmp_path / "single.mp4"
    run_demo(str(out / artifact(report, "tflite", "fp32")["file"]), str(folder / "phone.jpg"),
             f"file:{single}")
    assert _frames(single)[0].shape == (400, 300, 3)


# 10. Bit depth: 16-bit PNGs and float TIFFs

def test_sixteen_bit_and_float_calibration_images_are_scaled(tmp_path):
    from skimage import data

    c16, c8, cf = (tmp_path / n for n in ("calib16", "calib8", "calibf"))
    for folder in (c16, c8, cf):
        folder.mkdir()
    for name in ("camera", "moon", "coins", "text"):
        a = getattr(data, name)()
        Image.fromarray(a.astype(np.uint16) * 257).save(c16 / f"{name}.png")  # I;16
        Image.fromarray(a).save(c8 / f"{name}.png")
        Image.fromarray(a.astype(np.float32) / 255).save(cf / f"{name}.tif")  # mode F
    for a16, a8, af in zip(folder_images(c16), folder_images(c8), folder_images(cf),
                           strict=True):
        np.testing.assert_array_equal(a16, a8)
        np.testing.assert_array_equal(af, a8)
    reports = [convert_cached(ConvertRequest(model="tests.factories:tiny_cnn", size=64,
                                             out=tmp_path / f"o{i}", formats=["tflite"],
                                             int8=True, calib_dir=folder))
               for i, folder in enumerate((c16, c8))]
    p16, p8 = (artifact(r, "tflite", "int8")["parity"] for r in reports)
    assert p16 == p8
    from edgepipe.images import to_rgb8

    with pytest.raises(EdgepipeError, match="float values from -1 to 2"):
        to_rgb8(np.linspace(-1, 2, 12, dtype=np.float32).reshape(3, 4))


# 11. A folder of landscape and portrait photos to a video file

def test_mixed_orientation_folder_every_frame_in_the_file(small_conversion, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    names = []
    for i, (name, size) in enumerate([("chelsea", (640, 480)), ("coffee", (480, 640))] * 2):
        Image.fromarray(photo(name, size)).save(folder / f"{i}_{name}.jpg")
        names.append(size)
    out, report = small_conversion
    video, log = tmp_path / "o.mp4", tmp_path / "p.jsonl"
    summary = run_demo(str(out / artifact(report, "tflite", "fp32")["file"]), str(folder),
                       f"file:{video}", log=log)
    frames = _frames(video)
    assert len(frames) == summary.shown >= 2
    assert summary.written == summary.shown
    assert summary.dropped == {"capture→inference": 0, "inference→display": 0,
                               "display→file": 0}
    assert summary.in_flight == 0 and summary.captured == summary.shown
    assert set(summary.rates) == {"captured", "inferred", "shown", "written"}
    shown_sizes = [names[line["frame"] - 1] for line in _log(log)]
    portrait = [i for i, s in enumerate(shown_sizes) if s != shown_sizes[0]]
    assert bool(portrait) == bool(summary.display_notes)
    height, width = frames[0].shape[:2]  # the first frame shown sets the video's size
    for i in portrait:  # letterboxed: black bars beside a narrower photo, else above and below
        bars = frames[i] if shown_sizes[i][0] / shown_sizes[i][1] < width / height \
            else frames[i].transpose(1, 0, 2)
        assert bars[:, :40].max() < 40 and bars[:, -40:].max() < 40


# 12. Segmentation drawing (its speed against inference: benchmarks/seg_drawing.py)

def test_segmentation_drawing_blends_class_pixels_and_keeps_background():
    from edgepipe.apps.draw import PALETTE, draw_segmentation
    from edgepipe.decode import Segmentation, argmax_channels
    from edgepipe.manifest import Preprocessing

    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, (21, 64, 64)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(argmax_channels(maps), maps.argmax(axis=0))
    classes = np.zeros((64, 64), np.uint8)
    classes[:, 32:] = 15  # right half: "person"
    seg = Segmentation(classes, [f"c{i}" for i in range(21)], {"c0": 0.5, "c15": 0.5})
    frame = np.full((480, 640, 3), 100, np.uint8)
    pre = Preprocessing(size=(64, 64), resize=64)
    draw_segmentation(cv2, frame, seg, pre)
    left, top, right, bottom = (round(v) for v in crop_box(640, 480, pre))
    colour = PALETTE[15][::-1].astype(int)  # BGR
    inside = frame[200, right - 10].astype(int)
    np.testing.assert_allclose(inside, (100 + colour) / 2, atol=1)
    assert (frame[200, left + 10] == 100).all()  # background: untouched
    assert (frame[200, right + 10] == 100).all()  # outside the crop: untouched
