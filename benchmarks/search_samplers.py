"""Block search: MnasNet's RL controller vs regularised evolution vs random, same budget.

Each sampler trains the same number of networks (proxy training on the built-in digits) from
the default space (MobileNetV3-Small skeleton, 224 px), on the shipped table, with the reward
ACC · (LAT/T)^w; T is a share of MobileNetV3-Small's predicted latency. Reported per sampler:
the best reward found (mean ± std over seeds), that network's accuracy and latency, and the
mean reward of the last round (where the sampler has moved to).

    python benchmarks/search_samplers.py [--samples 24] [--seeds 2] [--out out/search-samplers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgepipe.device.identity import machine_line
from edgepipe.latency_tables.estimate import Estimator
from edgepipe.latency_tables.table import REFERENCE_TABLE, LatencyTable
from edgepipe.manifest import write_atomic
from edgepipe.models.space import SearchSpace
from edgepipe.search.data import DataSpec
from edgepipe.search.mnas import SAMPLERS, MnasRequest, MnasSettings, run_mnas
from edgepipe.search.workers import open_runner
from edgepipe.ui import PhaseProgress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--per-round", type=int, default=4)
    ap.add_argument("--proxy-steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--target-pct", type=float, default=70)
    ap.add_argument("--w", type=float, default=-0.07)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("out/search-samplers"))
    args = ap.parse_args()
    began = time.time()
    est = Estimator(LatencyTable.load(REFERENCE_TABLE))
    space = SearchSpace(num_classes=10)
    target = est.predict(space.seed_architecture("small", 224)) * args.target_pct / 100
    rows = []
    with open_runner(args.workers) as runner, PhaseProgress() as progress:
        for seed in range(args.seeds):
            for sampler in SAMPLERS:
                settings = MnasSettings(sampler=sampler, samples=args.samples,
                                        per_round=args.per_round, proxy_steps=args.proxy_steps,
                                        final_steps=0, w=args.w, seed=seed)
                req = MnasRequest(space, "small", 224, DataSpec(), est,
                                  args.out / f"{sampler}-seed{seed}", target, settings)
                samples = run_mnas(req, runner, progress)["record"]["samples"]
                best = max(samples, key=lambda s: s["reward"])
                last = samples[-args.per_round:]
                rows.append({"sampler": sampler, "seed": seed, "best_reward": best["reward"],
                             "best_accuracy": best["accuracy"],
                             "best_predicted_ms": best["predicted_ms"],
                             "best_found_at": samples.index(best) + 1,
                             "last_round_reward": statistics.mean(s["reward"] for s in last),
                             "last_round_ms": statistics.mean(s["predicted_ms"] for s in last)})
    summary = {}
    print(f"\n{machine_line()}\npredicted latency from the shipped table, not checked here "
          f"(the samplers' comparison needs no device): {est.table.describe()}")
    print(f"target T = {target:.3f} ms ({args.target_pct:.0f} % of MobileNetV3-Small), "
          f"w = {args.w}, {args.samples} networks × {args.proxy_steps} steps per search, "
          f"{args.seeds} seeds")
    print(f"{'sampler':>10} {'best reward':>16} {'its acc %':>10} {'its ms':>8} "
          f"{'found at':>9} {'last-round reward':>18} {'last-round ms':>14}")
    for sampler in SAMPLERS:
        sel = [r for r in rows if r["sampler"] == sampler]

        def mean(key: str, sel: list[dict] = sel) -> float:
            return statistics.mean(r[key] for r in sel)

        std = statistics.stdev(r["best_reward"] for r in sel) if len(sel) > 1 else 0.0
        summary[sampler] = {k: mean(k) for k in sel[0] if k not in ("sampler", "seed")}
        summary[sampler]["best_reward_std"] = std
        print(f"{sampler:>10} {mean('best_reward'):>9.4f} ± {std:.4f} "
              f"{mean('best_accuracy') * 100:>10.1f} {mean('best_predicted_ms'):>8.3f} "
              f"{mean('best_found_at'):>9.1f} {mean('last_round_reward'):>18.4f} "
              f"{mean('last_round_ms'):>14.3f}")
    print(f"finished in {(time.time() - began) / 60:.1f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "samplers.json", json.dumps(
        {"target_ms": target, "settings": vars(args) | {"out": str(args.out)},
         "summary": summary, "rows": rows, "seconds": time.time() - began}, indent=1))


if __name__ == "__main__":
    main()
