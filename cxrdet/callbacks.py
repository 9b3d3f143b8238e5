"""Lightning callbacks of cxrdet's own."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
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
