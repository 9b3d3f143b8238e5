"""A test-only wrapper for prepare's per-file function: the worker process that gets one
chosen file kills itself with SIGKILL, as a crashing decoder plugin or the OOM killer would.

A picklable object in an importable module, so that it reaches the workers whatever
multiprocessing's start method (fork, forkserver: Python 3.14's default, spawn).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


class DiesOn:
    def __init__(self, fn, stem: str):
        self.fn, self.stem = fn, stem

    def __call__(self, item):
        if Path(item).stem == self.stem:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.fn(item)
