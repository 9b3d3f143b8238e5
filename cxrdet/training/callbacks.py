"""Lightning callbacks of cxrdet's own."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
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


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss without the host waiting for the GPU
    at every step.

    Lightning turns every value logged with ``prog_bar=True`` into a Python number at the end
    of each batch (one ``.item()``, a wait for the GPU, per step), whatever the bar's refresh
    rate. The modules log ``train/loss`` without it, and this bar reads the value from the
    callback metrics only when it redraws (``refresh_rate``).
    """

    SHOWN = ("train/loss",)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        for name in self.SHOWN:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                items[name] = f"{float(value):.3g}"
        return items


class StepTimeMonitor(pl.Callback):
    """Training speed without making the host wait every step: logs ``time/images_per_s`` and
    ``time/data_wait_share`` every ``trainer.log_every_n_steps`` steps (rank 0), and warns once
    when the loader cannot keep up.

    A step's wait is the time from the end of the previous batch to the start of this one (the
    loader's next batch, and Lightning's own bookkeeping). Over each logging interval, images/s
    is the images trained divided by the interval's wall time, read after one wait for the
    device (so that queued GPU work is counted), and the share is the summed waits over that
    wall time. The first ``warmup`` steps (workers starting) and the step after each validation
    are not counted. Once an interval waits more than ``warn_share``, one warning names
    ``data.num_workers``.
    """

    def __init__(self, warn_share: float = 0.2, warmup: int = 5, clock=None):
        self.warn_share, self.warmup = warn_share, warmup
        self.clock = clock or time.perf_counter
        self.end: float | None = None
        self.wait: float | None = None
        self.since: float | None = None  # the start of the interval being measured
        self.waited = 0.0
        self.images = 0
        self.seen = 0
        self.warned = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        now = self.clock()
        self.wait = None if self.end is None else now - self.end
        if self.since is None and self.end is not None and self.seen >= self.warmup:
            self.since, self.waited, self.images = self.end, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        self.seen += 1
        if self.since is not None and self.wait is not None:
            self.waited += self.wait
            self.images += len(batch[0])
        if trainer.global_step % max(1, trainer.log_every_n_steps) or self.since is None:
            self.end = self.clock()
            return
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per interval: its queued steps are counted
        self.end = self.clock()
        seconds = self.end - self.since
        if seconds <= 0 or not self.images:
            return
        share = self.waited / seconds
        pl_module.log("time/images_per_s", self.images / seconds, rank_zero_only=True)
        pl_module.log("time/data_wait_share", share, rank_zero_only=True)
        self.since, self.waited, self.images = self.end, 0.0, 0
        if share > self.warn_share and not self.warned:
            self.warned = True
            loader = getattr(trainer, "train_dataloader", None)
            workers = getattr(loader, "num_workers", "?")
            log.warning(
                "training waited for data %.0f%% of the time over the last %d steps: the loader "
                "cannot keep up; raise data.num_workers (now %s; this process may use %d CPUs)",
                100 * share,
                trainer.log_every_n_steps,
                workers,
                usable_cpus(),
            )

    def on_validation_start(self, trainer, pl_module) -> None:
        self.end = self.since = None  # the gap around validation is not training time
