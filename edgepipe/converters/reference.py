"""The PyTorch model an artifact was converted from, rebuilt on the host as the reference (the
demo's ``--runtime torch``, ``edgepipe evaluate``'s agreement with PyTorch).

A random init is rebuilt exactly as ``convert`` built it (same seed, BatchNorm re-estimated on
the same built-in images); trained weights must be given again (the manifest records their
sha256, not the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgepipeError
from ..manifest import Manifest, load_manifest


class TorchRunner:
    """PyTorch eager, the reference: the model the artifact was converted from."""

    runtime = "torch"

    def __init__(self, module: Any, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._torch, self._module = torch, module.eval()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self._torch.no_grad():
            return [self._module(self._torch.from_numpy(x)).numpy()]


def torch_reference(artifact: Path | None, name: str, threads: int, weights: str | None
                    ) -> tuple[TorchRunner, Manifest, str]:
    """(runner, a manifest of the PyTorch model, what it is in words) for an artifact's
    source model, or for a built-in model by ``name`` when ``artifact`` is None. Raises
    :class:`EdgepipeError` when the model cannot be rebuilt (trained weights not given, a
    model edgepipe does not know)."""
    from ..models.pretrained import resolve_weights
    from .base import float_spec
    from .images import builtin_calibration_images
    from .source import load_source_model

    manifest = load_manifest(artifact) if artifact else None
    model = manifest.model if manifest else name
    width = (manifest.extra.get("width_mult", 1.0) if manifest else 1.0)
    size = tuple(manifest.preprocessing.size) if manifest else None
    output = manifest.extra.get("output") if manifest else None
    input_range = manifest.preprocessing.input_range() if manifest else None
    if manifest and manifest.source_weights_sha256 and not weights:
        raise EdgepipeError(f"{artifact.name} was converted from trained weights: pass them "
                            f"with --weights (the same file, or `imagenet`)")
    # a random init is rebuilt exactly as `convert` built it: same seed, same BN images
    src = load_source_model(model, resolve_weights(model, weights), width, size,
                            manifest.task if manifest else None,
                            bn_images=builtin_calibration_images(32),
                            output=None if output is None else str(output),
                            input_range=input_range if input_range != "custom" else None)
    built = Manifest(format="torch", precision="fp32", file="", file_sha256="", model=model,
                     task=src.task, inputs=[], outputs=[float_spec("output", src.output_shape)],
                     preprocessing=src.preprocessing, labels=src.labels)
    return TorchRunner(src.module, threads), built, f"{model} (PyTorch eager)"
