"""Inputs from the field, third round (shared/cases: split, dynsize, portable, picam_order, vfr),
each as a user would bring it: channel splits, a .tflite / .pte of free input size, a .pte
without a delegate, a Pi camera whose byte order is not what its format says, a variable-rate
video to annotate whole; and one name for this machine, artifact names a person would choose.

The Pi camera is a STAND-IN (``StandInCamera`` below: there is no camera here); everything else
is real: converters, runtimes, the agent on loopback, files written and read back.
"""

from __future__ import annotations

import json
import sys
import time
import types
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepipe.apps.demo import run_demo
from edgepipe.converters.convert import ConvertRequest, artifact_stem
from edgepipe.device.inspect_artifact import init_manifest, pte_delegation
from edgepipe.device.runtimes import open_runner
from edgepipe.errors import EdgepipeError
from edgepipe.host.profiling import profile
from edgepipe.manifest import load_manifest
from edgepipe.preprocess import preprocess

from .artifacts import convert_cached
from .conftest import artifact, run_cli
from .media import photo
from .test_agent import agent  # noqa: F401  (fixture)

DATA = Path(__file__).parent / "data"


def one_line_error(proc, *needles: str) -> str:
    """A refusal as the standards want it: exit 2, one line, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines()
             if line.startswith("edgepipe: error")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max())
    return e / e.sum()


# -- split: channel splits and channel-wise ops in ExecuTorch --------------------------------

def test_a_shufflenet_unit_converts_whole_and_runs_in_fp32_and_int8(tmp_path):
    """The split case's unit (chunk, branch, concat, channel shuffle, mean with dims dropped):
    it lowered to a program that failed at run time ("error 0x12" in a portable
    split_with_sizes_copy outside the delegate, fp32 and int8); now one partition each."""
    report = convert_cached(ConvertRequest(model="tests.factories:shuffle_unit", out=tmp_path / "o",
                                    formats=["executorch"], int8=True, size=32,
                                    calib_count=8))
    for precision in ("fp32", "int8"):
        pte = artifact(report, "executorch", precision)
        assert pte["parity"]["executed"] and pte["parity"]["top1_agreement"] == 1.0, pte
        assert pte["graph"]["delegate_partitions"] == 1
        assert pte["graph"]["ops_outside_delegate"] == {}
        assert pte["graph"]["rewritten_for_xnnpack"]["splits_as_slices"] == 1
        assert "exported_nchw" not in pte["graph"]  # channels-last, as the converter wants
        delegation = pte_delegation(tmp_path / "o" / pte["file"])
        assert delegation.portable_ops == {} and delegation.partitions == {"XnnpackBackend": 1}
    assert pte["file"] == "shuffle_unit_int8.pte"  # named by its factory


def test_programs_a_channels_last_layout_breaks_run_in_nchw_or_are_refused(tmp_path):
    """Channel-wise ops XNNPACK does not take run on portable kernels: roll (index_select)
    refuses channels-last tensors at run time, flip runs and answers wrong; both are exported
    for NCHW input instead, say so, and name the ops left outside with their measured cost.
    sort has no portable kernel: refused in one line naming it."""
    for factory in ("channel_roll", "channel_flip"):
        report = convert_cached(ConvertRequest(model=f"tests.factories:{factory}",
                                        out=tmp_path / factory, formats=["executorch"],
                                        size=32))
        pte = artifact(report, "executorch", "fp32")
        assert pte["parity"]["max_abs_error"] < 1e-4, pte["parity"]
        assert "failed at run time" in pte["graph"]["exported_nchw"]
        manifest = load_manifest(tmp_path / factory / pte["file"])
        assert manifest.inputs[0].dim_order is None  # NCHW-contiguous: the runners feed it so
        cost = pte["graph"]["outside_cost"]
        assert cost["ms"] > 0 and 0 < cost["share"] < 1.5 and cost["ops_ms"], cost
        assert set(cost["ops_ms"]) <= set(pte["graph"]["ops_outside_delegate"])
    assert "not PyTorch's" in pte["graph"]["exported_nchw"]  # flip: ran, on scrambled values
    done = run_cli("convert", "tests.factories:channel_sort", "--size", "32", "--to",
                   "executorch", "-o", str(tmp_path / "sort"))
    one_line_error(done, "fails at run time", "1 sort", "--to tflite")
    assert not (tmp_path / "sort").exists()


@pytest.mark.slow
def test_torchvision_shufflenet_v2_is_one_partition_in_int8(tmp_path):
    """torchvision's shufflenet_v2_x0_5 (13 chunks): 15 partitions and 13 split_with_sizes_copy
    outside the delegate before; now one partition, nothing outside."""
    report = convert_cached(ConvertRequest(model="torchvision.models:shufflenet_v2_x0_5",
                                    out=tmp_path / "o", formats=["executorch"], int8=True,
                                    size=64, calib_count=8))
    for precision in ("fp32", "int8"):
        pte = artifact(report, "executorch", precision)
        assert pte["graph"]["delegate_partitions"] == 1, pte["graph"]
        assert pte["graph"]["ops_outside_delegate"] == {}
        assert pte["parity"]["executed"]


# -- dynsize: free input height and width ----------------------------------------------------

REF_INPUT = np.random.default_rng(0).uniform(-2, 2, (1, 64, 64, 3)).astype(np.float32)


def test_a_tflite_of_free_size_needs_a_size_and_every_runner_resizes(tmp_path, agent):  # noqa: F811
    """dyn.tflite (Keras via TensorFlow): shape [1, 1, 1, 3], shape_signature [1, -1, -1, 3].
    manifest init recorded a 1x1 input and the demo ran on one-pixel images; now it asks for
    the size, and the runners (the device's, which the agent and the demo use; the agent's
    jobs; the demo) resize to it: the output equals Keras' own at 64x64."""
    model = tmp_path / "dyn.tflite"
    model.write_bytes((DATA / "free_hw_keras.tflite").read_bytes())
    done = run_cli("manifest", "init", str(model), "--task", "classification")
    one_line_error(done, "free height and width", "[1, -1, -1, 3]", "--size HxW")
    assert not (tmp_path / "dyn.tflite.json").exists()

    done = run_cli("manifest", "init", str(model), "--task", "classification",
                   "--size", "64x64")
    assert done.returncode == 0, done.stderr
    assert "input size    64x64" in done.stdout and "every runner resizes" in done.stdout
    manifest = load_manifest(model)
    spec = manifest.inputs[0]
    assert spec.shape == [1, 64, 64, 3] and spec.shape_signature == [1, -1, -1, 3]
    assert manifest.preprocessing.size == (64, 64)

    reference = np.load(DATA / "free_hw_keras_ref_64.npy")
    runner = open_runner(model)
    for x in (REF_INPUT, REF_INPUT.transpose(0, 3, 1, 2)):  # NHWC as is; NCHW transposed
        assert np.abs(runner.run(x)[0] - reference).max() < 1e-5

    # the demo: each frame's answer is the runner's on that frame at 64x64
    frame = photo("chelsea")
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "chelsea.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    log = tmp_path / "demo.jsonl"
    summary = run_demo(str(model), str(folder), "none", log=log)
    assert summary.inferred == 1
    x = preprocess(frame, manifest.preprocessing)
    assert x.shape == (1, 3, 64, 64)
    probs = softmax(open_runner(model).run(x)[0][0])
    top = json.loads(log.read_text().splitlines()[0])["top"][0]
    assert top[0] == f"class {int(probs.argmax())}" and top[1] == pytest.approx(
        float(probs.max()), abs=1e-3)

    # the agent: a benchmark job at 64x64 (per-op too: the LiteRT profiler resizes) and an
    # evaluation job whose answers are the runner's
    client, _ = agent
    sha = client.upload(model)["sha256"]
    result = client.wait(client.submit(artifact=sha, threads=1, warmup=2, runs=5,
                                       profile=True)["id"])["result"]
    assert result["input"]["shape"] == [1, 64, 64, 3]
    assert result["per_op"]["available"], result["per_op"]
    import base64

    png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
    job = client.submit(artifact=sha, kind="evaluate", threads=1, top_k=3,
                        images=[{"name": "chelsea", "data": base64.b64encode(png).decode()}])
    answer = client.wait(job["id"])["result"]["results"][0]["top"][0]
    assert answer[0] == int(probs.argmax()) and answer[1] == pytest.approx(float(probs.max()),
                                                                           abs=1e-5)


