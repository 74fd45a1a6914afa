"""NetAdapt (Yang et al. 2018) as MobileNetV3 used it: shrink a trained network step by step
on a device's measured latency.

Each step proposes, for every expansion layer and every bottleneck group (blocks tied by
residual adds, shrunk together), the smallest cut in filters that lowers the predicted latency
by at least δ; each proposal inherits the largest-L2 filters and is fine-tuned for T steps;
the step keeps the one with the best ΔAccuracy / |ΔLatency|. At the target latency the last
network is fine-tuned longer. Steps are the path; the target only says where to stop on it,
so a finished search can be continued to a lower target in the same folder.

The seed is a MobileNetV3 or a MobileNetV2 (e.g. torchvision's ImageNet-trained one, with a
table of V2's space: ``lut collect --space mobilenet_v2``). On a distillation set
(:mod:`.distill`) "accuracy" is top-1 agreement with the teacher, and a step keeps the
proposal whose KL divergence from the teacher rises least per ms saved (agreement with a
1000-class teacher falls to the floor after one cut, where ΔAgreement / |ΔLatency| rewards
only the largest saving); agreement breaks ties.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..latency_tables.estimate import Estimator
from ..models.space import Architecture
from .data import DataSpec, load_dataset
from .results import Progress, finish_model, plot_netadapt_path
from .state import SearchRecord, load_weights, save_weights
from .surgery import (
    bottleneck_groups,
    expansion_layers,
    inherit_weights,
    shrink_bottleneck,
    shrink_expansion,
)
from .train import TrainResult, TrainSettings, TrainTask
from .workers import Runner

# Learning rates on a distillation set (AdamW, cosine): a trained network moves away from its
# teacher at the rates that suit training on labelled data. Tiny check, MobileNetV2 (ImageNet
# weights) with one expansion of 384 halved, 20 steps of 32 of 384 crops at 48 px: KL on
# validation crops 1.25 nats before, 0.96 (1e-5), 0.94 (2e-5), 1.05 (4e-5), 1.77 (1e-4),
# 3.03 (5e-4). Not tuned beyond that: the study prints the rates it used.
DISTILL_FINETUNE_LR = 2e-5
DISTILL_FINAL_LR = 5e-5


@dataclass
class NetAdaptSettings:
    delta_pct: float = 1.0  # each step cuts at least this share of the seed's latency
    finetune_steps: int = 20  # T: training steps per proposal
    final_steps: int = 600  # the long fine-tune at the target
    pretrain_steps: int = 600  # trains the seed first when no weights are given
    finetune_lr: float = 5e-4
    final_lr: float = 1e-3
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass
class Proposal:
    change: str  # "expansion 3: 88 -> 80" | "bottleneck 2 (blocks 1,2): 24 -> 16"
    arch: Architecture
    predicted_ms: float


def check_shrinkable(arch: Architecture, estimator: Estimator, delta_ms: float,
                     name: str) -> None:
    """Refuse, in one line naming what was found, a seed in which no layer can be narrowed
    by ``delta_ms`` (every expansion, bottleneck and the head conv at 8 channels already, or
    too small to cut δ): before its training starts."""
    if propose(arch, estimator, delta_ms):
        return
    net = arch.network
    widths = sorted({b.expanded_channels for b in net.blocks} | {net.last_conv_channels})
    raise EdgepipeError(
        f"NetAdapt cannot shrink {name}: found {len(net.blocks)} inverted-residual block(s) "
        f"with {len(expansion_layers(net))} expansion layer(s) and "
        f"{len(bottleneck_groups(net))} bottleneck group(s) (widths {widths[0]}–{widths[-1]}), "
        f"and no cut of 8 filters or more lowers its predicted latency by δ = "
        f"{delta_ms:.3f} ms: give a smaller --delta-pct or a wider model")


def propose(arch: Architecture, estimator: Estimator, delta_ms: float) -> list[Proposal]:
    """One proposal per expansion layer and per bottleneck group: the fewest filters removed
    (in steps of 8) that cut the predicted latency by ``delta_ms``; none where no cut does."""
    net, base = arch.network, estimator.predict(arch)
    found = []

    def smallest_cut(label: str, current: int, shrink) -> None:
        for channels in range(current - 8, 7, -8):
            new = shrink(channels)
            if new is None:
                continue
            candidate = Architecture(new, arch.resolution, arch.seed)
            ms = estimator.predict(candidate)
            if base - ms >= delta_ms:
                found.append(Proposal(f"{label}: {current} -> {channels}", candidate, ms))
                return

    for i in [*expansion_layers(net), len(net.blocks)]:
        current = net.last_conv_channels if i == len(net.blocks) \
            else net.blocks[i].expanded_channels
        label = "head conv" if i == len(net.blocks) else f"expansion {i}"
        smallest_cut(label, current, lambda c, i=i: shrink_expansion(net, i, c))
    for g, members in enumerate(bottleneck_groups(net)):
        current = net.stem_channels if members == [-1] else net.blocks[members[-1]].out_channels
        names = ",".join("stem" if m < 0 else str(m) for m in members)
        smallest_cut(f"bottleneck {g} ({names})", current,
                     lambda c, g=g: shrink_bottleneck(net, g, c))
    return found


@dataclass
class NetAdaptRequest:
    seed_arch: Architecture
    data: DataSpec
    estimator: Estimator
    out: Path
    target_ms: float
    weights: Path | None = None
    settings: NetAdaptSettings = field(default_factory=NetAdaptSettings)
    seed_name: str = "the seed"  # what the user called it (refusals name it)

    def record_settings(self) -> dict[str, Any]:
        """What must match for a search to resume (not the target: it picks where to stop)."""
        return {"seed_arch": self.seed_arch.to_dict(), "data": self.data.to_dict(),
                "weights": str(self.weights) if self.weights else None,
                "table": self.estimator.table.describe(), **asdict(self.settings)}


def run_netadapt(req: NetAdaptRequest, runner: Runner, progress: Progress | None = None
                 ) -> dict[str, Any]:
    progress = progress or Progress()
    s = req.settings
    est = req.estimator
    seed_ms = est.predict(req.seed_arch)
    # refusals before the seed is trained (that takes a while) and before the folder is made
    if req.target_ms >= seed_ms:
        raise EdgepipeError(f"the target {req.target_ms:.3f} ms is not below the seed's "
                            f"predicted {seed_ms:.3f} ms: give a lower --target-ms or "
                            "--target-pct below 100")
    check_shrinkable(req.seed_arch, est, s.delta_pct / 100 * seed_ms, req.seed_name)
    record = SearchRecord(req.out, "netadapt", req.record_settings())
    if req.estimator.provenance:  # how the table was checked for this session of the search
        record.data.setdefault("table_checks", []).append(req.estimator.provenance)
        record.save()
    ds = load_dataset(req.data)
    if not record.get("steps"):
        record["steps"] = [_seed_step(req, runner, progress)]
        record.save()
    steps = record["steps"]
    _same_units(steps, est.factor)
    delta = s.delta_pct / 100 * seed_ms
    reached = next((st for st in steps if st["predicted_ms"] <= req.target_ms), None)
    while reached is None:
        last = steps[-1]
        arch = Architecture.from_dict(last["arch"])
        proposals = propose(arch, est, delta)
        if not proposals:
            raise EdgepipeError(
                f"no layer can be shrunk by {delta:.3f} ms any more (reached "
                f"{last['predicted_ms']:.3f} ms, target {req.target_ms:.3f} ms): give a higher "
                f"target or a smaller --delta-pct; the path so far is in {record.path}")
        step_no = len(steps)
        state = load_weights(req.out / last["weights"])
        tasks = [TrainTask(p.arch.to_dict(), req.data, s.finetune_steps,
                           s.seed * 1_000_003 + step_no * 1000 + i,
                           inherit_weights(state, arch.network, p.arch.network),
                           _with_lr(s.train, s.finetune_lr), p.change, test=False)
                 for i, p in enumerate(proposals)]
        progress.phase(f"step {step_no}: {last['predicted_ms']:.2f} ms -> target "
                       f"{req.target_ms:.2f} ms, {len(tasks)} proposals", len(tasks))
        began = time.perf_counter()
        results = runner.run(tasks, lambda _r: progress.advance())
        scored = [_score(last, p.predicted_ms, r) for p, r in zip(proposals, results,
                                                                   strict=True)]
        # equal scores: the higher agreement, then the lower KL wins; else the first proposal
        best = max(range(len(proposals)), key=lambda i: (
            scored[i], results[i].accuracy,
            -results[i].kl if results[i].kl is not None else 0.0))
        weights = f"steps/step-{step_no:03d}.pth"
        save_weights(req.out / weights, results[best].state)
        steps.append({
            "step": step_no, "change": proposals[best].change,
            "arch": proposals[best].arch.to_dict(),
            "predicted_ms": proposals[best].predicted_ms, "factor": est.factor,
            "measured_share": est.measured_share(proposals[best].arch),
            "accuracy": results[best].accuracy, "kl": results[best].kl, "weights": weights,
            "seconds": time.perf_counter() - began,
            "proposals": [{"change": p.change, "predicted_ms": p.predicted_ms,
                           "accuracy": r.accuracy, "kl": r.kl, "score": sc}
                          for p, r, sc in zip(proposals, results, scored, strict=True)]})
        record.save()
        if proposals[best].predicted_ms <= req.target_ms:
            reached = steps[-1]
    final = _finalize(req, reached, runner, progress, ds.classes, steps[0])
    record.data.setdefault("finals", {})[f"{req.target_ms:.4f}"] = final
    record.save()
    plot_netadapt_path(steps, record["finals"], req.out / "path.png")
    return {"record": record.data, "final": final}


def _same_units(steps: list[dict[str, Any]], factor: float) -> None:
    """Steps recorded by an earlier session of the search, whose table check found another
    drift factor, re-expressed at this session's ``factor`` (every prediction is the table's
    sum times the factor): a path must not compare milliseconds of two scales, which would
    make a shrinking step look like a growing one and its score change sign."""
    for step in steps:
        ratio = factor / step.get("factor", 1.0)
        if ratio != 1.0:
            step["predicted_ms"] *= ratio
            for p in step.get("proposals", []):
                p["predicted_ms"] *= ratio
        step["factor"] = factor


def _with_lr(settings: TrainSettings, lr: float) -> TrainSettings:
    return TrainSettings(**{**asdict(settings), "lr": lr})


def _seed_step(req: NetAdaptRequest, runner: Runner, progress: Progress) -> dict[str, Any]:
    """Step 0: the seed, trained first when no weights are given, and its accuracy."""
    s = req.settings
    state, new_head = None, False
    if req.weights:
        from ..models.registry import load_backbone
        from ..models.space import build_architecture

        module = build_architecture(req.seed_arch)
        # one-line error on a mismatch; a classifier for other classes (ImageNet weights, a
        # folder of 10 classes) is replaced by a fresh one, trained below
        new_head = load_backbone(module, req.weights)
        state = module.state_dict()
    steps = s.pretrain_steps if state is None or new_head else 0
    progress.phase("seed: " + (f"training {steps} steps" if steps else "accuracy"), 1)
    result = runner.run([TrainTask(req.seed_arch.to_dict(), req.data, steps, s.seed, state,
                                   s.train, "seed")], lambda _r: progress.advance())[0]
    save_weights(req.out / "steps/step-000.pth", result.state)
    change = "seed" + (f" (new {req.seed_arch.network.num_classes}-class head on the given "
                       f"weights, trained {steps} steps)" if new_head
                       else f" (trained {steps} steps)" if steps else "")
    return {"step": 0, "change": change,
            "arch": req.seed_arch.to_dict(), "weights": "steps/step-000.pth",
            "predicted_ms": req.estimator.predict(req.seed_arch),
            "factor": req.estimator.factor,
            "measured_share": req.estimator.measured_share(req.seed_arch),
            "accuracy": result.accuracy, "kl": result.kl}


def _score(last: dict[str, Any], predicted_ms: float, result: TrainResult) -> float:
    """NetAdapt's choice between proposals: the change of the score per ms saved (higher is
    better). On labelled data the score is accuracy, as in the paper. On a distillation set
    it is the KL divergence from the teacher (its negative change per ms): top-1 agreement
    with a 1000-class teacher falls to the floor after one cut of a trained MobileNetV2, and
    at the floor the ratio only rewards the largest latency saved. Measured on 2026-12-05
    (64 px crops, δ 3 %, 6 steps): at the first step 16 of 18 proposals kept under 30 %
    agreement, and the agreement ratio chose the stem cut 32 -> 8 (-0.70 ms, agreement
    0.8 %, KL 2.67 nats) over the head conv 1280 -> 856 (-0.21 ms, 46 %, KL 0.39);
    per ms saved, the stem cut cost 3.8 nats and the head conv 1.9."""
    saved = last["predicted_ms"] - predicted_ms
    if result.kl is not None and last.get("kl") is not None:
        return -(result.kl - last["kl"]) / saved
    return (result.accuracy - last["accuracy"]) / saved


def _finalize(req: NetAdaptRequest, step: dict[str, Any], runner: Runner,
              progress: Progress, labels: list[str], first: dict[str, Any]) -> dict[str, Any]:
    s = req.settings
    progress.phase(f"final fine-tune: {s.final_steps} steps at {step['predicted_ms']:.2f} ms", 1)
    arch = Architecture.from_dict(step["arch"])
    task = TrainTask(step["arch"], req.data, s.final_steps, s.seed * 7 + 1,
                     load_weights(req.out / step["weights"]), _with_lr(s.train, s.final_lr),
                     "final")
    result = runner.run([task], lambda _r: progress.advance())[0]
    return finish_model(req.out / "final", arch, result, labels, req.estimator,
                        {"search": "netadapt", "target_ms": req.target_ms,
                         "from_step": step["step"], "path_accuracy": step["accuracy"],
                         "training_steps": step["step"] * s.finetune_steps + s.final_steps,
                         "seed_accuracy": first["accuracy"], "seed_kl": first.get("kl")})
