"""PT2E static int8 quantization, shared by the ExecuTorch and LiteRT converters."""

from __future__ import annotations

import torch
from torch import nn


def quantize_pt2e(module: nn.Module, example: torch.Tensor, quantizer: object,
                  calibration: list[torch.Tensor], fold_quantize: bool = True) -> nn.Module:
    """Export, insert observers, run the calibration batches, convert to q/dq form."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module, (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)
