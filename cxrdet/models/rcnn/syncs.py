"""Counting, on any device, the places where a CUDA host would wait for the GPU.

On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` names each synchronisation. On the CPU
nothing waits, so :class:`HostWaits` models what would: it watches one piece of code at two
levels and records each wait with the line of Python that caused it.

- **Reads** (the host needs a value the device computed): ``.item()``, ``bool()``/``int()``/
  ``float()`` of a tensor, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``torch.equal`` (and the
  ``aten::_local_scalar_dense`` that C++ code, backward included, calls for them).
- **Shapes** (the result's size depends on the data, so the host reads it): ``nonzero`` and
  one-argument ``torch.where``, boolean-mask indexing (``x[mask]``, ``x[mask] = v``, and their
  backward), ``masked_select``, ``unique``, ``bincount``, ``repeat_interleave`` without
  ``output_size``, and torchvision's ``nms`` (which also copies its whole suppression mask).
- **Copies** (host data made into device tensors: a pageable copy the host waits for):
  ``torch.tensor``/``as_tensor``/``asarray`` given a ``device``, and ``.to(device)``/``.cuda()``
  of a tensor that lives on the host.

Which tensors live on the host is followed through the code: a tensor made without a
``device`` (``torch.tensor([..])``, ``torch.zeros(3)``) is on the host, as is every result of
operations on host tensors only; reading one back is free and is not counted. Everything else
(parameters, buffers, the batch the loader delivered, what is made with ``device=``) counts as
the device's. A ``non_blocking=True`` copy is not counted, nor Lightning's transfer of the
loader's batch (which asks for one on a GPU, not on the CPU): from pinned memory it is
asynchronous, and the loaders pin their batches on a GPU.

:class:`SyncCounter` counts one whole training step of ``train.py`` (``benchmarks/syncs.py``;
``+callbacks.sync_count._target_=cxrdet.models.rcnn.syncs.SyncCounter``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

Tensor = torch.Tensor

# Python-level calls: the host reads a device value (not counted for host tensors).
READS = {
    Tensor.item: "item",
    Tensor.tolist: "tolist",
    Tensor.cpu: "cpu",
    Tensor.numpy: "numpy",
    Tensor.__bool__: "bool",
    Tensor.__int__: "int",
    Tensor.__float__: "float",
    Tensor.__index__: "index",
}
FROM_HOST_DATA = (torch.tensor, torch.as_tensor, torch.asarray)
MOVES = (Tensor.to, Tensor.cuda)
# ATen operators that wait: those whose output size depends on the data, and reads.
SHAPE_OPS = {
    "aten::nonzero": "nonzero",
    "aten::masked_select": "masked_select",
    "aten::_unique": "unique",
    "aten::_unique2": "unique",
    "aten::unique_dim": "unique",
    "aten::unique_consecutive": "unique",
    "aten::unique_dim_consecutive": "unique",
    "aten::bincount": "bincount",
    "torchvision::nms": "nms",
}
READ_OPS = {"aten::_local_scalar_dense": "item", "aten::equal": "equal"}
INDEX_OPS = ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_")
OWN_FILES = (os.sep + "torch" + os.sep, os.sep + "torchvision" + os.sep, __file__)


class Wait(NamedTuple):
    """One place the host would wait: ``kind`` (read, shape, copy), the operation, the line."""

    kind: str
    what: str
    site: str


def call_site() -> str:
    """``file:line (function)`` of the innermost frame outside torch, torchvision and here."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(part in frame.filename for part in OWN_FILES):
            return f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"
    return "?"


def _tensors(values) -> list[Tensor]:
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, list | tuple):
            out.extend(_tensors(v))
    return out


def _lightning_batch_transfer() -> bool:
    """Whether Lightning's ``batch_to`` (its move of the loader's batch) is the caller."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "batch_to" and "lightning_fabric" in code.co_filename:
            return True
        frame = frame.f_back
    return False


def _names_a_device(args, kwargs) -> bool:
    """Whether a ``.to(...)``/``.cuda(...)`` call names a device (not only a dtype)."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, str | torch.device | int | Tensor) for a in args[1:])


