"""`edgepipe evaluate`: a digits classifier trained here (seconds), converted with the real
`edgepipe convert` (fp32 and int8, both runtimes), evaluated on the local agent over the
digits test split; answers resume after an interruption; bad data refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepipe.errors import EdgepipeError
from edgepipe.evaluation.data import digits_part, load_data
from edgepipe.manifest import load_manifest

from .artifacts import convert_cli_cached
from .conftest import artifact, run_cli
from .factories import digits_cnn


def _digit_pngs(folder: Path, part: int, count: int | None = None,
                digit: int | None = None) -> list[tuple[Path, int]]:
    """Digits of one part of edgepipe search's split written as the evaluation sends them;
    ``digit``: of that class only."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, png, label in [d for d in digits_part(part) if digit in (None, d[2])][:count]:
        path = folder / f"{i:04d}.png"
        path.write_bytes(png)
        out.append((path, label))
    return out


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """tests.factories:digits_cnn trained on the digits training part through the same
    preprocessing the device applies (a few seconds), converted to every format."""
    from edgepipe.images import read_image
    from edgepipe.manifest import Preprocessing
    from edgepipe.preprocess import preprocess

    base = tmp_path_factory.mktemp("digits")
    train = _digit_pngs(base / "train", 0)
    pre = Preprocessing(size=[32, 32], resize=36)  # convert's default for 32 px
    x = torch.from_numpy(np.concatenate([preprocess(read_image(p), pre) for p, _ in train]))
    y = torch.tensor([label for _, label in train])
    torch.manual_seed(0)
    model = digits_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    weights = base / "digits_cnn.pth"
    torch.save(model.state_dict(), weights)
    calib = base / "calib"
    _digit_pngs(calib, 1, 64)  # validation part: int8 calibrated on digits, not photos
    out = base / "out"
    done = convert_cli_cached("tests.factories:digits_cnn", "--weights", str(weights),
                              "--size", "32", "--int8", "--calib", str(calib),
                              "--to", "executorch,tflite", "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out, weights, json.loads((out / "report.json").read_text())


def test_digits_accuracy_on_the_device_with_intervals_and_resume(digits_model, tmp_path):
    out, weights, report = digits_model
    evaluation = tmp_path / "eval"
    done = run_cli("evaluate", str(out), "--data", "digits", "--limit", "120", "--weights",
                   str(weights), "-o", str(evaluation))
    assert done.returncode == 0, done.stderr
    summary = json.loads((evaluation / "evaluation.json").read_text())
    assert summary["images"] == 120 and summary["labelled"]
    assert "120 drawn at random" in summary["data"]
    by = {(a["format"], a["precision"]): a for a in summary["artifacts"]}
    assert set(by) == {("tflite", "fp32"), ("tflite", "int8"), ("executorch", "fp32"),
                       ("executorch", "int8")}
    for a in by.values():
        assert a["images"] == 120 and not a["failed"] and a["note"] is None
        top1 = a["top1"]
        assert top1["low"] <= top1["value"] <= top1["high"] and top1["n"] == 120
        assert top1["value"] > 0.8, a  # a trained model, on the device, through its manifest
        assert a["top5"]["value"] >= top1["value"]
    for fmt in ("tflite", "executorch"):  # fp32 answers as PyTorch does
        assert by[(fmt, "fp32")]["flip_rate"]["value"] <= 0.01
        assert abs(by[(fmt, "int8")]["top1"]["value"] - by[(fmt, "fp32")]["top1"]["value"]) \
            < 0.05
    # the floor: PyTorch on the same images moved by ±1/255, shared by the four artifacts
    floor = by[("tflite", "fp32")]["flip_floor"]
    assert floor["n"] == 120 and all(a["flip_floor"] == floor for a in by.values())
    reference = [json.loads(x) for x in next(evaluation.glob("pytorch.*.jsonl")).read_text()
                 .splitlines()]
    moved = sum(r["top"][0][0] != r["floor"] for r in reference)
    assert floor["value"] == moved / 120
    for a in by.values():  # flips counted again on the images whose top-1 held
        assert a["flip_rate_stable"]["n"] == 120 - moved
    # the float model on the host, scored the same way: fp32 on the device matches it
    (torch_row,) = summary["pytorch"]
    assert torch_row["format"] == "pytorch" and torch_row["images"] == 120
    assert torch_row["top1"]["value"] == pytest.approx(
        by[("tflite", "fp32")]["top1"]["value"], abs=0.01)
    assert torch_row["top1"]["value"] == sum(
        r["top"][0][0] == i.label for r, i in zip(
            sorted(reference, key=lambda r: r["key"]),
            sorted(load_data("digits", None, 10, limit=120).images, key=lambda i: i.key),
            strict=True)) / 120
    words = " ".join(done.stdout.split())
    assert "flips vs PyTorch" in words and "digits" in words
    assert "flips where PyTorch holds" in words and "floor: PyTorch's own top-1" in words
    # interrupted: half of one artifact's answers lost; the rerun asks the device for the rest
    name = artifact(report, "tflite", "int8")["file"]
    answers = next(evaluation.glob(f"{name}.*.jsonl"))
    lines = answers.read_text().splitlines()
    answers.write_text("\n".join(lines[:50]) + "\n" + lines[50][:20])  # and a cut line
    # and PyTorch's answers as an earlier version kept them, without the floor
    kept = next(evaluation.glob("pytorch.*.jsonl"))
    kept.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "floor"}) + "\n"
                            for r in reference))
    done = run_cli("evaluate", str(out / name), "--data", "digits", "--limit", "120",
                   "--weights", str(weights), "-o", str(evaluation))
    assert done.returncode == 0, done.stderr
    again = json.loads((evaluation / "evaluation.json").read_text())["artifacts"][0]
    assert again["top1"] == by[("tflite", "int8")]["top1"]
    assert again["flip_floor"] == floor  # computed again, the same
    assert len({json.loads(x)["key"] for x in answers.read_text().splitlines()
                if x.startswith("{") and x.endswith("}")}) == 120