def test_an_executorch_program_of_free_size_and_a_free_batch(tmp_path):
    """A .pte exported with dynamic height and width (its sizes an upper bound, 128x128):
    refused without --size, with it the Python bindings and the lean C++ runner (where g++
    builds it) resize and equal PyTorch at 64x64. A .tflite whose only free dim is the batch
    (Keras' default export) needs no --size."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10)).eval()
    dims = ({2: torch.export.Dim("h", min=32, max=128), 3: torch.export.Dim("w", min=32,
                                                                           max=128)},)
    program = torch.export.export(model, (torch.randn(1, 3, 128, 128),), dynamic_shapes=dims)
    pte = tmp_path / "dyn.pte"
    pte.write_bytes(to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    with pytest.raises(EdgepipeError, match=r"free height and width .*up to 128x128.*--size"):
        init_manifest(pte, task="classification")
    init_manifest(pte, task="classification", size=(64, 64))
    spec = load_manifest(pte).inputs[0]
    assert spec.shape == [1, 3, 64, 64] and spec.shape_signature == [1, 3, -1, -1]
    x = REF_INPUT.transpose(0, 3, 1, 2).copy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(open_runner(pte).run(x)[0] - want).max() < 1e-5
    import shutil

    if shutil.which("g++"):
        from edgepipe.device.native_runner import (
            build_runner,
            cache_folder,
            find_runner,
            run_runner,
        )

        runner = find_runner(cache_folder()) or build_runner(cache_folder())
        out = run_runner(runner, pte, x, warmup=1, runs=2, output=True)
        assert out["inputs"][0]["sizes"] == [1, 3, 64, 64]
        assert np.abs(out["output"] - want.ravel()).max() < 1e-5

    # a free batch only: shape_signature [-1, 32, 32, 3], set in a litert-torch file
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    done = convert_cached(ConvertRequest(model="tests.factories:red_vs_blue", out=tmp_path / "rb",
                                  formats=["tflite"], size=32))
    raw = (tmp_path / "rb" / done["artifacts"][0]["file"]).read_bytes()
    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAs(raw, 0))
    tensor = tree.subgraphs[0].tensors[tree.subgraphs[0].inputs[0]]
    tensor.shapeSignature = np.array([-1, *tensor.shape[1:]], dtype=np.int32)
    builder = flatbuffers.Builder(len(raw) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    batch = tmp_path / "free_batch.tflite"
    batch.write_bytes(builder.Output())
    _, guesses = init_manifest(batch)
    size = next(g for g in guesses if g.name == "input size")
    assert size.confidence == "certain" and "only the batch free" in size.reason
    assert load_manifest(batch).inputs[0].shape_signature == [-1, 32, 32, 3]


# -- portable: a .pte without a delegate -----------------------------------------------------

def test_a_program_without_a_delegate_is_said_so_counted_once_and_compared(tmp_path, agent):  # noqa: F811
    """The portable case: a foreign .pte exported without the XNNPACK partitioner, and the same
    model delegated. Its delegation is stated beside the latency (manifest init, profile), its
    ops counted once (they were twice: 199 % of the run), and --compare says the gap is
    delegation. Profiled on --device this-machine: the name the run report uses."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge, to_edge_transform_and_lower

    from .factories import tiny_cnn

    torch.manual_seed(0)
    program = torch.export.export(tiny_cnn().eval(), (torch.randn(1, 3, 64, 64),))
    portable, xnnpack = tmp_path / "foreign_portable.pte", tmp_path / "foreign_xnnpack.pte"
    portable.write_bytes(to_edge(program).to_executorch().buffer)
    xnnpack.write_bytes(to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    ops = pte_delegation(portable).ops
    said = {}
    for path in (portable, xnnpack):
        _, guesses = init_manifest(path, task="classification")
        said[path] = next(g for g in guesses if g.name == "delegation")
    assert said[portable].value == f"0 of {ops} ops delegated (portable kernels only)"
    assert "XnnpackPartitioner" in said[portable].reason  # and how to get a delegate
    assert said[xnnpack].value.endswith("ops delegated (XnnpackBackend: 1 partition)")
    assert load_manifest(portable).extra["delegation"]["partitions"] == {}

    client, _ = agent
    result = profile(client, portable, warmup=2, runs=5)
    assert result.delegation["words"] == f"0 of {ops} ops delegated (portable kernels only)"
    assert len(result.per_op) == ops  # each op once: 36 rows before
    assert not any(r.name == "OPERATOR_CALL" for r in result.per_op)
    summed = sum(r.ms for r in result.per_op) / result.per_op_total_ms
    assert 0.5 <= summed <= 1.1, summed  # 199 % of the whole run before

    # the CLI on this-machine (an agent started for the command, as `edgepipe run` names it)
    done = run_cli("profile", "--compare", str(xnnpack), str(portable), "--device",
                   "this-machine", "--runs", "5", "--plot", str(tmp_path / "c.png"))
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert f"0 of {ops} ops delegated (portable kernels only); profiled" in text
    assert "is delegation (whole run ×" in text and "foreign_portable.pte runs 0 of" in text
    assert "(XnnpackBackend: 1 partition)" in text


# -- picam_order: the Pi camera's byte order -------------------------------------------------

class StandInCamera:
    """A STAND-IN for picamera2.Picamera2 (there is no camera here): it delivers a red scene
    for format RGB888 in the byte order ``ORDER`` says a kernel gives ("bgr": what libcamera
    documents; "rgb": the swapped setups of raspberrypi/picamera2#848, #1325), or as
    ``REPORTS`` says the camera configured itself (XBGR8888: picamera2's default, 4 bytes a
    pixel, R, G, B, X in memory). ``DELAY``: seconds a capture takes (a camera's frame rate)."""

    ORDER, REPORTS, DELAY = "bgr", "RGB888", 0.0

    def __init__(self) -> None:
        self.size = (320, 240)

    def create_preview_configuration(self, main: dict) -> dict:
        self.size = tuple(main.get("size", self.size))
        return {"main": main}

    def configure(self, config: dict) -> None:
        pass

    def camera_configuration(self) -> dict:
        return {"main": {"size": self.size, "format": self.REPORTS}}

    def start(self) -> None:
        pass

    def capture_array(self, name: str = "main") -> np.ndarray:
        time.sleep(self.DELAY)
        w, h = self.size
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 220, 20, 20  # red
        if self.REPORTS == "XBGR8888":
            return np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=-1)
        return np.ascontiguousarray(rgb if self.ORDER == "rgb" else rgb[..., ::-1])

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def red_vs_blue(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rb") / "o"
    report = convert_cached(ConvertRequest(model="tests.factories:red_vs_blue", out=out,
                                    formats=["tflite"], size=32))
    return out / report["artifacts"][0]["file"]


def camera_says(model: Path, tmp_path: Path, monkeypatch, capfd, **kw) -> tuple[str, object]:
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=StandInCamera))
    log = tmp_path / "camera.jsonl"
    summary = run_demo(str(model), "picamera2", "none", max_frames=3, log=log, **kw)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    answers = {line["top"][0][0] for line in lines}
    assert len(answers) == 1, lines
    return {"class 0": "red", "class 1": "blue"}[answers.pop()], summary


