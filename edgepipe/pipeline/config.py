"""The pipeline's configuration: a TOML file, or the built-in default.

    [model]
    name = "mobilenet_v3_small"   # or module:factory
    width = 1.0
    size = 224
    weights = "imagenet"          # a .pth, `imagenet` (MobileNetV2), or omit for random init
    formats = ["executorch", "tflite", "coreml"]
    int8 = true
    fp16 = false                  # true: fp16 artifacts too (ExecuTorch, LiteRT)

    [measure]
    threads = [1, 2]
    warmup = 10
    runs = 50
    min_seconds = 0.0             # ... and more runs until they add up to this
    repeat = 1                    # > 1: each measurement repeated, replicability judged
    cooldown = 0.0                # seconds between repeats
    per_op = true
    check_tables = true           # check the device's latency tables (sentinels) first
    reference = "auto"            # the device's sentinels before each sitting (true, false,
                                  # "auto": when repeat >= 2); what `edgepipe diff` divides out

    devices = ["pi5", "pixel"]    # registered with `edgepipe device add`; none: this machine

    [recommend]
    max_flip_rate = 0.01          # the accuracy budget: flips vs PyTorch fp32 on [evaluate]'s
                                  # data (else the parity photos), as a fraction of images
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..manifest import parse_size
from .recommend import DEFAULT_MAX_FLIP_RATE


@dataclass
class ModelSection:
    name: str = "mobilenet_v3_small"
    width: float = 1.0
    size: int | str | None = None  # 224, or "96x128" (height x width)
    weights: str | None = None
    task: str | None = None
    formats: list[str] = field(default_factory=lambda: ["executorch", "tflite", "coreml"])
    int8: bool = True
    fp16: bool = False


@dataclass
class MeasureSection:
    threads: list[int] = field(default_factory=lambda: [1])
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 0.0
    repeat: int = 1
    cooldown: float = 0.0
    per_op: bool = True
    check_tables: bool = True
    reference: bool | str = "auto"  # sentinels before each sitting: True, False, "auto"


@dataclass
class EvaluateSection:
    data: str | None = None  # "digits" or a folder (edgepipe evaluate --data); None: skipped
    limit: int | None = None
    label_map: str | None = None
    masks: str | None = None  # segmentation: ground-truth masks (edgepipe evaluate --masks)


@dataclass
class RecommendSection:
    max_flip_rate: float = DEFAULT_MAX_FLIP_RATE  # fraction of images unlike PyTorch fp32


@dataclass
class PipelineConfig:
    model: ModelSection = field(default_factory=ModelSection)
    measure: MeasureSection = field(default_factory=MeasureSection)
    devices: list[str] = field(default_factory=list)  # empty: an agent on this machine
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    recommend: RecommendSection = field(default_factory=RecommendSection)


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise EdgepipeError(f"[{where}] must be a table of settings")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise EdgepipeError(f"unknown setting(s) in [{where}]: {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(known))})")
    return cls(**data)


def load_config(path: Path | None) -> PipelineConfig:
    if path is None:
        return PipelineConfig()
    import tomllib  # Python 3.11+: the host side; the device side never reads configs

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise EdgepipeError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgepipeError(f"config {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"model", "measure", "devices", "evaluate", "recommend"}
    if unknown:
        raise EdgepipeError(f"unknown section(s) in {path}: {', '.join(sorted(unknown))} "
                            f"(use [model], [measure], [evaluate], [recommend] and "
                            "devices = [...])")
    config = PipelineConfig(
        model=_section(ModelSection, data.get("model", {}), "model"),
        measure=_section(MeasureSection, data.get("measure", {}), "measure"),
        devices=list(data.get("devices", [])),
        evaluate=_section(EvaluateSection, data.get("evaluate", {}), "evaluate"),
        recommend=_section(RecommendSection, data.get("recommend", {}), "recommend"))
    budget = config.recommend.max_flip_rate
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < 1:
        raise EdgepipeError(f"[recommend] max_flip_rate {budget!r}: give a fraction of images "
                            "from 0 to below 1 (0.01 is 1 %)")
    for key in ("int8", "fp16"):
        if not isinstance(getattr(config.model, key), bool):
            raise EdgepipeError(f"[model] {key} must be true or false")
    if config.model.size is not None:
        parse_size(config.model.size)  # a bad size fails here, before any work
    if not config.measure.threads or not all(
            isinstance(t, int) and t > 0 for t in config.measure.threads):
        raise EdgepipeError("[measure] threads must be a list of positive integers")
    e = config.evaluate
    if e.data is not None and e.data != "digits" and not Path(e.data).is_dir():
        raise EdgepipeError(f"[evaluate] data {e.data!r} is not a folder: give an image folder "
                            "or \"digits\"")
    if e.limit is not None and (not isinstance(e.limit, int) or e.limit < 1):
        raise EdgepipeError("[evaluate] limit must be 1 or more")
    if e.label_map is not None and not Path(e.label_map).is_file():
        raise EdgepipeError(f"[evaluate] label_map {e.label_map!r} is not a file")
    if e.masks is not None and not Path(e.masks).is_dir():
        raise EdgepipeError(f"[evaluate] masks {e.masks!r} is not a folder: give the folder of "
                            "ground-truth masks")
    m = config.measure
    if not isinstance(m.repeat, int) or m.repeat < 1 or not isinstance(
            m.cooldown, (int, float)) or m.cooldown < 0 or not isinstance(
            m.min_seconds, (int, float)) or m.min_seconds < 0:
        raise EdgepipeError("[measure] repeat must be 1 or more, cooldown and min_seconds 0 "
                            "or more")
    if m.reference not in (True, False, "auto"):
        raise EdgepipeError(f"[measure] reference = {m.reference!r}: give true, false or "
                            "\"auto\" (with repeat >= 2)")
    return config
