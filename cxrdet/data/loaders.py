"""The training and validation loaders: their worker processes, the training order, and where
a resumed run picks the order up again.

- **Workers and signals.** SLURM signals every process of a job step, the loader workers
  included: its warning (SIGUSR1/SIGUSR2) kills a worker that has no handler, a worker that
  inherited the main process's handlers (Lightning's, submitit's) would act on it as if it
  were the run, and SIGTERM kills every worker (the loader then fails the run before it can
  save). Workers leave these signals to the main process: the main thread blocks them while
  it starts the workers, so each worker starts with them blocked; each ignores the warnings,
  and takes SIGTERM in a thread that ends the worker only when the main process sent it
  (:func:`worker_init`).
- **The order.** :class:`EpochSampler` shuffles each epoch from (seed, epoch) and gives each
  rank every ``world_size``-th index of it, so the samples a run has trained in an epoch are
  always a prefix of that epoch's order, whatever the processes, workers or batch size.
- **Resuming.** :class:`TrainLoader` records how many samples of which epoch it has handed
  out; a resumed run's loader skips exactly that prefix of the same epoch's order, in its own
  batch size and world size, and tells the trainer how many of its own batches that makes
  (:func:`shift_epoch_progress`), so that the epoch ends where the samples do. Another
  ``num_workers`` changes nothing (workers hold no state); another seed or image count cannot
  be continued and is refused, naming what to set.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

WORKER_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # the main process's alone


def images_per_epoch(normal: Sequence[bool], share: float) -> int:
    """Every image with a finding plus ``share`` of the normal ones (rounded)."""
    n_normal = int(np.sum(normal))
    return len(normal) - n_normal + round(share * n_normal)


def worker_init(worker_id: int, rank: int = 0) -> None:
    """A loader worker's first act: ignore SIGUSR1 and SIGUSR2 (then unblock them: one sent in
    the meantime is dropped) and hand SIGTERM to :func:`_take_sigterm`; then seed as
    Lightning's ``seed_everything(workers=True)`` would have (this takes the place of
    Lightning's worker init)."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGUSR1, signal.SIGUSR2))
    parent = os.getppid()
    threading.Thread(target=_take_sigterm, args=(parent,), daemon=True).start()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank)