def test_jitter_moves_each_value_by_one_level_at_most_the_same_way_each_time():
    from edgepipe.evaluation.run import jitter

    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3)).astype(np.uint8)
    rgb[0, :, :] = 0
    rgb[1, :, :] = 255
    moved = jitter(rgb, "a.jpg")
    delta = moved.astype(int) - rgb.astype(int)
    assert moved.dtype == np.uint8 and np.abs(delta).max() == 1
    assert 0.5 < (delta != 0).mean() < 0.8  # -1, 0, +1 alike, clipped at the ends
    assert np.array_equal(moved, jitter(rgb, "a.jpg"))
    assert not np.array_equal(moved, jitter(rgb, "b.jpg"))


def test_folders_photos_and_bad_data(digits_model, tmp_path):
    out, weights, report = digits_model
    tflite = out / artifact(report, "tflite", "fp32")["file"]
    # ImageFolder named by index (this model has no label names), one broken file
    data = tmp_path / "folder"
    for digit in (3, 7):
        _digit_pngs(data / str(digit), 2, 5, digit)
    (data / "7" / "broken.png").write_bytes(b"not a png")
    done = run_cli("evaluate", str(tflite), "--data", str(data), "--weights", str(weights),
                   "-o", str(tmp_path / "e1"))
    assert done.returncode == 0, done.stderr
    a = json.loads((tmp_path / "e1" / "evaluation.json").read_text())["artifacts"][0]
    assert a["images"] == 10 and a["failed"] == ["7/broken.png"]
    assert "not decoded" in done.stdout
    # a folder that names no class of the model
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    shutil.copy(next((data / "3").glob("*.png")), tmp_path / "bad" / "cat" / "a.png")
    done = run_cli("evaluate", str(tflite), "--data", str(tmp_path / "bad"), "-o",
                   str(tmp_path / "e2"))
    assert done.returncode == 2 and "match none of the model's 10 classes: cat" in done.stderr
    mapping = tmp_path / "map.json"
    mapping.write_text('{"cat": "3"}')
    done = run_cli("evaluate", str(tflite), "--data", str(tmp_path / "bad"), "--label-map",
                   str(mapping), "--no-reference", "-o", str(tmp_path / "e3"))
    assert done.returncode == 0, done.stderr
    # no images; digits on a model that is not a 10-class one; a task evaluate cannot score
    (tmp_path / "empty").mkdir()
    done = run_cli("evaluate", str(tflite), "--data", str(tmp_path / "empty"))
    assert done.returncode == 2 and "holds no images" in done.stderr
    done = run_cli("evaluate", str(tflite), "--data", str(data), "--masks", str(data / "3"))
    assert done.returncode == 2 and "--masks is for segmentation" in done.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(tflite, odd / tflite.name)
    manifest = json.loads((out / f"{tflite.name}.json").read_text())
    manifest["task"] = "unknown"
    (odd / f"{tflite.name}.json").write_text(json.dumps(manifest))
    done = run_cli("evaluate", str(odd / tflite.name), "--data", "digits")
    assert done.returncode == 2 and "cannot be evaluated" in done.stderr
    assert "Traceback" not in done.stderr
    assert load_manifest(tflite).task == "classification"
    with pytest.raises(EdgepipeError, match="digits has 10 classes; the model has 1000"):
        load_data("digits", ["tench", "goldfish"], 1000)


