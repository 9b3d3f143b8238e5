"""What cxrdet needs from SLURM: the job's id, Lightning's cluster environment without its own
requeueing, and ``scontrol requeue`` that can neither hang nor fail in silence.

Requeueing has one owner, :class:`cxrdet.training.stopping.StopOnSignal`: Lightning's
``SLURMEnvironment`` would requeue on SIGUSR1 with its own ``hpc_ckpt`` file, so it is built
with ``auto_requeue=False`` here (:func:`cluster_plugins`), and submitit's handler (a requeue
without a checkpoint) is replaced in the main process and ignored in the loader workers.
"""

from __future__ import annotations

import os
import re
import subprocess

SCONTROL_TIMEOUT_S = 30


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this job (an array task's ``<job>_<task>``), or
    None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def cluster_plugins() -> list:
    """Trainer plugins: under SLURM, Lightning's cluster environment without its own
    requeueing; elsewhere none."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeue(max_requeues: int, timeout_s: float = SCONTROL_TIMEOUT_S) -> tuple[bool, str]:
    """Requeue this SLURM job with ``scontrol requeue`` (at most ``max_requeues`` times:
    ``SLURM_RESTART_COUNT``); (done, what happened) in one line, never an exception."""
    job = slurm_job_id()
    if job is None:
        return False, "not a SLURM job: nothing to requeue"
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts >= max_requeues:
        return False, (
            f"job {job} was requeued {restarts} times already "
            f"(callbacks.signals.max_requeues={max_requeues}): not again"
        )
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=timeout_s
        )
    except FileNotFoundError:
        return False, (
            f"scontrol is not on this node's PATH (a container without SLURM's tools?): job "
            f"{job} was not requeued"
        )
    except subprocess.TimeoutExpired:
        return False, f"scontrol requeue {job} did not answer within {timeout_s:g} s"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
        return False, f"scontrol requeue {job} failed: {why}"
    return True, f"requeued SLURM job {job}; it continues from this step"
