"""Counting the operations that make a CUDA host wait for the GPU, on any device.

On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` names each synchronisation. On the CPU
nothing waits, but the same operators run, so counting them under ``torch.profiler`` measures
the same thing (a lower bound: copies to the host are not counted there):

- ``aten::nonzero``: boolean indexing, one-argument ``torch.where``, ``nonzero``;
- ``aten::_local_scalar_dense``: ``.item()``, ``bool(tensor)``, ``int(tensor)``, ``.tolist()``
  of a one-element tensor;
- ``torchvision::nms``: its result's length is read on the host;
- ``aten::masked_select``, ``aten::_unique2``, ``aten::unique_dim``,
  ``aten::unique_consecutive``, ``aten::repeat_interleave``: results of data-dependent size.

``.tolist()`` of a longer tensor and ``.cpu()`` wait too, without any of these operators: they
are not counted here. :class:`SyncCounter` counts one whole training step of ``train.py``
(``benchmarks/syncs.py``; ``+callbacks.sync_count._target_=cxrdet.models.rcnn.syncs.SyncCounter``).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile

SYNC_OPS = (
    "aten::nonzero",
    "aten::_local_scalar_dense",
    "torchvision::nms",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
)


def count_ops(fn: Callable[[], object]) -> dict:
    """Run ``fn`` once under the profiler: ``{"syncs": n, "ops": n, "by_op": {name: n}}``, the
    sync operators (:data:`SYNC_OPS`), all ``aten::``/``torchvision::`` operators (nested ones
    included) and the count of each sync operator."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return tally(prof)


def tally(prof) -> dict:
    """:func:`count_ops`'s figures of a finished profile."""
    names = Counter(e.name for e in prof.events())
    ops = sum(n for name, n in names.items() if name.startswith(("aten::", "torchvision::")))
    by_op = {name: names[name] for name in SYNC_OPS if names[name]}
    return {"syncs": sum(by_op.values()), "ops": ops, "by_op": by_op}


def training_step_counts(model: torch.nn.Module, images: list, targets: list) -> dict:
    """:func:`count_ops` of one forward + backward of ``model`` in training mode."""

    def step():
        losses = model(images, targets)
        sum(losses.values()).backward()

    model.train()
    return count_ops(step)


class SyncCounter(pl.Callback):
    """Profile training step ``step`` (batch start to the next batch start); write the counts
    as JSON to ``out``. On a GPU it also counts the synchronisations themselves
    (``torch.cuda.set_sync_debug_mode("warn")`` warns at each)."""

    def __init__(self, out: str, step: int = 3):
        self.out, self.step, self.prof = Path(out), step, None
        self.caught = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.prof is not None:
            self.finish()
        elif trainer.global_step == self.step:
            if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
                self.caught = warnings.catch_warnings(record=True)
                self.warned = self.caught.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.prof is not None:
            self.finish()

    def finish(self) -> None:
        cuda_syncs = None
        if self.caught is not None:
            torch.cuda.set_sync_debug_mode(0)
            cuda_syncs = sum("synchroniz" in str(w.message) for w in self.warned)
            self.caught.__exit__(None, None, None)
            self.caught = None
        self.prof.__exit__(None, None, None)
        counts = tally(self.prof)
        self.prof = None
        self.out.write_text(json.dumps({**counts, "cuda_syncs": cuda_syncs}))
