"""The study of issues 6 and 27: NetAdapt against uniform width scaling at equal predicted
latency, on a task where accuracy moves.

**Task** (default, ``--task distill``): torchvision's ImageNet-trained MobileNetV2 (the packaged
``--weights imagenet``) is the seed and the teacher. Students learn the teacher's outputs
(KL divergence) on random crops of the photos scikit-image and scikit-learn ship
(``edgepipe.search.distill``: 19 photos, split by photo: 11 to train on, 3 whose crops choose
NetAdapt's proposals, 5 whose crops report the finals and are seen by no choice). Scores: top-1
agreement with the teacher and KL(teacher ‖ student), nats, on the held-out test photos.
``--task classify --model small --data digits|FOLDER`` is the earlier study (issue 6:
MobileNetV3-Small trained on labelled data first, scored by test accuracy).

**Methods**, per random seed and per target (70 % and 50 % of the seed's predicted latency):

* NetAdapt: one path per seed (proposals every δ of the seed's latency, each fine-tuned T
  steps, the least KL rise per ms saved kept: see ``edgepipe.search.netadapt``); at each
  target, the path's first network at
  or below it, fine-tuned ``final_steps``;
* width: the same trained seed at the widest width multiplier whose predicted latency meets
  the target, and (width multipliers are coarse) the next wider one, above it; weights
  inherited the same way (largest-L2 filters of every channel space), trained with the final
  learning rate for as many steps as NetAdapt's path and final fine-tune together.

Seeds vary the training (batch order, hence the proposals chosen); the photos, crops and split
stay the same, so every network is scored on the same held-out crops (``--vary-split``: each
seed holds out other photos, and the intervals cover that too). Intervals: 95 % Student-t
over seeds of each method's mean, and of the per-seed difference NetAdapt − width (paired:
both methods of a seed share its split).

**Latency**: the table of the device (``--table``, default the V2 table collected for this
machine: ``edgepipe lut collect --space mobilenet_v2``) is checked on the device after the
training, right before the finals are measured (recorded, not applied), then every distinct
final is converted for the table's runtime and measured whole, the table's
way, in two sittings: median and p90 measured against predicted. The seed is measured too.

**Per-layer evidence**: each NetAdapt final's channels per layer as a share of the seed's,
beside the width multiplier's, in ``study.json`` and summarised on the console: where
NetAdapt cut more or less than uniform scaling.

Settings: ``--preset cpu`` (the default) is sized to finish within about an hour on a 2-core
x86 CPU (reduced proxy resolution, crops, δ and steps); ``--preset full`` is closer to the
paper (δ 1 %, longer fine-tunes, 224 px proxies) and wants a GPU or a long night. Every value
can be given on its own; the settings used are printed and recorded. A killed run resumes:
NetAdapt's paths from their folders, finished seeds from ``rows.json``.

    python benchmarks/search_study.py [--preset cpu|full] [--seeds 3] [--out out/search-study]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # about 45 min on 2 cores, estimated, not run (the run prints its own time): V2 at 64 px,
    # one thread, under load: a training step of 32 crops 0.24 s, 256 crops scored 1.1 s, so
    # a proposal ~3 s; ~25 proposals a step on 2 workers ~36 s; ~14 steps to 50 % at δ 3 %
    # (V2's largest single-layer cuts are 5-18 % of its latency at the seed, 4-9 % near 60 %:
    # a stand-in cost model's, not a device's): ~8.5 min a seed; finals and width baselines
    # ~3 min a seed; 19 conversions at 224 px and their measurement ~10 min
    "cpu": {"image_size": 64, "crops": "1024,256,512", "delta_pct": 3.0, "finetune_steps": 6,
            "final_steps": 200, "batch": 32, "resolution": 224, "keep_best_every": 50},
    "full": {"image_size": 224, "crops": "8192,1024,2048", "delta_pct": 1.0,
             "finetune_steps": 100, "final_steps": 2000, "batch": 64, "resolution": 224,
             "keep_best_every": 200},
}
METHODS = ("netadapt", "width", "width-wider")
LABELS = {"netadapt": "NetAdapt", "width": "width multiplier (widest ≤ target)",
          "width-wider": "width multiplier (next wider, > target)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--task", choices=["distill", "classify"], default="distill")
    ap.add_argument("--model", help="the seed (default: mobilenet_v2 for distill, small for "
                                    "classify)")
    ap.add_argument("--weights", help="the seed's weights (default: imagenet for distill; "
                                      "classify trains the seed first)")
    ap.add_argument("--data", help="distill: photos (default) or a folder of photos; "
                                   "classify: digits (default) or an ImageFolder")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--vary-split", action="store_true",
                    help="distill: each seed holds out other photos (its split seed is the "
                         "seed): the intervals then cover which photos were held out too, not "
                         "only the training's randomness")
    ap.add_argument("--targets", default="70,50", help="percent of the seed's latency")
    for name, kind in (("image_size", int), ("crops", str), ("delta_pct", float),
                       ("finetune_steps", int), ("final_steps", int), ("batch", int),
                       ("resolution", int), ("keep_best_every", int)):
        ap.add_argument(f"--{name.replace('_', '-')}", type=kind,
                        help=f"(default: the preset's; cpu {PRESETS['cpu'][name]}, full "
                             f"{PRESETS['full'][name]})")
    ap.add_argument("--finetune-lr", type=float)
    ap.add_argument("--final-lr", type=float)
    ap.add_argument("--pretrain-steps", type=int, default=600,
                    help="classify without --weights: the seed's training steps")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--table", type=Path, help="latency table (default: this device's V2 "
                                               "table for distill, the shipped one otherwise)")
    ap.add_argument("--device", default="this-machine",
                    help="where the finals are measured: the table's device")
    ap.add_argument("--out", type=Path, default=Path("out/search-study"))
    args = ap.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean; (v, nan, nan) for one value."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) \
        / math.sqrt(len(values))
    return mean, mean - half, mean + half


def layer_shares(arch: dict[str, Any], seed: dict[str, Any]) -> dict[str, float]:
    """Each layer's channels as a share of the seed's: expansions, block outputs, head."""
    blocks, seed_blocks = arch["network"]["blocks"], seed["network"]["blocks"]
    shares = {"stem": arch["network"]["stem_channels"] / seed["network"]["stem_channels"]}
    for i, (b, s) in enumerate(zip(blocks, seed_blocks, strict=True)):
        if s["expanded_channels"] != s["in_channels"]:
            shares[f"expansion {i}"] = b["expanded_channels"] / s["expanded_channels"]
        shares[f"output {i}"] = b["out_channels"] / s["out_channels"]
    shares["head conv"] = (arch["network"]["last_conv_channels"]
                           / seed["network"]["last_conv_channels"])
    return shares


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None where any is missing (a format-2 table predicts no p90)."""
    return None if any(v is None for v in values) else statistics.fmean(values)