def test_the_camera_byte_order_is_stated_settable_and_checked(red_vs_blue, tmp_path,
                                                              monkeypatch, capfd):
    """The picam_order case with the stand-in camera: a red scene was "blue" on every frame of
    the swapped setup, without a word. Now the order assumed is stated at start and in the
    summary, --camera-order sets it, and --camera-check red corrects a swap on the first
    frame: both setups say red."""
    monkeypatch.setattr(StandInCamera, "ORDER", "bgr")
    colour, summary = camera_says(red_vs_blue, tmp_path, monkeypatch, capfd)
    assert colour == "red" and summary.camera_order.startswith("BGR in memory (the camera "
                                                               "reports RGB888")
    assert "camera byte order: BGR in memory" in capfd.readouterr().err  # stated at start

    monkeypatch.setattr(StandInCamera, "ORDER", "rgb")  # the swapped setup
    colour, summary = camera_says(red_vs_blue, tmp_path, monkeypatch, capfd)
    assert colour == "blue" and "--camera-order rgb if colours look swapped" in \
        summary.camera_order  # what it assumed, and how to change it
    colour, summary = camera_says(red_vs_blue, tmp_path, monkeypatch, capfd,
                                  camera_order="rgb")
    assert colour == "red" and "(--camera-order rgb" in summary.camera_order
    for order in ("rgb", "bgr"):
        monkeypatch.setattr(StandInCamera, "ORDER", order)
        colour, summary = camera_says(red_vs_blue, tmp_path, monkeypatch, capfd,
                                      camera_check="red")
        assert colour == "red", order
        assert "checked on a red scene" in summary.camera_order
        assert ("the camera delivers RGB, not the BGR" in summary.camera_order) == \
            (order == "rgb")
    from edgepipe.apps.sources import check_camera_order

    grey = np.full((8, 8, 3), 128, np.uint8)  # neither red nor blue in any order: said so
    with pytest.raises(EdgepipeError, match="not red in either byte order"):
        check_camera_order(grey, "red", "bgr")

    # beyond the case: a camera that configured itself XBGR8888 (4 bytes a pixel, R, G, B, X):
    # it was read as B, G, R; the reported format decides
    monkeypatch.setattr(StandInCamera, "REPORTS", "XBGR8888")
    colour, summary = camera_says(red_vs_blue, tmp_path, monkeypatch, capfd)
    assert colour == "red" and "reports XBGR8888" in summary.camera_order

    done = run_cli("demo", str(red_vs_blue), "--source", str(tmp_path), "--display", "none",
                   "--camera-order", "rgb")
    one_line_error(done, "--camera-order and --camera-check are for --source picamera2")


