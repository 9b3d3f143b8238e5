"""Per-iteration LR schedules, each a LambdaLR stepped every optimiser step (the ``scheduler``
config group): Detectron2's WarmupCosineLR (``warmup_cosine``) and WarmupMultiStepLR
(``warmup_multistep``, its own default), and a warmup to a constant LR (``constant``, for short
fine-tunes). A LambdaLR's state is its step, so a resumed run continues each one exactly.
"""

from __future__ import annotations

import bisect
import math
from functools import partial

from hydra.utils import instantiate
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cxrdet.models.detector import trainable_parameter_groups


def warmup(step: int, warmup_steps: int, warmup_factor: float) -> float:
    """Linear warmup from ``warmup_factor`` to 1 over the first ``warmup_steps`` (Detectron2's
    "linear" warmup), 1 after."""
    if step >= warmup_steps:
        return 1.0
    alpha = step / warmup_steps
    return warmup_factor * (1.0 - alpha) + alpha


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, warmup_factor: float = 0.001
) -> float:
    """LR multiplier at ``step``: cosine from 1 to 0 over ``total_steps``, times a linear warmup
    from ``warmup_factor`` to 1 over the first ``warmup_steps`` (as Detectron2 computes it)."""
    if step >= total_steps:
        return 0.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return cosine * warmup(step, warmup_steps, warmup_factor)


def warmup_multistep(
    step: int,
    warmup_steps: int,
    warmup_factor: float = 0.001,
    steps: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> float:
    """LR multiplier at ``step``: ``gamma`` to the number of milestones in ``steps`` already
    reached, times the linear warmup (Detectron2's WarmupMultiStepLR, SOLVER.STEPS/GAMMA)."""
    return gamma ** bisect.bisect_right(sorted(steps), step) * warmup(
        step, warmup_steps, warmup_factor
    )


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


def warmup_multistep_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    steps: list[int] | tuple[int, ...] = (),
    gamma: float = 0.1,
    warmup_steps: int = 1000,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """A LambdaLR of :func:`warmup_multistep` to step once per optimiser step; a milestone past
    ``total_steps`` is refused (it would never be reached)."""
    late = [m for m in steps if m >= total_steps]
    if late:
        raise ValueError(
            f"scheduler.steps={list(steps)}: {late} at or past the run's {total_steps} steps "
            "(trainer.max_steps) would never lower the LR"
        )
    factor = partial(
        warmup_multistep,
        warmup_steps=min(warmup_steps, total_steps),
        warmup_factor=warmup_factor,
        steps=tuple(int(m) for m in steps),
        gamma=gamma,
    )
    return LambdaLR(optimizer, factor)


def constant_scheduler(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 100, warmup_factor: float = 0.001
) -> LambdaLR:
    """A LambdaLR of the linear warmup alone: the base LR after ``warmup_steps``."""
    factor = partial(
        warmup, warmup_steps=min(warmup_steps, total_steps), warmup_factor=warmup_factor
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
