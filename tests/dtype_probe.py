"""A test-only Lightning callback: what precision the training steps really ran in, and
whether they moved the weights. train.py instantiates it in-process:

    +callbacks.probe._target_=dtype_probe.DtypeProbe +callbacks.probe.out=<file.json>
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch


class DtypeProbe(pl.Callback):
    def __init__(self, out: str):
        self.out, self.dtypes, self.before = Path(out), set(), None

    def on_train_start(self, trainer, pl_module) -> None:
        body = pl_module.model.backbone.body
        body.layer2.register_forward_hook(lambda m, i, o: self.dtypes.add(str(o.dtype)))
        self.before = body.layer2[0].conv1.weight.detach().clone()

    def on_train_end(self, trainer, pl_module) -> None:
        after = pl_module.model.backbone.body.layer2[0].conv1.weight.detach()
        moved = not torch.equal(self.before, after)
        self.out.write_text(json.dumps({"dtypes": sorted(self.dtypes), "moved": moved}))
