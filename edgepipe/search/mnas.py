"""MnasNet-style block search (Tan et al. 2019) on the latency table.

A controller samples networks from the factorised space of ``models/space.py`` (per stage a
depth, per block a kernel, expansion, SE and activation; resolution and width fixed, as
MnasNet searched at 224 px), each is trained briefly on the proxy data, and the controller
learns from the reward ACC(m) · [LAT(m) / T]^w. Three samplers share the same budget:

* ``rl`` — MnasNet's: an LSTM emits one decision after another; REINFORCE with a moving-
  average baseline and an entropy bonus, one update per round of samples;
* ``evolution`` — regularised evolution (Real et al. 2019): the population is the last P
  samples, each child mutates one decision of the best of S random members;
* ``random`` — uniform samples: the floor the other two must beat.

Every round's samples are recorded (with the controller's weights after its update) before
the next begins, so a stopped search resumes; each round's randomness is seeded from the round
number, so a resumed search samples what the uninterrupted one would have.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EdgepipeError
from ..latency_tables.estimate import Estimator
from ..models.blocks import BlockConfig
from ..models.space import Architecture, SearchSpace, seed_network, seed_stages
from .data import DataSpec, load_dataset
from .results import Progress, finish_model, plot_samples
from .state import SearchRecord, load_weights, save_weights
from .train import TrainSettings, TrainTask
from .workers import Runner

SAMPLERS = ("rl", "evolution", "random")


@dataclass(frozen=True)
class Decision:
    name: str  # "stage 2 depth" | "stage 2 block 1 kernel" ...
    options: tuple


class Decisions:
    """The space for one skeleton as a fixed list of categorical decisions."""

    def __init__(self, space: SearchSpace, skeleton: str, resolution: int, width: float) -> None:
        self.space, self.skeleton = space, skeleton
        self.resolution, self.width = resolution, width
        self.items: list[Decision] = []
        cin = seed_network(skeleton).stem_channels
        for s, stage in enumerate(seed_stages(skeleton)):
            depths = space.depths(stage)
            self.items.append(Decision(f"stage {s} depth", tuple(depths)))
            for j in range(max(depths)):
                block_in = cin if j == 0 else stage.out_channels
                for what, options in (
                        ("kernel", space.kernels),
                        ("expansion", space.expansions(stage, block_in, j == 0)),
                        ("se", space.se), ("activation", space.activations)):
                    self.items.append(Decision(f"stage {s} block {j} {what}", tuple(options)))
            cin = stage.out_channels

    @property
    def sizes(self) -> list[int]:
        return [len(d.options) for d in self.items]

    def decode(self, choice: list[int]) -> Architecture:
        values = iter(d.options[c] for d, c in zip(self.items, choice, strict=True))
        blocks: list[BlockConfig] = []
        cin = seed_network(self.skeleton).stem_channels
        for stage in seed_stages(self.skeleton):
            depth = next(values)
            for j in range(max(self.space.depths(stage))):
                k, e, se, act = (next(values) for _ in range(4))
                if j < depth:
                    stride = stage.stride if j == 0 else 1
                    blocks.append(BlockConfig(cin, k, e, stage.out_channels, se, act, stride))
                    cin = stage.out_channels
        return self.space._assemble(self.skeleton, blocks, self.width, self.resolution)

    def random_choice(self, rng: random.Random) -> list[int]:
        return [rng.randrange(n) for n in self.sizes]


class Controller(nn.Module):
    """MnasNet's RNN controller: each decision's logits from an LSTM that has seen the earlier
    decisions (their embeddings are its inputs)."""

    def __init__(self, sizes: list[int], hidden: int = 64) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)

    def forward(self, gen: torch.Generator | None = None, choice: list[int] | None = None
                ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Sample (or score a given ``choice``): the choices, Σ log p, Σ entropy."""
        x, state = self.start, None
        picks, log_p, entropy = [], torch.zeros(()), torch.zeros(())
        for i, (head, emb) in enumerate(zip(self.heads, self.embeddings, strict=True)):
            state = self.cell(x, state)
            logits = head(state[0])[0]
            probs = torch.softmax(logits, -1)
            c = choice[i] if choice is not None else \
                int(torch.multinomial(probs.detach(), 1, generator=gen))
            log_probs = torch.log_softmax(logits, -1)
            log_p = log_p + log_probs[c]
            entropy = entropy - (probs * log_probs).sum()
            picks.append(c)
            x = emb(torch.tensor([c]))
        return picks, log_p, entropy


def mutate(choice: list[int], sizes: list[int], rng: random.Random) -> list[int]:
    """Regularised evolution's mutation: one decision (of those with a choice) changed."""
    free = [i for i, n in enumerate(sizes) if n > 1]
    child = list(choice)
    if free:
        i = rng.choice(free)
        child[i] = rng.choice([v for v in range(sizes[i]) if v != child[i]])
    return child


def reward(accuracy: float, latency_ms: float, target_ms: float, w: float) -> float:
    """MnasNet's soft constraint: ACC · (LAT / T)^w."""
    return accuracy * (latency_ms / target_ms) ** w


@dataclass
class MnasSettings:
    sampler: str = "rl"
    samples: int = 32  # the budget: networks trained
    per_round: int = 4  # samples per round (trained side by side; one controller update)
    proxy_steps: int = 150  # training steps per sample (from scratch)
    final_steps: int = 600  # the best network, trained again from scratch, longer
    w: float = -0.07
    seed: int = 0
    controller_lr: float = 5e-3
    entropy: float = 1e-3
    baseline_decay: float = 0.8
    population: int = 8  # evolution: P
    tournament: int = 3  # evolution: S
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass
class MnasRequest:
    space: SearchSpace
    skeleton: str
    resolution: int
    data: DataSpec
    estimator: Estimator
    out: Path
    target_ms: float
    settings: MnasSettings = field(default_factory=MnasSettings)

    def record_settings(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "skeleton": self.skeleton,
                "resolution": self.resolution, "data": self.data.to_dict(),
                "table": self.estimator.table.describe(), "target_ms": self.target_ms,
                **asdict(self.settings)}


