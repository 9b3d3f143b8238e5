"""W&B runs offline when no key is configured, and respects an explicit mode."""

from __future__ import annotations

import os

from cxrdet.tracking import wandb_key_configured, wandb_offline_without_key


def test_no_key_means_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_key_configured()
    assert wandb_offline_without_key() == "offline" and os.environ["WANDB_MODE"] == "offline"


def test_a_key_or_an_explicit_mode_is_respected(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_key_configured() and wandb_offline_without_key() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_offline_without_key() == "disabled"