class _PythonLevel(TorchFunctionMode):
    def __init__(self, owner: HostWaits):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        inputs = _tensors(args) + _tensors(kwargs.values())
        on_host = all(owner.is_host(t) for t in inputs)
        if func in READS:
            if not on_host:
                owner.record("read", READS[func])
            owner.reading += 1
            try:
                return func(*args, **kwargs)
            finally:
                owner.reading -= 1
        out = func(*args, **kwargs)
        if func in FROM_HOST_DATA:
            if kwargs.get("device") is not None:
                owner.record("copy", f"torch.{func.__name__}(device=)")
            else:
                owner.mark_host(out)
        elif func in MOVES:
            moved = func is Tensor.cuda or _names_a_device(args, kwargs)
            asynchronous = kwargs.get("non_blocking") or _lightning_batch_transfer()
            if inputs and on_host and moved and not asynchronous:
                owner.record("copy", f".{func.__name__}(device)")
            elif on_host:
                owner.mark_host(out)
        elif not inputs:
            if kwargs.get("device") is None:  # a factory on the host
                owner.mark_host(out)
        elif on_host:
            owner.mark_host(out)
        return out


class _AtenLevel(TorchDispatchMode):
    def __init__(self, owner: HostWaits):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        owner = self.owner
        owner.ops += 1
        if name in SHAPE_OPS:
            owner.record("shape", SHAPE_OPS[name])
        elif name in READ_OPS and not owner.reading:
            owner.record("read", READ_OPS[name])
        elif name == "aten::repeat_interleave" and func._overloadname == "Tensor":
            if kwargs.get("output_size") is None:
                owner.record("shape", "repeat_interleave")
        elif name in INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                owner.record("shape", "boolean index")
        return func(*args, **kwargs)


class HostWaits:
    """A context that records every place CUDA would make the host wait (module docstring).

    Example::

        with HostWaits() as waits:
            model(images, targets)
        waits.count, waits.summary()
    """

    def __init__(self):
        self.waits: list[Wait] = []
        self.ops = 0
        self.reading = 0
        self._host: dict[int, weakref.ref] = {}  # id -> the host tensor (ids are reused)
        self._modes = (_PythonLevel(self), _AtenLevel(self))

    def __enter__(self) -> HostWaits:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def count(self) -> int:
        return len(self.waits)

    def record(self, kind: str, what: str) -> None:
        self.waits.append(Wait(kind, what, call_site()))

    def is_host(self, t: Tensor) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def mark_host(self, out) -> None:
        for t in _tensors(out if isinstance(out, list | tuple) else [out]):
            self._host[id(t)] = weakref.ref(t)

    def summary(self) -> dict:
        """``{"waits": n, "by_kind": {kind: n}, "by_what": {op: n}, "by_site": {line: n},
        "ops": n}`` (``ops``: every ATen/torchvision operator, backward included)."""
        return {
            "waits": self.count,
            "by_kind": dict(Counter(w.kind for w in self.waits)),
            "by_what": dict(Counter(w.what for w in self.waits)),
            "by_site": dict(Counter(f"{w.what} at {w.site}" for w in self.waits)),
            "ops": self.ops,
        }


def count_waits(fn: Callable[[], object]) -> dict:
    """Run ``fn`` once under :class:`HostWaits`; its :meth:`HostWaits.summary`."""
    with HostWaits() as waits:
        fn()
    return waits.summary()


def training_step_counts(model: torch.nn.Module, images: list, targets: list) -> dict:
    """:func:`count_waits` of one forward + backward of ``model`` in training mode."""

    def step():
        losses = model(images, targets)
        sum(losses.values()).backward()

    model.train()
    return count_waits(step)


class SyncCounter(pl.Callback):
    """Count the waits of training step ``step`` (batch start to the next batch start) with
    :class:`HostWaits`; write its summary as JSON to ``out``. On a GPU it also counts the
    synchronisations themselves (``torch.cuda.set_sync_debug_mode("warn")`` warns at each)."""

    def __init__(self, out: str, step: int = 3):
        self.out, self.step = Path(out), step
        self.waits: HostWaits | None = None
        self.caught = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.waits is not None:
            self.finish()
        elif trainer.global_step == self.step:
            if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
                self.caught = warnings.catch_warnings(record=True)
                self.warned = self.caught.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            self.waits = HostWaits().__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.waits is not None:
            self.finish()

    def finish(self) -> None:
        self.waits.__exit__(None, None, None)
        cuda_syncs = None
        if self.caught is not None:
            torch.cuda.set_sync_debug_mode(0)
            cuda_syncs = sum("synchroniz" in str(w.message) for w in self.warned)
            self.caught.__exit__(None, None, None)
            self.caught = None
        summary = self.waits.summary()
        self.waits = None
        self.out.write_text(json.dumps({**summary, "cuda_syncs": cuda_syncs}))
