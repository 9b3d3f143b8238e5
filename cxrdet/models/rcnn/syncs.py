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

``.tolist()`` of a longer tensor and ``.cpu()`` copy without any of these; :func:`count_ops`
counts ``aten::_to_copy``/``aten::copy_`` separately (``copies``), as they may or may not cross
devices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

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
