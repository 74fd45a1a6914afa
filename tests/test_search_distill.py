"""NetAdapt from a trained network outside the MobileNetV3 space, on a task where accuracy
moves: torchvision's ImageNet MobileNetV2 (the packaged weights) shrunk with its trained
filters inherited, distilled on crops of the photos scikit-image and scikit-learn ship and
scored on crops of other photos; the V2 space's units; a tiny V2 table collected on a real
local agent and a search on it whose final is converted and measured there; the study's
statistics; one-line refusals."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepipe.converters.source import label_names
from edgepipe.errors import EdgepipeError
from edgepipe.latency_tables.collect import space_units
from edgepipe.latency_tables.estimate import Estimator
from edgepipe.latency_tables.features import unit_from_key
from edgepipe.latency_tables.table import REFERENCE_TABLE, LatencyTable, table_name
from edgepipe.latency_tables.units import units_of
from edgepipe.models.mobilenet import MobileNet, mobilenet_v2_config
from edgepipe.models.pretrained import resolve_weights
from edgepipe.models.registry import load_backbone, load_weights
from edgepipe.models.space import SPACES, Architecture, SearchSpace, build_architecture
from edgepipe.search.baseline import _width_arch
from edgepipe.search.data import DataSpec, load_dataset
from edgepipe.search.distill import DistillSpec, prepare_distillation, read_prepared
from edgepipe.search.surgery import (
    bottleneck_groups,
    channel_spaces,
    expansion_layers,
    inherit_weights,
    shrink_bottleneck,
    shrink_expansion,
)
from edgepipe.search.train import TrainSettings, TrainTask, run_task

from .conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
V2_WEIGHTS = resolve_weights("mobilenet_v2", "imagenet")
SHIPPED_TABLE = ("--table", str(REFERENCE_TABLE), "--force", "--no-check", "--no-verify")
# a tiny space of MobileNetV2 at full width, 64 px, 6x expansions (ReLU6, 3x3, no SE): 14
# units, few enough to collect in a test, and the trained V2's own blocks among them
TINY_V2 = {**SPACES["mobilenet_v2"].to_dict(), "name": "v2-tiny", "resolutions": [64],
           "width_mults": [1.0], "expand_ratios": [6.0]}


@pytest.fixture(scope="module")
def teacher() -> tuple[Architecture, torch.nn.Module]:
    arch = Architecture(mobilenet_v2_config(), 224, "v2")
    module = build_architecture(arch)
    load_weights(module, V2_WEIGHTS)
    return arch, module


@pytest.fixture(scope="module")
def distill_set(teacher, tmp_path_factory) -> Path:
    """48 + 16 + 16 crops at 32 px of the shipped photos, with the teacher's logits."""
    _, module = teacher
    spec = DistillSpec(image_size=32, train_crops=48, val_crops=16, test_crops=16)
    return prepare_distillation(spec, module, label_names("imagenet"),
                                tmp_path_factory.mktemp("distill"))


def test_v2_proposals_and_width_baselines_inherit_the_trained_filters(teacher):
    arch, module = teacher
    net, state = arch.network, module.state_dict()
    dims = channel_spaces(net)  # every weight of the trained V2 is placed in a channel space
    assert [k for k in state if k not in dims and not k.endswith("num_batches_tracked")] == \
        ["classifier.1.bias"]
    assert bottleneck_groups(net) == [[-1], [0], [1, 2], [3, 4, 5], [6, 7, 8, 9],
                                      [10, 11, 12], [13, 14, 15], [16]]
    assert expansion_layers(net) == list(range(1, 17))  # block 0 (t = 1) has no expansion
    shrunk = [shrink_bottleneck(net, g, 8) for g in range(8)] + \
        [shrink_expansion(net, i, 8) for i in [*expansion_layers(net), len(net.blocks)]]
    for width in (0.35, 0.5, 0.75):
        shrunk.append(_width_arch(arch, width).network)
    for new in shrunk:
        assert new is not None
        MobileNet(new).load_state_dict(inherit_weights(state, net, new))  # strict
    # the kept filters are the trained ones with the largest L2 norm, and every layer
    # reading them follows: block 7's expansion (384 filters) cut to 96
    w = state["features.8.conv.0.0.weight"]
    norms = w.flatten(1).norm(dim=1)
    keep = torch.topk(norms, 96).indices.sort().values
    new = shrink_expansion(net, 7, 96)
    inherited = inherit_weights(state, net, new)
    assert torch.equal(inherited["features.8.conv.0.0.weight"], w[keep])
    assert torch.equal(inherited["features.8.conv.1.0.weight"],  # depthwise follows
                       state["features.8.conv.1.0.weight"][keep])
    assert torch.equal(inherited["features.8.conv.2.weight"],  # V2's bare projection conv
                       state["features.8.conv.2.weight"][:, keep])
    # the same function through the kept channels: zero the others' projection inputs in the
    # trained network and compare logits
    small = MobileNet(new).eval()
    small.load_state_dict(inherited)
    full = MobileNet(net).eval()
    full.load_state_dict(state)
    with torch.no_grad():
        others = [c for c in range(384) if c not in set(keep.tolist())]
        full.features[8].conv[2].weight[:, others] = 0
        x = torch.randn(2, 3, 64, 64)
        assert torch.allclose(full(x), small(x), atol=1e-4)


