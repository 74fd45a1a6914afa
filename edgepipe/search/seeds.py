"""The networks NetAdapt starts from, by the names users give them (``--model``).

NetAdapt narrows MobileNet inverted-residual blocks (:mod:`.surgery`): MobileNetV3-Large and
-Small, MobileNetV2 (torchvision's ImageNet weights are packaged: ``--weights imagenet``), and
any network an earlier search wrote (``model.json``). Anything else is refused in one line
that says what the model is.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgepipeError
from ..models.space import Architecture

# what --model may name: the seeds NetAdapt knows how to narrow (MobileNetV3, MobileNetV2)
SEED_NAMES = {"small": "small", "large": "large", "mobilenet_v3_small": "small",
              "mobilenet_v3_large": "large", "mobilenet_v2": "v2", "v2": "v2"}


def seed_for_netadapt(model: str, resolution: int, classes: int | None, weights: str | None
                      ) -> tuple[Architecture, Path | None, list[str] | None]:
    """(seed Architecture, weights path or None, its class names or None) for ``--model``;
    ``classes`` None: as many as the weights' (1000 for the packaged ImageNet ones). A model
    that is no MobileNet NetAdapt can narrow is refused in one line naming what it is."""
    from ..models.pretrained import resolve_weights
    from ..models.space import SEED_MODELS, load_architecture, seed_network

    if model in SEED_NAMES:
        seed = SEED_NAMES[model]
        path = resolve_weights(SEED_MODELS[seed], weights)
        labels = None
        if classes is None and path is not None and str(weights) != "imagenet":
            classes = _classes_in(path)  # the weights' own classifier: as many outputs
        if classes is None:  # the packaged weights' classes: ImageNet's
            from ..converters.source import label_names

            labels = label_names("imagenet")
            classes = len(labels or [])
        return Architecture(seed_network(seed, 1.0, classes), resolution, seed), path, labels
    if model.endswith(".json"):
        arch, labels = load_architecture(model)
        if classes is not None and arch.network.num_classes != classes:
            raise EdgepipeError(f"{model} has {arch.network.num_classes} classes and the "
                                f"data {classes}: give a seed made for this data")
        return arch, resolve_weights(model, weights) if weights else None, labels
    raise EdgepipeError(not_shrinkable(model))


def class_names(seed: Architecture, labels: list[str] | None) -> list[str]:
    """The teacher's class names: its weights' own, or numbered (weights of your own carry
    none)."""
    return labels or [str(i) for i in range(seed.network.num_classes)]


def _classes_in(path: Path) -> int | None:
    """The number of outputs of a MobileNet state_dict's last linear layer (V2's
    ``classifier.1``, V3's ``classifier.3``); None when the file says nothing readable (the
    strict load that follows names the problem)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: load_weights says so in its own line
        return None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    for key in ("classifier.1.weight", "classifier.3.weight"):
        weight = state.get(key) if isinstance(state, dict) else None
        if isinstance(weight, torch.Tensor) and weight.ndim == 2:
            return int(weight.shape[0])
    return None


def not_shrinkable(model: str) -> str:
    """What a model NetAdapt cannot narrow is, in one line (it is built to be described)."""
    from torch import nn

    from ..models.registry import MODEL_NAMES, create_model

    if ":" not in model and model not in MODEL_NAMES:
        raise EdgepipeError(f"unknown model {model!r}: NetAdapt starts from small, large "
                            "(MobileNetV3), mobilenet_v2 or a model.json written by "
                            "`edgepipe search`")
    module, info = create_model(model)  # a failing factory: its own line
    counts = {"convolution": sum(isinstance(m, nn.Conv2d) for m in module.modules()),
              "linear layer": sum(isinstance(m, nn.Linear) for m in module.modules())}
    found = ", ".join(f"{n} {what}{'s' if n != 1 else ''}" for what, n in counts.items())
    kind = "a segmentation model" if info.task == "segmentation" else "a model"
    return (f"NetAdapt cannot shrink {model}: found {kind} of type {type(module).__name__} "
            f"({found}) that is not a MobileNet of inverted-residual blocks, the layers NetAdapt "
            "knows how to narrow: give small, large, mobilenet_v2 or a model.json written by "
            "`edgepipe search`")
