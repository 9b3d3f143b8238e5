"""Stopping a run on a signal, at a step every process agrees on, with the whole training
state saved: :class:`StopOnSignal`, the one owner of SIGTERM and SLURM's warning signal.

- **Who hears the signal.** SLURM signals every process of the job step. The loader workers
  ignore SIGTERM, SIGUSR1 and SIGUSR2 from their first instruction
  (:mod:`cxrdet.data.loaders`); each training process's main thread only notes the signal
  (the warning from ``setup``, before any loader exists; SIGTERM from ``on_train_start``, in
  place of Lightning's handler, which would call a collective inside the handler).
- **Agreeing.** The ranks pool what they noted at every training step and every validation
  batch through an all-reduce on a CPU (gloo) process group, started at one step and read at
  the next (:class:`StepAgreement`): the GPU never waits for it, and every rank learns of a
  signal any rank got within one step, at the same step.
- **Where it stops.** At the end of the step after the agreement, unless that step is its
  epoch's last (one step more: Lightning would number the epoch again) or is followed by a
  validation, which is then stopped at its first batch; a signal that arrives during a
  validation stops it at the next batch. A checkpoint saved during a validation restarts that
  validation from its first batch when resumed.
- **What it writes and does.** SIGTERM (a pre-emption, a kill, the time limit): every rank
  saves ``sigterm.ckpt`` together and exits (143). The warning (``warning``: USR2 by default,
  what hydra-submitit-launcher sends; USR1 is also what NCCL may use): ``requeue.ckpt``, then
  rank 0 requeues the job (:func:`cxrdet.training.slurm.requeue`: a timeout, no exception),
  every rank learns the outcome and logs a failure, and all exit with -1 as submitit does.
  The requeued job runs the same command in the same folder; ``resume=auto`` continues.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from cxrdet.training.checkpoints import REQUEUE, SIGTERM, at_epoch_end
from cxrdet.training.slurm import SCONTROL_TIMEOUT_S, requeue

log = logging.getLogger(__name__)
WARNING_SIGNALS = ("USR1", "USR2")


def warning_signal(name: str) -> signal.Signals:
    """``USR2`` or ``SIGUSR2`` (or USR1) as the signal."""
    bare = str(name).upper().removeprefix("SIG")
    if bare not in WARNING_SIGNALS:
        raise ValueError(
            f"callbacks.signals.warning={name!r}: expected USR1 or USR2 (what sbatch --signal "
            "names, USR2 for hydra-submitit-launcher)"
        )
    return getattr(signal, f"SIG{bare}")


class StepAgreement:
    """Every rank's flags (warning, SIGTERM) pooled one round late through a gloo group: each
    :meth:`round` starts this round's all-reduce and returns the last round's result; the
    host waits only for the network, never for the GPU. One process: its own flags."""

    def __init__(self):
        self.group = None
        self.world = 1
        self.pending: tuple[torch.Tensor, object] | None = None

    def setup(self, world_size: int) -> None:
        """Called by every rank at the same point (a collective creates the group)."""
        self.world = world_size
        if world_size > 1 and self.group is None:
            self.group = dist.new_group(backend="gloo")

    def round(self, flags: tuple[bool, bool]) -> tuple[bool, bool]:
        if self.world == 1:
            return flags
        agreed = (False, False)
        if self.pending is not None:
            values, work = self.pending
            work.wait()
            agreed = tuple(bool(v) for v in values.tolist())
        values = torch.tensor([int(f) for f in flags])
        work = dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self.pending = (values, work)
        return agreed

    def close(self) -> None:
        """Wait for the round in flight (every rank started the same rounds)."""
        if self.pending is not None:
            self.pending[1].wait()
            self.pending = None


def validates_after(trainer) -> bool:
    """Whether Lightning validates after the training step that just ended."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except Exception:  # noqa: BLE001  (another Lightning: stop at the step)
        return False