def test_seeds_by_name_take_their_weights_classes(tmp_path):
    from edgepipe.search.seeds import seed_for_netadapt

    own = tmp_path / "v2_7.pth"  # a V2 of one's own, 7 classes: the teacher has 7 outputs
    torch.save(MobileNet(mobilenet_v2_config(num_classes=7)).state_dict(), own)
    arch, path, labels = seed_for_netadapt("mobilenet_v2", 224, None, str(own))
    assert arch.network.num_classes == 7 and path == own and labels is None
    arch, path, labels = seed_for_netadapt("mobilenet_v2", 160, None, "imagenet")
    assert arch.network.num_classes == 1000 and path == V2_WEIGHTS and len(labels) == 1000
    assert arch.resolution == 160 and arch.seed == "v2"
    arch, _, _ = seed_for_netadapt("mobilenet_v2", 224, 10, "imagenet")  # a folder's classes
    assert arch.network.num_classes == 10
    with pytest.raises(EdgepipeError, match="no packaged imagenet weights for mobilenet_v3"):
        seed_for_netadapt("small", 224, 10, "imagenet")


def test_weights_for_other_classes_give_their_features_and_a_new_head():
    model = MobileNet(mobilenet_v2_config(num_classes=10))
    head = model.classifier[1].weight.clone()
    assert load_backbone(model, V2_WEIGHTS) is True  # 1000 ImageNet classes → a fresh head
    trained = torch.load(V2_WEIGHTS, map_location="cpu", weights_only=True)
    assert torch.equal(model.features[5].conv[0][0].weight, trained["features.5.conv.0.0.weight"])
    assert torch.equal(model.classifier[1].weight, head)
    with pytest.raises(EdgepipeError, match="do not match the model"):  # not only the head
        load_backbone(MobileNet(mobilenet_v2_config(0.5)), V2_WEIGHTS)


def test_the_v2_space_holds_the_seed_and_its_width_baselines():
    space = SPACES["mobilenet_v2"]
    keys = {u.key for u in space_units(space)}
    for width in space.width_mults:
        arch = space.seed_architecture("v2", 224, width)
        assert arch.network == mobilenet_v2_config(width)  # torchvision's widths
        assert space.contains(arch)
        assert {u.key for u in units_of(arch)} <= keys
    head = units_of(space.seed_architecture("v2", 224))[-1]
    assert head.key == "head-in:7x7x320-conv:1280-act:r6-fc:1000"  # V2's one linear layer
    assert unit_from_key(head.key) == head
    assert all(unit_from_key(k) is not None for k in keys)
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(ValueError, match="one family"):
        SearchSpace(seeds=("small", "v2"))
    # the V3 table refuses a V2 network: no unit of its shapes (ReLU6 blocks, V2's head)
    with pytest.raises(EdgepipeError, match="nor any unit of its shape"):
        Estimator(LatencyTable.load(REFERENCE_TABLE)).predict(space.seed_architecture("v2"))


