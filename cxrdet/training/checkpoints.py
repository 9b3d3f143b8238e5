"""A run's checkpoints: how they are written, the resume point that is never stale, the one
written on SIGTERM, the RNG states in each, and the run's best.

- ``last.ckpt`` (:class:`ResumePoint`) is written at every validation, whether or not the
  monitored metric improved, every ``every_minutes`` of training and when training ends.
  (Lightning's ``ModelCheckpoint(save_last=True)`` writes it only in a step where a best-k
  checkpoint was saved: once the metric stops improving, its ``last.ckpt`` stops moving.)
- ``sigterm.ckpt`` when SIGTERM stops the run, ``requeue.ckpt`` when SLURM's warning signal
  does (:mod:`cxrdet.training.stopping`).
- which one a relaunch continues from: :mod:`cxrdet.training.resume`.

Every checkpoint is written by :class:`AtomicCheckpointIO`: whole beside its final name,
flushed to the disk, then renamed over the old one (:mod:`cxrdet.atomic`), so a kill while
saving leaves the previous one whole, whatever filesystem ``TMPDIR`` is on.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint

from cxrdet.atomic import atomic_write
from cxrdet.models.safe_load import safe_load

log = logging.getLogger(__name__)
LAST = "last.ckpt"
SIGTERM = "sigterm.ckpt"
REQUEUE = "requeue.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing local files with :func:`cxrdet.atomic.atomic_write`
    (Lightning's makes its temporary file in ``TMPDIR`` and moves it: a copy into the checkpoint
    itself when ``TMPDIR`` is another filesystem). Remote URLs (``s3://``) go to Lightning's."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def at_epoch_end(trainer) -> bool:
    """Whether the batch that just ended is its epoch's last. Lightning resumes a checkpoint
    saved at the end of a batch exactly, except after an epoch's last one (the resumed run
    numbers that epoch again, and replays its order): a save due then waits one step."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return bool(loop is not None and loop.batch_progress.is_last_batch)


class ResumePoint(Checkpoint):
    """``<dirpath>/last.ckpt``: the whole training state at every validation, every
    ``every_minutes`` of training (decided on rank 0 at logging steps, so that every rank saves
    at the same step; not after an epoch's last batch: :func:`at_epoch_end`) and at the end of
    training. A failed run (an exception) writes nothing
    here, so no broken weights overwrite good ones.

    A ``Checkpoint`` callback, so that Lightning runs it after ``ModelCheckpoint`` at each
    validation: the file then records the best checkpoint as of that validation.
    """

    def __init__(self, dirpath: str, every_minutes: float | None = 30, clock=None):
        self.dirpath = Path(dirpath)
        self.every_minutes = every_minutes
        self.clock = clock or time.monotonic
        self.saved_at = self.clock()
        self.saved_step = -1

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step != self.saved_step:  # not twice for one step
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step
        self.saved_at = self.clock()

    def on_train_start(self, trainer, pl_module) -> None:
        self.saved_at = self.clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.every_minutes or trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        due = self.clock() - self.saved_at >= 60 * self.every_minutes
        if trainer.world_size > 1:  # each rank's clock differs: rank 0 decides for all
            due = trainer.strategy.broadcast(due, src=0)
        if due and not at_epoch_end(trainer):
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


def _rng_state() -> dict:
    """This process's generators: torch, its current CUDA device's, numpy, Python's. Tensors and
    plain lists only, so that torch.load(weights_only=True) still reads them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RNGStateInCheckpoint(pl.Callback):
    """Keep every rank's random number generators in each checkpoint and restore them on
    resume.

    Lightning's checkpoints hold the model, optimiser, schedule and loop position but no RNG
    states; Faster R-CNN draws its RPN and ROI samples from torch's generators, so without this
    a resumed run would sample differently from an uninterrupted one. Each rank's states (and
    its own GPU's) are gathered into the file under its rank. A resume takes its rank's; on
    another number of processes (or an older checkpoint holding one list for all GPUs) it takes
    what exists without indexing a missing rank or GPU, and warns once that the run continues
    without repeating exactly.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        rank, world = _world()
        states = [_rng_state()]
        if world > 1:  # every rank saves (Lightning calls this on each); rank 0 writes the file
            states = [None] * world
            dist.all_gather_object(states, _rng_state())
        checkpoint["rng_states"] = {"ranks": states}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = checkpoint.get("rng_states")
        if saved is None:
            log.warning("the checkpoint holds no RNG states: the resumed run will not repeat it")
            return
        rank, world = _world()
        if "ranks" not in saved:  # before per-rank states: one process, every GPU's state
            cuda = saved.get("cuda") or []
            device = torch.cuda.current_device() if torch.cuda.is_available() else 0
            saved = {"ranks": [{**saved, "cuda": cuda[device : device + 1]}]}
            if len(cuda) > 1:
                _warn_once(rank, f"the checkpoint holds {len(cuda)} GPUs' RNG states")
        ranks = saved["ranks"]
        if len(ranks) != world:
            _warn_once(rank, f"it was saved by {len(ranks)} process(es), this run has {world}")
        _set_rng_state(ranks[rank % len(ranks)])


def _warn_once(rank: int, why: str) -> None:
    if rank == 0:
        log.warning(
            "resuming with other random states than the run had: %s; the run continues, but "
            "does not repeat an uninterrupted one exactly",
            why,
        )


def best_checkpoint(
    checkpoints_dir: str | Path, trust: bool = False, opt_in: str = "--trust"
) -> Path | None:
    """The checkpoint ModelCheckpoint rated best in a run's ``checkpoints/`` folder, else
    ``last.ckpt``, else None.

    Each ``best-step<N>.ckpt`` records the best path as of its own save, so the one with the
    highest step (a number, not a name: ``step8000`` comes before ``step10000``) knows the
    best of them all. The files are read as :func:`cxrdet.models.safe_load.safe_load` reads
    them (``trust``, ``opt_in``).
    """
    folder = Path(checkpoints_dir)
    best = sorted(folder.glob("best-*.ckpt"), key=_step_of)
    if best:
        state = safe_load(best[-1], trust, opt_in, mmap=True)
        for key, value in state.get("callbacks", {}).items():
            named = Path(str(value.get("best_model_path") or "")).name
            if key.startswith("ModelCheckpoint") and named and (folder / named).is_file():
                return folder / named
        return best[-1]
    last = folder / LAST
    return last if last.is_file() else None


def _step_of(path: Path) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in path.stem).split()
    return int(digits[-1]) if digits else -1
