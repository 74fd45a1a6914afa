"""Model output → top-k classes or a class mask, driven by the manifest (task, output kind,
layout, labels), so that a model converted elsewhere decodes as well as one of ours.

What the demo draws and what an evaluation job answers on the device (and the host's reference
beside it) come from here; numpy only, so the device imports it without torch or OpenCV.

An output the manifest does not describe (another shape, several outputs, a task the demo
does not decode) is refused when the decoder is made, in one line; an output that decodes but
looks wrong (a mask of more than 50 classes, masks all one class, "probabilities" outside
[0, 1]) is reported by :class:`Plausibility`, because a wrong layout or kind in a hand-written
or guessed manifest otherwise draws confident nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EdgepipeError
from .manifest import Manifest

OUTPUT_KINDS = ("logits", "probabilities", "mask")
DECODED_TASKS = ("classification", "segmentation")


@dataclass
class Classification:
    top: list[tuple[str, float]]  # (label, probability), best first


@dataclass
class Segmentation:
    classes: np.ndarray  # HxW uint8 class index per pixel (model resolution)
    labels: list[str]
    shares: dict[str, float]  # label -> share of pixels, largest first


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _label(labels: list[str] | None, i: int) -> str:
    return labels[i] if labels and i < len(labels) else f"class {i}"


def argmax_channels(maps: np.ndarray) -> np.ndarray:
    """Index of the largest of C maps per pixel (CxHxW → HxW uint8), as ``argmax(axis=0)``
    (ties to the lower index), in a third of its time here: numpy's argmax over the outer axis
    walks memory with a stride of H*W; a max and one comparison per channel do not."""
    if maps.shape[0] > 256:
        return maps.argmax(axis=0).astype(np.int32)
    best = maps.max(axis=0)
    index = np.zeros(maps.shape[1:], np.uint8)
    hit = np.empty(maps.shape[1:], bool)
    for c in range(maps.shape[0] - 1, -1, -1):  # downwards: the lowest index wins a tie
        np.equal(maps[c], best, out=hit)
        np.putmask(index, hit, c)
    return index


class OutputDecoder:
    """Decodes a runner's outputs as the manifest says.

    Raises EdgepipeError at construction when the manifest describes what the demo cannot
    decode: a task other than classification/segmentation, several outputs, or an output
    shape that is neither class scores ``[1, C]`` nor a 4-D mask.
    """

    def __init__(self, manifest: Manifest, top_k: int = 3) -> None:
        where = manifest.file or manifest.model
        if manifest.output_kind not in OUTPUT_KINDS:
            raise EdgepipeError(f"manifest output_kind '{manifest.output_kind}' is not one of "
                                f"{', '.join(OUTPUT_KINDS)}")
        shapes = ", ".join(str(o.shape) for o in manifest.outputs)
        if manifest.task not in DECODED_TASKS:
            raise EdgepipeError(f"{where}'s manifest has task {manifest.task!r} (outputs "
                                f"{shapes}): the demo decodes {' or '.join(DECODED_TASKS)}; "
                                "deploy and profile measure it")
        if len(manifest.outputs) != 1:
            raise EdgepipeError(f"{where} has {len(manifest.outputs)} outputs ({shapes}): the "
                                "demo decodes one, class scores or a mask")
        out = manifest.outputs[0]
        self.task, self.kind = manifest.task, manifest.output_kind
        self.labels = manifest.labels
        self.layout = out.layout
        self.top_k = top_k
        if self.task == "classification" and sum(s != 1 for s in out.shape) > 1:
            raise EdgepipeError(f"{where}'s output {out.shape} is not class scores [1, C]: "
                                "the demo cannot show it as a classification")
        if self.task == "segmentation" and (len(out.shape) != 4 or
                                            self.layout not in ("NCHW", "NHWC")):
            raise EdgepipeError(f"{where}'s output {out.shape} ({self.layout}) is not a mask "
                                "[1, C, H, W] (NCHW) or [1, H, W, C] (NHWC)")
        if self.task == "segmentation":
            h, w = out.shape[2:4] if self.layout == "NCHW" else out.shape[1:3]
            ih, iw = manifest.preprocessing.size
            if h < 2 or w < 2 or abs(h * iw - w * ih) > max(ih, iw):
                raise EdgepipeError(
                    f"{where}'s output {out.shape} read as {self.layout} is a {h}x{w} mask, "
                    f"not of the {ih}x{iw} input's proportions: the output layout is likely "
                    f"{'NHWC' if self.layout == 'NCHW' else 'NCHW'} (set outputs[0].layout, "
                    "or `edgepipe manifest init --force --layout`)")

    def probabilities(self, outputs: list[np.ndarray]) -> np.ndarray:
        """A classifier's class probabilities (C,): softmax of logits, as given otherwise; one
        score (a binary classifier) through a sigmoid."""
        scores = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        if scores.size == 1:
            return 1 / (1 + np.exp(-scores)) if self.kind == "logits" else scores
        return _softmax(scores, 0) if self.kind == "logits" else scores

    def __call__(self, outputs: list[np.ndarray]) -> Classification | Segmentation:
        y = np.asarray(outputs[0], dtype=np.float32)
        if self.task == "classification":
            probs = self.probabilities(outputs)
            best = np.argsort(-probs, kind="stable")[: self.top_k]
            return Classification([(_label(self.labels, int(i)), float(probs[i])) for i in best])
        if y.ndim != 4:
            raise EdgepipeError(f"a segmentation output must be 4-D, got shape {y.shape}")
        maps = y[0] if self.layout == "NCHW" else np.ascontiguousarray(y[0].transpose(2, 0, 1))
        if maps.shape[0] == 1 or self.kind == "mask":  # one channel: foreground or not
            fg = maps[0]
            threshold = 0.0 if self.kind == "logits" else 0.5  # sigmoid(0) = 0.5
            classes = (fg > threshold).astype(np.uint8)
            labels = self.labels if self.labels and len(self.labels) == 2 else \
                ["background", "foreground"]
        else:
            classes = argmax_channels(maps)
            labels = [_label(self.labels, i) for i in range(maps.shape[0])]
        counts = np.bincount(classes.reshape(-1), minlength=len(labels))
        shares = {labels[i]: float(counts[i] / classes.size)
                  for i in np.argsort(-counts, kind="stable") if counts[i]}
        return Segmentation(classes, labels, shares)


class Plausibility:
    """Warnings about decoded outputs that are unlikely to be right (each given once).

    * a mask with more than 50 classes present (a wrong output layout decodes image rows or
      columns as classes);
    * every mask so far all one class, once ``frames`` masks were seen (a wrong input range or
      kind often saturates the output);
    * "probabilities" outside [0, 1], or class probabilities not summing to 1 (unless the
      output comes from a sigmoid, LOGISTIC: a multi-label classifier's);
    * NaN or inf in an output.
    """

    MAX_CLASSES = 50

    def __init__(self, manifest: Manifest, frames: int = 3) -> None:
        self.manifest, self.frames = manifest, frames
        self.seen = self.uniform = 0
        self.warnings: list[str] = []
        self._given: set[str] = set()

    def _warn(self, key: str, text: str) -> str | None:
        if key in self._given:
            return None
        self._given.add(key)
        m = self.manifest
        full = (f"{text} (manifest: task {m.task}, output layout {m.outputs[0].layout}, kind "
                f"{m.output_kind}, input range {m.preprocessing.input_range()}): check it, or "
                "rerun `edgepipe manifest init --force` with --layout/--range/--output-kind")
        self.warnings.append(full)
        return full

    def check(self, outputs: list[np.ndarray], result: Classification | Segmentation
              ) -> list[str]:
        """New warnings after one decoded frame."""
        new: list[str | None] = []
        y = np.asarray(outputs[0])
        if not np.isfinite(y).all():
            new.append(self._warn("nan", "the output has NaN or inf values"))
        elif self.manifest.output_kind == "probabilities":
            low, high = float(y.min()), float(y.max())
            if low < -1e-3 or high > 1 + 1e-3:
                new.append(self._warn("range", f"output_kind is probabilities but the output "
                                               f"spans [{low:.3g}, {high:.3g}]"))
            elif isinstance(result, Classification) and y.size > 1 and \
                    self.manifest.extra.get("output_op") != "LOGISTIC" and \
                    abs(float(y.sum()) - 1) > 0.02:  # sigmoids: each class on its own
                new.append(self._warn("sum", f"the class probabilities sum to {y.sum():.3g}, "
                                             "not 1"))
        if isinstance(result, Segmentation):
            self.seen += 1
            present = len(result.shares)
            if present > self.MAX_CLASSES:
                new.append(self._warn("classes", f"a decoded mask has {present} classes"))
            if present == 1:
                self.uniform += 1
            if self.seen == self.frames and self.uniform == self.seen:
                label = next(iter(result.shares))
                new.append(self._warn("uniform", f"the first {self.seen} masks are each all "
                                                 f"one class ('{label}')"))
        return [w for w in new if w]

    def finish(self) -> list[str]:
        """Warnings only a run's end can give (fewer masks than ``frames``, all uniform)."""
        if 0 < self.seen < self.frames and self.uniform == self.seen:
            w = self._warn("uniform", f"every mask ({self.seen}) is all one class")
            return [w] if w else []
        return []
