"""Accuracy, agreement and their 95 % intervals.

A rate over n images (top-1, top-5, the flip rate against PyTorch) comes with a 95 % bootstrap
interval (``scipy.stats.bootstrap``, percentile method, 2,000 resamples, seed 0). Where every
image agrees (a rate of 0 or 1) resampling has nothing to vary and would claim certainty, so
the interval is the exact binomial one (Clopper-Pearson, ``scipy.stats.binomtest``); the
record says which.
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
