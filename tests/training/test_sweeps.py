"""Hydra sweeps: multirun over groups and values, an Optuna search, and the SLURM launcher."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import tiny_overrides, train_in_process
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from cxrdet.config import CONF_DIR


def _tiny_sweep(tiny_data, sweep_dir):
    overrides = [o for o in tiny_overrides(tiny_data, sweep_dir) if not o.startswith("hydra.run")]
    return [
        *[o for o in overrides if o != "data=256"],
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def _hparams(job_dir):
    return yaml.safe_load((job_dir / "csv" / "hparams.yaml").read_text())


@pytest.mark.slow
def test_multirun_runs_every_combination_in_its_own_directory(tiny_data, tmp_path):
    # data=256 and data=512 read <prepared>/<size>/: both point at the tiny 64-px PNGs, and the
    # model is pinned to 64 px, so each job composes its own data size at the tiny cost.
    prepared = tmp_path / "prepared"
    for size in (256, 512):
        (prepared / str(size)).mkdir(parents=True)
        for item in (tiny_data["prepared"] / "64").iterdir():
            (prepared / str(size) / item.name).symlink_to(item)
    sweep = tmp_path / "sweep"
    overrides = [
        o
        for o in _tiny_sweep(tiny_data, sweep)
        if not o.startswith(("data.image_size=", "paths.prepared_dir="))
    ]
    train_in_process(
        [
            "-m",
            "optim.lr=0.001,0.002",
            "data=256,512",
            f"paths.prepared_dir={prepared}",
            "model.image_size=64",
            *overrides,
        ]
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        h = _hparams(job)
        assert h["hydra_job_num"] == int(job.name) and h["git_commit"]
        assert (job / "checkpoints" / "last.ckpt").is_file()
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        own = dict(o.split("=", 1) for o in overrides if o.startswith(("optim.lr=", "data=")))
        # Each job trained with its own override: the learning rate and the data size.
        assert h["config"]["optim"]["lr"] == float(own["optim.lr"])
        data = h["config"]["data"]
        assert data["image_size"] == int(own["data"].strip("'"))
        assert data["image_dir"] == f"{prepared}/{own['data'].strip(chr(39))}/train"
        seen.add((own["optim.lr"], own["data"]))
    assert len(seen) == 4


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(tiny_data, tmp_path):
    sweep = tmp_path / "optuna"
    args = [
        "hparams_search=optuna",  # multirun without -m
        "hydra.sweeper.n_trials=2",
        "~hydra.sweeper.params.data",  # the tiny data exists at one size only
        "data=256",
        *_tiny_sweep(tiny_data, sweep),
    ]
    train_in_process(args)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # The tiny overrides fix model.roi_batch_size_per_image, so the rest of the space is searched.
    assert set(result["best_params"]) == {
        "optim.lr",
        "scheduler.warmup_steps",
        "augment.transforms.1.p",
        "augment.transforms.2.p",
    }
    assert 0.0002 <= result["best_params"]["optim.lr"] <= 0.01
    lrs = {_hparams(sweep / str(i))["config"]["optim"]["lr"] for i in (0, 1)}
    assert len(lrs) == 2  # two trials, two sampled learning rates
    # The reported best is the trial with the best value of the optimised metric (each trial's
    # train.py returns its best val/AP40: the monitored one).
    values = {}
    for i in (0, 1):
        metrics = pd.read_csv(sweep / str(i) / "csv" / "metrics.csv")
        values[i] = metrics["val/AP40"].max()
    best = max(values.values())
    assert result["best_value"] == pytest.approx(best)
    winners = [i for i, v in values.items() if v == pytest.approx(best)]
    assert any(
        _hparams(sweep / str(i))["config"]["optim"]["lr"] == result["best_params"]["optim.lr"]
        for i in winners
    )


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_optuna_search_space_and_metric_come_from_config():
    cfg = _compose(["hparams_search=optuna", "optimized_metric=val/mAP40"])
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.callbacks.model_checkpoint.monitor == "val/mAP40"
    assert set(cfg.hydra.sweeper.params) >= {"optim.lr", "scheduler.warmup_steps", "data"}


def test_slurm_launcher_composes_and_validates():
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 1440)
    # The plugin's schema checks types: a time limit must be a number (refused as a type
    # error of that key, not as a launcher that is missing).
    with pytest.raises(ConfigCompositionException, match="timeout_min=soon") as refused:
        _compose(["hydra/launcher=slurm", "hydra.launcher.timeout_min=soon"])
    assert isinstance(refused.value.__cause__, ValidationError)
    assert "Value 'soon' of type 'str' could not be converted to Integer" in str(
        refused.value.__cause__
    )