def summarise(rows: list[dict[str, Any]], seed_ms: float) -> list[dict[str, Any]]:
    """Per target and method: the score's mean and 95 % interval over seeds, latencies; per
    target the paired difference NetAdapt − each width baseline."""
    out = []
    for pct in sorted({r["target_pct"] for r in rows}, reverse=True):
        na = {r["seed"]: r for r in rows if r["target_pct"] == pct and r["method"] == "netadapt"}
        for method in METHODS:
            sel = [r for r in rows if r["target_pct"] == pct and r["method"] == method]
            if not sel:
                continue
            score = [r["score"] * 100 for r in sel]
            mean, low, high = t_interval(score)
            entry = {"target_pct": pct, "target_ms": seed_ms * pct / 100, "method": method,
                     "seeds": len(sel), "score_mean": mean, "score_interval": [low, high],
                     "scores": score,
                     "widths": sorted({r["width"] for r in sel if r.get("width")}),
                     "predicted_ms": statistics.fmean(r["predicted_ms"] for r in sel),
                     "predicted_p90_ms": _mean([r["predicted_p90_ms"] for r in sel]),
                     "measured_ms": statistics.fmean(r["measured_ms"] for r in sel),
                     "measured_p90_ms": statistics.fmean(r["measured_p90_ms"] for r in sel),
                     "error_pct": [r["error_pct"] for r in sel],
                     "training_steps": statistics.fmean(r["training_steps"] for r in sel)}
            if any(r.get("kl") is not None for r in sel):
                entry["kl_mean"], *kl_bounds = t_interval([r["kl"] for r in sel])
                entry["kl_interval"] = kl_bounds
            if method != "netadapt":
                diffs = [(na[r["seed"]]["score"] - r["score"]) * 100 for r in sel
                         if r["seed"] in na]
                if diffs:
                    d, dl, dh = t_interval(diffs)
                    entry["netadapt_minus"] = {"mean": d, "interval": [dl, dh],
                                               "per_seed": diffs}
            out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from edgepipe.device.identity import machine_line
    from edgepipe.errors import EdgepipeError
    from edgepipe.host.local import open_device
    from edgepipe.host.registry import config_home
    from edgepipe.latency_tables.estimate import Estimator
    from edgepipe.latency_tables.evaluate import measure_networks
    from edgepipe.latency_tables.sentinels import check_table, check_words
    from edgepipe.manifest import write_atomic
    from edgepipe.models.space import Architecture, SearchSpace
    from edgepipe.search.baseline import width_above, width_for_latency
    from edgepipe.search.netadapt import (
        DISTILL_FINAL_LR,
        DISTILL_FINETUNE_LR,
        NetAdaptRequest,
        NetAdaptSettings,
        check_shrinkable,
        run_netadapt,
    )
    from edgepipe.search.seeds import seed_for_netadapt
    from edgepipe.search.state import load_weights
    from edgepipe.search.surgery import inherit_weights
    from edgepipe.search.train import TrainSettings, TrainTask
    from edgepipe.search.workers import open_runner
    from edgepipe.ui import PhaseProgress, console

    began = time.time()
    distill = args.task == "distill"
    args.model = args.model or ("mobilenet_v2" if distill else "small")
    args.weights = args.weights or ("imagenet" if distill else None)
    args.finetune_lr = args.finetune_lr or (DISTILL_FINETUNE_LR if distill
                                            else NetAdaptSettings.finetune_lr)
    args.final_lr = args.final_lr or (DISTILL_FINAL_LR if distill else NetAdaptSettings.final_lr)
    data, ds, seed_arch, weights = _task(args, seed_for_netadapt)
    table_path, table = _table(args, seed_arch, config_home())
    est = Estimator(table)
    if SearchSpace.from_dict(table.space).family != seed_arch.network.family:
        raise SystemExit(f"{table_path} is not a table of {args.model}'s space: collect one "
                         "with `edgepipe lut collect --space mobilenet_v2`")
    seed_ms = est.predict(seed_arch)
    check_shrinkable(seed_arch, est, args.delta_pct / 100 * seed_ms, args.model)
    targets = sorted((int(t) for t in args.targets.split(",")), reverse=True)
    settings_words = {k: v for k, v in vars(args).items() if k not in ("out", "table")} | {
        "out": str(args.out), "table": str(table_path)}
    console.print(f"settings: {json.dumps(settings_words)}")
    console.print(f"data: {ds.describe()}" + (f"; photos by part: {ds.photos}" if distill
                                                 else ""))
    console.print(f"seed {args.model}: predicted {seed_ms:.3f} ms on {table.describe()}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "rows.json"
    saved = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    rows: list[dict[str, Any]] = saved.get("rows", [])
    unreached: list[dict[str, Any]] = saved.get("unreached", [])
    done_seeds = set(saved.get("seeds_done", []))
    # finals and width baselines keep their best state on validation (0: the last state)
    train = TrainSettings(batch=args.batch, keep_best_every=args.keep_best_every)
    with open_runner(args.workers) as runner, PhaseProgress() as progress:
        for seed in range(args.seeds):
            if seed in done_seeds:
                continue  # finished before a resume
            settings = NetAdaptSettings(delta_pct=args.delta_pct,
                                        finetune_steps=args.finetune_steps,
                                        final_steps=args.final_steps,
                                        pretrain_steps=args.pretrain_steps,
                                        finetune_lr=args.finetune_lr, final_lr=args.final_lr,
                                        seed=seed, train=train)
            if args.vary_split and distill:  # this seed's photos held out (its own set)
                data, _, _, _ = _task(args, seed_for_netadapt, split_seed=seed)
            out = args.out / f"netadapt-seed{seed}"
            mine = []
            for pct in targets:  # the highest first; the lower ones continue the same path
                try:
                    res = run_netadapt(NetAdaptRequest(seed_arch, data, est, out,
                                                       seed_ms * pct / 100, weights, settings,
                                                       seed_name=args.model), runner, progress)
                except EdgepipeError as exc:  # the path ran out of layers to cut by δ
                    unreached.append({"seed": seed, "target_pct": pct, "why": str(exc)})
                    console.print(f"[yellow]seed {seed}, {pct} %: not reached:[/] {exc}")
                    break  # a lower target is not reached either
                f = res["final"]
                arch = json.loads(Path(f["model"]).read_text())["architecture"]
                mine.append({"method": "netadapt", "seed": seed, "target_pct": pct,
                             "score": f["test_accuracy"], "val_score": f["accuracy"],
                             "kl": f.get("test_kl"), "training_steps": f["training_steps"],
                             "kept_step": f.get("kept_step"),
                             "arch": arch, "steps": f["from_step"],
                             "layers": layer_shares(arch, seed_arch.to_dict())})
            seed_state = load_weights(out / "steps/step-000.pth")
            tasks, baselines = [], []
            for pct in sorted({r["target_pct"] for r in mine}, reverse=True):
                target = seed_ms * pct / 100
                budget = next(r["training_steps"] for r in mine if r["target_pct"] == pct)
                found = [("width", width_for_latency(seed_arch, target, est)),
                         ("width-wider", width_above(seed_arch, target, est))]
                for method, (width, arch) in [(m, f) for m, f in found if f is not None]:
                    tasks.append(TrainTask(arch.to_dict(), data, budget, seed * 7 + 1,
                                           inherit_weights(seed_state, seed_arch.network,
                                                           arch.network),
                                           TrainSettings(batch=args.batch, lr=args.final_lr,
                                                         keep_best_every=args.keep_best_every),
                                           method))
                    baselines.append({"method": method, "seed": seed, "target_pct": pct,
                                      "width": width, "training_steps": budget,
                                      "arch": arch.to_dict(),
                                      "layers": layer_shares(arch.to_dict(),
                                                             seed_arch.to_dict())})
            progress.phase(f"seed {seed}: width baselines", len(tasks))
            for row, result in zip(baselines, runner.run(tasks, lambda _r: progress.advance()),
                                   strict=True):
                row.update({"score": result.test_accuracy, "val_score": result.accuracy,
                            "kl": result.test_kl, "kept_step": result.kept_step})
            rows += mine + baselines
            done_seeds.add(seed)
            write_atomic(rows_file, json.dumps({"rows": rows, "unreached": unreached,
                                                "seeds_done": sorted(done_seeds)}, indent=1))
        # every distinct final and the seed, converted and measured on the table's device
        seed_key = json.dumps(seed_arch.to_dict(), sort_keys=True)
        distinct = {json.dumps(r["arch"], sort_keys=True): r["arch"] for r in rows}
        distinct[seed_key] = seed_arch.to_dict()
        archs = [Architecture.from_dict(a) for a in distinct.values()]
        workdir = args.out / "device"
        with open_device(args.device, workdir) as client:
            check = check_table(table, client, workdir, progress=progress)
            measured, _ = measure_networks(archs, table, client, workdir, progress=progress)
    by_arch = {json.dumps(a.to_dict(), sort_keys=True): (m, est.prediction(a))
               for a, m in zip(archs, measured, strict=True)}
    for r in rows:
        m, p = by_arch[json.dumps(r["arch"], sort_keys=True)]
        r.update({"measured_ms": m["measured_ms"], "measured_p90_ms": m["p90_ms"],
                  "predicted_ms": p.median, "predicted_p90_ms": p.p90,
                  "error_pct": (p.median - m["measured_ms"]) / m["measured_ms"] * 100,
                  "p90_error_pct": ((p.p90 - m["p90_ms"]) / m["p90_ms"] * 100
                                    if p.p90 is not None else None),
                  "estimated_share": p.estimated_share})
    seed_m, seed_p = by_arch[seed_key]
    summary = summarise(rows, seed_ms)
    errors = [abs(r["error_pct"]) for r in rows]
    report = {"task": args.task, "seed_model": args.model, "seed_predicted_ms": seed_ms,
              "seed_measured_ms": seed_m["measured_ms"], "seed_measured_p90_ms": seed_m["p90_ms"],
              "data": ds.describe(), "photos": ds.photos if distill else None,
              "table": table.describe(), "table_path": str(table_path), "table_check": check,
              "machine": machine_line(), "settings": settings_words, "summary": summary,
              "median_abs_error_pct": statistics.median(errors),
              "finals_within_10pct": sum(e <= 10 for e in errors) / len(errors),
              "unreached": unreached, "rows": rows, "seconds": time.time() - began}
    write_atomic(args.out / "study.json", json.dumps(report, indent=1))
    plot(rows, report, args.out / "study.png")
    console.print(f"\n{machine_line()}\ntable {table_path.name}: {check_words(check)}")
    print_report(report)


def _task(args: argparse.Namespace, seed_for_netadapt, split_seed: int = 0):
    """(DataSpec, Dataset, seed Architecture, weights) for the study's task; ``split_seed``:
    which photos are held out (distill)."""
    from edgepipe.search.data import DataSpec, load_dataset

    if args.task == "classify":
        data = DataSpec(args.data or "digits", args.image_size)
        ds = load_dataset(data)
        seed, weights, _ = seed_for_netadapt(args.model, args.resolution, len(ds.classes),
                                             args.weights)
        return data, ds, seed, weights
    from edgepipe.search.distill import PHOTOS, DistillSpec, seed_distillation
    from edgepipe.ui import PhaseProgress

    seed, weights, labels = seed_for_netadapt(args.model, args.resolution, None, args.weights)
    train, val, test = (int(v) for v in args.crops.split(","))
    spec = DistillSpec(args.data or PHOTOS, args.image_size, train, val, test,
                       split_seed=split_seed)
    with PhaseProgress() as progress:
        path = seed_distillation(spec, seed, weights, labels, args.out / "data", progress)
    data = DataSpec(str(path.resolve()), args.image_size)
    return data, load_dataset(data), seed, weights


def _table(args: argparse.Namespace, seed, home: Path):
    """--table, or the device's table of the seed's family (ExecuTorch fp32, 1 thread); V3:
    the shipped reference table, as the earlier study."""
    from edgepipe.cli.device import device_info
    from edgepipe.latency_tables.table import (
        REFERENCE_TABLE,
        LatencyTable,
        Target,
        find_table,
    )

    if args.table is not None:
        return args.table, LatencyTable.load(args.table)
    if seed.network.family == "v3":
        return REFERENCE_TABLE, LatencyTable.load(REFERENCE_TABLE)
    target = Target(device_info(args.device)["fingerprint"], "executorch", "fp32", 1)
    path = find_table(target, home, "v2")
    if path is None:
        raise SystemExit(f"no table of MobileNetV2's space for {args.device}: collect one with "
                         f"`edgepipe lut collect --space mobilenet_v2 --device {args.device}` "
                         "(95 programs to convert, a fifth of the default space's), or give "
                         "--table")
    return path, LatencyTable.load(path)


def print_report(report: dict[str, Any]) -> None:
    distill = report["task"] == "distill"
    what = "top-1 agreement with the teacher %" if distill else "test accuracy %"
    print(f"\nseed {report['seed_model']}: predicted {report['seed_predicted_ms']:.3f} ms, "
          f"measured {report['seed_measured_ms']:.3f} ms (p90 "
          f"{report['seed_measured_p90_ms']:.3f})")
    print(f"{'target':>7} {'method':>12} {'width':>9} {what + ' (95 % interval)':>44} "
          f"{'pred ms':>8} {'meas ms':>8} {'pred p90':>9} {'meas p90':>9} {'steps':>6}")
    for s in report["summary"]:
        width = ",".join(f"{w:.2f}" for w in s["widths"]) or "-"
        low, high = s["score_interval"]
        kl = f" KL {s['kl_mean']:.3f}" if "kl_mean" in s else ""
        print(f"{s['target_pct']:>6}% {s['method']:>12} {width:>9} "
              f"{s['score_mean']:>7.2f} ({low:6.2f} – {high:6.2f}){kl:>14} "
              f"{s['predicted_ms']:>8.3f} {s['measured_ms']:>8.3f} "
              f"{_ms(s['predicted_p90_ms']):>9} {s['measured_p90_ms']:>9.3f} "
              f"{s['training_steps']:>6.0f}")
    for s in report["summary"]:
        if "netadapt_minus" in s:
            d = s["netadapt_minus"]
            na = next(x for x in report["summary"] if x["target_pct"] == s["target_pct"]
                      and x["method"] == "netadapt")
            print(f"at {s['target_pct']}%: NetAdapt − {s['method']} = {d['mean']:+.2f} points "
                  f"(95 % interval {d['interval'][0]:+.2f} to {d['interval'][1]:+.2f}, "
                  f"{len(d['per_seed'])} seeds) at {na['measured_ms'] / s['measured_ms']:.3f}× "
                  "its measured latency")
    for pct in sorted({r["target_pct"] for r in report["rows"]}, reverse=True):
        na = [r["layers"] for r in report["rows"]
              if r["target_pct"] == pct and r["method"] == "netadapt"]
        width = next((r for r in report["rows"] if r["target_pct"] == pct
                      and r["method"] == "width"), None)
        if not na or width is None:
            continue
        mean = {k: statistics.fmean(s[k] for s in na) for k in na[0]}
        diff = sorted(mean, key=lambda k: mean[k] - width["layers"][k])
        print(f"at {pct}%: NetAdapt kept less than ×{width['width']:.2f} in "
              + ", ".join(f"{k} ({mean[k]:.0%})" for k in diff[:4]) + "; more in "
              + ", ".join(f"{k} ({mean[k]:.0%})" for k in diff[-4:][::-1]))
    for u in report["unreached"]:
        print(f"seed {u['seed']}: {u['target_pct']} % not reached: {u['why']}")
    print(f"finals' predicted median vs measured: median |error| "
          f"{report['median_abs_error_pct']:.1f} %, {report['finals_within_10pct']:.0%} within "
          "±10 %")
    print(f"study finished in {report['seconds'] / 60:.1f} min")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(rows: list[dict[str, Any]], report: dict[str, Any], path: Path) -> None:
    """Agreement (or accuracy) against measured latency, every final one point; with
    distillation a second panel: KL divergence from the teacher."""
    import re

    from edgepipe.plotting import pyplot, save_figure

    distill = report["task"] == "distill"
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if distill else 1, figsize=(10.5 if distill else 6.4, 4.2),
                             dpi=110, squeeze=False)
    panels = [("score", "top-1 agreement with the teacher (%)" if distill
               else "test accuracy (%)", 100.0)]
    if distill:
        panels.append(("kl", "KL(teacher ‖ student), nats", 1.0))
    for ax, (key, label, scale) in zip(axes[0], panels, strict=True):
        for method, colour, marker in (("netadapt", "#1f5fa8", "o"), ("width", "#c0392b", "s"),
                                       ("width-wider", "#e67e22", "^")):
            sel = [r for r in rows if r["method"] == method and r.get(key) is not None]
            ax.scatter([r["measured_ms"] for r in sel], [r[key] * scale for r in sel],
                       color=colour, marker=marker, s=26, alpha=0.8, label=LABELS[method])
        if distill:  # the teacher agrees with itself and diverges by nothing
            ax.scatter([report["seed_measured_ms"]], [100.0 if key == "score" else 0.0],
                       marker="*", s=120, color="#333", label="seed (the teacher)")
        for pct in sorted({r["target_pct"] for r in rows}):
            ax.axvline(report["seed_predicted_ms"] * pct / 100, color="#999", lw=0.8, ls="--")
        ax.set_xlabel("measured latency (ms, median); dashed: the targets (predicted)")
        ax.set_ylabel(label + (", held-out photos" if distill else ""), fontsize=8)
    axes[0][0].legend(fontsize=7)
    found = re.search(r"fingerprint (\w+)", report["table"])
    targets = " and ".join(f"{t} %" for t in report["settings"]["targets"].split(","))
    fig.suptitle(f"{report['seed_model']} shrunk to {targets} of its latency "
                 f"({report['settings']['seeds']} seeds); measured on "
                 f"{found.group(1) if found else 'the table device'}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
