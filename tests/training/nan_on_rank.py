"""A test-only Lightning callback: one rank's boxes at one step become NaN, so that its loss
does (and only its). train.py instantiates it from the command line of the DDP tests:

    +callbacks.nan._target_=nan_on_rank.NanBatchOnRank +callbacks.nan.rank=1 +callbacks.nan.step=1

with ``tests/training`` on ``PYTHONPATH`` (each rank imports it).
"""

from __future__ import annotations

import pytorch_lightning as pl


class NanBatchOnRank(pl.Callback):
    def __init__(self, rank: int = 1, step: int = 1):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            for target in batch[1]:  # the images are uint8: their boxes carry the NaN
                target["boxes"] = target["boxes"] * float("nan")
