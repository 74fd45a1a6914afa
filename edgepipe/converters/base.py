"""What every converter is: a format, the extra that installs it, and one ``convert``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import missing_extra
from ..manifest import TensorSpec
from ..manifest import tensor_layout as output_layout
from .source import SourceModel


@dataclass
class Converted:
    """One artifact as its converter left it; the shared steps add manifest and parity."""

    path: Path
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    quantization: dict[str, Any] | None = None
    graph: dict[str, Any] = field(default_factory=dict)  # partitions, ops left outside
    runnable_here: bool = True
    validation: dict[str, Any] | None = None  # for artifacts this machine cannot run
    # files the host keeps beside the artifact but never ships (ExecuTorch's ETRecord)
    companions: dict[str, str] = field(default_factory=dict)


class Converter:
    format: str = ""
    suffix: str = ""
    extra: str = ""
    requires: tuple[str, ...] = ()  # importable module names
    distributions: tuple[str, ...] = ()  # for tool_versions
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    # the precision every conversion writes (the others on request: --fp16, --int8)
    base_precision: str = "fp32"
    dynamic_size: bool = False  # one program runs at many input sizes (SourceModel.dynamic_size)

    def check_installed(self) -> None:
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                raise missing_extra(f"{module} (needed for --to {self.format})", self.extra)

    def tool_versions(self) -> dict[str, str]:
        versions = {"torch": torch.__version__}
        for dist in self.distributions:
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        return versions

    def convert(self, src: SourceModel, precision: str, calibration: list[torch.Tensor],
                path: Path, debug_info: bool = True, keep_float: tuple[str, ...] = ()
                ) -> Converted:
        """Write ``path`` at ``precision`` (one of :attr:`precisions`; ``calibration`` is
        read for int8 only, so fp32 and fp16 take ``[]``). ``debug_info``: also write what
        per-op profiling needs (where the format has such a companion file).
        ``keep_float``: int8 only, the layers (module names of ``src.module``) left in float.
        Raises :class:`EdgepipeError` naming the op or layer a precision cannot take."""
        raise NotImplementedError


def float_spec(name: str, shape: tuple[int, ...] | list[int],
               dim_order: list[int] | None = None, dtype: str = "float32") -> TensorSpec:
    """A float tensor as PyTorch lays it out: NCHW images/masks, NC logits (``dim_order``:
    its memory order when not the shape's own, e.g. ``[0, 2, 3, 1]`` for channels-last;
    ``dtype`` "float16" for an fp16 program's own tensors, which the runner converts)."""
    return TensorSpec(name=name, shape=[int(s) for s in shape], dtype=dtype,
                      layout=output_layout(shape), dim_order=dim_order)
