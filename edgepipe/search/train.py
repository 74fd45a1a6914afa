"""Training and accuracy: the one place a search spends its time.

A :class:`TrainTask` is plain data (architecture, weights, steps, seed, data spec), so it runs
the same in this process, in a local worker process or on a Ray node, and gives the same
result for the same seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.batchnorm import recalibrate_batchnorm
from ..models.space import Architecture, build_architecture
from .data import Dataset, DataSpec, load_dataset


@dataclass
class TrainSettings:
    batch: int = 32  # small batches: a step costs ~70 ms on one core at 32 px
    lr: float = 2e-3  # AdamW with a cosine decay: robust for the few hundred steps searches use
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    shift: int = 2  # random translation (pixels at the proxy size): the only augmentation
    bn_images: int = 512  # BatchNorm statistics re-estimated on these after training


@dataclass
class TrainTask:
    arch: dict[str, Any]  # Architecture.to_dict()
    data: DataSpec
    steps: int
    seed: int
    state: dict[str, torch.Tensor] | None = None  # inherited weights; None: from scratch
    settings: TrainSettings = field(default_factory=TrainSettings)
    tag: str = ""  # what the caller calls it (a proposal's name)


@dataclass
class TrainResult:
    tag: str
    accuracy: float  # on the validation split, 0..1: what a search chooses by
    test_accuracy: float  # on the test split: what a final is reported with
    state: dict[str, torch.Tensor]
    seconds: float


def _batches(ds: Dataset, steps: int, settings: TrainSettings, gen: torch.Generator):
    n = len(ds.x_train)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    for _ in range(steps):
        if cursor + settings.batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + settings.batch]
        cursor += settings.batch
        yield _shift(ds.x_train[idx], settings.shift, gen), ds.y_train[idx]


def _shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    if pixels <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(model: nn.Module, ds: Dataset, steps: int, settings: TrainSettings, seed: int
          ) -> None:
    if steps <= 0:
        return
    gen = torch.Generator().manual_seed(seed)
    # fused: the optimizer step of ~150 small tensors is otherwise a third of a step's time
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                            weight_decay=settings.weight_decay, fused=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    model.train()
    for step, (x, y) in enumerate(_batches(ds, steps, settings, gen)):
        for group in opt.param_groups:  # cosine decay to zero over the task's steps
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    recalibrate_batchnorm(model, [ds.x_train[:settings.bn_images]], chunk=settings.batch)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(x)


def run_task(task: TrainTask) -> TrainResult:
    began = time.perf_counter()
    ds = load_dataset(task.data)
    torch.manual_seed(task.seed)
    model = build_architecture(Architecture.from_dict(task.arch))
    if task.state is not None:
        model.load_state_dict(task.state)
    train(model, ds, task.steps, task.settings, task.seed)
    acc = accuracy(model, ds.x_val, ds.y_val)
    test = accuracy(model, ds.x_test, ds.y_test)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TrainResult(task.tag, acc, test, state, time.perf_counter() - began)
