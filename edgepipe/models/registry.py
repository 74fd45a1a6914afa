"""Model names the CLI knows, ``module:factory`` models, and torchvision-format weights."""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgepipeError
from ..manifest import file_sha256
from .lraspp import LRASPP
from .mobilenet import MobileNet, mobilenet_v2_config, mobilenet_v3_config


@dataclass(frozen=True)
class ModelInfo:
    """What a converter needs to know about a model besides its weights."""

    name: str
    task: str  # "classification" | "segmentation"
    label_set: str | None  # "imagenet", "voc" or None (user model)
    default_size: int
    labels: tuple[str, ...] | None = None  # a searched model's own class names


_BUILDERS: dict[str, tuple[ModelInfo, Callable[[float], nn.Module]]] = {
    "mobilenet_v3_large": (
        ModelInfo("mobilenet_v3_large", "classification", "imagenet", 224),
        lambda w: MobileNet(mobilenet_v3_config("large", w)),
    ),
    "mobilenet_v3_small": (
        ModelInfo("mobilenet_v3_small", "classification", "imagenet", 224),
        lambda w: MobileNet(mobilenet_v3_config("small", w)),
    ),
    "mobilenet_v2": (
        ModelInfo("mobilenet_v2", "classification", "imagenet", 224),
        lambda w: MobileNet(mobilenet_v2_config(w)),
    ),
    "lraspp_mobilenet_v3_large": (
        ModelInfo("lraspp_mobilenet_v3_large", "segmentation", "voc", 520),
        lambda w: LRASPP(mobilenet_v3_config("large", w, dilated=True), num_classes=21),
    ),
    "lraspp_mobilenet_v3_small": (
        ModelInfo("lraspp_mobilenet_v3_small", "segmentation", "voc", 520),
        lambda w: LRASPP(mobilenet_v3_config("small", w, dilated=True), num_classes=21),
    ),
}

MODEL_NAMES = tuple(_BUILDERS)


def create_model(name: str, width_mult: float = 1.0, task: str | None = None, seed: int = 0
                 ) -> tuple[nn.Module, ModelInfo]:
    """Build a named model (random init, seeded: the same command gives the same artifact),
    or call ``module:factory`` for any other module."""
    if name.endswith(".json"):
        return _from_model_file(Path(name), seed)
    if ":" in name:
        return _from_factory(name, seed), ModelInfo(name, task or "classification", None, 224)
    if name not in _BUILDERS:
        raise EdgepipeError(
            f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)} "
            "or a `module:factory` that returns a torch.nn.Module"
        )
    if not 0.1 <= width_mult <= 4.0:
        raise EdgepipeError(f"width multiplier {width_mult} is out of range: use 0.1 to 4.0")
    info, build = _BUILDERS[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(width_mult).eval(), info


def _from_model_file(path: Path, seed: int) -> tuple[nn.Module, ModelInfo]:
    """A network `edgepipe search` wrote (model.json; its weights are given as --weights)."""
    from .space import build_architecture, load_architecture

    if not path.is_file():
        raise EdgepipeError(f"model file {path} does not exist: give a model.json written by "
                            "`edgepipe search`, or a built-in model name")
    arch, labels = load_architecture(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = build_architecture(arch)
    return module, ModelInfo(path.parent.name or path.stem, "classification", None,
                             arch.resolution, tuple(labels) if labels else None)


@contextmanager
def _importable_from(folder: Path) -> Iterator[None]:
    """``folder`` first on the import path for the block, as ``python -m`` has the current
    folder: users run ``edgepipe convert mymodel:build`` where mymodel.py is."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _from_factory(spec: str, seed: int) -> nn.Module:
    """``module:factory`` (importable from the current folder too) or ``path/file.py:factory``;
    the factory is called with torch's, numpy's and Python's random state seeded, so a
    random-init model is the same every run (and its parity figures with it)."""
    module_name, _, attr = spec.rpartition(":")
    folder = Path.cwd()
    if module_name.endswith(".py"):
        file = Path(module_name)
        if not file.is_file():
            raise EdgepipeError(f"no file {module_name} for model {spec!r}")
        folder, module_name = file.resolve().parent, file.stem
    with _importable_from(folder):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EdgepipeError(f"cannot import {module_name!r} for model {spec!r} (looked in "
                                f"{folder} and the installed packages): {exc}") from None
        except Exception as exc:  # the user's module fails while importing
            raise EdgepipeError(f"importing {module_name!r} for model {spec!r} failed: "
                                f"{type(exc).__name__}: {exc}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise EdgepipeError(f"{module_name!r} has no callable {attr!r}: give "
                                "`module:factory`")
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed)
                model = factory()
        except Exception as exc:
            raise EdgepipeError(f"{spec}() failed: {type(exc).__name__}: {exc}") from None
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    if not isinstance(model, nn.Module):
        raise EdgepipeError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _state_dict_from(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return _state_dict_from(obj[key], path)
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj  # type: ignore[return-value]
    raise EdgepipeError(f"{path} holds no state_dict: save one with torch.save(model.state_dict())")


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_backbone(model: nn.Module, path: str | Path, head: str = "classifier.") -> bool:
    """Load weights whose classifier may be made for other classes: every other key strictly,
    the classifier's only where its shapes match. True when the model's own (freshly
    initialised) classifier was kept: it has to be trained (transfer learning from, e.g.,
    ImageNet weights to a folder of 10 classes). Other mismatches are refused as
    :func:`load_weights` refuses them."""
    path = Path(path)
    try:
        load_weights(model, path)
        return False
    except EdgepipeError:
        pass
    obj = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    if obj is None:
        load_weights(model, path)  # the one-line error for a missing file
    state = {k.removeprefix("module."): v for k, v in _state_dict_from(obj, path).items()}
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    if set(body) != {k for k in own if not k.startswith(head)} or any(
            own[k].shape != v.shape for k, v in body.items()):
        load_weights(model, path)  # not only the head differs: the usual one-line error
    model.load_state_dict({**own, **body}, strict=True)
    return True


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load a torchvision-format state_dict strictly; returns the file's sha256.

    A mismatch names the keys (missing, unexpected, wrong shape) instead of torch's
    multi-page error, because that is what the user has to fix.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"weights file {path} does not exist: give a .pth state_dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgepipeError(f"cannot read weights file {path}: {first}") from None
    state = {k.removeprefix("module."): v for k, v in _state_dict_from(obj, path).items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                   for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_preview(wrong_shape, 3)}")
    if problems:
        raise EdgepipeError(
            f"weights {path.name} do not match the model ({'; '.join(problems)}): "
            "check the model name and --width"
        )
    model.load_state_dict(state, strict=True)
    return file_sha256(path)
