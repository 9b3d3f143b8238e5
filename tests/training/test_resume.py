"""Exact resume and repeatable runs on CPU: same seed, same weights and metrics."""

from __future__ import annotations

import os
import subprocess

import pandas as pd
import pytest
import torch
from conftest import PY, REPO, tiny_overrides, train_in_process

pytestmark = pytest.mark.slow


def _train(tiny_data, run, *extra, max_steps=10):
    return train_in_process(_args(tiny_data, run, *extra, max_steps=max_steps))


def _args(tiny_data, run, *extra, max_steps=10) -> list[str]:
    # 10 steps over two epochs (6 batches each), validation and a checkpoint every 4 steps,
    # the seed's augmentation, two loader workers: the resume at step 4 lands mid-epoch.
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


@pytest.mark.parametrize("step", [4, 8], ids=["mid-first-epoch", "mid-second-epoch"])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(
    tiny_data, straight, tmp_path, step
):
    mid = straight / "checkpoints" / f"best-step{step}.ckpt"
    assert torch.load(mid, weights_only=True)["global_step"] == step
    resumed = tmp_path / "resumed"
    log = _train(tiny_data, resumed, f"ckpt_path={mid}")
    assert "schedule is stretched" not in log  # same max_steps
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(resumed / "checkpoints" / "last.ckpt"),
    )
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    if step == 4:  # the validation at step 8 after the resume matches too
        pd.testing.assert_frame_equal(
            _val_metrics(straight).iloc[1:].reset_index(drop=True),
            _val_metrics(resumed).reset_index(drop=True),
        )


def test_same_seed_gives_the_same_weights_and_metrics(tiny_data, straight, tmp_path):
    again = tmp_path / "again"
    _train(tiny_data, again)
    pd.testing.assert_frame_equal(_val_metrics(straight), _val_metrics(again))
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(again / "checkpoints" / "last.ckpt"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_last_checkpoint_holds_the_final_step_between_validations(straight):
    # max_steps=10 is no multiple of val_check_interval=4: last.ckpt is written at the end.
    assert (
        torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    )


def test_resuming_with_another_max_steps_says_the_schedule_is_stretched(
    tiny_data, straight, tmp_path
):
    mid = straight / "checkpoints" / "best-step8.ckpt"
    log = _train(tiny_data, tmp_path / "longer", f"ckpt_path={mid}", max_steps=12)
    assert "resuming at step 8 a LR schedule made for 10 steps with trainer.max_steps=12" in log
    assert "keep trainer.max_steps=10 to continue it unchanged" in log


def test_last_ckpt_follows_every_validation_and_a_kill_resumes_from_the_latest(
    tiny_data, straight, tmp_path
):
    """The monitored metric never improves after the first validation (val/images is the same
    every time): Lightning's save_last would leave last.ckpt at step 4. A kill -9 at step 9
    finds it at step 8, the latest validation, and the same command (resume=auto) ends with
    the uninterrupted run's weights. Seen failing with callbacks.model_checkpoint.save_last
    doing the job (last.ckpt at step 4)."""
    run = tmp_path / "killed"
    never_improves = [
        "callbacks.model_checkpoint.monitor=val/images",
        "callbacks.model_checkpoint.save_top_k=1",
    ]
    done = _interrupted(tiny_data, run, "SIGKILL", 9, *never_improves)
    assert done.returncode == -9
    assert sorted(p.name for p in (run / "checkpoints").glob("best-*")) == ["best-step4.ckpt"]
    assert _step(run / "checkpoints" / "last.ckpt") == 8
    log = _train(tiny_data, run, *never_improves)  # the same command, the same folder
    assert "resume=auto" in log and "at step 8: continuing from last.ckpt" in log
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(run / "checkpoints" / "last.ckpt"),
    )
    assert _step(run / "checkpoints" / "last.ckpt") == 10
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_slurm_s_warning_saves_requeues_and_the_requeued_job_finishes_the_run(
    tiny_data, straight, tmp_path
):
    """SIGUSR2 (hydra-submitit-launcher's warning before the time limit) at step 5, the last
    of the first epoch: one more step, then requeue.ckpt is written, ``scontrol requeue <job>``
    is called (a stand-in on PATH records it) and the process exits with -1 as submitit's
    handler does; the same command again (the requeued job, same folder) continues from step 7
    to the uninterrupted run's weights. Seen failing without the callback (the job restarts at
    step 0) and when saving right after an epoch's last batch (Lightning then numbers that epoch
    again)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    run = tmp_path / "requeued"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    done = _interrupted(tiny_data, run, "SIGUSR2", 5, env=env)
    assert done.returncode == 255, done.stderr[-2000:]  # sys.exit(-1)
    assert "Traceback" not in done.stderr
    assert calls.read_text().split() == ["requeue", "4242"]
    assert _step(run / "checkpoints" / "requeue.ckpt") == 7
    said = done.stdout + done.stderr
    assert "SIGUSR2 at step 7: saved" in said and "requeued SLURM job 4242" in said
    log = _train(tiny_data, run)  # the requeued job: the same command in the same folder
    assert "at step 7: continuing from requeue.ckpt" in log
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(run / "checkpoints" / "last.ckpt"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