def test_distillation_set_is_split_by_photo_and_the_teacher_agrees_with_itself(
        teacher, distill_set, tmp_path):
    arch, module = teacher
    data = read_prepared(distill_set)
    parts = data["photo_part"]
    assert len(data["photos"]) == 19 and sorted(set(parts)) == [0, 1, 2]
    # every crop comes from a photo of its own part: no held-out photo is seen in training
    photo_of, part_of = data["photo"].long(), data["part"].long()
    assert all(parts[p] == q for p, q in zip(photo_of.tolist(), part_of.tolist(), strict=True))
    assert [int((part_of == k).sum()) for k in range(3)] == [48, 16, 16]
    # made once: the same settings and teacher give the same file; another teacher another
    spec = DistillSpec(image_size=32, train_crops=48, val_crops=16, test_crops=16)
    assert prepare_distillation(spec, module, label_names("imagenet"),
                                distill_set.parent) == distill_set
    other = MobileNet(mobilenet_v2_config())
    assert prepare_distillation(spec, other, label_names("imagenet"),
                                tmp_path).name != distill_set.name
    ds = load_dataset(DataSpec(str(distill_set), 32))
    assert ds.distillation and len(ds.classes) == 1000 and "test:" in ds.photos
    teacher_self = run_task(TrainTask(arch.to_dict(), DataSpec(str(distill_set), 32), 0, 0,
                                      module.state_dict(), TrainSettings(), "teacher"))
    assert teacher_self.accuracy == 1.0 and teacher_self.test_accuracy == 1.0
    assert teacher_self.kl < 1e-4 and teacher_self.test_kl < 1e-4
    # a shrunk student disagrees, and distillation brings its training crops closer
    net = shrink_expansion(arch.network, 7, 96)
    student = replace(arch, network=net)
    state = inherit_weights(module.state_dict(), arch.network, net)
    before = _train_kl(student, state, distill_set, steps=0)
    after = _train_kl(student, state, distill_set, steps=8)
    assert before > 0.01 and after < before, (before, after)


def test_keep_best_never_leaves_the_teacher_worse_on_validation(teacher, distill_set):
    """Fine-tuning the teacher itself at a rate that moves it away from its own outputs:
    as trained, its validation KL rises; keeping the best state on validation keeps step 0."""
    arch, module = teacher
    data = DataSpec(str(distill_set), 32)
    rough = TrainSettings(batch=16, lr=1e-3)
    trained = run_task(TrainTask(arch.to_dict(), data, 12, 0, module.state_dict(), rough))
    kept = run_task(TrainTask(arch.to_dict(), data, 12, 0, module.state_dict(),
                              replace(rough, keep_best_every=4)))
    assert trained.kl > 0.05 and trained.kept_step is None, trained.kl
    assert kept.kept_step == 0 and kept.kl < 1e-4 and kept.accuracy == 1.0


def _train_kl(arch: Architecture, state: dict, path: Path, steps: int) -> float:
    """KL(teacher ‖ student) on the training crops after ``steps`` of distillation."""
    from edgepipe.search.train import kl_divergence

    result = run_task(TrainTask(arch.to_dict(), DataSpec(str(path), 32), steps, 0, state,
                                TrainSettings(batch=16, lr=2e-5), "student"))
    ds = load_dataset(DataSpec(str(path), 32))
    model = build_architecture(arch)
    model.load_state_dict(result.state)
    return kl_divergence(model, ds.x_train, ds.soft_train)


