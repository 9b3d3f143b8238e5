"""Lightning callbacks of cxrdet's own for the training loop (the checkpoints' are in
:mod:`cxrdet.training.checkpoints`)."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

from cxrdet.data.cpus import usable_cpus

log = logging.getLogger(__name__)


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


class ModelSize(pl.Callback):
    """One log line for the model (its class, parameters and size) in place of Lightning's
    layer table (``trainer.enable_model_summary: false``), whose FLOPs column reads 0 for a
    detector: Lightning counts FLOPs only on an ``example_input_array``, which a model taking
    lists of images of any size has not."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        params = list(pl_module.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        size = sum(p.numel() * p.element_size() for p in params) / 1e6
        model = getattr(pl_module, "model", pl_module)
        log.info(
            "model: %s, %.1f M parameters (%.1f M trainable), %.0f MB",
            type(model).__name__,
            total / 1e6,
            trainable / 1e6,
            size,
        )


class ValidationTime(pl.Callback):
    """Logs ``time/validation_s``: each validation's wall time, its metrics included (rank 0;
    the sanity check is not counted). Written to the loggers directly (Lightning's ``self.log``
    is closed once validation has ended), at the step Lightning logs that validation's metrics
    at (its count of optimizer steps taken, one under ``global_step`` there)."""

    def __init__(self, clock=None):
        self.clock = clock or time.perf_counter
        self.start: float | None = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.start = None if trainer.sanity_checking else self.clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.start is None or not trainer.is_global_zero:
            return
        seconds = self.clock() - self.start
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        step = getattr(loop, "_batches_that_stepped", trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics({"time/validation_s": seconds}, step=step)
        self.start = None


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
