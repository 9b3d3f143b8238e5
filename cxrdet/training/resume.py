"""Which checkpoint a run continues from: ``ckpt_path`` when given, else with ``resume=auto``
the newest checkpoint of its own folder that reads back whole.

A relaunch into the same folder (a requeued SLURM job, a restarted container) finds
``sigterm.ckpt``, ``requeue.ckpt``, ``last.ckpt`` and ``best-step<N>.ckpt`` there. Each is a
whole training state; the newest by step wins, but only once it has been read in full (every
record checked against its checksum): a file cut short by a kill, or with a damaged region of
the right size, is skipped with a warning naming it and why, and the next newest is tried. A
folder that holds checkpoints none of which can be read stops the run, naming them: starting
again from step 0 would overwrite them (``resume=never`` is the explicit fresh start). The
partial files of saves a kill interrupted are removed first
(:func:`cxrdet.atomic.remove_leftovers`).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from cxrdet.atomic import remove_leftovers
from cxrdet.training.checks import StartupError

log = logging.getLogger(__name__)
RESUME_MODES = ("auto", "never")
NAMED = ("sigterm.ckpt", "requeue.ckpt", "last.ckpt")  # preferred in this order at equal steps


def step_of_checkpoint(path: Path, whole: bool = False) -> int:
    """The training step ``path`` was saved at, from its header. ``whole``: first read every
    byte and check each record against the checksum the file holds (torch's own reader does
    not: a damaged region of a tensor loads as wrong numbers). Raises what ``zipfile`` or torch
    raises for a file they cannot read, ``ValueError`` for a damaged record."""
    from cxrdet.models.safe_load import safe_load

    if whole:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"{damaged} does not match its checksum: the file is damaged")
    step = safe_load(path, mmap=True).get("global_step")
    if not isinstance(step, int):
        raise ValueError("no global_step in it: not a training checkpoint")
    return step


def why_unreadable(error: Exception) -> str:
    """One line for a checkpoint torch could not read."""
    text = str(error).split(". This is an internal", 1)[0].strip()
    return f"{type(error).__name__}: {text[:200]}"


def resume_checkpoint(run_dir: str | Path, ckpt_path: str | None, resume: str) -> str | None:
    """The checkpoint a run starts from (module docstring), said in one line; None for a
    fresh start.

    Raises:
        ValueError: ``resume`` is neither ``auto`` nor ``never``.
        StartupError: the run folder holds checkpoints and none of them can be read.
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"resume={resume!r}: expected one of {', '.join(RESUME_MODES)}")
    if ckpt_path or resume == "never":
        return ckpt_path or None
    folder = Path(run_dir) / "checkpoints"
    remove_leftovers(folder)
    files = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not files:
        return None
    unreadable: dict[Path, str] = {}
    steps: dict[Path, int] = {}
    for path in files:
        try:
            steps[path] = step_of_checkpoint(path)
        except Exception as e:  # noqa: BLE001  (any failure to read: skipped and named)
            unreadable[path] = why_unreadable(e)
    rank = {name: i for i, name in enumerate(NAMED)}
    chosen = None
    for path in sorted(steps, key=lambda p: (-steps[p], rank.get(p.name, len(NAMED)), p.name)):
        try:
            step_of_checkpoint(path, whole=True)
        except Exception as e:  # noqa: BLE001
            unreadable[path] = why_unreadable(e)
            continue
        chosen = path
        break
    for path, why in unreadable.items():
        log.warning("resume=auto: skipped %s, which cannot be read (%s)", path, why)
    if chosen is None:
        listed = "; ".join(f"{p.name} ({why})" for p, why in unreadable.items())
        raise StartupError(
            f"{folder} holds checkpoints but none can be read: {listed}. Starting again from "
            "step 0 would overwrite them: name one to continue from with ckpt_path=..., or "
            "start afresh with resume=never"
        )
    log.info(
        "resume=auto: %s holds a checkpoint at step %d: continuing from %s (resume=never starts "
        "afresh)",
        folder,
        steps[chosen],
        chosen.name,
    )
    return str(chosen)
