"""Each converter's artifacts, manifests and parity, on real runtimes (narrow models)."""

import json
import os

import numpy as np
import pytest

from edgepipe.converters.convert import ConvertRequest, convert
from edgepipe.device.runtimes import open_runner
from edgepipe.manifest import artifact_sha256, load_manifest
from edgepipe.preprocess import preprocess

from .conftest import artifact

RUNNABLE = [("executorch", "fp32"), ("executorch", "int8"), ("tflite", "fp32"),
            ("tflite", "int8")]


def test_all_six_artifacts_with_manifests(small_conversion):
    out, report = small_conversion
    assert {(a["format"], a["precision"]) for a in report["artifacts"]} == {
        *RUNNABLE, ("coreml", "fp16"), ("coreml", "int8")}
    assert json.loads((out / "report.json").read_text()) == report
    html = (out / "report.html").read_text()
    assert "mobilenet_v3_small 96x96" in html and html.count("<tr><td>coreml") == 2
    for a in report["artifacts"]:
        path = out / a["file"]
        manifest = load_manifest(path)
        assert manifest.format == a["format"] and manifest.precision == a["precision"]
        assert manifest.task == "classification" and manifest.label_set == "imagenet"
        assert len(manifest.labels) == 1000 and manifest.labels[285] == "Egyptian cat"
        assert manifest.preprocessing.size == (96, 96)
        assert manifest.inputs[0].shape in ([1, 3, 96, 96], [1, 96, 96, 3])
        assert manifest.outputs[0].shape == [1, 1000]
        assert "torch" in manifest.tool_versions
        assert manifest.file_sha256 == artifact_sha256(path)  # .mlpackage folders too
    assert not list(out.parent.glob(".small.partial-*"))


@pytest.mark.parametrize("fmt, precision", RUNNABLE)
def test_runnable_artifacts_match_pytorch(small_conversion, fmt, precision):
    _, report = small_conversion
    a = artifact(report, fmt, precision)
    parity = a["parity"]
    assert parity["executed"] and parity["images"] == 4
    if precision == "fp32":
        assert parity["max_rel_error"] < 1e-4
        assert parity["top1_agreement"] == 1.0
    else:
        # int8 of a narrow random-init net: near-uniform logits, so compare their direction
        # (measured 0.87 ExecuTorch, 0.88 LiteRT)
        assert parity["min_cosine_similarity"] > 0.8
    assert a["latency"]["median_ms"] > 0 and a["latency"]["count"] == 20


@pytest.mark.parametrize("fmt, precision", RUNNABLE)
def test_graphs_are_whole(small_conversion, fmt, precision):
    """One XNNPACK partition and nothing left outside it, int8 included."""
    graph = artifact(small_conversion[1], fmt, precision)["graph"]
    assert graph["delegate_partitions"] == 1
    assert graph["ops_outside_delegate"] == {}
    if fmt == "tflite" and precision == "int8":
        assert graph["float_ops"] == {}  # every op int8: h-swish, SE gate, residual adds


def test_coreml_is_validated_not_executed(small_conversion):
    out, report = small_conversion
    for precision in ("fp16", "int8"):
        a = artifact(report, "coreml", precision)
        assert a["parity"]["executed"] is False
        assert "not executed on this platform" in a["parity"]["reason"]
        assert a["parity"]["inputs"] == ["input"] and a["parity"]["op_count"] > 50
        assert (out / a["file"] / "Manifest.json").is_file()
    assert artifact(report, "coreml", "int8")["size_mb"] < 0.7 * artifact(
        report, "coreml", "fp16")["size_mb"]


def test_int8_artifacts_are_smaller(small_conversion):
    _, report = small_conversion
    for fmt in ("executorch", "tflite"):
        assert artifact(report, fmt, "int8")["size_mb"] < 0.5 * artifact(
            report, fmt, "fp32")["size_mb"]


def test_device_runner_follows_the_manifest(small_conversion):
    """A runner given a photo preprocessed per the manifest reproduces the report's top-1."""
    from edgepipe.converters.images import parity_photos

    out, report = small_conversion
    a = artifact(report, "tflite", "int8")
    manifest = load_manifest(out / a["file"])
    assert manifest.inputs[0].layout == "NHWC" and manifest.inputs[0].quantization
    x = preprocess(parity_photos()["chelsea"], manifest.preprocessing)
    logits = open_runner(out / a["file"]).run(x)[0]
    assert logits.dtype == np.float32
    chelsea = next(p for p in a["parity"]["per_image"] if p["image"] == "chelsea")
    assert manifest.labels[int(logits.argmax())] == chelsea["artifact"]


