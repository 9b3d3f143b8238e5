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


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """train.py in a process group of its own, as slurmstepd starts a job step."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO / "tests" / "training")}
    return subprocess.Popen(
        [PY, "train.py", *args],
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
