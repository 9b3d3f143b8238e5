"""Exact resume and repeatable runs on CPU: same seed, same weights and metrics."""

from __future__ import annotations

import os
import subprocess

import pandas as pd
import pytest
import torch
from conftest import PY, REPO, tiny_overrides, train_in_process

pytestmark = pytest.mark.slow


STEPS = 8


def _train(tiny_data, run, *extra, max_steps=STEPS):
    return train_in_process(_args(tiny_data, run, *extra, max_steps=max_steps))


def _args(tiny_data, run, *extra, max_steps=STEPS) -> list[str]:
    # 8 steps over two epochs (6 batches each), validation and a checkpoint at steps 4 and 8,
    # the seed's augmentation, two loader workers: a resume at step 4 lands mid-epoch and
    # crosses the epoch boundary.
    return [
        *tiny_overrides(tiny_data, run),
        "data.num_workers=2",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=4",
        "trainer.deterministic=true",
        "callbacks.model_checkpoint.save_top_k=-1",
        *extra,
    ]


def _interrupted(tiny_data, run, signal: str, step: int, *extra, env=None):
    """train.py in a process of its own that sends itself ``signal`` when step ``step``
    starts (tests/training/signal_at_step.py)."""
    args = [
        *_args(tiny_data, run, *extra),
        "+callbacks.signal._target_=signal_at_step.SignalAtStep",
        f"+callbacks.signal.name={signal}",
        f"+callbacks.signal.step={step}",
    ]
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO / "tests" / "training")}
    return subprocess.run(
        [PY, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )


def _step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _val_metrics(run):
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    return metrics.dropna(subset=["val/loss"])[["step", "val/loss", "val/AP40", "val/mAP40"]]


@pytest.fixture(scope="module")
def straight(tiny_data, module_tmp):
    run = module_tmp / "straight"
    _train(tiny_data, run)
    return run


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(
    tiny_data, straight, tmp_path
):
    """From step 4 (mid-epoch) to step 8 across the epoch boundary, with no loader workers
    where the run had two (data.num_workers=auto changes with the node): bit-identical
    weights, and the validation at step 8 matches too. Fails with a loader state that holds
    its workers' (torchdata's: a bare AssertionError on another worker count)."""
    mid = straight / "checkpoints" / "best-step4.ckpt"
    assert _step(mid) == 4
    resumed = tmp_path / "resumed"
    log = _train(tiny_data, resumed, f"ckpt_path={mid}", "data.num_workers=0")
    assert "schedule is stretched" not in log  # same max_steps
    assert _step(resumed / "checkpoints" / "last.ckpt") == STEPS
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(resumed / "checkpoints" / "last.ckpt"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    pd.testing.assert_frame_equal(
        _val_metrics(straight).iloc[1:].reset_index(drop=True),
        _val_metrics(resumed).reset_index(drop=True),
    )


def test_resuming_with_another_max_steps_says_the_schedule_is_stretched(
    tiny_data, straight, tmp_path
):
    mid = straight / "checkpoints" / "best-step4.ckpt"
    log = _train(tiny_data, tmp_path / "other", f"ckpt_path={mid}", max_steps=5)
    assert "resuming at step 4 a LR schedule made for 8 steps with trainer.max_steps=5" in log
    assert "keep trainer.max_steps=8 to continue it unchanged" in log
    # Step 5 is no validation step: last.ckpt still holds it (written when training ends).
    assert _step(tmp_path / "other" / "checkpoints" / "last.ckpt") == 5


def test_last_ckpt_follows_every_validation_and_a_kill_resumes_from_the_latest(
    tiny_data, straight, tmp_path
):
    """Validation every 2 steps, the monitored metric never improving after the first
    (val/images is the same every time): Lightning's save_last would leave last.ckpt at step
    2. A kill -9 at step 7 finds it at step 6, the latest validation, and the same command
    (resume=auto) ends with the uninterrupted run's weights (validating more often changes no
    training draw). Seen failing with callbacks.model_checkpoint.save_last doing the job
    (last.ckpt at step 2)."""
    run = tmp_path / "killed"
    never_improves = [
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.monitor=val/images",
        "callbacks.model_checkpoint.save_top_k=1",
    ]
    done = _interrupted(tiny_data, run, "SIGKILL", 7, *never_improves)
    assert done.returncode == -9, done.stdout[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("best-*")) == ["best-step2.ckpt"]
    assert _step(run / "checkpoints" / "last.ckpt") == 6
    log = _train(tiny_data, run, *never_improves)  # the same command, the same folder
    assert "resume=auto" in log and "at step 6: continuing from last.ckpt" in log
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(run / "checkpoints" / "last.ckpt"),
    )
    assert _step(run / "checkpoints" / "last.ckpt") == STEPS
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.fixture(scope="module")
def requeued(tiny_data, module_tmp):
    """A run from step 0 that gets SIGUSR2 at step 5 (with ``scontrol`` stood in for), and the
    same command run again: (the run folder, the stopped process, the relaunch's log, the
    recorded scontrol calls)."""
    bin_dir = module_tmp / "bin"
    bin_dir.mkdir()
    calls = module_tmp / "scontrol.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    run = module_tmp / "requeued"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    done = _interrupted(tiny_data, run, "SIGUSR2", 5, env=env)
    stopped_at = _step(run / "checkpoints" / "requeue.ckpt") if done.returncode == 255 else None
    log = _train(tiny_data, run)  # the requeued job: the same command in the same folder
    return run, done, log, calls.read_text().split() if calls.is_file() else [], stopped_at


def test_same_seed_gives_the_same_weights_and_metrics(straight, requeued):
    """A second run with the same seed (its steps 1-7 in a process of their own, the last one
    after a requeue): the same validation at step 4 and the same final weights."""
    run = requeued[0]
    same = _val_metrics(run)
    pd.testing.assert_frame_equal(
        _val_metrics(straight).reset_index(drop=True), same.reset_index(drop=True)
    )
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(run / "checkpoints" / "last.ckpt"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_slurm_s_warning_saves_requeues_and_the_requeued_job_finishes_the_run(straight, requeued):
    """SIGUSR2 (hydra-submitit-launcher's warning before the time limit) at step 5, the last
    of the first epoch: one more step, then requeue.ckpt is written, ``scontrol requeue <job>``
    is called (a stand-in on PATH records it) and the process exits with -1 as submitit's
    handler does; the same command again (the requeued job, same folder) continues from step 7
    to the uninterrupted run's weights. Seen failing without the callback (the job restarts at
    step 0) and when saving right after an epoch's last batch (Lightning then numbers that epoch
    again); a signal mid-epoch (step 2, saved at 3) resumes exactly too."""
    run, done, log, calls, stopped_at = requeued
    assert done.returncode == 255, done.stderr[-2000:]  # sys.exit(-1)
    assert "Traceback" not in done.stderr
    assert calls == ["requeue", "4242"]
    assert stopped_at == 7
    said = done.stdout + done.stderr
    assert "SIGUSR2 at step 7: saved" in said and "requeued SLURM job 4242" in said
    assert "at step 7: continuing from requeue.ckpt" in log
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(run / "checkpoints" / "last.ckpt"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_warning_during_validation_stops_there_and_the_resumed_run_validates_again(
    tiny_data, straight, tmp_path
):
    """SIGUSR2 as the validation after step 4 starts (3 batches of one image): the run stops
    after that validation's first batch, not a step later, with requeue.ckpt at step 4; the
    relaunch runs the whole validation at step 4 again (the uninterrupted run's figures) and
    ends with its weights. Fails when the checkpoint's validation progress is kept (Lightning
    then skips the rest of that validation: no figures at step 4)."""
    run = tmp_path / "warned"
    args = [
        *_args(tiny_data, run, "data.val_batch_size=1"),
        "+callbacks.signal._target_=signal_at_step.SignalInValidation",
        "+callbacks.signal.step=4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "training")}
    done = subprocess.run(
        [PY, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 255, done.stderr[-3000:]
    assert "SIGUSR2 at step 4 (during validation): saved" in done.stdout + done.stderr
    assert _step(run / "checkpoints" / "requeue.ckpt") == 4
    _train(tiny_data, run, "data.val_batch_size=1")
    scores = ["step", "val/AP40", "val/mAP40"]  # val/loss's ROI draws change with the batch
    pd.testing.assert_frame_equal(
        _val_metrics(straight)[scores].reset_index(drop=True),
        _val_metrics(run)[scores].reset_index(drop=True),
    )
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(run / "checkpoints" / "last.ckpt"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
