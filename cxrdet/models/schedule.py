"""Per-iteration linear warmup + cosine decay: Detectron2's WarmupCosineLR as a LambdaLR."""

from __future__ import annotations

import math
from functools import partial

from hydra.utils import instantiate
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cxrdet.models.detector import trainable_parameter_groups


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, warmup_factor: float = 0.001
) -> float:
    """LR multiplier at ``step``: cosine from 1 to 0 over ``total_steps``, times a linear warmup
    from ``warmup_factor`` to 1 over the first ``warmup_steps`` (as Detectron2 computes it)."""
    if step >= total_steps:
        return 0.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if step < warmup_steps:
        alpha = step / warmup_steps
        return cosine * (warmup_factor * (1.0 - alpha) + alpha)
    return cosine


def warmup_cosine_scheduler(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 1000, warmup_factor: float = 0.001
) -> LambdaLR:
    """A LambdaLR to step once per optimiser step (Lightning ``interval: step``)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    factor = partial(
        warmup_cosine,
        total_steps=total_steps,
        warmup_steps=min(warmup_steps, total_steps),
        warmup_factor=warmup_factor,
    )
    return LambdaLR(optimizer, factor)


def lightning_optimizers(model: nn.Module, optim: dict, scheduler: dict | None, total_steps):
    """What ``configure_optimizers`` returns for cxrdet's modules: ``optim`` (a Hydra partial)
    over ``model``'s trainable parameter groups, and ``scheduler`` (a partial called with
    ``total_steps``) stepped every iteration, or the optimiser alone without one.
    ``total_steps`` is called only when there is a scheduler (Lightning's estimate needs the
    trainer)."""
    optim = instantiate(optim)
    optimizer = optim(trainable_parameter_groups(model, optim.keywords.get("weight_decay", 0.0)))
    if not scheduler:
        return optimizer
    lr_scheduler = instantiate(scheduler)(optimizer, total_steps=total_steps())
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step", "frequency": 1},
    }
