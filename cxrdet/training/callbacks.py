"""Lightning callbacks of cxrdet's own."""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cxrdet.data.datamodule import usable_cpus
from cxrdet.models.safe_load import safe_load

log = logging.getLogger(__name__)


class CheckpointOnSigterm(pl.Callback):
    """Save ``<dirpath>/sigterm.ckpt`` when the run is stopped with SIGTERM.

    SLURM sends SIGTERM before pre-emption or at the time limit; Lightning then stops at the next
    batch, and this checkpoint lets ``ckpt_path=<dirpath>/sigterm.ckpt`` resume from that step.
    Other failures (a non-finite loss, say) save nothing, so no broken weights overwrite good ones.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.dirpath / "sigterm.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the whole training state
        log.warning(
            "SIGTERM at step %d: saved %s (resume with ckpt_path=%s)",
            trainer.global_step,
            path,
            path,
        )


class RNGStateInCheckpoint(pl.Callback):
    """Keep the random number generators' states in every checkpoint and restore them on resume.

    Lightning's checkpoints hold the model, optimiser, schedule and loop position but no RNG
    states; Faster R-CNN draws its RPN and ROI samples from torch's global generator, so without
    this a resumed run would sample differently from an uninterrupted one. (Under DDP the
    checkpoint holds rank 0's states.)
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Tensors and plain lists only, so that torch.load(weights_only=True) still reads it.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, py_state, py_gauss = random.getstate()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "python": [version, list(py_state), py_gauss],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            log.warning(
                "the checkpoint holds no RNG states: the resumed run will not repeat exactly"
            )
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, np.array(keys, np.uint32), pos, has_gauss, gauss))
        version, py_state, py_gauss = states["python"]
        random.setstate((version, tuple(py_state), py_gauss))


class LastCheckpointAtEnd(pl.Callback):
    """Write ``last.ckpt`` when training ends normally.

    ModelCheckpoint writes ``last.ckpt`` after each validation only, so a run whose
    ``max_steps`` is not a multiple of ``val_check_interval`` would end with ``last.ckpt`` steps
    behind the trained weights. A failed run (an exception) writes nothing here.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is None or not ckpt.save_last or ckpt.dirpath is None:
            return
        path = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
        trainer.save_checkpoint(path, weights_only=False)  # the whole training state
        ckpt.last_model_path = str(path)


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
    last = folder / "last.ckpt"
    return last if last.is_file() else None


def _step_of(path: Path) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in path.stem).split()
    return int(digits[-1]) if digits else -1


class DataWaitMonitor(pl.Callback):
    """How long training waits for data: logs ``time/data_wait_share`` and warns once when the
    loader cannot keep up.

    A step's wait is the time from the end of the previous batch to the start of this one (the
    loader's next batch, and Lightning's own bookkeeping); its work is the time from its start
    to its end (forward, backward, optimiser). The share is wait / (wait + work) over the last
    ``window`` steps. The first ``warmup`` steps (workers starting) and the step after each
    validation are not counted. Once a full window waits more than ``warn_share``, one warning
    names ``data.num_workers``.
    """

    def __init__(self, warn_share: float = 0.2, window: int = 20, warmup: int = 5, clock=None):
        self.warn_share, self.warmup = warn_share, warmup
        self.steps: deque[tuple[float, float]] = deque(maxlen=window)
        self.clock = clock or time.perf_counter
        self.start: float | None = None
        self.end: float | None = None
        self.wait: float | None = None
        self.seen = 0
        self.warned = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = self.clock()
        self.wait = None if self.end is None else self.start - self.end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = self.clock()
        self.seen += 1
        if self.wait is None or self.seen <= self.warmup:
            return
        self.steps.append((self.wait, self.end - self.start))
        share = self.share()
        pl_module.log("time/data_wait_share", share)
        if len(self.steps) == self.steps.maxlen and share > self.warn_share and not self.warned:
            self.warned = True
            loader = getattr(trainer, "train_dataloader", None)
            workers = getattr(loader, "num_workers", "?")
            log.warning(
                "training waited for data %.0f%% of the time over the last %d steps: the loader "
                "cannot keep up; raise data.num_workers (now %s; this process may use %d CPUs)",
                100 * share,
                len(self.steps),
                workers,
                usable_cpus(),
            )

    def on_validation_start(self, trainer, pl_module) -> None:
        self.end = None  # the gap around validation is not waiting for training data

    def share(self) -> float:
        """The share of the window's time spent waiting for data."""
        wait = sum(w for w, _ in self.steps)
        total = wait + sum(b for _, b in self.steps)
        return wait / total if total > 0 else 0.0