class _Learner:
    """The sampler's state between rounds, rebuilt from the record on resume."""

    def __init__(self, req: MnasRequest, decisions: Decisions) -> None:
        self.s, self.decisions = req.settings, decisions
        self.path = req.out / "controller.pth"
        self.controller = Controller(decisions.sizes)
        self.opt = torch.optim.Adam(self.controller.parameters(), lr=self.s.controller_lr)
        self.baseline: float | None = None
        if self.s.sampler == "rl" and self.path.is_file():
            saved = load_weights(self.path)
            self.controller.load_state_dict(saved["controller"])
            self.opt.load_state_dict(saved["optimizer"])
            self.baseline = saved["baseline"]

    def propose(self, round_no: int, history: list[dict[str, Any]], count: int
                ) -> list[list[int]]:
        seed = self.s.seed * 1_000_003 + round_no
        if self.s.sampler == "rl":
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                return [self.controller(gen)[0] for _ in range(count)]
        rng = random.Random(seed)
        if self.s.sampler == "random" or len(history) < self.s.population:
            return [self.decisions.random_choice(rng) for _ in range(count)]
        population = history[-self.s.population:]  # aging: the oldest die first
        children = []
        for _ in range(count):
            parent = max(rng.sample(population, min(self.s.tournament, len(population))),
                         key=lambda h: h["reward"])
            children.append(mutate(parent["choice"], self.decisions.sizes, rng))
        return children

    def learn(self, batch: list[dict[str, Any]]) -> None:
        if self.s.sampler != "rl":
            return
        rewards = [h["reward"] for h in batch]
        if self.baseline is None:
            self.baseline = sum(rewards) / len(rewards)
        loss = torch.zeros(())
        for h in batch:
            _, log_p, entropy = self.controller(choice=h["choice"])
            loss = loss - (h["reward"] - self.baseline) * log_p - self.s.entropy * entropy
        self.opt.zero_grad()
        (loss / len(batch)).backward()
        self.opt.step()
        d = self.s.baseline_decay
        self.baseline = d * self.baseline + (1 - d) * sum(rewards) / len(rewards)
        save_weights(self.path, {"controller": self.controller.state_dict(),
                                 "optimizer": self.opt.state_dict(),
                                 "baseline": self.baseline})


def run_mnas(req: MnasRequest, runner: Runner, progress: Progress | None = None
             ) -> dict[str, Any]:
    progress = progress or Progress()
    s = req.settings
    if s.sampler not in SAMPLERS:
        raise EdgepipeError(f"unknown sampler {s.sampler!r}: use one of {', '.join(SAMPLERS)}")
    if req.skeleton not in req.space.seeds:
        raise EdgepipeError(f"the space has no {req.skeleton!r} skeleton: use one of "
                            f"{', '.join(req.space.seeds)}")
    record = SearchRecord(req.out, "mnas", req.record_settings())
    if req.estimator.provenance:  # how the table was checked for this session of the search
        record.data.setdefault("table_checks", []).append(req.estimator.provenance)
        record.save()
    decisions = Decisions(req.space, req.skeleton, req.resolution, req.space.width_mults[0])
    learner = _Learner(req, decisions)
    history: list[dict[str, Any]] = record.data.setdefault("samples", [])
    ds = load_dataset(req.data)
    progress.phase(f"{s.sampler} search: {s.samples} networks, {s.proxy_steps} steps each",
                   s.samples)
    progress.advance(len(history))
    while len(history) < s.samples:
        round_no = len(history) // s.per_round
        count = min(s.per_round, s.samples - len(history))
        choices = learner.propose(round_no, history, count)
        archs = [decisions.decode(c) for c in choices]
        tasks = [TrainTask(a.to_dict(), req.data, s.proxy_steps,
                           s.seed * 1_000_003 + len(history) + i, None, s.train, str(i))
                 for i, a in enumerate(archs)]
        results = runner.run(tasks, lambda _r: progress.advance())
        batch = []
        for c, a, r in zip(choices, archs, results, strict=True):
            ms = req.estimator.predict(a)
            batch.append({"round": round_no, "choice": c, "arch": a.to_dict(),
                          "accuracy": r.accuracy, "predicted_ms": ms,
                          "reward": reward(r.accuracy, ms, req.target_ms, s.w),
                          "seconds": r.seconds})
        learner.learn(batch)  # the controller's weights are saved before the record
        history.extend(batch)
        record.save()
    best = max(history, key=lambda h: h["reward"])
    final = record.get("final")
    if final is None:
        progress.phase(f"final training: {s.final_steps} steps", 1)
        arch = Architecture.from_dict(best["arch"])
        result = runner.run([TrainTask(best["arch"], req.data, s.final_steps, s.seed * 7 + 1,
                                       None, s.train, "final")],
                            lambda _r: progress.advance())[0]
        final = finish_model(req.out / "final", arch, result, ds.classes, req.estimator,
                             {"search": f"mnas/{s.sampler}", "target_ms": req.target_ms,
                              "proxy_accuracy": best["accuracy"], "reward": best["reward"],
                              "w": s.w, "sample": history.index(best)})
        record["final"] = final
        record.save()
    plot_samples(history, req.target_ms, req.out / "samples.png",
                 f"{s.sampler} search, reward = ACC·(LAT/{req.target_ms:.2f} ms)^{s.w}")
    return {"record": record.data, "final": final}
