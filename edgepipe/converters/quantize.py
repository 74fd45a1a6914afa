"""PT2E static int8 quantization, shared by the ExecuTorch and LiteRT converters."""

from __future__ import annotations

import torch
from torch import nn


def capture_for_quantization(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """The graph a PT2E quantizer annotates.

    Strict (dynamo) export records ``source_fn_stack``, which quantizers use to find
    patterns such as ``operator.add``: without it litert-torch leaves every residual add in
    float. Models dynamo cannot trace fall back to non-strict export.
    """
    try:
        return torch.export.export(module, (example,), strict=True).module()
    except Exception:  # dynamo's failures have many types; non-strict is the fallback
        return torch.export.export(module, (example,), strict=False).module()


def quantize_pt2e(module: nn.Module, example: torch.Tensor, quantizer: object,
                  calibration: list[torch.Tensor], fold_quantize: bool = True) -> nn.Module:
    """Export, insert observers, run the calibration batches, convert to q/dq form."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = capture_for_quantization(module, example)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)
