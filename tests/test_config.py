"""Every config group option composes, and numeric group choices work from the command line."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cxrdet.cli import CONF_DIR, quote_numeric_choices

GROUPS = [
    "data",
    "model",
    "augment",
    "optim",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "hparams_search",
]
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONF_DIR / group).glob("*.yaml"))]


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = _compose("train", [f"{group}='{option}'"] if option.isdigit() else [f"{group}={option}"])
    assert cfg.hydra.runtime.choices[group] == option
    node = cfg.get(group)
    # Resolve everything except Hydra's run-time interpolations, which need a running job.
    OmegaConf.to_container(cfg.data, resolve=True)
    OmegaConf.to_container(cfg.model, resolve=True)
    if node:
        assert OmegaConf.is_config(node)


def test_data_sizes_set_model_size():
    for size in ("256", "512"):
        cfg = _compose("train", [f"data='{size}'"])
        assert cfg.data.image_size == int(size)
        assert cfg.model.image_size == int(size)
        assert cfg.data.image_dir.endswith(f"/{size}/train")


def test_demo_experiment_overlays_only_what_it_changes():
    base = _compose("train", [])
    demo = _compose("train", ["experiment=demo"])
    assert demo.data.labels_csv == "outputs/demo/raw/train.csv"
    assert demo.trainer.accelerator == "cpu"
    assert demo.trainer.max_steps < base.trainer.max_steps
    assert demo.model.weights is None and demo.optim.momentum == base.optim.momentum


def test_predict_config_composes():
    cfg = _compose("predict", ["ckpt_path=x.ckpt", "image_size=256"])
    assert cfg.image_dir.endswith("/256/test")
    assert cfg.score_thresh == 0.0 and cfg.max_detections == 100


def test_numeric_choices_are_quoted_for_hydra():
    argv = ["train.py", "data=512", "model=frcnn_r50fpn", "data.batch_size=4", "data=256,512"]
    assert quote_numeric_choices(argv) == [
        "train.py",
        "data='512'",
        "model=frcnn_r50fpn",
        "data.batch_size=4",
        "data='256','512'",
    ]


def test_seed_and_winners_experiments_compose_to_the_report_recipe():
    seed = _compose("train", ["experiment=seed_r50fpn_512"])
    assert seed.data.image_size == 512 and seed.data.batch_size == 2 and seed.seed == 111
    assert seed.optim.lr == 0.001 and seed.trainer.max_steps == 30000
    assert seed.trainer.val_check_interval == 2000 and seed.model.roi_batch_size_per_image == 512
    assert [t._target_.split(".")[-1] for t in seed.augment.transforms] == [
        "HorizontalFlip",
        "Affine",
        "RandomBrightnessContrast",
    ]
    assert seed.data.fusion == "none" and not seed.data.use_class14
    winners = _compose("train", ["experiment=winners_512", "data.fold=3"])
    assert winners.data.split == "kfold" and winners.data.fold == 3
    assert winners.data.fusion == "wbf" and winners.optim.lr == 0.001
