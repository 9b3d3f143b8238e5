"""Where a run lives explains how it ended: its one-line error in its own log file (``train.log``,
beside its checkpoints), a note when it ended before its first checkpoint, and a ``latest``
link to the newest run (``outputs/<run_name>/latest``) or sweep (``multirun/<run_name>/latest``).

On SLURM or under ``nohup`` the terminal's stderr is gone; the run's folder is what is left.
Imports nothing heavy: ``train.py`` uses it before torch loads.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from cxrdet.atomic import fsync_folder

log = logging.getLogger("cxrdet.train")


def quiet_library_noise() -> None:
    """Filter what the libraries print on every run that is no user's business (called at the
    start of each run: a test harness or Hydra may reset the warnings' filters between runs)."""
    # Lightning 2.6's CombinedLoader builds torch's LeafSpec, which newer torch deprecates.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # Lightning advertises its cloud services on every run ("💡 Tip: ... litlogger").
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(no_advert)  # once


def no_advert(record: logging.LogRecord) -> bool:
    return "💡 Tip" not in record.getMessage()


def to_run_log(level: int, message: str, exc_info=None) -> None:
    """Write one record to the run's log file(s) only (the terminal gets its own line)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def fail(message: str) -> NoReturn:
    """Stop the run with ``error: <message>`` on stderr and the same line in its log file."""
    to_run_log(logging.ERROR, message)
    sys.exit(f"error: {message}")


def is_first_process() -> bool:
    """Rank 0, or a run without ranks (DDP's other processes leave the run's files alone)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def note_if_no_checkpoint(run_dir: Path) -> bool:
    """Say in the run's log, when it ends, that it wrote no checkpoint (if so); whether it
    wrote one."""
    wrote = bool(list((run_dir / "checkpoints").glob("*.ckpt")))
    if is_first_process() and not wrote:
        to_run_log(
            logging.WARNING,
            f"the run ended before its first checkpoint: {run_dir / 'checkpoints'} holds none "
            "(checkpoints come with each validation, every trainer.val_check_interval steps, "
            "and at the end of training); the lines above say why it stopped",
        )
    return wrote


def point_latest(target: Path) -> None:
    """``<target's folder>/latest`` → ``target``, replaced atomically (a relative link)."""
    if not is_first_process():
        return
    link = target.parent / "latest"
    tmp = target.parent / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.name, target_is_directory=True)
        os.replace(tmp, link)
        fsync_folder(target.parent)
    except OSError as e:  # a file system without links: the run itself is unaffected
        log.debug("no latest link in %s: %s", target.parent, e)
