"""Requeueing on SLURM, with one owner: :class:`RequeueOnSignal`.

A SLURM job is warned before its time limit or a pre-emption with a signal: SIGUSR2 under
hydra-submitit-launcher (``hydra.launcher.signal_delay_s`` before the limit), SIGUSR1 where the
job asks for it (``#SBATCH --signal=USR1@120``, Lightning's convention under ``srun``). Three
mechanisms would answer it: submitit's handler (requeues without a checkpoint: the job
restarted from step 0), Lightning's ``SLURMEnvironment`` (its own ``hpc_ckpt`` file and
requeue, on SIGUSR1) and ``CheckpointOnSigterm``. Here Lightning's is switched off
(:func:`cluster_plugins`), and :class:`RequeueOnSignal` replaces submitit's handler: at the
next step boundary every rank stops, ``checkpoints/requeue.ckpt`` is written (atomically, the
whole training state), rank 0 requeues the job (``scontrol requeue``, as submitit and
Lightning do) and the process exits with -1, as submitit's own handler exits. The requeued job
runs the same command in the same folder, and ``resume=auto`` continues from that step.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl

from cxrdet.training.checkpoints import REQUEUE

log = logging.getLogger(__name__)
SIGNALS = ("SIGUSR1", "SIGUSR2")


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this job (an array task's ``<job>_<task>``), or
    None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def cluster_plugins() -> list:
    """Trainer plugins: under SLURM, Lightning's cluster environment without its own
    requeueing (:class:`RequeueOnSignal` owns it); elsewhere none."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class RequeueOnSignal(pl.Callback):
    """On SIGUSR1/SIGUSR2: stop at the next step boundary, write ``<dirpath>/requeue.ckpt``,
    requeue the SLURM job (at most ``max_requeues`` times: ``SLURM_RESTART_COUNT``) and exit.

    The handler only notes the signal. With one process the step that ends next stops; under
    DDP the ranks agree at logging steps (every ``trainer.log_every_n_steps``), so that they
    stop at the same step without waiting on each other every step.
    """

    def __init__(self, dirpath: str, max_requeues: int = 3, signals=SIGNALS):
        self.dirpath = Path(dirpath)
        self.max_requeues = max_requeues
        self.signals = [getattr(signal, s) if isinstance(s, str) else s for s in signals]
        self.received: int | None = None
        self.previous: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.received = None
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self.note)

    def note(self, signum, frame) -> None:
        self.received = signum  # nothing else in a signal handler: the loop acts on it

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            if trainer.global_step % max(1, trainer.log_every_n_steps):
                return
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        # Lightning resumes a checkpoint saved at the end of a batch exactly, except after an
        # epoch's last batch (it would start that epoch's numbering again): one step more then.
        if not stop or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        path = self.dirpath / REQUEUE
        trainer.save_checkpoint(path, weights_only=False)  # every rank: rank 0 writes
        name = signal.Signals(self.received).name if self.received else "a rank's signal"
        if trainer.is_global_zero:
            requeued = self.requeue()
            log.warning(
                "%s at step %d: saved %s; %s",
                name,
                trainer.global_step,
                path,
                requeued or f"a relaunch into {self.dirpath.parent} continues from it",
            )
        trainer.strategy.barrier("requeue")  # nobody exits before the job is requeued
        self.restore()
        sys.exit(-1)  # as submitit's handler exits after requeueing

    def requeue(self) -> str | None:
        """Requeue this SLURM job; what was done, or None when it is not requeued."""
        job = slurm_job_id()
        if job is None:
            log.warning("not a SLURM job: nothing to requeue")
            return None
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            log.warning(
                "job %s was requeued %d times already (callbacks.requeue.max_requeues=%d): not "
                "again",
                job,
                restarts,
                self.max_requeues,
            )
            return None
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if done.returncode != 0:
            log.error("scontrol requeue %s failed: %s", job, done.stderr.strip())
            return None
        return f"requeued SLURM job {job}; it continues from this step"