def _take_sigterm(parent: int) -> None:
    """A worker's SIGTERM, kept blocked and taken here with its sender: from the main process
    (the loader ending its workers) it ends the worker, as torch's own handler does; from
    anyone else (SLURM's, sent to every process) it is the main process's to act on."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


class WorkerSignalsLoader(DataLoader):
    """A ``DataLoader`` whose workers leave the run's signals to the main process (module
    docstring). ``rank``: the process's rank, for the workers' seeds."""

    def __init__(self, *args, rank: int = 0, **kwargs):
        kwargs.setdefault("worker_init_fn", _WorkerInit(rank))
        super().__init__(*args, **kwargs)

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:  # the workers start (fork or spawn) with the signals blocked
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _WorkerInit:
    """:func:`worker_init` for one rank (a class: picklable for spawned workers)."""

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        worker_init(worker_id, self.rank)


class EpochSampler(DistributedSampler):
    """The training order, shuffled from (seed, epoch), this rank's share under DDP; it yields
    ``(epoch, index)`` so that the dataset seeds each sample's augmentation from both.

    ``normal`` marks the images without a finding; each epoch takes every other image and a
    ``normal_share`` of these, drawn anew from (seed, epoch) (Detectron2 drops them all by
    default: share 0). ``epoch_source`` (the trainer's epoch counter) is read when an epoch's
    iteration starts: Lightning creates a resumed run's first iterator before it calls
    ``set_epoch``. One process: ``num_replicas=1, rank=0``; Lightning keeps a DistributedSampler
    as it is under DDP. :meth:`resume_at` skips the first samples of one epoch's order.
    """

    def __init__(
        self,
        dataset,
        *args,
        epoch_source: Callable[[], int] | None = None,
        normal: Sequence[bool] | None = None,
        normal_share: float = 1.0,
        **kwargs,
    ):
        super().__init__(dataset, *args, **kwargs)
        self.epoch_source = epoch_source
        self.normal = np.zeros(len(dataset), bool) if normal is None else np.asarray(normal, bool)
        self.normal_share = normal_share
        self.pool = images_per_epoch(self.normal, normal_share)
        self.n_normal = self.pool - int((~self.normal).sum())
        self.num_samples = self.per_rank(self.pool)
        self.total_size = self.num_samples * self.num_replicas
        self.skip: tuple[int, int] | None = None  # (epoch, samples of its order to skip)

    def per_rank(self, n: int) -> int:
        """What each rank gets of ``n`` samples (padded by repeating, or cut: drop_last)."""
        return n // self.num_replicas if self.drop_last else math.ceil(n / self.num_replicas)

    def refresh_epoch(self) -> int:
        """Take the trainer's epoch (``epoch_source``), if any; the epoch to iterate."""
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        return self.epoch

    def resume_at(self, epoch: int | None, samples: int) -> None:
        """Skip the first ``samples`` of epoch ``epoch``'s order (None: of the next epoch
        iterated)."""
        self.skip = (epoch, samples) if samples else None

    def skipped(self, epoch: int) -> int:
        """The samples of ``epoch``'s order that :meth:`resume_at` skips (a skip for "the next
        epoch iterated" is bound to ``epoch`` here)."""
        if self.skip is None or self.skip[0] not in (None, epoch):
            return 0
        self.skip = (epoch, self.skip[1])
        return min(self.skip[1], self.pool)

    def order(self) -> list[int]:
        """This epoch's order over every rank, unpadded (``pool`` indices)."""
        if self.n_normal == int(self.normal.sum()):  # every image: DistributedSampler's order
            if not self.shuffle:
                return list(range(len(self.dataset)))
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(len(self.dataset), generator=g).tolist()
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        normal = np.flatnonzero(self.normal)
        chosen = normal[torch.randperm(len(normal), generator=g)[: self.n_normal].numpy()]
        pool = np.sort(np.concatenate([np.flatnonzero(~self.normal), chosen]))
        if self.shuffle:
            pool = pool[torch.randperm(len(pool), generator=g).numpy()]
        return pool.tolist()

    def indices(self) -> list[int]:
        """This rank's share of this epoch's order after the skipped prefix (padded by
        repeating, as DistributedSampler pads)."""
        order = self.order()[self.skipped(self.epoch) :]
        total = self.per_rank(len(order)) * self.num_replicas
        if len(order) < total:
            order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return order[:total][self.rank : total : self.num_replicas]

    def __iter__(self):
        epoch = self.refresh_epoch()
        return ((epoch, i) for i in self.indices())


class ResumeMismatch(ValueError):
    """A checkpoint's place in the training order that this run cannot continue."""


def shift_epoch_progress(trainer, batches: int) -> None:
    """Move the trainer's count of this epoch's batches by ``batches``: a resumed run counts the
    epoch's trained samples in its own batches (Lightning ends the epoch by that count)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    for field in ("ready", "started", "processed", "completed"):
        setattr(progress, field, getattr(progress, field) + batches)


class TrainLoader(WorkerSignalsLoader):
    """The training loader (full batches, :class:`EpochSampler`) with its place in the order:
    ``state_dict()`` says how many samples of which epoch it has handed out, and
    ``load_state_dict()`` makes it hand out the rest of that epoch (module docstring).
    ``on_resume``: called with the number of batches the trainer must add to its count of the
    epoch (:func:`shift_epoch_progress`)."""

    def __init__(
        self, dataset, *, sampler: EpochSampler, on_resume: Callable | None = None, **kwargs
    ):
        super().__init__(dataset, sampler=sampler, drop_last=True, **kwargs)
        self.on_resume = on_resume
        self.epoch: int | None = None
        self.samples = 0  # of self.epoch's order, handed out (on every rank together)
        self.batches = 0  # this epoch's batches as the trainer counts them
        self.offset: tuple[int, int] | None = None  # (epoch, batches) a resume starts it at

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.sampler.num_replicas

    def __iter__(self):
        epoch = self.sampler.refresh_epoch()
        self.epoch, self.samples = epoch, self.sampler.skipped(epoch)
        if self.offset is not None and self.offset[0] is None:
            self.offset = (epoch, self.offset[1])  # "the next epoch iterated": this one
        self.batches = self.offset[1] if self.offset and self.offset[0] == epoch else 0
        for batch in super().__iter__():
            self.samples += self.samples_per_step
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        s = self.sampler
        return {
            "epoch": self.epoch,
            "samples": self.samples,
            "batches": self.batches,
            "seed": s.seed,
            "pool": s.pool,
        }

    def load_state_dict(self, state: dict) -> None:
        s = self.sampler
        if "samples" not in state:  # torchdata's StatefulDataLoader (earlier checkpoints)
            batches = int(state.get("_num_yielded", 0))
            state = {"epoch": None, "samples": batches * self.samples_per_step, "batches": batches}
        for key, setting in (("seed", "seed"), ("pool", "images per epoch")):
            if key in state and state[key] != getattr(s, key):
                raise ResumeMismatch(
                    f"the checkpoint's training order came from {setting} {state[key]}, this "
                    f"run's from {getattr(s, key)}: resume with the run's seed, data and "
                    "data.empty_images, or start from its weights afresh (resume=never "
                    "model.weights=<the checkpoint>)"
                )
        s.resume_at(state["epoch"], state["samples"])
        left = s.per_rank(s.pool - min(state["samples"], s.pool)) // self.batch_size
        done = len(self) - left  # the epoch's batches, in this run's batch and world size
        self.offset = (state["epoch"], done)
        if self.on_resume is not None and done != state["batches"]:
            self.on_resume(done - state["batches"])
