"""Training and accuracy: the one place a search spends its time.

A :class:`TrainTask` is plain data (architecture, weights, steps, seed, data spec), so it runs
the same in this process, in a local worker process or on a Ray node, and gives the same
result for the same seed.

On labelled data the loss is cross-entropy and the score accuracy. On a distillation set
(:mod:`.distill`) the loss is KL(teacher ‖ student) at temperature ``distill_temperature``
(times T², Hinton et al. 2015) and the score top-1 agreement with the teacher; the KL at
temperature 1 is reported beside it.
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
    distill_temperature: float = 1.0  # 1: the loss is the KL the results report
    # BatchNorm: "recalibrate" trains with batch statistics and re-estimates them on
    # bn_images afterwards; "frozen" keeps the inherited running statistics (BN layers in
    # eval mode while the rest trains): the trained teacher's statistics are part of the
    # function a student must match, and photos are not its training data. Measured on
    # MobileNetV2 (ImageNet weights, 48 px crops, one expansion of 384 halved): agreement
    # with the teacher 34 % with its inherited statistics, 6 % re-estimated on 40 crops.
    # "auto": frozen on a distillation set, recalibrate on labelled data.
    batchnorm: str = "auto"
    # keep the best state on the validation split, judged before training and every this many
    # steps (0: the last state, as trained). On a distillation set the lowest validation KL:
    # fine-tuning on a few photos moved even the teacher itself away from its own outputs
    # (MobileNetV2, 50 AdamW steps at 5e-5 on 11 photos' crops: held-out agreement 100 -> 57 %)
    keep_best_every: int = 0


@dataclass
class TrainTask:
    arch: dict[str, Any]  # Architecture.to_dict()
    data: DataSpec
    steps: int
    seed: int
    state: dict[str, torch.Tensor] | None = None  # inherited weights; None: from scratch
    settings: TrainSettings = field(default_factory=TrainSettings)
    tag: str = ""  # what the caller calls it (a proposal's name)
    # scored on the test split too (finals); a proposal is chosen on validation only, and
    # skipping the test split halves its evaluation
    test: bool = True


@dataclass
class TrainResult:
    tag: str
    accuracy: float  # on the validation split, 0..1: what a search chooses by
    test_accuracy: float  # on the test split: what a final is reported with (nan: not scored)
    state: dict[str, torch.Tensor]
    seconds: float
    kl: float | None = None  # distillation: KL(teacher ‖ student), nats, validation split
    test_kl: float | None = None  # the same on the test split
    kept_step: int | None = None  # keep_best_every: the step whose state was kept (0: none)


def _batches(ds: Dataset, steps: int, settings: TrainSettings, gen: torch.Generator):
    """(images, targets) per step: labels, or the teacher's logits on a distillation set
    (not shifted: the teacher saw the crop as it is)."""
    n = len(ds.x_train)
    batch = min(settings.batch, n)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    for _ in range(steps):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + batch]
        cursor += batch
        if ds.soft_train is not None:
            yield ds.x_train[idx], ds.soft_train[idx]
        else:
            yield _shift(ds.x_train[idx], settings.shift, gen), ds.y_train[idx]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
                      ) -> torch.Tensor:
    """KL(teacher ‖ student) of the softened distributions, times T² (Hinton et al. 2015),
    mean over the batch; (N, classes) logits each."""
    t = temperature
    return nn.functional.kl_div(torch.log_softmax(student / t, 1), torch.log_softmax(
        teacher / t, 1), reduction="batchmean", log_target=True) * t * t


def _shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    if pixels <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(model: nn.Module, ds: Dataset, steps: int, settings: TrainSettings, seed: int
          ) -> int | None:
    """Train ``model`` in place; with ``keep_best_every``, the step whose state was kept."""
    if steps <= 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    # fused: the optimizer step of ~150 small tensors is otherwise a third of a step's time
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                            weight_decay=settings.weight_decay, fused=True)
    if ds.soft_train is not None:
        def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return distillation_loss(out, target, settings.distill_temperature)
    else:
        loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    frozen = batchnorm_mode(settings, ds) == "frozen"
    model.train()
    if frozen:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()  # running statistics used and kept; weight and bias still learn
    every = settings.keep_best_every if settings.keep_best_every and steps >= \
        settings.keep_best_every and len(ds.x_val) else 0
    best = _Best(model, ds) if every else None
    if best:
        best.judge(model, 0, frozen)
    for step, (x, y) in enumerate(_batches(ds, steps, settings, gen)):
        for group in opt.param_groups:  # cosine decay to zero over the task's steps
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if best and ((step + 1) % every == 0 or step + 1 == steps):
            if not frozen:
                recalibrate_batchnorm(model, [ds.x_train[:settings.bn_images]],
                                      chunk=settings.batch)
            best.judge(model, step + 1, frozen)
    if best:
        best.restore(model)
        return best.step
    if not frozen:
        recalibrate_batchnorm(model, [ds.x_train[:settings.bn_images]], chunk=settings.batch)
    return None


class _Best:
    """The best state seen on the validation split (lowest KL on a distillation set, else
    highest accuracy) and the step it was seen at."""

    def __init__(self, model: nn.Module, ds: Dataset) -> None:
        self.ds, self.value, self.state, self.step = ds, -math.inf, None, 0

    def judge(self, model: nn.Module, step: int, frozen: bool) -> None:
        acc, kl = _scores(model, self.ds.x_val, self.ds.y_val, self.ds.soft_val)
        value = -kl if kl is not None else acc
        if value > self.value:
            self.value, self.step = value, step
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        if frozen:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def batchnorm_mode(settings: TrainSettings, ds: Dataset) -> str:
    """``frozen`` or ``recalibrate`` (see :class:`TrainSettings`)."""
    if settings.batchnorm not in ("auto", "frozen", "recalibrate"):
        raise ValueError(f"batchnorm must be auto, frozen or recalibrate, got "
                         f"{settings.batchnorm!r}")
    if settings.batchnorm == "auto":
        return "frozen" if ds.distillation else "recalibrate"
    return settings.batchnorm


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The model's outputs on ``x`` (N, classes), in eval mode, ``batch`` images at a time."""
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy (0..1); against a teacher's top-1 classes, agreement with it."""
    return float((logits(model, x, batch).argmax(1) == y).float().mean())


@torch.no_grad()
def kl_divergence(model: nn.Module, x: torch.Tensor, teacher: torch.Tensor, batch: int = 256
                  ) -> float:
    """Mean KL(teacher ‖ student) in nats at temperature 1 over the images ``x``."""
    return float(distillation_loss(logits(model, x, batch), teacher))


def _scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None
            ) -> tuple[float, float | None]:
    """(accuracy, KL or None) from one pass over ``x``."""
    with torch.no_grad():
        out = logits(model, x)
        acc = float((out.argmax(1) == y).float().mean())
        return acc, (float(distillation_loss(out, soft)) if soft is not None else None)


def run_task(task: TrainTask) -> TrainResult:
    began = time.perf_counter()
    ds = load_dataset(task.data)
    torch.manual_seed(task.seed)
    model = build_architecture(Architecture.from_dict(task.arch))
    if task.state is not None:
        model.load_state_dict(task.state)
    kept = train(model, ds, task.steps, task.settings, task.seed)
    acc, kl = _scores(model, ds.x_val, ds.y_val, ds.soft_val)
    test, test_kl = _scores(model, ds.x_test, ds.y_test, ds.soft_test) if task.test \
        else (math.nan, None)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TrainResult(task.tag, acc, test, state, time.perf_counter() - began, kl, test_kl,
                       kept)