def test_segmentation_conversion(small_segmentation):
    out, report = small_segmentation
    fp32, int8 = (artifact(report, "tflite", p) for p in ("fp32", "int8"))
    assert report["task"] == "segmentation"
    assert fp32["parity"]["pixel_agreement"] > 0.99
    # random-init: 21 flat maps, so int8 noise flips many argmaxes (measured 0.66, cos 0.875)
    assert int8["parity"]["pixel_agreement"] > 0.5
    assert int8["parity"]["min_cosine_similarity"] > 0.8
    assert int8["graph"]["float_ops"] == {} and int8["graph"]["delegate_partitions"] == 1
    manifest = load_manifest(out / fp32["file"])
    assert manifest.label_set == "voc" and manifest.outputs[0].shape == [1, 21, 128, 128]


def test_module_factory_converts(tmp_path):
    # the output folder and its files get the modes mkdir and open() give (here under umask
    # 022): mkdtemp's folder and mkstemp's files are private, and a newcomer's output folder,
    # manifests and reports were readable by their owner alone
    old = os.umask(0o022)
    try:
        report = convert(ConvertRequest(model="tests.factories:tiny_cnn", out=tmp_path / "f",
                                        formats=["executorch"], size=64, calib_count=4))
    finally:
        os.umask(old)
    a = artifact(report, "executorch", "fp32")
    assert a["parity"]["max_rel_error"] < 1e-4
    folder = tmp_path / "f"
    assert load_manifest(folder / a["file"]).labels is None
    assert folder.stat().st_mode & 0o777 == 0o755
    for name in ("report.json", "report.html", a["file"], a["file"] + ".json"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


def test_executorch_input_layout_is_read_from_the_program(small_conversion, tmp_path):
    """edgepipe's .pte takes its input channels-last (no input transpose in XNNPACK) and says
    so in its manifest; the runner reads the layout from the program itself, so a foreign
    .pte exported NCHW-contiguous runs right too. Fed the other layout, the runtime does not
    complain: it computes on scrambled pixels (why the runner must lay the input out)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from edgepipe.device.inspect_artifact import tensor_specs
    from edgepipe.device.runtimes import pte_dim_orders

    out, report = small_conversion
    for precision in ("fp32", "int8"):
        a = artifact(report, "executorch", precision)
        path = out / a["file"]
        assert load_manifest(path).inputs[0].dim_order == [0, 2, 3, 1]
        assert pte_dim_orders(path) == [[0, 2, 3, 1]]
        assert a["graph"]["delegate_partitions"] == 1 and a["graph"]["ops_outside_delegate"] == {}
        assert a["graph"]["global_pools_as_mean"] == 10  # 9 squeeze-excites + the head's pool
        assert tensor_specs(path)[0][0].dim_order == [0, 2, 3, 1]

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = torch.randn(1, 3, 32, 24)
    foreign = tmp_path / "nchw.pte"
    foreign.write_bytes(to_edge_transform_and_lower(
        torch.export.export(module, (x,)), partitioner=[XnnpackPartitioner()]
    ).to_executorch().buffer)
    assert pte_dim_orders(foreign) == [[0, 1, 2, 3]]
    assert tensor_specs(foreign)[0][0].dim_order is None
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(open_runner(foreign).run(x.numpy())[0], expected, atol=1e-5)

    path = out / artifact(report, "executorch", "fp32")["file"]
    src = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
    laid_out = open_runner(path).run(src)[0]
    method = Runtime.get().load_program(path).load_method("forward")
    as_is = method.execute([torch.from_numpy(src)])[0].numpy()  # NCHW-contiguous, unchecked
    channels_last = method.execute([torch.from_numpy(src).to(
        memory_format=torch.channels_last)])[0].numpy()
    np.testing.assert_allclose(laid_out, channels_last, atol=1e-6)
    assert np.abs(as_is - laid_out).max() > 1e-3


def test_few_calibration_images_are_noted_for_int8_only(tmp_path):
    from edgepipe.converters.convert import FEW_CALIBRATION_IMAGES, calibration_note

    note = calibration_note(1, tmp_path / "photos", int8=True)
    assert note is not None and "int8 calibrated on 1 image(s)" in note
    assert str(FEW_CALIBRATION_IMAGES) in note
    # enough images, no int8, or the built-in set: nothing to say
    assert calibration_note(FEW_CALIBRATION_IMAGES, tmp_path, int8=True) is None
    assert calibration_note(1, tmp_path, int8=False) is None
    assert calibration_note(1, None, int8=True) is None
