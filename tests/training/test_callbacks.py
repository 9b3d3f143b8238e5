"""The best checkpoint of a run is the one ModelCheckpoint rated best, not the last name."""

from __future__ import annotations

import torch

from cxrdet.training.callbacks import best_checkpoint


def _ckpt(path, best):
    state = {"best_model_path": f"/moved/run/checkpoints/{best}", "monitor": "val/AP40"}
    torch.save({"callbacks": {"ModelCheckpoint{'monitor': 'val/AP40'}": state}}, path)


def test_best_checkpoint_follows_the_recorded_best_and_numeric_steps(tmp_path):
    assert best_checkpoint(tmp_path) is None
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert best_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    # save_top_k=2: step 10000 was saved last and rates itself best; "step8000" sorts after it
    # by name, so a name sort would pick the older, worse one.
    _ckpt(tmp_path / "best-step8000.ckpt", "best-step8000.ckpt")
    _ckpt(tmp_path / "best-step10000.ckpt", "best-step10000.ckpt")
    assert best_checkpoint(tmp_path) == tmp_path / "best-step10000.ckpt"
    # The newest file records that an older one is still the best (the run moved since).
    _ckpt(tmp_path / "best-step10000.ckpt", "best-step8000.ckpt")
    assert best_checkpoint(tmp_path) == tmp_path / "best-step8000.ckpt"