def _refused(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``edgepipe ARGS`` in this process (a refusal happens before anything is imported
    that a subprocess would have to load again: 9 subprocesses cost 30 s): (exit code,
    stderr)."""
    from edgepipe.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    return code, capsys.readouterr().err


def test_bad_distillation_and_netadapt_input_is_one_line(tmp_path, capsys, monkeypatch):
    few = tmp_path / "few"
    few.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((80, 80, 3), 40 * i, np.uint8)).save(few / f"{i}.png")
    cases = [
        (("--model", "mobilenet_v2", "--weights", "imagenet", "--task", "distill", "--data",
          str(few)), "has 3 photo(s): a held-out split needs at least 4"),
        (("--model", "torchvision.models:resnet18"), "NetAdapt cannot shrink "
                                                     "torchvision.models:resnet18: found a model"),
        (("--model", "lraspp_mobilenet_v3_small"), "found a segmentation model"),
        (("--model", "resnet50"), "unknown model 'resnet50'"),
        # no cut of 8 filters takes 90 % off MobileNetV3-Small: refused before any training
        (("--model", "small", "--delta-pct", "90", "--target-pct", "5"),
         "NetAdapt cannot shrink small: found 11 inverted-residual block(s)"),
        (("--model", "mobilenet_v2", "--task", "distill"), "needs the teacher's trained"),
        (("--model", "mobilenet_v2", "--weights", "imagenet", "--task", "distill", "--data",
          "digits"), "learns from photos"),
        # a V2 seed with the (V3) reference table
        (("--model", "mobilenet_v2", "--weights", "imagenet", "--target-pct", "90"),
         "collect a table of its space with `edgepipe lut collect --space mobilenet_v2`"),
    ]
    for args, expected in cases:
        code, err = _refused(capsys, "search", "netadapt", *args, *SHIPPED_TABLE, "-o",
                             str(tmp_path / "o"))
        assert code == 2, (args, err)
        assert expected in err and err.count("\n") == 1, (args, err)
        assert not (tmp_path / "o").exists(), args  # refused before anything is written
    # no table of V2's space for this machine (none collected in this EDGEPIPE_HOME)
    monkeypatch.setenv("EDGEPIPE_HOME", str(tmp_path / "home"))
    code, err = _refused(capsys, "search", "netadapt", "--model", "mobilenet_v2", "--weights",
                         "imagenet", "--no-check", "-o", str(tmp_path / "o"))
    assert code == 2 and "no latency table of MobileNetV2's space" in err, err


@pytest.fixture(scope="module")
def v2_table(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny V2 space's table, collected on a local agent: (EDGEPIPE_HOME, table)."""
    root = tmp_path_factory.mktemp("v2lut")
    space = root / "v2-tiny.json"
    space.write_text(json.dumps(TINY_V2))
    home = root / "home"
    done = run_cli("lut", "collect", "--space", str(space), "--calibration", "3",
                   env={"EDGEPIPE_HOME": str(home)}, timeout=1800)
    assert done.returncode == 0, done.stderr
    tables = sorted((home / "tables").glob("*.json"))
    assert [p.name.endswith("-t1-v2.json") for p in tables] == [True]  # V2's own file name
    return home, tables[0]


@pytest.mark.slow
def test_netadapt_distils_a_trained_v2_on_a_v2_table_and_measures_its_final(v2_table,
                                                                            tmp_path):
    home, table_file = v2_table
    table = LatencyTable.load(table_file)
    assert table_file.name == table_name(table.target, "v2")
    listing = " ".join(run_cli("lut", "list", env={"EDGEPIPE_HOME": str(home)}).stdout.split())
    assert f"{len(table.units)} units (v2-tiny space)" in listing  # lut list names the space
    est = Estimator(table)
    seed = Architecture(mobilenet_v2_config(), 64, "v2")
    assert est.measured_share(seed) == 1.0  # the trained V2's own units were measured
    assert est.predict(_width_arch(seed, 0.5)) < est.predict(seed)
    out = tmp_path / "search"
    run = run_cli("search", "netadapt", "--model", "mobilenet_v2", "--weights", "imagenet",
                  "--task", "distill", "--crops", "48,16,16", "--image-size", "32",
                  "--resolution", "64", "--target-pct", "85", "--delta-pct", "8",
                  "--finetune-steps", "2", "--final-steps", "4", "--workers", "1",
                  "--no-check", "-o", str(out), env={"EDGEPIPE_HOME": str(home)},
                  timeout=1800)
    assert run.returncode == 0, run.stderr
    words = " ".join(run.stdout.split())
    assert "top-1 agreement with the teacher" in words and "held-out test photos" in words
    record = json.loads((out / "search.json").read_text())
    steps = record["steps"]
    assert steps[0]["accuracy"] == 1.0 and steps[0]["kl"] < 1e-4  # the seed is the teacher
    assert len(steps) >= 2 and all(s["kl"] > 0 for s in steps[1:])
    latencies = [s["predicted_ms"] for s in steps]
    assert latencies == sorted(latencies, reverse=True) and len(set(latencies)) == len(steps)
    final = next(iter(record["finals"].values()))
    assert final["predicted_ms"] <= 0.85 * steps[0]["predicted_ms"]
    assert 0 <= final["test_accuracy"] <= 1 and final["test_kl"] > 0
    check = record["device_checks"][0]  # the final converted and measured on the agent
    assert check["measured_ms"] > 0 and abs(check["error_pct"]) < 100
    # the distillation set sits in the search folder, split by photo
    data = read_prepared(next((out / "data").glob("distill-*.pt")))
    assert len(data["photos"]) == 19


@pytest.mark.slow
def test_the_study_runs_end_to_end_in_tiny_settings(v2_table, tmp_path):
    """benchmarks/search_study.py on the tiny V2 table: 2 seeds, one target, every final and
    the seed converted and measured on the local agent (a few minutes: the study's code
    path, not its figures)."""
    home, table_file = v2_table
    out = tmp_path / "study"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "search_study.py"), "--table",
         str(table_file), "--resolution", "64", "--image-size", "32", "--crops", "48,16,16",
         "--delta-pct", "8", "--finetune-steps", "2", "--final-steps", "4", "--targets", "85",
         "--keep-best-every", "2", "--seeds", "2", "--workers", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
        env={**os.environ, "EDGEPIPE_HOME": str(home)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "study.json").read_text())
    assert report["settings"]["delta_pct"] == 8 and report["settings"]["crops"] == "48,16,16"
    methods = {r["method"] for r in report["rows"]}
    assert {"netadapt", "width"} <= methods and {r["seed"] for r in report["rows"]} == {0, 1}
    for r in report["rows"]:
        assert r["measured_ms"] > 0 and r["measured_p90_ms"] >= r["measured_ms"]
        assert r["predicted_p90_ms"] is not None and 0 <= r["score"] <= 1 and r["kl"] > 0
        # finals and width baselines judged every 2 steps: the step kept is recorded
        assert r["kept_step"] is not None and 0 <= r["kept_step"] <= r["training_steps"]
    width = next(s for s in report["summary"] if s["method"] == "width")
    assert len(width["netadapt_minus"]["per_seed"]) == 2
    assert (out / "study.png").stat().st_size > 10_000
    words = " ".join(done.stdout.split())  # the console folds long lines
    assert "NetAdapt − width" in words and "photos by part: training:" in words


