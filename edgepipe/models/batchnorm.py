"""BatchNorm statistics re-estimated on real inputs (random-init models, searched subnets)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: list[torch.Tensor], chunk: int = 8
                          ) -> None:
    """Re-estimate BatchNorm statistics on real images.

    A random-init MobileNetV3 has unit running variances and outputs ~1e-10 logits: parity
    numbers on it mean nothing until the statistics match real activations. A network
    trained for a few hundred steps (a search's proxy) has the same problem in milder form:
    MobileNetV3's BatchNorm momentum (0.01) has not caught up with its weights yet.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    module.train()
    x = torch.cat(batches)
    for part in x.split(chunk):
        module(part)
    module.eval()
