"""Real video to clip shards: dataset layouts, per-clip extraction with a resumable cache, merge.

Commands (``flowvq preprocess mead|lrs3|hdtf|folder``) are in :mod:`.commands`; imported
lazily so that ``import flowvq.data.preprocess`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["preprocess_folder", "preprocess_hdtf", "preprocess_lrs3", "preprocess_mead"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flowvq.data.preprocess import commands

        return getattr(commands, name)
    raise AttributeError(name)
