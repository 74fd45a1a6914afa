"""The study of issue 6: NetAdapt vs uniform width scaling at equal predicted latency.

From MobileNetV3-Small (trained on the built-in digits data first, one seed network per random
seed), NetAdapt walks down to 70 % and 50 % of the seed's predicted latency on the shipped
table; the baseline is the same trained seed with a smaller width multiplier, its weights
inherited the same way (largest-L2 filters): the widest width whose predicted latency meets
the target and, since rounding makes widths coarse, the next wider one too (above the
target). Both get the same number of training steps (NetAdapt: its path's fine-tunes + the
final fine-tune; baseline: as many steps at once). Accuracy is mean ± std over the seeds;
every final is then converted and measured on this machine through the agent. NetAdapt
chooses its proposals on the validation split; the accuracies reported are on the test split,
which no choice saw.

    python benchmarks/search_study.py [--seeds 3] [--delta-pct 2] [--out out/search-study]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgepipe.device.identity import machine_line
from edgepipe.host.local import LOCAL, open_device
from edgepipe.latency_tables.estimate import Estimator
from edgepipe.latency_tables.evaluate import measure_networks
from edgepipe.latency_tables.sentinels import check_table, check_words
from edgepipe.latency_tables.table import REFERENCE_TABLE, LatencyTable
from edgepipe.manifest import write_atomic
from edgepipe.models.space import SearchSpace
from edgepipe.search.baseline import width_above, width_for_latency
from edgepipe.search.data import DataSpec, load_dataset
from edgepipe.search.netadapt import NetAdaptRequest, NetAdaptSettings, run_netadapt
from edgepipe.search.state import load_weights
from edgepipe.search.surgery import inherit_weights
from edgepipe.search.train import TrainSettings, TrainTask
from edgepipe.search.workers import open_runner
from edgepipe.ui import PhaseProgress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--targets", default="70,50", help="percent of the seed's latency")
    ap.add_argument("--delta-pct", type=float, default=2.0)
    ap.add_argument("--finetune-steps", type=int, default=20)
    ap.add_argument("--final-steps", type=int, default=600)
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default="digits",
                    help="digits (built in) or an ImageFolder-layout folder of your own")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("out/search-study"))
    args = ap.parse_args()
    began = time.time()
    table_path = REFERENCE_TABLE
    est = Estimator(LatencyTable.load(table_path))
    data = DataSpec(args.data, args.image_size)
    classes = len(load_dataset(data).classes)
    seed_arch = SearchSpace(num_classes=classes).seed_architecture("small", args.resolution)
    seed_ms = est.predict(seed_arch)
    targets = sorted((int(t) for t in args.targets.split(",")), reverse=True)
    rows = []
    with open_runner(args.workers) as runner, PhaseProgress() as progress:
        for seed in range(args.seeds):
            settings = NetAdaptSettings(delta_pct=args.delta_pct,
                                        finetune_steps=args.finetune_steps,
                                        final_steps=args.final_steps,
                                        pretrain_steps=args.pretrain_steps, seed=seed)
            out = args.out / f"netadapt-seed{seed}"
            for pct in targets:  # 70 first; 50 continues the same path
                res = run_netadapt(NetAdaptRequest(seed_arch, data, est, out,
                                                   seed_ms * pct / 100, settings=settings),
                                   runner, progress)
                f = res["final"]
                rows.append({"method": "netadapt", "seed": seed, "target_pct": pct,
                             "accuracy": f["test_accuracy"], "val_accuracy": f["accuracy"],
                             "predicted_ms": f["predicted_ms"],
                             "training_steps": f["training_steps"],
                             "arch": json.loads(Path(f["model"]).read_text())["architecture"],
                             "steps": f["from_step"]})
            seed_state = load_weights(out / "steps/step-000.pth")
            tasks, baselines = [], []
            for pct in targets:
                target = seed_ms * pct / 100
                budget = next(r["training_steps"] for r in rows if r["seed"] == seed
                              and r["target_pct"] == pct and r["method"] == "netadapt")
                found = [("width", width_for_latency(seed_arch, target, est)),
                         ("width-wider", width_above(seed_arch, target, est))]
                for method, (width, arch) in [(m, f) for m, f in found if f is not None]:
                    tasks.append(TrainTask(arch.to_dict(), data, budget, seed * 7 + 1,
                                           inherit_weights(seed_state, seed_arch.network,
                                                           arch.network),
                                           TrainSettings(lr=settings.final_lr), method))
                    baselines.append({"method": method, "seed": seed, "target_pct": pct,
                                      "width": width, "predicted_ms": est.predict(arch),
                                      "training_steps": budget, "arch": arch.to_dict()})
            progress.phase(f"seed {seed}: width baselines", len(tasks))
            for row, result in zip(baselines, runner.run(tasks, lambda _r: progress.advance()),
                                   strict=True):
                row["accuracy"] = result.test_accuracy
                row["val_accuracy"] = result.accuracy
            rows += baselines
        # measure every distinct final on this machine, the table's way
        from edgepipe.models.space import Architecture

        distinct = {json.dumps(r["arch"], sort_keys=True): r["arch"] for r in rows}
        archs = [Architecture.from_dict(a) for a in distinct.values()]
        with open_device(LOCAL, args.out / "device") as client:
            # the table is checked where the finals are measured: its figures say if it held
            check = check_table(est.table, client, args.out / "device", progress=progress)
            measured, _ = measure_networks(archs, est.table, client, args.out / "device",
                                           progress=progress)
        by_arch = {json.dumps(a.to_dict(), sort_keys=True): m["measured_ms"]
                   for a, m in zip(archs, measured, strict=True)}
        for r in rows:
            r["measured_ms"] = by_arch[json.dumps(r["arch"], sort_keys=True)]
    summary = summarise(rows, seed_ms)
    report = {"seed_predicted_ms": seed_ms, "table": est.table.describe(),
              "table_check": check, "machine": machine_line(),
              "settings": vars(args) | {"out": str(args.out)}, "summary": summary,
              "rows": rows, "seconds": time.time() - began}
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "study.json", json.dumps(report, indent=1))
    plot(rows, seed_ms, args.out / "study.png")
    print(f"\n{machine_line()}\ntable {table_path.name}: {check_words(check)}")
    print_table(summary, seed_ms, time.time() - began)


METHODS = ("netadapt", "width", "width-wider")
LABELS = {"netadapt": "NetAdapt", "width": "width multiplier (widest ≤ target)",
          "width-wider": "width multiplier (next wider, > target)"}


def summarise(rows: list[dict], seed_ms: float) -> list[dict]:
    out = []
    for pct in sorted({r["target_pct"] for r in rows}, reverse=True):
        for method in METHODS:
            sel = [r for r in rows if r["target_pct"] == pct and r["method"] == method]
            if not sel:
                continue
            acc = [r["accuracy"] * 100 for r in sel]
            out.append({"target_pct": pct, "target_ms": seed_ms * pct / 100, "method": method,
                        "accuracy_mean": statistics.mean(acc),
                        "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                        "accuracies": acc, "widths": sorted({r.get("width") for r in sel
                                                             if r.get("width")}),
                        "predicted_ms": statistics.mean(r["predicted_ms"] for r in sel),
                        "measured_ms": statistics.mean(r["measured_ms"] for r in sel),
                        "training_steps": statistics.mean(r["training_steps"] for r in sel)})
    return out


def print_table(summary: list[dict], seed_ms: float, seconds: float) -> None:
    print(f"\nseed MobileNetV3-Small: predicted {seed_ms:.3f} ms")
    print(f"{'target':>8} {'method':>12} {'width':>6} {'test accuracy %':>16} "
          f"{'predicted ms':>13} {'measured ms':>12} {'train steps':>12}")
    for s in summary:
        width = ",".join(f"{w:.2f}" for w in s["widths"]) or "-"
        print(f"{s['target_pct']:>7}% {s['method']:>12} {width:>6} {s['accuracy_mean']:>9.2f} ± "
              f"{s['accuracy_std']:<4.2f} {s['predicted_ms']:>13.3f} {s['measured_ms']:>12.3f} "
              f"{s['training_steps']:>12.0f}")
    for pct in sorted({s["target_pct"] for s in summary}, reverse=True):
        na = next(s for s in summary if s["target_pct"] == pct and s["method"] == "netadapt")
        for other in (s for s in summary if s["target_pct"] == pct and s["method"] != "netadapt"):
            print(f"at {pct}%: NetAdapt − {other['method']} = "
                  f"{na['accuracy_mean'] - other['accuracy_mean']:+.2f} points at "
                  f"{na['measured_ms'] / other['measured_ms']:.3f}× its measured latency")
    print(f"study finished in {seconds / 60:.1f} min")


def plot(rows: list[dict], seed_ms: float, path: Path) -> None:
    from edgepipe.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for method, colour, marker in (("netadapt", "#1f5fa8", "o"), ("width", "#c0392b", "s"),
                                   ("width-wider", "#e67e22", "^")):
        sel = [r for r in rows if r["method"] == method]
        ax.scatter([r["measured_ms"] for r in sel], [r["accuracy"] * 100 for r in sel],
                   color=colour, marker=marker, s=26, alpha=0.8, label=LABELS[method])
    for pct in sorted({r["target_pct"] for r in rows}):
        ax.axvline(seed_ms * pct / 100, color="#999", lw=0.8, ls="--")  # predicted targets
    ax.set_xlabel("measured latency on this machine (ms, ExecuTorch XNNPACK fp32, 1 thread)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MobileNetV3-Small shrunk to 70 % and 50 % of its latency (3 seeds each)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