# -- vfr: every frame of a file, at its own time ---------------------------------------------

def write_vfr(path: Path, times_ms: list[float], size: tuple[int, int] = (160, 120)) -> None:
    """A variable-rate clip (PyAV): frame i at ``times_ms[i]``, a moving bar."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            img = np.full((size[1], size[0], 3), 90, np.uint8)
            img[:, (i * 7) % size[0]:(i * 7) % size[0] + 6] = 250
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_times(path: Path) -> list[float]:
    capture, times = cv2.VideoCapture(str(path)), []
    while capture.read()[0]:
        times.append(capture.get(cv2.CAP_PROP_POS_MSEC))
    capture.release()
    return times


def test_a_file_is_annotated_whole_at_its_own_times(red_vs_blue, tmp_path):
    """The vfr case: 19 of 50 frames were written (31 dropped between stages) and the video
    lasted 4 s of 10.5. Now a file goes through whole, each frame written at its own time;
    --realtime plays it by those times; dropping is for live sources or --drop-frames."""
    pytest.importorskip("av", reason="PyAV (the demo extra) writes frames at their own times")
    times = [i * 1000 / 30 for i in range(12)] + [400 + 250 * i for i in range(8)]
    clip = tmp_path / "vfr.mp4"
    write_vfr(clip, times)
    assert frame_times(clip) == pytest.approx(times, abs=1.0)
    out, summary_path = tmp_path / "annotated.mp4", tmp_path / "s.json"
    done = run_cli("demo", str(red_vs_blue), "--source", str(clip), "--display", f"file:{out}",
                   "--summary", str(summary_path))
    assert done.returncode == 0, done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["captured"] == summary["inferred"] == summary["shown"] == \
        summary["written"] == len(times)
    assert set(summary["dropped"].values()) == {0} and summary["frames"].startswith("every")
    assert summary["video_seconds"] == pytest.approx(times[-1] / 1000, abs=0.01)
    assert frame_times(out) == pytest.approx(times, abs=1.0)  # every frame at its own time

    started = time.perf_counter()
    done = run_cli("demo", str(red_vs_blue), "--source", str(clip), "--realtime",
                   "--display", "none", "--summary", str(summary_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(summary_path.read_text())["seconds"] >= 0.9 * times[-1] / 1000
    assert time.perf_counter() - started >= 0.9 * times[-1] / 1000
    assert "newest frame: --realtime" in json.loads(summary_path.read_text())["frames"]

    # without PyAV: OpenCV's writer at one constant rate, and the summary says so
    from edgepipe.apps.displays import FileDisplay

    display = FileDisplay(cv2, tmp_path / "cfr.mp4", 15.0, timed=False)
    display.show(np.zeros((120, 160, 3), np.uint8), 0.0)
    display.close()
    assert any("PyAV is not installed" in note for note in display.notes())


def test_a_live_camera_is_written_at_its_arrival_times(red_vs_blue, tmp_path, monkeypatch):
    """Beyond the cases: a live camera's frames are written at the times they arrived, so
    the annotated video plays at the speed of the world (a constant rate made a 20 frames/s
    camera play at 15 frames/s, and faster still where frames were dropped)."""
    pytest.importorskip("av", reason="PyAV (the demo extra) writes frames at their own times")
    monkeypatch.setattr(StandInCamera, "DELAY", 0.05)  # 20 frames a second
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=StandInCamera))
    out = tmp_path / "live.mp4"
    summary = run_demo(str(red_vs_blue), "picamera2", f"file:{out}", max_frames=10)
    assert summary.frames.startswith("newest frame: a live source")
    times = frame_times(out)
    assert len(times) == summary.written and summary.written >= 2
    span = times[-1] / 1000
    assert span == pytest.approx(summary.video_seconds, abs=0.01)
    # 10 captures 50 ms apart: about 0.45 s from the first to the last, not 9/15 s
    assert 0.35 <= span <= 0.75, times


# -- naming ----------------------------------------------------------------------------------

def test_one_name_for_this_machine_and_artifact_names_a_person_would_choose(tmp_path):
    assert artifact_stem("../../litert-threads-noeffect/make.py:make") == \
        "litert-threads-noeffect"
    assert artifact_stem("make_split:shuffle") == "shuffle"
    assert artifact_stem("torchvision.models:shufflenet_v2_x0_5") == "shufflenet_v2_x0_5"
    assert artifact_stem("path/to/tvseg.py:lraspp") == "lraspp"
    assert artifact_stem("make_picam:make") == "make_picam"
    assert artifact_stem("mobilenet_v3_small") == "mobilenet_v3_small"
    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    done = run_cli("device", "add", "this-machine", "--url", "http://127.0.0.1:1", "--token",
                   "t", env=env)
    one_line_error(done, "'this-machine' names the agent edgepipe starts")
    listed = run_cli("device", "list", env=env)
    assert listed.returncode == 0 and listed.stdout.startswith("this-machine\tlocal")
    done = run_cli("profile", str(tmp_path / "x.tflite"), "--device", "pi9", env=env)
    one_line_error(done, "no device named 'pi9'", "this-machine")
