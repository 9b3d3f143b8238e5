"""Reading checkpoints and weights files without running code they carry.

``torch.load(weights_only=True)`` unpickles tensors and plain containers only; cxrdet's own
checkpoints hold nothing else (hyper-parameters as plain dicts, RNG states as lists), so they
load that way. A file that needs more (a pickled class or function: any code at all) is refused
in one line that names the file, what it asked for and the opt-in: ``trust_checkpoint=true``
for ``train.py`` and ``predict.py``, ``--trust`` for the ``cxrdet`` tools. With the opt-in it
is unpickled in full, after a warning that says what that allows.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)
TRUST_HELP = (  # the tools' --trust
    "load checkpoints that need full unpickling, which runs any code they carry (cxrdet's own "
    "never do): only for files from a source you trust"
)


class UntrustedFile(ValueError):
    """A checkpoint or weights file that only full unpickling (running its code) would read."""


def refusal(path, error: Exception, opt_in: str) -> str:
    """The one line that refuses ``path``, from torch's weights-only ``error``."""
    wanted = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    what = (
        f"it asks to run {wanted.group(1)} while loading"
        if wanted
        else "it is not a file that loads as tensors and plain values"
    )
    return (
        f"{path}: refused: {what}, and unpickling it in full would run any code it carries; "
        f"if you trust where it came from, pass {opt_in}"
    )


def safe_load(path, trust: bool = False, opt_in: str = "trust_checkpoint=true", mmap=False):
    """``torch.load`` of ``path`` on the CPU, tensors and plain values only, unless ``trust``.

    Raises:
        UntrustedFile: the file needs full unpickling and ``trust`` is off (``opt_in`` names
            the setting that turns it on, for the message).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not trust:
            raise UntrustedFile(refusal(path, e, opt_in)) from None
    log.warning(
        "%s: unpickled in full (%s): any Python code the file carries runs with your "
        "permissions; pass it only for files from a source you trust",
        Path(path),
        opt_in,
    )
    return torch.load(path, map_location="cpu", weights_only=False)
