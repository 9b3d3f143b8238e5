"""Faults injected as a cluster injects them: a kill -9 in the middle of a checkpoint save with
``TMPDIR`` on another filesystem, and SLURM's signals sent to the whole process group (the
loader workers included), under a plain launch and under submitit's handlers, with
``scontrol`` stood in for."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PY, REPO, cannot_run, tiny_overrides

from cxrdet.training.resume import resume_checkpoint, step_of_checkpoint

pytestmark = pytest.mark.slow


def _start(args: list[str], env: dict | None = None, command=("train.py",)) -> subprocess.Popen:
    """train.py (or ``command``) in a process group of its own, as slurmstepd starts a job
    step."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO / "tests" / "training")}
    return subprocess.Popen(
        [PY, *command, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240, every: float = 0.005):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended first:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out:\n{proc.communicate()[0][-3000:]}")
        time.sleep(every)


@pytest.fixture
def other_tmpdir(tmp_path):
    """A TMPDIR on another filesystem than the run folder (/dev/shm), as clusters set it."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        cannot_run("needs /dev/shm on another filesystem than the run folder")
    folder = shm / f"cxrdet-test-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


def _files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` (torch keeps its compiler's cache in a subfolder)."""
    return [p for p in folder.iterdir() if p.is_file()]


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(
    tiny_data, tmp_path, other_tmpdir
):
    """With TMPDIR on another filesystem, kill -9 while last.ckpt is being written for the
    second time: the first one is still there, whole (every record's checksum), nothing is
    left in TMPDIR, and the relaunch removes the partial file and continues from it. Fails on
    a save through TMPDIR (Lightning's: a copy into last.ckpt itself, or a partial orphan in
    TMPDIR)."""
    run = tmp_path / "run"
    folder = run / "checkpoints"
    args = [
        *tiny_overrides(tiny_data, run),
        "trainer.max_steps=200",
        "trainer.val_check_interval=2",
        "augment=none",
    ]
    proc = _start(args, {"TMPDIR": str(other_tmpdir)})
    _wait_for(lambda: (folder / "last.ckpt").is_file(), proc)
    first = step_of_checkpoint(folder / "last.ckpt", whole=True)

    def saving() -> bool:
        return any(folder.glob(".last.ckpt.*.tmp")) or bool(_files(other_tmpdir))

    _wait_for(saving, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert _files(other_tmpdir) == []
    assert step_of_checkpoint(folder / "last.ckpt", whole=True) == first == 2
    assert resume_checkpoint(run, None, "auto") == str(folder / "last.ckpt")
    assert not list(folder.glob(".*.tmp"))


def _scontrol(tmp_path) -> tuple[dict, Path]:
    """An environment whose ``scontrol`` records its calls (a stand-in on PATH), and the
    file it records them in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}, calls


def _args(tiny_data, run, *extra) -> list[str]:
    return [
        *tiny_overrides(tiny_data, run),
        "data.num_workers=2",  # workers alive in the process group when the signal comes
        "trainer.max_steps=24",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=1",
        "augment=none",
        *extra,
    ]


def _signal_group_when_training(proc, run: Path, sig) -> str:
    """Send ``sig`` to the whole process group (SLURM's way) once a step has been logged; the
    process's output when it ends."""
    metrics = run / "csv" / "metrics.csv"
    _wait_for(lambda: metrics.is_file() and "train/loss" in metrics.read_text(), proc, every=0.2)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=240)
    return out


@pytest.mark.parametrize("launch", ["srun", "submitit"])
def test_the_warning_to_every_process_saves_requeues_once_and_the_job_continues(
    tiny_data, tmp_path, launch
):
    """SLURM's warning to the whole process group, loader workers included: under srun with
    ``--signal=USR1@120`` (callbacks.signals.warning=USR1), or under submitit (USR2, its own
    requeue handler installed in the process). requeue.ckpt is written, scontrol requeues
    once, the process exits with -1, and the same command would continue from it
    (test_resume.py runs that relaunch). Fails when the workers die of the signal or run
    submitit's handler (no checkpoint, racing requeues)."""
    env, calls = _scontrol(tmp_path)
    run = tmp_path / "run"
    if launch == "srun":
        args = _args(tiny_data, run, "callbacks.signals.warning=USR1")
        proc, sig = _start(args, env), signal.SIGUSR1
    else:
        args = _args(tiny_data, run)
        env.update(SUBMITIT_EXECUTOR="slurm", SLURM_PROCID="0", SLURM_NTASKS="1",
                   SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1",
                   SLURM_JOB_NODELIST="localhost")  # fmt: skip
        job = [str(REPO / "tests" / "training" / "submitit_job.py"), str(tmp_path / "submitit")]
        proc, sig = _start(args, env, command=job), signal.SIGUSR2
    out = _signal_group_when_training(proc, run, sig)
    assert proc.returncode == 255, out[-3000:]
    assert "DataLoader worker" not in out and "Traceback" not in out, out[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]  # once, by rank 0 alone
    stopped_at = step_of_checkpoint(run / "checkpoints" / "requeue.ckpt", whole=True)
    assert 0 < stopped_at < 24 and "requeued SLURM job 4242" in out
    assert resume_checkpoint(run, None, "auto") == str(run / "checkpoints" / "requeue.ckpt")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR2"])
def test_under_ddp_every_rank_stops_at_one_step_saves_once_and_learns_the_outcome(
    tiny_data, tmp_path, sig
):
    """Two processes (gloo) and their loader workers get the signal at once, as SLURM sends it
    to the process group: the workers leave it to their main processes, the ranks agree on one
    step, save one checkpoint together (sigterm.ckpt for a pre-emption or the time limit, exit
    143; requeue.ckpt for the warning), which the relaunch takes; for the warning, with no
    scontrol on the node (a container), every rank reports that the job was not requeued
    instead of one raising while the other waits. Fails (times out) when the ranks act on their
    own signal at different steps, or rank 0's requeue error leaves rank 1 in a collective; and
    when the workers die of SIGTERM (the loader's error, no checkpoint)."""
    run = tmp_path / "run"
    args = _args(tiny_data, run, "trainer.accelerator=cpu", "trainer.devices=2",
                 "data.val_fraction=0.5", "data.num_workers=1")  # fmt: skip
    path = "/usr/bin:/bin"
    if shutil.which("scontrol", path=path):
        cannot_run("needs a node without scontrol")
    proc = _start(args, {"PATH": path, "SLURM_JOB_ID": "4242"})
    out = _signal_group_when_training(proc, run, getattr(signal, sig))
    name = "sigterm.ckpt" if sig == "SIGTERM" else "requeue.ckpt"
    assert proc.returncode == (143 if sig == "SIGTERM" else 255), out[-3000:]
    assert "DataLoader worker" not in out and "Traceback" not in out, out[-3000:]
    step = step_of_checkpoint(run / "checkpoints" / name, whole=True)
    assert 0 < step < 24 and out.count(f"{sig} at step {step}: saved") == 1
    assert resume_checkpoint(run, None, "auto") == str(run / "checkpoints" / name)
    if sig == "SIGUSR2":
        assert out.count("scontrol is not on this node's PATH") == 2  # rank 0's line, rank 1's
