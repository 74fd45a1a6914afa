"""The MobileNet block tables made into a search space (MnasNet-style, factorised by stage).

A space keeps the seeds' stage layout (where the resolution halves, each stage's output
channels) and lets every stage choose its depth and every block its kernel, expansion, SE and
activation; the whole network chooses its input resolution and width multiplier. A point of
the space, :class:`Architecture`, is a :class:`NetworkConfig` plus a resolution: plain data
that :func:`build_architecture` (and so every converter) builds.

Seeds are MobileNetV3-Large and -Small (``large``, ``small``: the paper's space) or
MobileNetV2 (``v2``: ReLU6, no SE, 3x3 kernels, torchvision's layout and widths), one family per
space: a table of the V2 space is what NetAdapt reads when it shrinks a trained MobileNetV2.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from .blocks import BlockConfig, make_divisible
from .mobilenet import MobileNet, NetworkConfig, mobilenet_v2_config, mobilenet_v3_config

V3_SEEDS = ("large", "small")
V2_SEED = "v2"
SEED_MODELS = {"large": "mobilenet_v3_large", "small": "mobilenet_v3_small",
               V2_SEED: "mobilenet_v2"}  # the registry's names of the seeds


def seed_family(seed: str) -> str:
    """``v3`` or ``v2``: the block layout a seed's networks are built with."""
    if seed == V2_SEED:
        return "v2"
    if seed in V3_SEEDS:
        return "v3"
    raise ValueError(f"unknown seed {seed!r}: use one of {', '.join(SEED_MODELS)}")


def seed_network(seed: str, width: float = 1.0, num_classes: int = 1000) -> NetworkConfig:
    """A seed network at a width multiplier, as torchvision builds it (V2: the last conv keeps
    1280 channels below width 1.0)."""
    if seed_family(seed) == "v2":
        return mobilenet_v2_config(width, num_classes=num_classes)
    return mobilenet_v3_config(seed, width, num_classes=num_classes)


@dataclass(frozen=True)
class Architecture:
    """One candidate network: the config models/ builds, at one input resolution."""

    network: NetworkConfig
    resolution: int
    seed: str = ""  # the skeleton it was drawn from: "large", "small" or "v2"

    def to_dict(self) -> dict:
        return {"seed": self.seed, "resolution": self.resolution,
                "network": asdict(self.network)}

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        net = dict(data["network"])
        net["blocks"] = tuple(BlockConfig(**b) for b in net["blocks"])
        return cls(NetworkConfig(**net), int(data["resolution"]), data.get("seed", ""))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def build_architecture(arch: Architecture) -> nn.Module:
    return MobileNet(arch.network).eval()


MODEL_FORMAT = "edgepipe-model"


def model_file_dict(arch: Architecture, labels: list[str] | None, **extra: object) -> dict:
    """What a searched network is saved as: its architecture and class names (the weights
    are a state_dict beside it). `edgepipe convert`, `lut predict` and `demo` read it."""
    return {"format": MODEL_FORMAT, "architecture": arch.to_dict(), "labels": labels, **extra}


def load_architecture(path: str | Path) -> tuple[Architecture, list[str] | None]:
    """An architecture file: a model file (above) or a bare ``Architecture.to_dict()``."""
    from ..errors import EdgepipeError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("format") == MODEL_FORMAT:
            return Architecture.from_dict(data["architecture"]), data.get("labels")
        return Architecture.from_dict(data), None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgepipeError(f"cannot read architecture {path}: {exc}: give a model.json "
                            "written by `edgepipe search` or an architecture JSON") from None


@dataclass(frozen=True)
class Stage:
    """A run of blocks with one output width; the first block may halve the resolution."""

    out_channels: int
    stride: int
    depth: int  # the seed's
    seed_blocks: tuple[BlockConfig, ...]  # the seed's own rows, kept reachable


def seed_stages(arch: str) -> tuple[Stage, ...]:
    """Split a seed's block table (at width 1.0) into stages of equal output channels."""
    blocks = seed_network(arch).blocks
    stages: list[list[BlockConfig]] = []
    for b in blocks:
        if not stages or b.out_channels != stages[-1][-1].out_channels or b.stride > 1:
            stages.append([b])
        else:
            stages[-1].append(b)
    return tuple(Stage(s[0].out_channels, s[0].stride, len(s), tuple(s)) for s in stages)


