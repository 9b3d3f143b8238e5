"""Lightning callbacks of cxrdet's own."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

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
        trainer.save_checkpoint(path)
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
        trainer.save_checkpoint(path)
        ckpt.last_model_path = str(path)


def best_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The checkpoint ModelCheckpoint rated best in a run's ``checkpoints/`` folder, else
    ``last.ckpt``, else None.

    Each ``best-step<N>.ckpt`` records the best path as of its own save, so the one with the
    highest step (a number, not a name: ``step8000`` comes before ``step10000``) knows the
    best of them all.
    """
    folder = Path(checkpoints_dir)
    best = sorted(folder.glob("best-*.ckpt"), key=_step_of)
    if best:
        state = torch.load(best[-1], map_location="cpu", weights_only=True, mmap=True)
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
