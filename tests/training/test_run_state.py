"""What a run needs to continue and to start right, without training: every rank's RNG states
and their restore on another process or GPU count, the checkpoint a relaunch continues from,
the resume point's clock, loader workers under SLURM, shared memory, the GPU against the torch
build, and SLURM's requeue owner."""

from __future__ import annotations

import logging
import random
import signal
import types

import numpy as np
import pytest
import torch

from cxrdet.training import checkpoints
from cxrdet.training.checkpoints import ResumePoint, RNGStateInCheckpoint
from cxrdet.training.resume import resume_checkpoint


def _states(seed: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return checkpoints._rng_state()


def _draws() -> tuple:
    return torch.rand(1).item(), float(np.random.rand()), random.random()


@pytest.fixture
def world(monkeypatch):
    """Pretend to be ``rank`` of ``size`` processes, gathering the given per-rank states."""

    def set_world(rank: int, size: int, gathered=None):
        monkeypatch.setattr(checkpoints, "_world", lambda: (rank, size))

        def all_gather_object(out, obj):
            out[:] = gathered if gathered is not None else [obj] * size

        monkeypatch.setattr(checkpoints.dist, "all_gather_object", all_gather_object)

    return set_world


def test_every_rank_s_states_are_saved_and_each_rank_resumes_with_its_own(world):
    """Fails if the file holds rank 0's states only (every rank would resume with them)."""
    saved = [_states(0), _states(1)]
    world(0, 2, gathered=saved)
    checkpoint = {}
    RNGStateInCheckpoint().on_save_checkpoint(None, None, checkpoint)
    assert len(checkpoint["rng_states"]["ranks"]) == 2
    for rank, seed in ((0, 0), (1, 1)):
        world(rank, 2)
        _states(99)
        RNGStateInCheckpoint().on_load_checkpoint(None, None, checkpoint)
        restored = _draws()
        _states(seed)
        assert restored == _draws()


@pytest.mark.parametrize(("saved_by", "resumed_by"), [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_another_process_count_resumes_with_what_exists_and_warns_once(
    world, caplog, saved_by, resumed_by
):
    """2 processes saved, 1 resumes (and the reverse): no missing rank is indexed, one warning
    says the run will not repeat exactly."""
    world(0, saved_by, gathered=[_states(r) for r in range(saved_by)])
    checkpoint = {}
    RNGStateInCheckpoint().on_save_checkpoint(None, None, checkpoint)
    with caplog.at_level(logging.WARNING, logger="cxrdet.training.checkpoints"):
        for rank in range(resumed_by):
            world(rank, resumed_by)
            RNGStateInCheckpoint().on_load_checkpoint(None, None, checkpoint)
    (line,) = [r.getMessage() for r in caplog.records]  # once: rank 0 says it
    assert f"saved by {saved_by} process(es), this run has {resumed_by}" in line


def test_an_older_checkpoint_of_two_gpus_resumes_on_one_without_indexing_the_missing_one(
    world, monkeypatch, caplog
):
    """Before per-rank states a checkpoint held every GPU's (get_rng_state_all); restoring them
    all on a machine with fewer GPUs indexed one that is not there. Fails if set_rng_state_all
    (or an index past the GPUs) comes back."""
    old = {k: v for k, v in _states(0).items() if k != "cuda"}
    old["cuda"] = [torch.tensor([10], dtype=torch.uint8), torch.tensor([11], dtype=torch.uint8)]
    set_on = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, *a: set_on.append(int(s[0])))

    def refuse(*a):
        raise AssertionError("set_rng_state_all indexes every GPU the checkpoint had")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    world(0, 1)
    with caplog.at_level(logging.WARNING, logger="cxrdet.training.checkpoints"):
        RNGStateInCheckpoint().on_load_checkpoint(None, None, {"rng_states": old})
    assert set_on == [10]  # this process's GPU (0) only
    assert "2 GPUs' RNG states" in caplog.text


def _ckpt(path, step):
    torch.save({"global_step": step, "state_dict": {}}, path)


def test_resume_auto_continues_from_the_newest_checkpoint_of_the_run_folder(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert resume_checkpoint(tmp_path, None, "auto") is None  # a fresh run
    _ckpt(folder / "last.ckpt", 40)
    _ckpt(folder / "requeue.ckpt", 57)
    _ckpt(folder / "sigterm.ckpt", 12)
    _ckpt(folder / "best-step40.ckpt", 40)
    with caplog.at_level(logging.INFO, logger="cxrdet.training.resume"):
        assert resume_checkpoint(tmp_path, None, "auto") == str(folder / "requeue.ckpt")
    assert "at step 57: continuing from requeue.ckpt" in caplog.text
    assert resume_checkpoint(tmp_path, None, "never") is None
    assert resume_checkpoint(tmp_path, "/x/given.ckpt", "auto") == "/x/given.ckpt"
    with pytest.raises(ValueError, match="resume='always'"):
        resume_checkpoint(tmp_path, None, "always")


def _damaged(path, how: str) -> None:
    """``path`` cut to a third (a kill during a copy) or with 100 kB zeroed in its middle, its
    size intact (a disk or network fault)."""
    import os

    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size // 3)
    else:
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(b"\0" * min(100_000, size // 4))


def _big_ckpt(path, step):
    torch.save({"global_step": step, "state_dict": {"w": torch.randn(400, 400)}}, path)


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_resume_auto_skips_a_damaged_newest_checkpoint_naming_it(tmp_path, caplog, how):
    """The newest checkpoint is read whole (every record's checksum) before it is chosen: a
    damaged one is skipped with a warning that names it and why, and the next newest is
    taken. Fails if the choice reads only the header (the zeroed one chosen, then torch's
    "archive is corrupted" traceback at load) or skips in silence."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _big_ckpt(folder / "requeue.ckpt", 30)
    _big_ckpt(folder / "last.ckpt", 40)
    _damaged(folder / "last.ckpt", how)
    (folder / f".last.ckpt.{12345}.tmp").write_bytes(b"half a save")  # a kill mid-save
    with caplog.at_level(logging.INFO, logger="cxrdet"):
        assert resume_checkpoint(tmp_path, None, "auto") == str(folder / "requeue.ckpt")
    (skipped,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped" in skipped and "last.ckpt" in skipped
    assert ("checksum" if how == "zeroed" else "central directory") in skipped
    assert "at step 30: continuing from requeue.ckpt" in caplog.text
    assert not list(folder.glob(".*.tmp"))  # the interrupted save's partial file removed


def test_resume_auto_stops_rather_than_start_over_a_folder_of_unreadable_checkpoints(tmp_path):
    """A folder holding only checkpoints that cannot be read (here best-step2.ckpt, cut short)
    is not started again from step 0, which would overwrite them: the run stops naming them
    and both ways on (fails if resume_checkpoint returns None, a fresh start)."""
    from cxrdet.training.checks import StartupError

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _big_ckpt(folder / "best-step2.ckpt", 2)
    _damaged(folder / "best-step2.ckpt", "truncated")
    with pytest.raises(
        StartupError, match=r"best-step2.ckpt \(RuntimeError.*ckpt_path=.*resume=never"
    ):
        resume_checkpoint(tmp_path, None, "auto")
    assert resume_checkpoint(tmp_path, None, "never") is None  # the explicit fresh start


def test_a_best_checkpoint_alone_is_continued_from(tmp_path):
    """best-step<N>.ckpt holds the whole training state too (fails if only the resume
    points are looked for: the run started again from step 0 and overwrote last.ckpt)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _ckpt(folder / "best-step2.ckpt", 2)
    assert resume_checkpoint(tmp_path, None, "auto") == str(folder / "best-step2.ckpt")


def test_an_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    from cxrdet.atomic import atomic_write

    path = tmp_path / "metrics.csv"
    path.write_text("old")

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_text() == "new"


def test_a_timed_save_due_at_an_epoch_s_last_batch_waits_one_step():
    """Lightning resumes a checkpoint saved at the end of an epoch's last batch by numbering
    that epoch again: the 30-minute save due there is made after the next step instead. Fails
    if the timed save ignores where the epoch stands."""
    now = [0.0]
    saved = []
    point = ResumePoint("/tmp/unused", every_minutes=30, clock=lambda: now[0])
    progress = types.SimpleNamespace(is_last_batch=False)
    trainer = types.SimpleNamespace(
        global_step=0,
        log_every_n_steps=1,
        world_size=1,
        fit_loop=types.SimpleNamespace(epoch_loop=types.SimpleNamespace(batch_progress=progress)),
        save_checkpoint=lambda path, weights_only: saved.append(trainer.global_step),
    )
    point.on_train_start(trainer, None)
    now[0] = 31 * 60
    trainer.global_step, progress.is_last_batch = 6, True
    point.on_train_batch_end(trainer, None, None, None, 5)
    trainer.global_step, progress.is_last_batch = 7, False
    point.on_train_batch_end(trainer, None, None, None, 0)
    assert saved == [7]


def test_the_resume_point_saves_every_interval_on_logging_steps_and_once_per_step():
    """Fails if the time-based save waits for a validation, runs off the logging steps (every
    rank must save at the same step) or writes the same step twice."""
    now = [0.0]
    saved = []
    point = ResumePoint("/tmp/unused", every_minutes=30, clock=lambda: now[0])
    trainer = types.SimpleNamespace(
        global_step=0,
        log_every_n_steps=20,
        world_size=1,
        sanity_checking=False,
        save_checkpoint=lambda path, weights_only: saved.append((trainer.global_step, path.name)),
    )
    point.on_train_start(trainer, None)
    for step in range(1, 101):
        trainer.global_step = step
        now[0] += 60.0  # a minute a step
        point.on_train_batch_end(trainer, None, None, None, step)
    assert saved == [(40, "last.ckpt"), (80, "last.ckpt")]  # 30 minutes, at a logging step
    trainer.global_step = 100
    point.on_validation_end(trainer, None)
    point.on_train_end(trainer, None)  # the same step: not again
    assert saved[-1] == (100, "last.ckpt") and len(saved) == 3


@pytest.mark.parametrize(
    ("env", "processes", "expected"),
    [
        ({"SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS": "4"}, 4, 8),  # srun: a task per GPU
        ({"SLURM_CPUS_PER_TASK": "32", "SLURM_NTASKS": "1"}, 4, 8),  # Lightning spawns 4
        ({}, 2, 16),  # 32 usable CPUs, 2 processes
        ({"SLURM_CPUS_PER_TASK": "64", "SLURM_NTASKS": "1"}, 1, 16),  # capped
    ],
    ids=["srun-tasks", "one-task", "no-slurm", "capped"],
)
def test_auto_workers_divide_the_allocation_once(monkeypatch, env, processes, expected):
    """Fails if a SLURM task's own CPUs are divided again by the processes on the node."""
    from cxrdet.data import cpus

    for key in ("SLURM_CPUS_PER_TASK", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 32 if not env else 64)
    assert cpus.worker_count("auto", processes) == expected


def test_too_little_shared_memory_switches_to_files_and_says_how_to_give_more(monkeypatch, caplog):
    """Docker's 64 MB /dev/shm: 16 workers with batches in flight would die with a bus error.
    Fails if nothing is checked or the warning does not name the cure."""
    from cxrdet.data import cpus

    strategies = []
    monkeypatch.setattr(
        torch.multiprocessing, "set_sharing_strategy", lambda s: strategies.append(s)
    )
    small = types.SimpleNamespace(f_bavail=64 * 256, f_frsize=4096)  # 64 MB
    monkeypatch.setattr(cpus.os, "statvfs", lambda path: small)
    with caplog.at_level(logging.WARNING, logger="cxrdet.data.cpus"):
        cpus.check_shared_memory(2, 2**20)  # 4 MB in flight: fine
        assert strategies == [] and not caplog.records
        cpus.check_shared_memory(16, 16 * 512 * 512)  # 16 x 2 batches of 4 MB: 128 MB
    assert strategies == ["file_system"]
    assert "--shm-size" in caplog.text and "data.num_workers" in caplog.text


@pytest.mark.parametrize(
    ("capability", "arches", "refused"),
    [
        ((7, 0), ["sm_75", "sm_80", "sm_90", "compute_90"], True),  # a V100, CUDA 13 wheels
        ((6, 0), ["sm_75", "sm_80", "sm_90"], True),  # a P100
        ((9, 0), ["sm_75", "sm_80", "sm_90"], False),
        ((8, 9), ["sm_80", "sm_86", "sm_90"], True),  # no sm_89, no PTX for it
        ((8, 9), ["sm_80", "compute_80"], False),  # PTX compiles for newer GPUs
    ],
)
def test_a_gpu_the_torch_build_has_no_kernels_for_is_refused_naming_the_build(
    capability, arches, refused
):
    from cxrdet.training.checks import StartupError, check_gpu_arch

    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        get_device_capability=lambda: capability,
        get_arch_list=lambda: arches,
        get_device_name=lambda: "Tesla V100-SXM2-32GB",
    )
    if not refused:
        check_gpu_arch(cuda)
        return
    with pytest.raises(StartupError, match=r"no kernels for Tesla V100.*compute capability"):
        check_gpu_arch(cuda)


def test_lightning_s_own_requeue_is_off_under_slurm(monkeypatch):
    """Under srun Lightning would requeue on SIGUSR1 with its own hpc_ckpt file: the requeue
    has one owner (cxrdet.training.stopping.StopOnSignal)."""
    from cxrdet.training.slurm import cluster_plugins, slurm_job_id

    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert cluster_plugins() == [] and slurm_job_id() is None
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    (plugin,) = cluster_plugins()
    assert plugin.auto_requeue is False
    assert slurm_job_id() == "77"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "76")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "76_3"


def test_the_signal_owner_only_notes_the_signals_and_gives_the_handlers_back():
    """The warning is handled from setup (before the loader workers exist), SIGTERM from
    on_train_start (in place of Lightning's); each handler only notes; the handlers before
    are put back. Fails if a handler acts inside the signal or the warning comes late."""

    from cxrdet.training.stopping import StopOnSignal

    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    with pytest.raises(ValueError, match="callbacks.signals.warning='HUP'"):
        StopOnSignal("/tmp/unused", warning="HUP")
    owner = StopOnSignal("/tmp/unused", warning="SIGUSR1")
    owner.setup(types.SimpleNamespace(world_size=1), None, "fit")
    assert signal.getsignal(signal.SIGUSR1) == owner.note
    assert signal.getsignal(signal.SIGUSR2) == before[signal.SIGUSR2]  # the other one is left
    owner.on_train_start(None, None)
    signal.raise_signal(signal.SIGUSR1)
    signal.raise_signal(signal.SIGTERM)
    assert owner.noted == [True, True]
    owner.on_train_end(None, None)
    assert {s: signal.getsignal(s) for s in before} == before