@dataclass(frozen=True)
class SearchSpace:
    """Choices per stage and block; every seed network is a point of the space."""

    name: str = "mobilenet_v3"
    seeds: tuple[str, ...] = ("large", "small")
    resolutions: tuple[int, ...] = (160, 192, 224)
    width_mults: tuple[float, ...] = (1.0,)
    kernels: tuple[int, ...] = (3, 5, 7)
    expand_ratios: tuple[float, ...] = (3.0, 6.0)  # x the block's input channels
    se: tuple[bool, ...] = (False, True)
    activations: tuple[str, ...] = ("RE", "HS")
    depth_delta: tuple[int, ...] = (-1, 0, 1)  # around each seed stage's depth
    num_classes: int = 1000

    def __post_init__(self) -> None:
        families = {seed_family(s) for s in self.seeds}
        if len(families) != 1:
            raise ValueError(f"a space's seeds are of one family (V3: large, small; V2: v2), "
                             f"got {', '.join(self.seeds)}")

    @property
    def family(self) -> str:
        """``v3`` or ``v2``: which block layout the space's networks have."""
        return seed_family(self.seeds[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    # --- the choices -----------------------------------------------------------------
    def depths(self, stage: Stage) -> list[int]:
        return sorted({max(1, stage.depth + d) for d in self.depth_delta} | {stage.depth})

    def expansions(self, stage: Stage, in_channels: int, first: bool) -> list[int]:
        """Expansion widths (at width 1.0): the ratios, plus the seed's own for this slot."""
        # a stage of depth 1 in the seed lends its only block's value to added blocks
        slot = stage.seed_blocks[:1] if first else stage.seed_blocks[1:] or stage.seed_blocks
        seeds = {b.expanded_channels for b in slot}
        if first and stage.seed_blocks[0].expanded_channels == in_channels:
            return [in_channels]  # a block without expansion stays one (V3-Large's first)
        return sorted({make_divisible(in_channels * r) for r in self.expand_ratios} | seeds)

    def block_choices(self, stage: Stage, in_channels: int, first: bool
                      ) -> list[BlockConfig]:
        """Every block (at width 1.0) this slot of the stage may hold."""
        stride = stage.stride if first else 1
        cin = in_channels if first else stage.out_channels
        return [BlockConfig(cin, k, e, stage.out_channels, s, a, stride)
                for k in self.kernels for e in self.expansions(stage, cin, first)
                for s in self.se for a in self.activations]

    # --- points of the space --------------------------------------------------------------
    def seed_architecture(self, seed: str, resolution: int = 224, width: float = 1.0
                          ) -> Architecture:
        return Architecture(seed_network(seed, width, self.num_classes), resolution, seed)

    def sample(self, rng: random.Random) -> Architecture:
        seed = rng.choice(self.seeds)
        width = rng.choice(self.width_mults)
        blocks: list[BlockConfig] = []
        cin = seed_network(seed).stem_channels
        for stage in seed_stages(seed):
            for i in range(rng.choice(self.depths(stage))):
                blocks.append(rng.choice(self.block_choices(stage, cin, i == 0)))
                cin = stage.out_channels
        return self._assemble(seed, blocks, width, rng.choice(self.resolutions))

    def _assemble(self, seed: str, blocks: list[BlockConfig], width: float, resolution: int
                  ) -> Architecture:
        template = seed_network(seed, width, self.num_classes)
        scaled = tuple(b.scaled(width) for b in blocks)
        # V3's last conv is 6x the last block's output; V2's a fixed 1280 (torchvision's)
        last = 6 * scaled[-1].out_channels if template.family == "v3" \
            else template.last_conv_channels
        net = NetworkConfig(
            family=template.family, blocks=scaled, stem_channels=scaled[0].in_channels,
            stem_activation=template.stem_activation,
            last_conv_channels=last,
            last_conv_activation=template.last_conv_activation,
            classifier_hidden=template.classifier_hidden, num_classes=self.num_classes)
        return Architecture(net, resolution, seed)

    def architectures(self, count: int, seed: int) -> list[Architecture]:
        """``count`` distinct random architectures, the same for the same seed."""
        rng, found, seen = random.Random(seed), [], set()
        for _ in range(count * 100):
            arch = self.sample(rng)
            if arch.digest() not in seen:
                seen.add(arch.digest())
                found.append(arch)
            if len(found) == count:
                break
        return found

    def contains(self, arch: Architecture) -> bool:
        """Whether every block of ``arch`` is a choice of this space (and its resolution)."""
        blocks = {b for *_, b in self.block_slots()}
        return arch.resolution in self.resolutions and set(arch.network.blocks) <= blocks

    def block_slots(self) -> list[tuple[str, float, int, BlockConfig]]:
        """Every (seed, width, input stride, block) the space can place anywhere: what a table
        must hold, at each resolution. The input stride is the block's input resolution
        divided into the network's (2 after the stem, 4 after a stride-2 stage ...)."""
        slots: dict[tuple[str, float, int, BlockConfig], None] = {}
        for seed in self.seeds:
            for width in self.width_mults:
                cin, reduction = seed_network(seed).stem_channels, 2
                if self.family == "v2":
                    # torchvision's V2 rounds each expansion from the rounded input (not the
                    # width-1.0 expansion scaled): the seed's own blocks, as built, are slots
                    for b, r in zip(*_with_reductions(seed_network(seed, width)), strict=True):
                        slots[(seed, width, r, b)] = None
                for stage in seed_stages(seed):
                    firsts = self.block_choices(stage, cin, True)
                    rests = self.block_choices(stage, cin, False) \
                        if max(self.depths(stage)) > 1 else []
                    for b in firsts:
                        slots[(seed, width, reduction, b.scaled(width))] = None
                    reduction *= stage.stride
                    for b in rests:
                        slots[(seed, width, reduction, b.scaled(width))] = None
                    cin = stage.out_channels
        return list(slots)


def _with_reductions(net: NetworkConfig) -> tuple[list[BlockConfig], list[int]]:
    """A network's blocks and each one's input stride (2 after the stem, 4 ...)."""
    reductions, r = [], 2
    for b in net.blocks:
        reductions.append(r)
        r *= b.stride
    return list(net.blocks), reductions


# Named spaces. "default" contains MobileNetV3-Large and -Small and is what the shipped table
# covers; "tiny" is a few dozen units at width 0.5 and low resolution (tests, quick tries);
# "mobilenet_v2" is MobileNetV2 from width 0.35 to 1.0 with 3x and 6x expansions around it:
# the units a NetAdapt path from a trained V2 and its width-scaled baselines run through (the
# channel counts between them are estimated from these, see latency_tables.estimate).
SPACES = {
    "default": SearchSpace(),
    "tiny": SearchSpace(name="tiny", seeds=("small",), resolutions=(64, 96), width_mults=(0.5,),
                        kernels=(3,), expand_ratios=(3.0,), se=(True,), activations=("HS",),
                        depth_delta=(0,)),
    "mobilenet_v2": SearchSpace(name="mobilenet_v2", seeds=(V2_SEED,),
                                resolutions=(160, 192, 224), width_mults=(0.35, 0.5, 0.75, 1.0),
                                kernels=(3,), expand_ratios=(3.0, 6.0), se=(False,),
                                activations=("R6",), depth_delta=(0,)),
}


def load_space(name_or_path: str) -> SearchSpace:
    """A named space, or a JSON file of SearchSpace fields."""
    from ..errors import EdgepipeError

    if name_or_path in SPACES:
        return SPACES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise EdgepipeError(f"unknown search space {name_or_path!r}: use "
                            f"{', '.join(SPACES)} or a JSON file of SearchSpace fields")
    try:
        return SearchSpace.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise EdgepipeError(f"search space file {path} is invalid ({exc}): give a JSON object "
                            f"with fields of {', '.join(SearchSpace.__dataclass_fields__)}"
                            ) from None
