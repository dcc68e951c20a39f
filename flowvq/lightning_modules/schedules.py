"""Learning-rate schedules sized by the trainer's run, whether it is set in epochs or in steps."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["cosine_schedule", "total_steps"]


def total_steps(module: Any) -> int | None:
    """Optimizer steps the run will take (``max_steps``, or ``max_epochs`` x batches), or None.

    None when the module has no trainer or the run is unbounded (``max_epochs=-1`` and no
    ``max_steps``).
    """
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return None
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps) or steps <= 0:
        return None
    return int(steps)


def cosine_schedule(module: Any, optimizer: torch.optim.Optimizer, final_fraction: float) -> dict[str, Any]:
    """Cosine decay from the optimizer's rate to ``final_fraction`` of it, stepped every batch.

    The length is the trainer's estimate of the run's optimizer steps, so a config that sets
    ``max_steps`` (``max_epochs`` then -1) decays over those steps, not over one epoch; an
    unbounded run keeps a constant rate.
    """
    steps = total_steps(module)
    if steps is None:
        schedule: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    else:
        base = optimizer.param_groups[0]["lr"]
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=base * final_fraction)
    return {"scheduler": schedule, "interval": "step"}
