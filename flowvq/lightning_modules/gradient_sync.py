"""DDP for LightningModules that step several optimizers by hand (the GANs).

DDP's reducer all-reduces gradients from autograd hooks and expects every trainable parameter
to receive a gradient in each backward pass. A GAN step has two backward passes (the
generator's, the discriminator's), each of which leaves the other network's parameters out,
and before ``disc_start`` the discriminator is not trained at all: the reducer then stops the
run with "parameters that were not used in producing the loss". ``find_unused_parameters``
would make it traverse the graph and all-reduce both networks' buckets at every backward
(twice the traffic), which only hides the mismatch.

Instead the module owns its gradient synchronisation, the way gradient accumulation blocks
DDP's sync (``Strategy.block_backward_sync``), but for the whole fit:

1. :func:`own_gradient_sync` (call it first thing in ``training_step``) turns DDP's backward
   sync off for this step: backward passes accumulate local gradients only and the reducer
   never expects a gradient. (Lightning turns it back on after each step's forward, so it is
   set per step.)
2. :func:`average_gradients` (call it between ``manual_backward`` and ``optimizer.step()``)
   all-reduces the gradients of exactly that optimizer's parameters, once, as one flat
   tensor, and divides by the world size: DDP's mean over ranks.

Every rank runs the same steps (same ``disc_start`` clock, same branches), so the collectives
match. Parameters hold equal values on every rank after each step because they start equal
(DDP broadcasts rank 0's state when it wraps the module) and every rank applies the same
averaged gradient. Buffers are not broadcast after the first forward; the codebook's EMA
statistics are all-reduced by the quantizer itself (``Quantizer.enable_distributed_sync``).
``tests/test_ddp_models.py`` checks one two-rank step against one single-process step on the
same global batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["average_gradients", "own_gradient_sync"]


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def own_gradient_sync(module: Any) -> None:
    """Turn off DDP's automatic gradient all-reduce for this training step (no-op without DDP)."""
    from torch.nn.parallel import DistributedDataParallel

    trainer = getattr(module, "_trainer", None)
    wrapped = getattr(getattr(trainer, "strategy", None), "model", None)
    if isinstance(wrapped, DistributedDataParallel):
        wrapped.require_backward_grad_sync = False


def _parameters(optimizer: Any) -> list[Tensor]:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer -> torch optimizer
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def average_gradients(optimizer: Any) -> None:
    """Average the gradients of ``optimizer``'s parameters over all ranks (no-op in one process).

    A parameter without a gradient on every rank keeps ``grad=None`` (so the optimizer skips
    it as it would in one process); one with a gradient on some ranks only gets the mean with
    zeros for the others, as DDP does.
    """
    if not _distributed():
        return
    parameters = _parameters(optimizer)
    if not parameters:
        return
    device = parameters[0].device
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in parameters]
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
    flat = torch.cat([*grads, present])  # one collective per optimizer step
    torch.distributed.all_reduce(flat)
    counts = flat[-len(parameters) :].tolist()
    flat = flat[: -len(parameters)] / torch.distributed.get_world_size()
    offset = 0
    for p, seen in zip(parameters, counts):
        n = p.numel()
        if seen > 0:
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def step_optimizer(module: Any, optimizer: Any, loss: Tensor) -> None:
    """One hand-made optimizer step of ``module`` (manual optimization): backward, the ranks'
    mean gradient of exactly this optimizer's parameters, step; no stale gradient is left."""
    optimizer.zero_grad(set_to_none=True)
    module.manual_backward(loss)
    average_gradients(optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # frees the memory, and no stale gradient lingers


def discriminator_step(module: Any, optimizer: Any, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
    """The discriminator's step of a GAN whose ``module.loss`` is a ``VQLoss``; its logs."""
    module.toggle_optimizer(optimizer)
    loss, logs = module.loss.discriminator_loss(real, fake.detach())
    step_optimizer(module, optimizer, loss)
    module.untoggle_optimizer(optimizer)
    return logs