@pytest.fixture(scope="module")
def broken_digits(digits_model, tmp_path_factory):
    """The trained digits model with one layer int8 cannot represent: conv "3" gets an
    outlier weight (50) on an input channel that is always zero (its batch norm before ReLU
    sends it below 0), so the float model computes the same, while per-channel int8 rounds
    every other weight of that layer to 0."""
    _, weights, _ = digits_model
    base = tmp_path_factory.mktemp("broken")
    model = digits_cnn()
    model.load_state_dict(torch.load(weights))
    with torch.no_grad():
        model[1].weight[0], model[1].bias[0] = 0.0, -10.0
        model[3].weight[:, 0, 1, 1] = 50.0
    broken = base / "broken.pth"
    torch.save(model.state_dict(), broken)
    calib = base / "calib"
    _digit_pngs(calib, 1, 64)
    return broken, calib


@pytest.mark.slow  # 115-125 s; keep-float auto's choice is tested in-process below
def test_sensitivity_ranks_the_broken_layer_first_and_auto_keeps_it_float(broken_digits,
                                                                         tmp_path):
    broken, calib = broken_digits
    common = ["tests.factories:digits_cnn", "--weights", str(broken), "--size", "32",
              "--int8", "--calib", str(calib)]
    plain, repaired = tmp_path / "plain", tmp_path / "repaired"
    done = convert_cli_cached(*common, "--to", "tflite", "-o", str(plain))  # evaluated below
    assert done.returncode == 0, done.stderr
    done = convert_cli_cached(*common, "--to", "executorch,tflite", "--sensitivity",
                              "--keep-float", "auto", "-o", str(repaired))
    assert done.returncode == 0, done.stderr
    report = json.loads((repaired / "report.json").read_text())
    analysis = report["int8_analysis"]
    ranking = analysis["sensitivity"]["layers"]
    assert ranking[0]["layer"] == "3"  # the broken layer loses most when alone int8
    assert ranking[0]["alone_int8"]["sqnr_db"] < 0 < ranking[1]["alone_int8"]["sqnr_db"]
    assert analysis["sensitivity"]["int8"]["agreement"] < 0.6  # all int8: broken
    choice = analysis["keep_float"]
    assert choice["float_layers"][0] == "3" and choice["reached"]
    assert choice["fidelity"]["agreement"] >= 0.99
    assert (repaired / "sensitivity.json").is_file() and (repaired / "sensitivity.png").is_file()
    words = " ".join(done.stdout.split())
    assert "int8 sensitivity" in words and "keep-float auto" in words
    tensors = analysis["sensitivity"]["activations"]
    assert tensors["tensors"] and tensors["tensors"][0]["rank"] == 1
    assert "int8 activations" in words and "split: all int8" in words
    for a in report["artifacts"]:
        if a["precision"] != "int8":
            continue
        assert a["float_layers"] == choice["float_layers"]
        assert a["latency_cost"]["ratio"] > 0 and a["graph"]["delegate_partitions"] == 1
        manifest = load_manifest(repaired / a["file"])
        assert manifest.quantization["float_layers"] == choice["float_layers"]
    # on the device: the repaired int8 agrees with PyTorch, the plain one does not
    flips = {}
    for name, out in (("plain", plain), ("repaired", repaired)):
        tflite = next(out.glob("*_int8.tflite"))
        done = run_cli("evaluate", str(tflite), "--data", "digits", "--limit", "100",
                       "--weights", str(broken), "-o", str(tmp_path / f"eval-{name}"))
        assert done.returncode == 0, done.stderr
        summary = json.loads((tmp_path / f"eval-{name}" / "evaluation.json").read_text())
        flips[name] = summary["artifacts"][0]["flip_rate"]
    assert flips["plain"]["low"] > 0.3 and flips["repaired"]["value"] <= 0.05, flips


def test_keep_float_bad_input(broken_digits, tmp_path):
    broken, calib = broken_digits
    common = ["tests.factories:digits_cnn", "--weights", str(broken), "--size", "32",
              "--to", "tflite", "-o", str(tmp_path / "o")]
    done = run_cli("convert", *common, "--int8", "--keep-float", "features.99")
    assert done.returncode == 2 and "names no quantized layer" in done.stderr
    assert "layers: 0, 3, 6, 11" in done.stderr
    done = run_cli("convert", *common, "--sensitivity")
    assert done.returncode == 2 and "add --int8" in done.stderr
    done = run_cli("convert", *common, "--int8", "--keep-float", "auto:150")
    assert done.returncode == 2 and "agreement between 0 and 1" in done.stderr
    done = run_cli("convert", *common, "--int8", "--keep-float", "auto:most")
    assert done.returncode == 2 and "give auto, auto:0.99" in done.stderr
    assert not (tmp_path / "o").exists()


