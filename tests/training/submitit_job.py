"""``python train.py ARGS`` as hydra-submitit-launcher runs it on a SLURM node: inside
submitit's job process (``submitit.core.submission.process_job``), with the signal handlers
submitit installs there (SIGUSR2: checkpoint the job and requeue it; SIGTERM: bypass), the
run a checkpointable job as hydra-submitit-launcher's is. The tests start it as

    python tests/training/submitit_job.py <submitit folder> <train.py args...>

with SUBMITIT_EXECUTOR=slurm and the SLURM_* variables of a one-task job set.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from submitit.core import submission, utils

REPO = Path(__file__).resolve().parents[2]


class TrainJob:
    """train.py's main in this process, checkpointable (submitit requeues such a job)."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def __call__(self) -> None:
        os.chdir(REPO)
        sys.argv = ["train.py", *self.argv]
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")

    def checkpoint(self, *args, **kwargs):
        return utils.DelayedSubmission(self, *args, **kwargs)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    paths = utils.JobPaths(folder, job_id=os.environ["SLURM_JOB_ID"])
    utils.DelayedSubmission(TrainJob(sys.argv[2:])).dump(paths.submitted_pickle)
    submission.process_job(folder)
