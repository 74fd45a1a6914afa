"""Shrinking a MobileNet (V3 or V2) the NetAdapt way: fewer filters in one place, weights
inherited.

Every channel dimension of the network belongs to a *channel space*: the tensor between blocks
that residual connections tie together (a bottleneck group), one block's expansion, its SE
squeeze, the head's last conv, the classifier's hidden layer. Shrinking a space keeps the
filters with the largest L2 norm in the layer(s) that produce it, and every parameter that
reads or writes that space is sliced with the same indices (NetAdapt, sec. 3.2 "keep the
filters with the largest L2-norm"). Uniform width scaling shrinks every space at once, with
the same rule, so the two are compared on equal terms.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import EdgepipeError
from ..models.blocks import BlockConfig
from ..models.mobilenet import MobileNet, NetworkConfig

Space = tuple  # ("b", group) | ("e", block) | ("s", block) | ("h",) | ("c",)


def bottleneck_groups(net: NetworkConfig) -> list[list[int]]:
    """Blocks whose outputs are one tensor size because residual adds join them; -1 is the
    stem. MobileNetV3-Small: [[-1], [0], [1, 2], [3, 4, 5], [6, 7], [8, 9, 10]]."""
    groups, current = [], [-1]
    for i, b in enumerate(net.blocks):
        if b.has_residual:
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    groups.append(current)
    return groups


def has_expansion(b: BlockConfig) -> bool:
    return b.expanded_channels != b.in_channels


def expansion_layers(net: NetworkConfig) -> list[int]:
    """Blocks with a 1x1 expansion conv (a block whose expansion equals its input has none)."""
    return [i for i, b in enumerate(net.blocks) if has_expansion(b)]


def _group_of(net: NetworkConfig) -> dict[int, int]:
    return {i: g for g, members in enumerate(bottleneck_groups(net)) for i in members}


def channel_spaces(net: NetworkConfig) -> dict[str, tuple[Space | None, ...]]:
    """For every parameter and buffer of ``MobileNet(net)``, the space of each dimension."""
    group = _group_of(net)
    dims: dict[str, tuple[Space | None, ...]] = {}

    def conv_bn(prefix: str, out: Space, inp: Space | None) -> None:
        dims[f"{prefix}.0.weight"] = (out, inp)
        for p in ("weight", "bias", "running_mean", "running_var"):
            dims[f"{prefix}.1.{p}"] = (out,)

    v2 = net.family == "v2"  # torchvision's V2 names: ``conv.N``, a bare projection conv
    conv_bn("features.0", ("b", group[-1]), None)
    for i, b in enumerate(net.blocks):
        src = ("b", group[i - 1] if i else group[-1])
        exp = ("e", i) if has_expansion(b) else src
        prefix, j = f"features.{i + 1}.{'conv' if v2 else 'block'}", 0
        if has_expansion(b):
            conv_bn(f"{prefix}.0", exp, src)
            j = 1
        conv_bn(f"{prefix}.{j}", exp, None)  # depthwise: one filter per channel
        j += 1
        if b.se:
            se = f"{prefix}.{j}"
            dims.update({f"{se}.fc1.weight": (("s", i), exp), f"{se}.fc1.bias": (("s", i),),
                         f"{se}.fc2.weight": (exp, ("s", i)), f"{se}.fc2.bias": (exp,)})
            j += 1
        if v2:  # Conv2d then BatchNorm2d as two entries of the Sequential
            dims[f"{prefix}.{j}.weight"] = (("b", group[i]), exp)
            for p in ("weight", "bias", "running_mean", "running_var"):
                dims[f"{prefix}.{j + 1}.{p}"] = (("b", group[i]),)
        else:
            conv_bn(f"{prefix}.{j}", ("b", group[i]), exp)
    conv_bn(f"features.{len(net.blocks) + 1}", ("h",), ("b", group[len(net.blocks) - 1]))
    if net.classifier_hidden is None:  # V2: dropout, then one linear layer
        dims["classifier.1.weight"] = (None, ("h",))
        return dims
    dims["classifier.0.weight"] = (("c",), ("h",))
    dims["classifier.0.bias"] = (("c",),)
    dims["classifier.3.weight"] = (None, ("c",))
    return dims


def _producers(dims: dict[str, tuple]) -> dict[Space, list[str]]:
    """The weights whose output filters make each space: what its L2 norms are taken from."""
    out: dict[Space, list[str]] = {}
    for name, spaces in dims.items():
        if len(spaces) != 2 or spaces[0] is None or ".fc2." in name:
            continue  # norms, biases, the SE gate (it scales a space, it does not make it)
        if spaces[1] is None and name != "features.0.0.weight":
            continue  # a depthwise conv filters a space, it does not make it
        out.setdefault(spaces[0], []).append(name)
    return out


def same_layout(a: NetworkConfig, b: NetworkConfig) -> bool:
    """The same layers with the same parameters in the same places: only channel counts
    differ (a residual add may appear or vanish: it has no weights)."""
    def layout(net: NetworkConfig) -> list[tuple]:
        return [(has_expansion(x), x.se, x.kernel, x.stride) for x in net.blocks]
    return layout(a) == layout(b) and a.family == b.family \
        and (a.classifier_hidden is None) == (b.classifier_hidden is None)


def inherit_weights(state: dict[str, torch.Tensor], old: NetworkConfig, new: NetworkConfig
                    ) -> dict[str, torch.Tensor]:
    """The state_dict of ``new`` made from ``state`` (of ``old``): in every channel space of
    ``old`` that is narrower in ``new``, the filters with the largest L2 norm are kept, and
    every parameter reading or writing that space follows."""
    if not same_layout(old, new):
        raise EdgepipeError("cannot inherit weights between networks of different layouts: "
                            "the new one must keep every layer of the old one")
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        shapes = {k: v.shape for k, v in MobileNet(new).state_dict().items()}
    old_dims = channel_spaces(old)
    producers = _producers(old_dims)
    kept: dict[tuple[Space, int], torch.Tensor] = {}
    out = {}
    for name, tensor in state.items():
        for d, space in enumerate(old_dims.get(name, ())):
            size = shapes[name][d]
            if space is None or size == tensor.shape[d]:
                continue
            if (space, size) not in kept:
                kept[space, size] = _largest_filters(state, producers.get(space, []), space,
                                                     tensor.shape[d], size)
            tensor = tensor.index_select(d, kept[space, size])
        if tensor.shape != shapes[name]:
            raise EdgepipeError(f"cannot inherit {name}: {tuple(tensor.shape)} does not shrink "
                                f"to {tuple(shapes[name])}")
        out[name] = tensor.clone()
    return out


def _largest_filters(state: dict[str, torch.Tensor], producers: list[str], space: Space,
                     old_size: int, new_size: int) -> torch.Tensor:
    if new_size > old_size:
        raise EdgepipeError(f"channel space {space} grows from {old_size} to {new_size}: "
                            "inheriting weights only shrinks")
    if new_size == old_size:
        return torch.arange(old_size)
    norms = sum(state[p].flatten(1).pow(2).sum(1) for p in producers)
    keep = torch.topk(torch.as_tensor(norms), new_size).indices
    return keep.sort().values  # the kept filters stay in their order


# --- the two kinds of NetAdapt proposal -----------------------------------------------------
def shrink_expansion(net: NetworkConfig, index: int, channels: int) -> NetworkConfig | None:
    """Block ``index`` (or "head": the last conv) with fewer expansion filters; None when the
    layout would change (an expansion equal to the input loses its 1x1 conv)."""
    if index == len(net.blocks):
        return replace(net, last_conv_channels=channels) if channels >= 8 else None
    b = net.blocks[index]
    if channels < 8 or channels == b.in_channels:
        return None
    blocks = list(net.blocks)
    blocks[index] = replace(b, expanded_channels=channels)
    return replace(net, blocks=tuple(blocks))


def shrink_bottleneck(net: NetworkConfig, group: int, channels: int) -> NetworkConfig | None:
    """Every block of a bottleneck group (and the one reading it) with ``channels`` outputs."""
    if channels < 8:
        return None
    members = bottleneck_groups(net)[group]
    blocks = list(net.blocks)
    stem = net.stem_channels
    for i in members:
        if i == -1:
            stem = channels
        else:
            blocks[i] = replace(blocks[i], out_channels=channels)
    readers = [i for i in members if i >= 0 and net.blocks[i].has_residual]
    nxt = members[-1] + 1
    for i in [*readers, nxt] if nxt < len(blocks) else readers:
        b = blocks[i]
        if b.in_channels == b.expanded_channels:  # no expansion: its depthwise reads the input
            blocks[i] = replace(b, in_channels=channels, expanded_channels=channels)
        elif channels == b.expanded_channels:
            return None  # the block would lose its expansion conv
        else:
            blocks[i] = replace(b, in_channels=channels)
    new = replace(net, blocks=tuple(blocks), stem_channels=stem)
    if any(b.has_residual != o.has_residual for b, o in zip(new.blocks, net.blocks, strict=True)):
        return None  # a residual would appear or vanish: not the same network shrunk
    return new
