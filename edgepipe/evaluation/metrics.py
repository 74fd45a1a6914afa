"""Accuracy, agreement and their 95 % intervals.

A rate over n images (top-1, top-5, the flip rate against PyTorch) comes with a 95 % bootstrap
interval (``scipy.stats.bootstrap``, percentile method, 2,000 resamples, seed 0). Where every
image agrees (a rate of 0 or 1) resampling has nothing to vary and would claim certainty, so
the interval is the exact binomial one (Clopper-Pearson, ``scipy.stats.binomtest``); the
record says which.

Segmentation against ground truth: one confusion matrix per image, summed over the data set;
mean IoU over the classes present in the masks or the predictions (as torchvision's and
mmsegmentation's evaluations count it), pixel accuracy over the labelled pixels; intervals by
resampling images (the bootstrap above, over whole images: pixels of one image are not
independent draws).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def rate(hits: list[bool] | np.ndarray) -> dict[str, Any] | None:
    """``{"value", "low", "high", "n", "method"}`` of a rate (fractions, 0-1), None for n=0."""
    from scipy import stats

    values = np.asarray(hits, dtype=float)
    n = len(values)
    if n == 0:
        return None
    k = int(values.sum())
    if k in (0, n) or n < 10:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
        low, high, method = ci.low, ci.high, "exact binomial (Clopper-Pearson)"
    else:
        boot = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE,
                               n_resamples=RESAMPLES, method="percentile",
                               random_state=np.random.default_rng(0))
        low, high = boot.confidence_interval
        method = f"bootstrap, percentile, {RESAMPLES} resamples"
    return {"value": k / n, "low": float(low), "high": float(high), "n": n, "method": method}


def topk_hits(tops: list[list[int]], labels: list[int], k: int) -> list[bool]:
    return [label in top[:k] for top, label in zip(tops, labels, strict=True)]


def changed_classes(reference: list[int], predicted: list[int], names: list[str] | None,
                    most: int = 5) -> list[dict[str, Any]]:
    """The most frequent (PyTorch's class → the artifact's) changes, most first."""
    def name(i: int) -> str:
        return names[i] if names and i < len(names) else f"class {i}"

    counts = Counter((r, p) for r, p in zip(reference, predicted, strict=True) if r != p)
    return [{"from": name(r), "to": name(p), "count": c}
            for (r, p), c in counts.most_common(most)]


def mask_agreement(reference: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Pixel agreement and mean IoU (over the classes either mask holds) of two masks."""
    agree = float((reference == predicted).mean())
    ious = []
    for c in np.union1d(np.unique(reference), np.unique(predicted)):
        a, b = reference == c, predicted == c
        ious.append((a & b).sum() / max((a | b).sum(), 1))
    return agree, float(np.mean(ious))


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int,
              ignore: int = 255) -> np.ndarray:
    """``classes``×``classes`` pixel counts (rows: the mask's class, columns: the
    prediction's) of two HxW masks; ``ignore`` pixels of ``truth`` left out."""
    keep = truth != ignore
    t = truth[keep].astype(np.int64)
    p = np.minimum(predicted[keep].astype(np.int64), classes - 1)
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def _miou(cm: np.ndarray) -> float:
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def _pixel_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def segmentation_scores(confusions: list[np.ndarray]) -> dict[str, Any] | None:
    """``{"miou": rate-like, "pixel_accuracy": rate-like, "per_class_iou": [...]}`` of the
    per-image confusion matrices (fractions, 0-1), None without images."""
    from scipy import stats

    if not confusions:
        return None
    stack = np.stack(confusions)
    total = stack.sum(0)
    out: dict[str, Any] = {}
    for key, statistic in (("miou", _miou), ("pixel_accuracy", _pixel_accuracy)):
        value = statistic(total)
        record = {"value": value, "low": value, "high": value, "n": len(confusions),
                  "method": "one image: no interval"}
        if len(confusions) > 1:
            boot = stats.bootstrap((np.arange(len(confusions)),),
                                   lambda idx, f=statistic: f(stack[idx.astype(int)].sum(0)),
                                   confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                                   method="percentile", vectorized=False,
                                   random_state=np.random.default_rng(0))
            record.update(low=float(boot.confidence_interval.low),
                          high=float(boot.confidence_interval.high),
                          method=f"bootstrap over images, percentile, {RESAMPLES} resamples")
        out[key] = record
    inter = np.diag(total).astype(float)
    union = total.sum(0) + total.sum(1) - inter
    out["per_class_iou"] = [None if u == 0 else float(i / u) for i, u in zip(inter, union,
                                                                             strict=True)]
    return out
