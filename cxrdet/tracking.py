"""Experiment-tracking safety: W&B never prompts, hangs or uploads without a configured key."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

log = logging.getLogger(__name__)


def wandb_key_configured() -> bool:
    """True when W&B has an API key: ``WANDB_API_KEY`` or a ``~/.netrc`` entry (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return bool(path.is_file() and netrc.netrc(path).authenticators("api.wandb.ai"))
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_offline_without_key() -> str:
    """Run W&B offline (``wandb sync`` later) unless a mode is set or a key is configured.

    Returns:
        The W&B mode in force.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"
        log.warning("no W&B API key found: logging offline; upload later with `wandb sync`")
    return os.environ.get("WANDB_MODE", "online")
