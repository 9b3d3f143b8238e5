"""The scheduler group: each LR schedule follows its formula step by step, and a run resumed
mid-way continues it exactly."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from cxrdet.config import CONF_DIR
from cxrdet.models.schedule import lightning_optimizers

SCHEDULES = sorted(p.stem for p in (CONF_DIR / "scheduler").glob("*.yaml"))
OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.02, "momentum": 0.9}
TOTAL, WARMUP, FACTOR, STEPS, GAMMA = 40, 10, 0.001, [20, 30], 0.1


def scheduler_config(name: str) -> dict:
    """conf/scheduler/<name>.yaml with the test's short run's values."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "scheduler" / f"{name}.yaml"))
    cfg.update(warmup_steps=WARMUP, warmup_factor=FACTOR)
    if "steps" in cfg:
        cfg.update(steps=STEPS, gamma=GAMMA)
    return cfg


def expected_lr(name: str, step: int) -> float:
    """Each schedule's formula, written out independently of cxrdet's code."""
    warm = FACTOR + (1 - FACTOR) * step / WARMUP if step < WARMUP else 1.0
    if name == "warmup_cosine":
        return 0.0 if step >= TOTAL else 0.02 * warm * (1 + math.cos(math.pi * step / TOTAL)) / 2
    if name == "warmup_multistep":
        return 0.02 * warm * GAMMA ** sum(step >= m for m in STEPS)
    if name == "constant":
        return 0.02 * warm
    raise AssertionError(f"no formula for {name}")


def test_the_group_has_the_three_schedules():
    assert SCHEDULES == ["constant", "warmup_cosine", "warmup_multistep"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_each_schedule_follows_its_formula(name):
    layer = nn.Linear(2, 1)
    out = lightning_optimizers(layer, OPTIM, scheduler_config(name), lambda: TOTAL)
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    for step in range(TOTAL):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr(name, step)), step
        optimizer.step()
        scheduler.step()


def test_a_milestone_past_the_run_is_refused():
    cfg = {**scheduler_config("warmup_multistep"), "steps": [20, 45]}
    with pytest.raises(ValueError, match=r"scheduler.steps=\[20, 45\]: \[45\] at or past"):
        lightning_optimizers(nn.Linear(2, 1), OPTIM, cfg, lambda: TOTAL)


class Tiny(pl.LightningModule):
    """A linear model trained with cxrdet's optimiser and schedule builder."""

    def __init__(self, scheduler: dict):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.scheduler = scheduler

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        steps = lambda: int(self.trainer.estimated_stepping_batches)  # noqa: E731
        return lightning_optimizers(self.layer, OPTIM, self.scheduler, steps)

    def train_dataloader(self):
        return DataLoader(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), 4)


class RecordLR(pl.Callback):
    def __init__(self, stop_at: int | None = None, path=None):
        self.lrs, self.stop_at, self.path = {}, stop_at, path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.stop_at:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _fit(name, tmp_path, callback, ckpt=None):
    trainer = pl.Trainer(
        max_steps=TOTAL,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(scheduler_config(name)), ckpt_path=ckpt)


@pytest.mark.parametrize("name", SCHEDULES)
def test_each_schedule_resumes_exactly(name, tmp_path):
    straight = RecordLR()
    _fit(name, tmp_path, straight)
    first = RecordLR(stop_at=WARMUP + 3, path=tmp_path / "mid.ckpt")  # past the warmup
    _fit(name, tmp_path, first)
    resumed = RecordLR()
    _fit(name, tmp_path, resumed, ckpt=tmp_path / "mid.ckpt")
    assert min(resumed.lrs) == WARMUP + 3 and max(resumed.lrs) == TOTAL - 1
    for step, lr in resumed.lrs.items():
        assert lr == straight.lrs[step] == pytest.approx(expected_lr(name, step)), step
