"""cxrdet's callbacks: the best checkpoint of a run (the one ModelCheckpoint rated best, not the
last name), and the data-wait monitor."""

from __future__ import annotations

import re

import pytest
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


class _Trainer:
    class train_dataloader:  # noqa: N801 (stands in for the loader object)
        num_workers = 2


class _Module:
    def __init__(self):
        self.logged = []

    def log(self, name, value):
        self.logged.append((name, value))


def _steps(monitor, module, n, wait, work, clock):
    for i in range(n):
        clock.now += wait
        monitor.on_train_batch_start(_Trainer(), module, None, i)
        clock.now += work
        monitor.on_train_batch_end(_Trainer(), module, None, None, i)


class _Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_data_wait_share_is_logged_and_a_starved_model_warns_once_naming_num_workers(caplog):
    from cxrdet.training.callbacks import DataWaitMonitor

    clock, module = _Clock(), _Module()
    monitor = DataWaitMonitor(warn_share=0.2, window=10, warmup=3, clock=clock)
    with caplog.at_level("WARNING", logger="cxrdet.training.callbacks"):
        _steps(monitor, module, 20, wait=0.01, work=0.09, clock=clock)  # a fed model: 10 %
        assert not caplog.records
        assert [n for n, _ in module.logged] == ["time/data_wait_share"] * 17  # after the warm-up
        assert module.logged[-1][1] == pytest.approx(0.1)
        monitor.on_validation_start(_Trainer(), module)
        clock.now += 100.0  # validation: not waiting for training data
        _steps(monitor, module, 30, wait=0.06, work=0.04, clock=clock)  # starved: 60 %
    assert module.logged[-1][1] == pytest.approx(0.6)
    assert max(v for _, v in module.logged) < 0.7  # the validation gap was never counted
    (warning,) = caplog.records  # once, when the window first went over 20 %
    share = re.search(
        r"waited for data (\d+)% of the time over the last 10 steps", warning.msg % warning.args
    )
    assert share and 20 <= int(share.group(1)) <= 60
    assert "raise data.num_workers (now 2;" in warning.getMessage()
