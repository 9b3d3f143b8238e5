"""W&B runs offline when no key is configured, and respects an explicit mode."""

from __future__ import annotations

import os

from cxrdet.training.loggers import wandb_key_configured, wandb_offline_without_key


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


def _logger_cfg(overrides, tmp_path):
    from hydra import compose, initialize_config_dir

    from cxrdet.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    # ${hydra:runtime.output_dir} needs a running job: point the loggers at tmp_path instead.
    for node in cfg.logger.values():
        node.save_dir = str(tmp_path)
    return cfg.logger


def test_loggers_combine_and_wandb_takes_project_entity_group_tags(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    from cxrdet.training.loggers import RunCSVLogger, build_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [
        "logger=[csv,wandb,tensorboard]",
        "logger.wandb.entity=lab",
        "logger.wandb.group=sweep-a",
        "logger.wandb.tags=[seed,r50]",
        "logger.wandb.log_images=true",
    ]
    loggers, log_images = build_loggers(_logger_cfg(overrides, tmp_path))
    assert log_images == 16  # images in the val/boxes Table (logger.wandb.n_images)
    assert [type(x) for x in loggers] == [RunCSVLogger, WandbLogger, TensorBoardLogger]
    init = loggers[1]._wandb_init
    assert (init["project"], init["entity"], init["group"], init["tags"]) == (
        "cxrdet",
        "lab",
        "sweep-a",
        ["seed", "r50"],
    )
    assert log_images and loggers[1]._log_model is False
    _, log_images = build_loggers(_logger_cfg(["logger=wandb"], tmp_path))
    assert log_images == 0  # X-rays stay local unless asked


def test_run_info_has_config_commit_and_job_number():
    from omegaconf import OmegaConf

    from cxrdet.training.loggers import run_info

    info = run_info(OmegaConf.create({"optim": {"lr": 0.01}, "twice": "${optim.lr}"}))
    assert info["config"] == {"optim": {"lr": 0.01}, "twice": 0.01}
    assert len(info["git_commit"].split("+")[0]) == 40 and info["hydra_job_num"] == 0


def test_box_overlays_place_original_pixel_boxes_on_the_letterboxed_png():
    from cxrdet.training.overlays import box_group

    # A 200 x 100 original letterboxed into 64 x 64: content x 16..48, y 0..64.
    group = box_group(
        [[0, 0, 100, 200], [0, 0, 1, 1]],
        [3, 14],
        [0.87, 0.5],
        (200, 100),
        (64, 64),
        (16, 0, 32, 64),
    )
    (box,) = group["box_data"]  # "No finding" is image-level: no box
    assert box["position"] == {"minX": 0.25, "minY": 0.0, "maxX": 0.75, "maxY": 1.0}
    assert box["box_caption"] == "Cardiomegaly 0.87 [0, 0, 100, 200]"
    assert box["class_id"] == 3 and box["scores"] == {"score": 0.87}
    assert group["class_labels"][3] == "Cardiomegaly" and 14 not in group["class_labels"]
