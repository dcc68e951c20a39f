"""Chaining trained stages: :class:`Pipeline` (generate), the whole-chain demo, flow samples.

``from flowvq.pipeline import Pipeline`` imports the pipeline on first access (its imports
cost seconds: torch, librosa).
"""

from __future__ import annotations

from typing import Any

__all__ = ["GenerationResult", "Pipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flowvq.pipeline import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
