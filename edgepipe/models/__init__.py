"""models: MobileNetV2/V3 from block tables, LR-ASPP, and weight loading."""

from .blocks import BlockConfig, HardSigmoid, HardSwish, make_divisible
from .lraspp import LRASPP
from .mobilenet import MobileNet, NetworkConfig, mobilenet_v2_config, mobilenet_v3_config
from .registry import MODEL_NAMES, ModelInfo, create_model, load_weights

__all__ = [
    "BlockConfig", "HardSigmoid", "HardSwish", "make_divisible", "LRASPP", "MobileNet",
    "NetworkConfig", "mobilenet_v2_config", "mobilenet_v3_config", "MODEL_NAMES", "ModelInfo",
    "create_model", "load_weights",
]