def test_run_evaluates_when_its_config_asks(tmp_path):
    """`edgepipe run` with an [evaluate] section: a narrow model, one format, photos without
    labels (agreement with PyTorch), a table in run.json and the report."""
    from PIL import Image

    from edgepipe.converters.images import builtin_calibration_images

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(builtin_calibration_images(6, seed=3)):
        Image.fromarray(image).save(photos / f"{i}.jpg")
    config = tmp_path / "run.toml"
    config.write_text("[model]\nname = 'mobilenet_v3_small'\nwidth = 0.5\nsize = 96\n"
                      "formats = ['tflite']\nint8 = false\n[measure]\nruns = 5\nper_op = false\n"
                      "check_tables = false\n"
                      f"[evaluate]\ndata = '{photos}'\n")
    done = run_cli("run", str(config), "-o", str(tmp_path / "out"),
                   env={"EDGEPIPE_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    (entry,) = run["evaluations"]
    (a,) = entry["artifacts"]
    assert a["images"] == 6 and a["top1"] is None and a["flip_rate"]["n"] == 6
    assert a["flip_rate"]["value"] == 0.0  # fp32 answers as PyTorch does
    assert "Accuracy on this-machine" in (tmp_path / "out" / "report.html").read_text()


def test_keep_float_auto_stops_at_its_ceiling(broken_digits):
    """A target no set of float layers reaches (the activations between them stay int8) is
    not chased through every layer: the best prefix, a plateau stop, the ceiling said."""
    from edgepipe.converters.convert import int8_quantizer
    from edgepipe.converters.sensitivity import QuantizationStudy, choose_float_layers
    from edgepipe.images import read_image
    from edgepipe.manifest import Preprocessing
    from edgepipe.preprocess import preprocess

    broken, calib = broken_digits
    model = digits_cnn()
    model.load_state_dict(torch.load(broken))
    pre = Preprocessing(size=[32, 32], resize=36)
    batches = [torch.from_numpy(preprocess(read_image(p), pre))
               for p in sorted(calib.glob("*.png"))[:24]]
    quantizer_class, config = int8_quantizer()
    study = QuantizationStudy(model.eval(), batches[0], batches, quantizer_class, config)
    choice = choose_float_layers(study, "auto:sqnr=500")
    assert not choice["reached"] and choice["ceiling"]["sqnr_db"] < 500
    assert choice["float_layers"][0] == "3"  # the broken layer still comes first
    tried = len(choice["steps"]) - 1
    assert len(choice["float_layers"]) <= tried <= 4  # 4 layers: all tried at most
    best = max(s["sqnr_db"] for s in choice["steps"])
    assert choice["fidelity"]["sqnr_db"] == best


# Segmentation against ground-truth masks

def _mask_on_image(grid: np.ndarray, width: int, height: int, manifest) -> np.ndarray:
    """A model-grid mask drawn back onto a ``width``x``height`` image: each image pixel takes
    the class of the grid cell it falls in; pixels the preprocessing crops away: 255."""
    from edgepipe.preprocess import crop_box

    left, top, right, bottom = crop_box(width, height, manifest.preprocessing)
    gh, gw = grid.shape
    xs = np.floor(((np.arange(width) + 0.5) - left) / (right - left) * gw).astype(int)
    ys = np.floor(((np.arange(height) + 0.5) - top) / (bottom - top) * gh).astype(int)
    inside = (ys[:, None] >= 0) & (ys[:, None] < gh) & (xs[None] >= 0) & (xs[None] < gw)
    out = grid[np.clip(ys, 0, gh - 1)[:, None], np.clip(xs, 0, gw - 1)[None]]
    return np.where(inside, out, 255).astype(np.uint8)


def test_segmentation_against_ground_truth_masks(tmp_path):
    from PIL import Image

    from edgepipe.converters.images import builtin_calibration_images
    from edgepipe.converters.reference import torch_reference
    from edgepipe.decode import OutputDecoder
    from edgepipe.preprocess import preprocess

    out = tmp_path / "seg"
    done = convert_cli_cached("tests.factories:dict_seg", "--task", "segmentation", "--size",
                              "48x64", "--to", "tflite", "-o", str(out))
    assert done.returncode == 0, done.stderr
    model = next(out.glob("*_fp32.tflite"))
    manifest = load_manifest(model)
    runner, _, _ = torch_reference(model, manifest.model, 1, None)
    decoder = OutputDecoder(manifest)
    data, masks, zeros = tmp_path / "images", tmp_path / "masks", tmp_path / "zeros"
    for folder in (data, masks, zeros):
        folder.mkdir()
    sizes = [(120, 90), (90, 120), (100, 100), (160, 100), (77, 133)]
    for i, (photo, (w, h)) in enumerate(zip(builtin_calibration_images(len(sizes)), sizes,
                                            strict=True)):
        rgb = np.asarray(Image.fromarray(photo).resize((w, h)))
        Image.fromarray(rgb).save(data / f"{i}.png")
        # ground truth: PyTorch's own mask drawn back onto the image (255 outside the crop)
        grid = decoder(runner.run(preprocess(rgb, manifest.preprocessing))).classes
        Image.fromarray(_mask_on_image(grid, w, h, manifest), mode="L").save(masks / f"{i}.png")
        Image.fromarray(np.zeros((h, w), np.uint8), mode="L").save(zeros / f"{i}.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(data / "no_mask.png")

    evaluation = tmp_path / "eval"
    done = run_cli("evaluate", str(model), "--data", str(data), "--masks", str(masks), "-o",
                   str(evaluation))
    assert done.returncode == 0, done.stderr
    summary = json.loads((evaluation / "evaluation.json").read_text())
    assert summary["images"] == 5 and "1 without a mask left out, e.g. no_mask.png" in \
        summary["data"]
    a = summary["artifacts"][0]
    # the masks are PyTorch's: the fp32 artifact matches them as it matches PyTorch
    assert a["pixel_accuracy"]["value"] > 0.97 and a["pixel_agreement"] > 0.99
    assert a["miou"]["value"] > 0.9 and a["miou"]["n"] == 5
    assert a["miou"]["low"] <= a["miou"]["value"] <= a["miou"]["high"]
    assert len(a["per_class_iou"]) == 4
    (torch_row,) = summary["pytorch"]  # PyTorch against its own masks
    assert torch_row["pixel_accuracy"]["value"] > 0.97
    words = " ".join(done.stdout.split())
    assert "mIoU (masks)" in words and "pixel accuracy (masks)" in words
    assert "(host)" in words and torch_row["artifact"] == "PyTorch tests.factories:dict_seg (host)"
    from edgepipe.pipeline.report import _evaluation_section

    html = _evaluation_section({**summary, "name": "here"})  # run's report, same figures
    assert "<th>mIoU (masks)</th>" in html and "(host)</td>" in html and "Floor:" in html

    # masks that say "class 0" everywhere: pixel accuracy is the share of class 0 in the
    # device's masks, mIoU class 0's IoU over the classes present
    done = run_cli("evaluate", str(model), "--data", str(data), "--masks", str(zeros), "-o",
                   str(tmp_path / "eval0"), "--no-reference")
    assert done.returncode == 0, done.stderr
    b = json.loads((tmp_path / "eval0" / "evaluation.json").read_text())["artifacts"][0]
    answers = [json.loads(x) for x in next((tmp_path / "eval0").glob("*.jsonl")).read_text()
               .splitlines()]
    from edgepipe.evaluation.run import _mask

    device = [_mask(r) for r in answers]
    zero_share = sum((m == 0).sum() for m in device) / sum(m.size for m in device)
    assert b["pixel_accuracy"]["value"] == pytest.approx(zero_share, abs=1e-9)
    present = {int(c) for m in device for c in np.unique(m)} | {0}
    assert b["miou"]["value"] == pytest.approx(zero_share / len(present), abs=1e-9)

    # bad masks: one line each, before any device time
    bad = tmp_path / "bad"
    for name, image in (("rgb", np.zeros((90, 120, 3), np.uint8)),
                        ("class9", np.full((90, 120), 9, np.uint8)),
                        ("small", np.zeros((45, 60), np.uint8))):
        shutil.rmtree(bad, ignore_errors=True)
        bad.mkdir()
        Image.fromarray(image).save(bad / "0.png")
        done = run_cli("evaluate", str(model), "--data", str(data), "--masks", str(bad), "-o",
                       str(tmp_path / "evalbad"))
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert {"rgb": "is a RGB image: give class indices",
                "class9": "holds class 9: the model has 4 classes",
                "small": "is 60x45, its image 0.png 120x90"}[name] in line, line
    done = run_cli("evaluate", str(model), "--data", str(data), "--masks",
                   str(tmp_path / "nowhere"))
    assert done.returncode != 0 and "is not a folder" in done.stderr
