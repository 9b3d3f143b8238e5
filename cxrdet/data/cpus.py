"""How many loader workers a training or prediction process may start: the CPUs its allocation
gives it (a SLURM task's, a container's), shared between the processes of one machine, and
whether shared memory can carry their batches."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 16


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a SLURM job's allocation), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpus_per_process(processes: int = 1) -> int:
    """The CPUs one training process may give its loader workers.

    Under SLURM with one task per training process (``srun``, ``SLURM_NTASKS`` > 1), each task
    has its own allocation (``--cpus-per-task``): all of it. Otherwise the CPUs this process
    may run on (its affinity: a container's or a one-task job's allocation) are shared
    between the ``processes`` that Lightning starts on this machine. Divided once, either way.
    """
    cpus = usable_cpus()
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit():
        cpus = min(cpus, int(per_task))
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return cpus
    return max(1, cpus // max(processes, 1))


def worker_count(num_workers, processes: int = 1, key: str = "data.num_workers") -> int:
    """``data.num_workers`` (or ``key``) as a number: ``auto`` is :func:`cpus_per_process`,
    capped at 16 (a number passes through)."""
    if str(num_workers) == "auto":
        return max(1, min(MAX_AUTO_WORKERS, cpus_per_process(processes)))
    try:
        workers = int(num_workers)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0 or str(workers) != str(num_workers).strip():
        raise ValueError(f"{key}={num_workers!r}: expected auto or a number >= 0")
    return workers


def check_shared_memory(workers: int, batch_bytes: int, prefetch: int = 2, path="/dev/shm"):
    """Batches travel from the loader's workers through shared memory (``/dev/shm``); Docker
    gives a container 64 MB of it, and workers that cannot place a batch there die with a bus
    error that names nothing. When ``workers x prefetch`` batches of ``batch_bytes`` would take
    more than half of what is free, tensors go through files instead (torch's ``file_system``
    sharing), and one line says why and how to give the container more."""
    if workers <= 0:
        return
    try:
        stat = os.statvfs(path)
    except OSError:  # no /dev/shm (macOS): torch shares another way
        return
    free, need = stat.f_bavail * stat.f_frsize, workers * prefetch * batch_bytes
    if need <= free / 2:
        return
    torch.multiprocessing.set_sharing_strategy("file_system")
    log.warning(
        "%s has %d MB free; %d loader workers x %d batches in flight need about %d MB: batches "
        "now go through files (slower); give the container more shared memory (docker run "
        "--shm-size=8g, or a Kubernetes emptyDir medium: Memory) or lower data.num_workers",
        path,
        free // 2**20,
        workers,
        prefetch,
        need // 2**20,
    )