def restart_validation(checkpoint: dict) -> bool:
    """Rewrite a checkpoint saved during a validation so that resuming it runs that validation
    again from its first batch (Lightning would finish it from where it stopped, scoring part
    of the images). False when the checkpoint has no such loop state."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loops.get("epoch_loop.val_loop.batch_progress")
    if not progress:
        return False
    before = progress["total"]["processed"] - progress["current"]["processed"]
    progress["total"] = {"ready": before + 1, "started": before + 1, "processed": before,
                         "completed": before}  # fmt: skip
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False
    return True


class StopOnSignal(pl.Callback):
    """SIGTERM and SLURM's ``warning`` signal, acted on by every rank at one step (module
    docstring): ``<dirpath>/sigterm.ckpt`` or ``requeue.ckpt``, a requeue (at most
    ``max_requeues`` times, ``scontrol`` given ``scontrol_timeout_s``), exit."""

    def __init__(
        self,
        dirpath: str,
        warning: str = "USR2",
        max_requeues: int = 3,
        scontrol_timeout_s: float = SCONTROL_TIMEOUT_S,
    ):
        self.dirpath = Path(dirpath)
        self.warning = warning_signal(warning)
        self.max_requeues = max_requeues
        self.scontrol_timeout_s = scontrol_timeout_s
        self.noted = [False, False]  # warning, SIGTERM: what this process received
        self.agreed = (False, False)  # what every rank knows
        self.previous: dict = {}
        self.agreement = StepAgreement()
        self.mid_validation = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.agreement.setup(trainer.world_size)
            self.install(self.warning)  # before the loaders and their workers exist

    def on_train_start(self, trainer, pl_module) -> None:
        self.install(signal.SIGTERM)  # after Lightning registered its own: ours instead

    def install(self, sig: signal.Signals) -> None:
        self.previous.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, self.note)

    def note(self, signum, frame) -> None:
        self.noted[1 if signum == signal.SIGTERM else 0] = True  # the loop acts on it

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self.agreement.close()
        self.restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.restore()

    def pool(self) -> None:
        agreed = self.agreement.round(tuple(self.noted))
        self.agreed = tuple(a or b for a, b in zip(self.agreed, agreed))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.pool()
        if any(self.agreed) and not at_epoch_end(trainer) and not validates_after(trainer):
            self.stop(trainer, during_validation=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_):
        self.pool()
        if any(self.agreed) and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.stop(trainer, during_validation=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.mid_validation and not restart_validation(checkpoint):
            log.warning("this Lightning's checkpoint has no validation progress to rewrite")

    def stop(self, trainer, during_validation: bool) -> None:
        term = self.agreed[1]
        name = "SIGTERM" if term else self.warning.name
        path = self.dirpath / (SIGTERM if term else REQUEUE)
        self.mid_validation = during_validation
        trainer.save_checkpoint(path, weights_only=False)  # every rank: rank 0 writes
        self.mid_validation = False
        where = "during validation" if during_validation else ""
        if term:
            then = f"a relaunch into {self.dirpath.parent} continues from it"
            done = True
        else:
            outcome = None  # rank 0 requeues; every rank learns how it went
            if trainer.is_global_zero:
                outcome = requeue(self.max_requeues, self.scontrol_timeout_s)
            if trainer.world_size > 1:
                outcome = trainer.strategy.broadcast(outcome if trainer.is_global_zero else None)
            done, then = outcome
            if not done:
                then += f"; a relaunch into {self.dirpath.parent} continues from it"
        if trainer.is_global_zero:
            log.warning("%s at step %d%s: saved %s; %s", name, trainer.global_step,
                        f" ({where})" if where else "", path, then)  # fmt: skip
        elif not done:
            log.error("rank %d: %s", trainer.global_rank, then)
        self.agreement.close()
        self.restore()
        sys.exit(128 + signal.SIGTERM if term else -1)
