"""A test-only Lightning callback: every training batch's image ids, one JSON line per batch
in ``<out>.<rank>`` (epoch, step, rank, ids), so that tests can count which samples a run
trained. train.py instantiates it from the command line:

    +callbacks.samples._target_=record_samples.RecordSamples +callbacks.samples.out=<path>

with ``tests/training`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import json

import pytorch_lightning as pl


class RecordSamples(pl.Callback):
    def __init__(self, out: str):
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _, targets = batch
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "ids": [t["image_id"] for t in targets],
        }
        with open(f"{self.out}.{trainer.global_rank}", "a") as f:
            f.write(json.dumps(row) + "\n")
