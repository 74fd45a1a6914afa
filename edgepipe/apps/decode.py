"""Model output → what the demo shows, driven by the manifest (task, output kind, layout,
labels), so that a model converted elsewhere decodes as well as one of ours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgepipeError
from ..manifest import Manifest

OUTPUT_KINDS = ("logits", "probabilities", "mask")


@dataclass
class Classification:
    top: list[tuple[str, float]]  # (label, probability), best first


@dataclass
class Segmentation:
    classes: np.ndarray  # HxW class index per pixel (model resolution)
    labels: list[str]
    shares: dict[str, float]  # label -> share of pixels, largest first


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _label(labels: list[str] | None, i: int) -> str:
    return labels[i] if labels and i < len(labels) else f"class {i}"


class OutputDecoder:
    def __init__(self, manifest: Manifest, top_k: int = 3) -> None:
        if manifest.output_kind not in OUTPUT_KINDS:
            raise EdgepipeError(f"manifest output_kind '{manifest.output_kind}' is not one of "
                                f"{', '.join(OUTPUT_KINDS)}")
        self.task, self.kind = manifest.task, manifest.output_kind
        self.labels = manifest.labels
        self.layout = manifest.outputs[0].layout
        self.top_k = top_k

    def __call__(self, outputs: list[np.ndarray]) -> Classification | Segmentation:
        y = np.asarray(outputs[0], dtype=np.float32)
        if self.task == "classification":
            scores = y.reshape(-1)
            probs = _softmax(scores, 0) if self.kind == "logits" else scores
            best = np.argsort(-probs)[: self.top_k]
            return Classification([(_label(self.labels, int(i)), float(probs[i])) for i in best])
        if y.ndim != 4:
            raise EdgepipeError(f"a segmentation output must be 4-D, got shape {y.shape}")
        maps = y[0] if self.layout == "NCHW" else y[0].transpose(2, 0, 1)  # -> CxHxW
        if maps.shape[0] == 1 or self.kind == "mask":  # one channel: foreground or not
            fg = maps[0]
            if self.kind == "logits":
                fg = 1.0 / (1.0 + np.exp(-fg))
            classes = (fg > 0.5).astype(np.int32)
            labels = self.labels if self.labels and len(self.labels) == 2 else \
                ["background", "foreground"]
        else:
            classes = maps.argmax(axis=0).astype(np.int32)
            labels = [_label(self.labels, i) for i in range(maps.shape[0])]
        counts = np.bincount(classes.reshape(-1), minlength=len(labels))
        shares = {labels[i]: float(counts[i] / classes.size)
                  for i in np.argsort(-counts) if counts[i]}
        return Segmentation(classes, labels, shares)
