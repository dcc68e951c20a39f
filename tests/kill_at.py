"""A callback that kills its own process with SIGKILL at a given training step (for the resume test).

Used from the command line: ``--trainer.callbacks+=kill_at.KillAt --trainer.callbacks.step 7``
with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """SIGKILL (no clean stop, no checkpoint on the way out) before training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
