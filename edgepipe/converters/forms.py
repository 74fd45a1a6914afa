"""The activation forms each runtime runs whole, applied to any model before it is exported.

edgepipe's activation modules (:class:`~edgepipe.models.blocks.HardSwish`,
:class:`~edgepipe.models.blocks.HardSigmoid`, which its own models are built from, and
:class:`~edgepipe.models.blocks.SiLU`) are written the way the runtimes keep them in one XNNPACK
partition and in int8 (README, "Why h-swish and h-sigmoid are written the way they are").
A model from elsewhere
(``module:factory``: torchvision's MobileNetV3 and EfficientNet) uses ``nn.Hardswish``,
``nn.Hardsigmoid`` and ``nn.SiLU`` modules instead:
measured on torchvision's MobileNetV3-Small, LiteRT int8 then split into 20 partitions and ran
slower than its own fp32 (3.96 vs 1.72 ms here), ExecuTorch left 18 ``_to_dim_order_copy``
ops outside the delegate, and EfficientNet-B0 kept 49 LOGISTIC + 49 MUL in float on LiteRT
int8.

:func:`runtime_forms` swaps those modules for edgepipe's forms for the length of one export
and puts the originals back. The forms compute the same function (to float rounding: tests).
Activations called as functions (``F.hardswish(x)`` inside a ``forward``) are not modules and
are not swapped; what they cost shows in the graph statistics (ops outside the delegate,
float ops left in int8) that every conversion reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..models.blocks import HardSigmoid, HardSwish, SiLU


@dataclass(frozen=True)
class Forms:
    """Which form of each activation a target runs best (measured per runtime and precision).

    ``decomposed_hswish``: add/clamp/mul instead of the native op (LiteRT int8: its XNNPACK
    delegate takes no int8 HARD_SWISH). ``decomposed_silu``: sigmoid and multiply, which the
    int8 quantizers annotate (``aten.silu`` stays float).
    """

    decomposed_hswish: bool = False
    decomposed_silu: bool = False


def _input_ranks(module: nn.Module, example: torch.Tensor,
                 kinds: tuple[type, ...]) -> dict[nn.Module, set[int]]:
    """The rank of every tensor each activation module of ``kinds`` sees on ``example``."""
    ranks: dict[nn.Module, set[int]] = {}
    handles = []
    for m in module.modules():
        if type(m) in kinds:
            def hook(mod: nn.Module, args: tuple) -> None:
                ranks.setdefault(mod, set()).add(args[0].dim())
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return ranks


def _replacement(old: nn.Module, rank: int, forms: Forms) -> nn.Module:
    if type(old) is nn.Hardswish:
        return HardSwish(rank=rank, decomposed=forms.decomposed_hswish)
    if type(old) is nn.Hardsigmoid:
        return HardSigmoid(rank=rank)
    return SiLU(decomposed=forms.decomposed_silu)


@contextmanager
def runtime_forms(module: nn.Module, example: torch.Tensor, forms: Forms
                  ) -> Iterator[dict[str, int]]:
    """Within the block, ``module`` computes with the forms ``forms`` picks.

    ``example`` is an input the model takes: one forward pass finds the rank of what each
    activation sees (the forms' constants are shaped to it, so that no 0-d constant reaches a
    quantizer). A module applied to tensors of several ranks is left as it is. Yields how many
    modules of each kind were swapped (``{"nn.Hardswish": 19, ...}``), for the report.
    """
    kinds = (nn.Hardswish, nn.Hardsigmoid, nn.SiLU)
    ranks = _input_ranks(module, example, kinds)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    own: list[tuple[nn.Module, bool]] = []
    counts: dict[str, int] = {}
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if child is None or type(child) not in kinds or len(ranks.get(child, ())) != 1:
                continue
            new = _replacement(child, next(iter(ranks[child])), forms).to(
                next((b.device for b in child.buffers()), torch.device("cpu")))
            parent._modules[name] = new
            swapped.append((parent, name, child))
            key = f"nn.{type(child).__name__}"
            counts[key] = counts.get(key, 0) + 1
    for m in module.modules():
        if isinstance(m, HardSwish):
            own.append((m, m.decomposed))
            m.decomposed = forms.decomposed_hswish
        elif isinstance(m, SiLU):
            own.append((m, m.decomposed))
            m.decomposed = forms.decomposed_silu
    try:
        yield counts
    finally:
        for m, decomposed in own:
            m.decomposed = decomposed  # type: ignore[assignment]
        for parent, name, child in swapped:
            parent._modules[name] = child
