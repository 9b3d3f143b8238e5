"""Train a detector: python train.py [data=512] [model=frcnn_r50fpn] [key=value ...] [-m].

The recipe (Faster R-CNN R50-FPN, SGD, warmup-cosine, AP40 validation) is in conf/; see
``python train.py --help`` for the config groups and ``--cfg job`` for the resolved config.
Returns the best monitored metric, so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor

import cxrdet  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations loads)
from cxrdet.config import quote_numeric_choices  # also registers the typed configs
from cxrdet.data.labels import CLASS_NAMES, NUM_FINDINGS
from cxrdet.models.classifier import NoFindingModule
from cxrdet.models.module import DetectorModule
from cxrdet.models.precision import resolve_precision
from cxrdet.reports.report import upload_figures, write_report
from cxrdet.training.loggers import build_loggers, run_info
from cxrdet.training.overlays import WandbBoxOverlays

log = logging.getLogger("cxrdet.train")
# torchdata 0.11 calls a torch function that newer torch deprecates, once per loader iterator.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
# Lightning advertises its cloud services on every run ("💡 Tip: ... litlogger"): noise here.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "💡 Tip" not in record.getMessage()
)


def choose_precision(trainer_cfg: DictConfig) -> str:
    """Resolve ``trainer.precision: auto`` for the device the trainer will use, in place."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    chosen = resolve_precision(trainer_cfg.precision, "cuda" if cuda else "cpu")
    log.info(
        "precision: %s (trainer.precision=%s on %s)",
        chosen,
        trainer_cfg.precision,
        "cuda" if cuda else "cpu",
    )
    trainer_cfg.precision = chosen
    return chosen


def refuse_with_ddp(cfg: DictConfig) -> None:
    """Stop, in one line, on what DDP cannot do here: skipping a batch on one rank (the others
    would wait in the gradient all-reduce for ever), and a sweep launched in this process
    (Lightning's DDP re-runs the command line in its child processes, the sweep's included)."""
    if "ddp" not in str(cfg.trainer.get("strategy", "")):
        return
    if cfg.on_nonfinite == "skip":
        sys.exit(
            "error: on_nonfinite=skip cannot run under DDP (a rank that skips leaves the others "
            "waiting); use on_nonfinite=stop, or train on one device"
        )
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and "submitit" not in str(hydra_cfg.launcher._target_):
        sys.exit(
            "error: a sweep (-m or hparams_search) with trainer=ddp needs one job per run: add "
            "hydra/launcher=slurm (each run then starts its own DDP processes), or sweep on one "
            "device"
        )


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """The detector, or the "No finding" classifier when the model config names an ``arch``."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    scheduler = (
        OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None
    )
    if "arch" in model_cfg:
        low, high = model_cfg.pop("low", 0.08), model_cfg.pop("high", 0.95)
        return NoFindingModule(model_cfg, optim, scheduler, low=low, high=high)
    num_classes = NUM_FINDINGS + 1 if cfg.data.use_class14 else NUM_FINDINGS
    return DetectorModule(
        model={**model_cfg, "num_classes": num_classes},
        optim=optim,
        scheduler=scheduler,
        class_names=CLASS_NAMES[:num_classes],
        on_nonfinite=cfg.on_nonfinite,
    )


def train(cfg: DictConfig) -> float | None:
    """Build data, model, callbacks and loggers from ``cfg``; fit; return the best metric."""
    refuse_with_ddp(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    choose_precision(cfg.trainer)
    augment = instantiate(cfg.augment) if cfg.augment else None
    datamodule = instantiate(cfg.data, augment=augment, seed=cfg.seed, _recursive_=False)
    try:  # pretrained weights that cannot load stop here, before any data loads
        module = build_module(cfg)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    loggers, wandb_images = build_loggers(cfg.logger)
    if wandb_images:  # logger.wandb.log_images=true: validation images with W&B's box overlays
        callbacks.append(WandbBoxOverlays(wandb_images))
    info = run_info(cfg)
    for lg in loggers:
        lg.log_hyperparams(info)
    if not loggers:  # logger=none: the LR monitor has nowhere to write and would refuse to run
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:  # bad data fails here, before any training, with the file and the reason
        datamodule.setup("fit")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except FloatingPointError as e:
        sys.exit(f"error: {e}")

    if (cfg.get("report") or wandb_images) and trainer.is_global_zero:
        try:  # the checkpoints are written: a report that cannot be made only warns
            figures = write_report(trainer.default_root_dir)
        except (FileNotFoundError, ValueError) as e:
            log.warning("no report: %s (the figures need the csv logger: logger=[csv,wandb])", e)
            figures = []
        log.info("report: %d figures in %s", len(figures), figures[0].parent if figures else "-")
        if wandb_images:
            upload_figures(loggers, figures)
    ckpt = trainer.checkpoint_callback
    if ckpt is not None:
        log.info("best checkpoint: %s", ckpt.best_model_path or "(none)")
        log.info("last checkpoint: %s", ckpt.last_model_path or "(none)")
        if ckpt.best_model_score is not None:
            return float(ckpt.best_model_score)
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    sys.argv = quote_numeric_choices(sys.argv)
    main()
