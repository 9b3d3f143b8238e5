"""Files written whole or not at all, on any filesystem, and durable once written.

A file that another run reads (a checkpoint, the continued ``metrics.csv``, a meta CSV) is
written to a temporary file in its own folder, flushed and ``fsync``ed, moved over the old one
with ``os.replace`` (a rename: atomic within one filesystem), and the folder is ``fsync``ed so
that the rename itself survives a crash. A temporary file elsewhere (``TMPDIR``, which clusters
often put on a node-local disk or ``/dev/shm``) would be *copied* into place across
filesystems: a kill during the copy leaves half a file under the real name. A kill before the
rename leaves the old file whole and a ``.<name>.<pid>.tmp`` beside it, which
:func:`remove_leftovers` clears at the next start.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
LEFTOVER = re.compile(r"^\..+\.\d+\.tmp$")


def temporary_name(path: Path) -> Path:
    """Where :func:`atomic_write` writes ``path`` first: beside it, hidden, with this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where the filesystem cannot)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO], object], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` so that it is either the old file or the whole
    new one, whatever kills the process when (module docstring)."""
    with atomic_open(path, mode) as f:
        write(f)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """:func:`atomic_write` as a ``with`` block, for a file written piece by piece (several
    at once): the whole file appears under ``path`` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes that a kill interrupted in ``folder``; the paths
    removed (each logged)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and LEFTOVER.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
            log.info("removed %s: an interrupted write's partial file", p)
    return removed
