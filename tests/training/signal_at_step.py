"""A test-only Lightning callback: the training process sends itself a signal when a step
starts (SIGUSR2, SLURM's warning under hydra-submitit-launcher; SIGKILL, a kill -9).
train.py instantiates it from the command line of the resume tests:

    +callbacks.signal._target_=signal_at_step.SignalAtStep +callbacks.signal.name=SIGUSR2
    +callbacks.signal.step=5

with ``tests/training`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SignalAtStep(pl.Callback):
    def __init__(self, name: str = "SIGUSR2", step: int = 5):
        self.signal, self.step = getattr(signal, name), step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class SignalInValidation(pl.Callback):
    """The process sends itself ``name`` when the first batch of the validation after step
    ``step`` starts (a warning that arrives during a long validation)."""

    def __init__(self, name: str = "SIGUSR2", step: int = 4):
        self.signal, self.step = getattr(signal, name), step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        if trainer.global_step == self.step and batch_idx == 0 and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signal)
