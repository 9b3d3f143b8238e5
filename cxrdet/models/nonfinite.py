"""Non-finite losses and gradients caught at their step without the host waiting every step.

Each training step computes, on the device, whether its loss or any gradient is NaN/inf (one
fused kernel over the gradients), agrees on it across DDP ranks (an all-reduce, queued like the
gradients' own) and hands it to the optimiser as ``found_inf``: a fused optimiser
(``optim.fused: true``, the default) then leaves the weights and its momentum untouched on the
device, as it does for mixed precision's loss scaler. Trainable BatchNorm's running statistics,
which the forward pass moved, are put back the same way.

The flags and losses of the steps since the last look are read together (one copy to the host)
every ``trainer.log_every_n_steps`` steps, before each validation, before any checkpoint is
written and when training ends: ``on_nonfinite=stop`` then raises, naming the first bad step,
its losses and images (per rank under DDP); ``skip`` logs each skipped step. An optimiser
without a fused kernel is served by reading the flag at once, every step.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def handles_found_inf(optimizer) -> bool:
    """Whether ``optimizer`` skips its update on the device when given ``found_inf``."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups
    )


def zero_momentum(optimizer) -> None:
    """Start every momentum buffer at zero before the first step (the same update as torch's
    first step, which copies the gradient): a fused SGD step skipped before any buffer exists
    would otherwise leave it uninitialised."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group.get("momentum", 0) == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if p.requires_grad and state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class NonFiniteGuard:
    """The device-side check of one training run (``on_nonfinite``: ``stop`` | ``skip``).

    The module calls :meth:`before_forward`, :meth:`after_backward` (in
    ``on_before_optimizer_step``) and :meth:`review` (at the points listed in the module
    docstring).
    """

    def __init__(self, mode: str):
        if mode not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be stop or skip, got {mode!r}")
        self.mode = mode
        self.statistics: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pending: list[tuple[int, torch.Tensor, list[str]]] = []  # step, flags+losses, ids
        self.step_losses: torch.Tensor | None = None
        self.loss_names: list[str] = []
        self.step_images: list[str] = []

    def before_forward(self, model: nn.Module) -> None:
        """Keep trainable BatchNorm's running statistics, which the forward pass updates."""
        self.statistics = [
            (b, b.clone())
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        ]

    def record(self, loss: torch.Tensor, losses: dict, image_ids: list[str]) -> None:
        """This step's total loss, its parts and its images, for the message if it goes bad."""
        self.step_losses = torch.stack([loss, *losses.values()]).detach().float()
        self.loss_names = list(losses)
        self.step_images = list(image_ids)

    def after_backward(self, step: int, model: nn.Module, optimizer, check_gradients: bool) -> None:
        """Flag this step on the device and keep its update (and BatchNorm's) from landing if
        the flag is set. ``check_gradients``: False under a loss scaler (16-mixed), which finds
        and skips its own overflows; the loss is checked either way."""
        if self.step_losses is None:
            return
        bad = ~torch.isfinite(self.step_losses[0])
        local = bad.clone()  # this rank's loss (its gradients are every rank's under DDP)
        if check_gradients:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                norms = torch._foreach_norm(grads)
                bad = bad | ~torch.isfinite(torch.stack(norms)).all()
        if distributed():
            flag = bad.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = flag.bool()
        if handles_found_inf(optimizer):
            optimizer.found_inf = bad.to(torch.float32).reshape(1)
        elif bool(bad):  # the host waits here, every step: no fused kernel to skip with
            optimizer.zero_grad(set_to_none=True)
        for now, kept in self.statistics:
            now.copy_(torch.where(bad, kept, now))
        self.statistics = []
        row = torch.cat([torch.stack([bad, local]).float(), self.step_losses])
        self.pending.append((step, row, self.step_images))
        self.step_losses = None

    def clear_optimizer(self, optimizer) -> None:
        """Take the flag off the optimiser after its step."""
        if hasattr(optimizer, "found_inf"):
            del optimizer.found_inf

    def review(self) -> None:
        """Read the flags of the steps since the last review (one copy to the host); stop on
        the first bad one (``stop``) or log each (``skip``)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        rows = torch.stack([row for _, row, _ in pending]).cpu()
        for (step, _, images), row in zip(pending, rows.tolist()):
            if not row[0]:
                continue
            message = self.message(step, row, images)
            if self.mode == "stop":
                raise FloatingPointError(
                    f"{message}. Lower optim.lr, set trainer.gradient_clip_val, or "
                    "on_nonfinite=skip; the checkpoints written so far are intact."
                )
            log.warning("%s: batch skipped", message)

    def message(self, step: int, row: list[float], images: list[str]) -> str:
        """The step, and the losses and images of the ranks whose loss went bad (of every rank
        when only the gradients did: under DDP they are every rank's)."""
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.loss_names, row[3:]))
        mine = (bool(row[1]), f"{values}; images {', '.join(images)}")
        ranks = [mine]
        if distributed():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        loss_bad = any(bad for bad, _ in ranks)
        details = [
            d if len(ranks) == 1 else f"rank {r}: {d}"
            for r, (bad, d) in enumerate(ranks)
            if bad or not loss_bad
        ]
        what = "loss" if loss_bad else "gradient (the loss is finite)"
        return f"non-finite {what} at step {step} ({'; '.join(details)})"
