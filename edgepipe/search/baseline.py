"""The baseline NetAdapt has to beat: the seed with a smaller width multiplier."""

from __future__ import annotations

from ..errors import EdgepipeError
from ..latency_tables.estimate import Estimator
from ..models.space import Architecture, seed_network
from .surgery import same_layout


def _width_arch(seed: Architecture, width: float) -> Architecture:
    """The seed's network at ``width``, as torchvision scales it (V3 or V2)."""
    net = seed_network(seed.seed, width, seed.network.num_classes)
    return Architecture(net, seed.resolution, seed.seed)


def width_for_latency(seed: Architecture, target_ms: float, estimator: Estimator
                      ) -> tuple[float, Architecture]:
    """The widest uniform width multiplier (in steps of 0.01) whose predicted latency meets
    ``target_ms``, and that network."""
    for hundredths in range(100, 9, -1):
        arch = _width_arch(seed, hundredths / 100)
        if same_layout(seed.network, arch.network) and estimator.predict(arch) <= target_ms:
            return hundredths / 100, arch
    raise EdgepipeError(f"no width multiplier down to 0.1 meets {target_ms:.3f} ms")


def width_above(seed: Architecture, target_ms: float, estimator: Estimator
                ) -> tuple[float, Architecture] | None:
    """The narrowest width multiplier whose predicted latency is above ``target_ms``: with
    :func:`width_for_latency`, the two widths around a target. Channel rounding makes width
    scaling coarse (MobileNetV3-Small's stem drops from 16 to 8 channels between ×0.58 and
    ×0.55, a 22 % step in latency), so a target often falls between them."""
    below, _ = width_for_latency(seed, target_ms, estimator)
    for hundredths in range(round(below * 100) + 1, 101):
        arch = _width_arch(seed, hundredths / 100)
        if same_layout(seed.network, arch.network) and estimator.predict(arch) > target_ms:
            return hundredths / 100, arch
    return None
