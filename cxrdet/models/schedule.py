"""Per-iteration linear warmup + cosine decay: Detectron2's WarmupCosineLR as a LambdaLR."""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