def test_study_statistics_and_layer_shares():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import search_study as study
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from scipy import stats

    mean, low, high = study.t_interval([1.0, 2.0, 4.0])
    half = stats.t.ppf(0.975, 2) * np.std([1.0, 2.0, 4.0], ddof=1) / np.sqrt(3)
    assert mean == pytest.approx(7 / 3) and (low, high) == pytest.approx((mean - half,
                                                                           mean + half))
    seed = Architecture(mobilenet_v2_config(), 224, "v2")
    width = _width_arch(seed, 0.5)
    shares = study.layer_shares(width.to_dict(), seed.to_dict())
    assert shares["head conv"] == 1.0  # torchvision keeps V2's 1280 below width 1.0
    assert shares["expansion 1"] == pytest.approx(48 / 96) and shares["stem"] == 0.5
    rng = random.Random(0)
    rows = []
    for s in range(3):
        for method, score in (("netadapt", 0.6), ("width", 0.5)):
            rows.append({"method": method, "seed": s, "target_pct": 70, "kl": 1.0,
                         "score": score + rng.uniform(-0.02, 0.02), "predicted_ms": 1.0,
                         "predicted_p90_ms": 1.1, "measured_ms": 1.0, "measured_p90_ms": 1.1,
                         "error_pct": 0.0, "training_steps": 100, "width": 0.7})
    summary = study.summarise(rows, 2.0)
    diff = next(s for s in summary if s["method"] == "width")["netadapt_minus"]
    per_seed = [(a["score"] - b["score"]) * 100 for a, b in zip(rows[::2], rows[1::2],
                                                                strict=True)]
    assert diff["per_seed"] == pytest.approx(per_seed)
    assert diff["interval"][0] < diff["mean"] < diff["interval"][1] and diff["mean"] > 5
    assert study.parse_args(["--preset", "cpu"]).image_size == study.PRESETS["cpu"][
        "image_size"]
