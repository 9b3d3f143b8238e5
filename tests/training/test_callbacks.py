"""cxrdet's callbacks: the best checkpoint of a run (the one ModelCheckpoint rated best, not the
last name), and the step-time monitor."""

from __future__ import annotations

import re

import pytest
import torch

from cxrdet.training.checkpoints import best_checkpoint


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
    is_global_zero = True
    log_every_n_steps = 10
    global_step = 0

    class strategy:  # noqa: N801 (stands in for the strategy object)
        root_device = torch.device("cpu")

    class train_dataloader:  # noqa: N801 (stands in for the loader object)
        num_workers = 2


class _Module:
    def __init__(self):
        self.logged = []

    def log(self, name, value, **kwargs):
        self.logged.append((name, value))


def _steps(monitor, trainer, module, n, wait, work, clock, images=4):
    batch = ([None] * images, None)
    for i in range(n):
        clock.now += wait
        monitor.on_train_batch_start(trainer, module, batch, i)
        clock.now += work
        trainer.global_step += 1  # Lightning counts the step before on_train_batch_end
        monitor.on_train_batch_end(trainer, module, None, batch, i)


class _Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_step_times_are_logged_every_log_interval_and_a_starved_model_warns_once(caplog):
    """Fails if the figures are logged every step (each read makes a CUDA host wait), if the
    warm-up or the gap around validation is counted, or if images/s is not images over wall
    time."""
    from cxrdet.training.callbacks import StepTimeMonitor

    clock, module, trainer = _Clock(), _Module(), _Trainer()
    monitor = StepTimeMonitor(warn_share=0.2, warmup=3, clock=clock)
    with caplog.at_level("WARNING", logger="cxrdet.training.callbacks"):
        _steps(monitor, trainer, module, 20, wait=0.01, work=0.09, clock=clock)  # fed: 10 %
        assert not caplog.records
        # Steps 10 and 20 log (the first interval starts after the 3 warm-up steps).
        assert [n for n, _ in module.logged] == ["time/images_per_s", "time/data_wait_share"] * 2
        assert dict(module.logged[-2:])["time/images_per_s"] == pytest.approx(4 / 0.1)
        assert module.logged[-1][1] == pytest.approx(0.1)
        monitor.on_validation_start(trainer, module)
        clock.now += 100.0  # validation: not waiting for training data
        _steps(monitor, trainer, module, 30, wait=0.06, work=0.04, clock=clock)  # starved: 60 %
    assert len(module.logged) == 2 * 5
    shares = [v for n, v in module.logged if n == "time/data_wait_share"]
    assert shares[-1] == pytest.approx(0.6)
    assert max(shares) < 0.7  # the validation gap was never counted
    (warning,) = caplog.records  # once, when an interval first went over 20 %
    share = re.search(
        r"waited for data (\d+)% of the time over the last 10 steps", warning.msg % warning.args
    )
    assert share and 20 <= int(share.group(1)) <= 60
    assert "raise data.num_workers (now 2;" in warning.getMessage()


def test_a_whole_train_py_step_waits_for_the_device_only_in_the_model(tiny_data, tmp_path):
    """One step of train.py with its default callbacks and loggers, counted from one batch's
    start to the next (cxrdet.models.rcnn.syncs.SyncCounter, with the NMS a GPU runs): only
    the batched model's own waits. Fails if the progress bar's loss, the throughput monitor,
    the finite-loss check or a per-image loop makes the host wait every step (torchvision's
    path with them: ~120)."""
    import json

    from conftest import tiny_overrides, train_in_process

    out = tmp_path / "syncs.json"
    train_in_process(
        [
            *tiny_overrides(tiny_data, tmp_path / "run"),
            "trainer.max_steps=4",
            "trainer.val_check_interval=100",
            "model.nms_method=matrix",
            "+callbacks.sync_count._target_=cxrdet.models.rcnn.syncs.SyncCounter",
            f"+callbacks.sync_count.out={out}",
            "+callbacks.sync_count.step=2",
        ]
    )
    counts = json.loads(out.read_text())
    assert counts["ops"] > 1000  # a whole step was counted
    # The model's own: the ground truth's check, the RPN's NMS, ROI pooling's level counts; no
    # .item() anywhere else (seen failing with train/loss logged with prog_bar=True).
    assert counts["by_site"] == {
        "bool at matching.py:{} (refuse_degenerate_boxes)".format(
            _line("matching.py", "if not bad.any()")
        ): 1,
        "item at nms.py:{} (_matrix)".format(_line("nms.py", "if not changed.item()")): 1,
        "tolist at roi_align.py:{} (forward)".format(_line("roi_align.py", ".tolist()")): 1,
    }


def _line(name: str, text: str) -> int:
    """The line of cxrdet/models/rcnn/``name`` that holds ``text``."""
    from conftest import REPO

    lines = (REPO / "cxrdet" / "models" / "rcnn" / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_each_validation_s_wall_time_is_logged_at_its_step_but_not_the_sanity_check():
    """time/validation_s reaches every logger at the step it ran after (the demo's 'validate'
    stage reads it). Fails if the sanity check is counted or the time is not the wall time."""
    from cxrdet.training.callbacks import ValidationTime

    class Logger:
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, metrics))

    clock, trainer = _Clock(), _Trainer()
    trainer.loggers = [Logger()]
    timer = ValidationTime(clock=clock)
    trainer.sanity_checking = True
    timer.on_validation_start(trainer, None)
    clock.now += 5.0
    timer.on_validation_end(trainer, None)
    trainer.sanity_checking, trainer.global_step = False, 150
    timer.on_validation_start(trainer, None)
    clock.now += 12.5
    timer.on_validation_end(trainer, None)
    assert trainer.loggers[0].rows == [(150, {"time/validation_s": 12.5})]
