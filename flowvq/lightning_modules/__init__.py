"""One LightningModule per trainable model; imported lazily so `import flowvq` stays light."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "EmotionClassifier": "flowvq.lightning_modules.emotion_classifier",
    "CoefficientFlow": "flowvq.lightning_modules.coefficient_flow",
    "GMEG": "flowvq.lightning_modules.gmeg",
    "VQGAN": "flowvq.lightning_modules.vqgan",
    "VQIG": "flowvq.lightning_modules.vqig",
    "SyncNet": "flowvq.lightning_modules.syncnet",
    "FrameEmotionClassifier": "flowvq.lightning_modules.frame_emotion_classifier",
    "EmotionMappingNetwork": "flowvq.lightning_modules.emotion_mapping",
    "StyleUNetHead": "flowvq.lightning_modules.styleunet",
}

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'flowvq.lightning_modules' has no attribute {name!r}")
