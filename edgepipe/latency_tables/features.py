"""What a unit costs, from its shape alone: MACs, elements written, parameters.

Shared by the network model (:mod:`.model`: a network's weights do not stay in cache between
its units, a unit measured alone keeps its own hot), the channel estimates of
:mod:`.estimate` and the transfer between devices (:mod:`.transfer`).
"""

from __future__ import annotations

from ..models.blocks import BlockConfig, se_channels
from .units import Unit, _out_hw

# bytes per weight as the runtimes store them (int8: per-channel int8 weights)
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


def cost_features(u: Unit) -> tuple[float, float, float]:
    """(dense MACs, depthwise MACs, elements written), in millions."""
    p = u.params
    if u.kind == "ir":
        b = BlockConfig(*p)
        ho = _out_hw(u.hw, b.stride)
        expand = b.expanded_channels != b.in_channels
        dense = (u.hw ** 2 * b.in_channels * b.expanded_channels * expand
                 + ho ** 2 * b.expanded_channels * b.out_channels)
        if b.se:
            dense += 2 * b.expanded_channels * se_channels(b.expanded_channels)
        depthwise = ho ** 2 * b.expanded_channels * b.kernel ** 2
        elements = (u.hw ** 2 * b.expanded_channels * expand
                    + ho ** 2 * b.expanded_channels * (2 if b.se else 1)
                    + ho ** 2 * b.out_channels)
        return dense / 1e6, depthwise / 1e6, elements / 1e6
    if u.kind == "stem":
        cin, cout, _ = p
        ho = _out_hw(u.hw, 2)
        return ho ** 2 * cout * cin * 9 / 1e6, 0.0, ho ** 2 * cout / 1e6
    if u.kind == "head":
        cin, conv, _, hidden, classes = p
        if hidden is None:  # MobileNetV2: pool, then one linear layer
            return ((u.hw ** 2 * cin * conv + conv * classes) / 1e6, 0.0,
                    (u.hw ** 2 * conv + classes) / 1e6)
        dense = u.hw ** 2 * cin * conv + conv * hidden + hidden * classes
        return dense / 1e6, 0.0, (u.hw ** 2 * conv + hidden + classes) / 1e6
    raise ValueError(f"no cost model for unit kind {u.kind!r}")


def param_count(u: Unit) -> int:
    """Weights of the unit once BatchNorm is folded (biases included)."""
    p = u.params
    if u.kind == "ir":
        b = BlockConfig(*p)
        e = b.expanded_channels
        count = e * b.kernel ** 2 + e + e * b.out_channels + b.out_channels
        if e != b.in_channels:
            count += b.in_channels * e + e
        if b.se:
            s = se_channels(e)
            count += 2 * e * s + s + e
        return count
    if u.kind == "stem":
        cin, cout, _ = p
        return cin * cout * 9 + cout
    if u.kind == "head":
        cin, conv, _, hidden, classes = p
        if hidden is None:
            return cin * conv + conv + conv * classes + classes
        return cin * conv + conv + conv * hidden + hidden + hidden * classes + classes
    raise ValueError(f"no parameter count for unit kind {u.kind!r}")


def weights_mb(units: list[Unit], precision: str) -> float:
    """Megabytes of weights a network reads per inference (every unit's, once)."""
    return sum(param_count(u) for u in units) * WEIGHT_BYTES.get(precision, 4) / 1e6


def unit_from_key(key: str) -> Unit | None:
    """A Unit back from its key (tables store keys only); None for keys of other kinds."""
    kind, _, rest = key.partition("-")
    try:
        fields = dict(f.split(":", 1) for f in rest.split("-"))
        hw, _, cin = fields["in"].split("x")
        if kind == "ir":
            out = int(fields["out"].split("x")[2])
            return Unit("ir", int(hw), (int(cin), int(fields["k"]), int(fields["e"]), out,
                                        fields["se"] == "1", fields["act"].upper(),
                                        int(fields["s"]), 1))
        if kind == "stem":
            return Unit("stem", int(hw), (int(cin), int(fields["out"].split("x")[2]),
                                          fields["act"].upper()))
        if kind == "head":
            fc = [int(v) for v in rest.split("-fc:")[1:]]
            hidden = fc[0] if len(fc) == 2 else None  # one linear layer: MobileNetV2's head
            return Unit("head", int(hw), (int(cin), int(fields["conv"]), fields["act"].upper(),
                                          hidden, fc[-1]))
    except (KeyError, ValueError, IndexError):
        return None
    return None
