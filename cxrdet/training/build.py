"""``train.py``'s parts built from its config: the module, the callbacks, the loggers and the
trainer, each refusing at start what cannot run (:mod:`cxrdet.training.checks`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from cxrdet.data.label_check import LabelMismatch, issues_frame
from cxrdet.models.precision import choose_precision
from cxrdet.training.checkpoints import AtomicCheckpointIO
from cxrdet.training.checks import (
    StartupError,
    check_gpu_arch,
    refuse_unknown_keys,
    refuse_unlogged_monitor,
)
from cxrdet.training.devices import trainer_device
from cxrdet.training.loggers import build_loggers, run_info
from cxrdet.training.overlays import WandbBoxOverlays
from cxrdet.training.slurm import cluster_plugins

log = logging.getLogger("cxrdet.train")


def prepare_device(cfg: DictConfig) -> None:
    """The device settings a run starts with: the GPU checked against this torch build, TF32
    matmuls on CUDA (``float32_matmul_precision``), ``trainer.precision=auto`` resolved."""
    device = trainer_device(cfg.trainer)
    if device == "cuda":
        check_gpu_arch()
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    cfg.trainer.precision = choose_precision(cfg.trainer.precision, device, "trainer.precision")


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """The detector, or the "No finding" classifier when the model config names an ``arch``;
    weights that cannot load are refused here, before any data loads."""
    from cxrdet.data.labels import labels_class_set
    from cxrdet.models.classifier import NoFindingModule, build_classifier
    from cxrdet.models.detector import build_fasterrcnn
    from cxrdet.models.module import DetectorModule

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    takes = build_classifier if "arch" in model_cfg else build_fasterrcnn
    own = ("low", "high", "targets")  # the classifier module's, not its network's
    refuse_unknown_keys("model", [k for k in model_cfg if k not in own], takes)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    scheduler = (
        OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None
    )
    try:
        if "arch" in model_cfg:
            low, high = model_cfg.pop("low", 0.08), model_cfg.pop("high", 0.95)
            targets = model_cfg.pop("targets", "nofinding")
            if targets == "global6" and not cfg.data.get("global_labels"):
                raise StartupError(
                    "model.targets=global6 learns the release's diagnoses: set "
                    "data.global_labels to its annotations/image_labels_train.csv"
                )
            return NoFindingModule(
                model_cfg,
                optim,
                scheduler,
                low=low,
                high=high,
                image_size=cfg.data.image_size,
                targets=targets,
                trust_weights=cfg.trust_checkpoint,
            )
        # The head's size and names: the class set's findings (+ "No finding" with
        # use_class14), from the labels file's header and data.classes.
        classes = labels_class_set(cfg.data.labels_csv, cfg.data.get("classes"))
        num_classes = classes.num_findings + (1 if cfg.data.use_class14 else 0)
        return DetectorModule(
            model={**model_cfg, "num_classes": num_classes},
            optim=optim,
            scheduler=scheduler,
            class_names=classes.names[:num_classes],
            on_nonfinite=cfg.on_nonfinite,
            trust_weights=cfg.trust_checkpoint,
        )
    except (FileNotFoundError, ValueError) as e:
        raise StartupError(str(e)) from e


def build_trainer(cfg: DictConfig, module: pl.LightningModule) -> tuple[pl.Trainer, list, int]:
    """The trainer with its callbacks (the chosen evaluations first) and loggers; also returns
    the loggers and how many validation images W&B receives with boxes."""
    evaluations = [instantiate(e) for e in (cfg.get("evaluation") or {}).values()]
    monitor = (cfg.get("callbacks") or {}).get("model_checkpoint", {}).get("monitor")
    logs = {*module.LOGS, *(name for e in evaluations for name in e.LOGS)}
    choices = HydraConfig.get().runtime.choices.get("evaluation", "none")
    refuse_unlogged_monitor(monitor, logs, choices)
    callbacks = [*evaluations, *(instantiate(c) for c in (cfg.callbacks or {}).values())]
    loggers, wandb_images = build_loggers(cfg.logger)
    if wandb_images:  # logger.wandb.log_images=true: validation images with W&B's box overlays
        callbacks.append(WandbBoxOverlays(wandb_images))
    info = run_info(cfg)
    for lg in loggers:
        lg.log_hyperparams(info)
    if not loggers:  # logger=none: the LR monitor has nowhere to write and would refuse to run
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    refuse_unknown_keys("trainer", cfg.trainer, pl.Trainer.__init__)
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[*cluster_plugins(), AtomicCheckpointIO()],
    )
    return trainer, loggers, wandb_images


def setup_data(datamodule, trainer: pl.Trainer) -> None:
    """Load the labels and images' list (bad data fails here, with the file and the reason);
    in the run's folder, ``label_mismatch.csv`` lists every image whose boxes cannot fit its
    size (refused, or left out with ``data.label_issues=drop``) and ``label_issues.csv`` every
    box that was clipped or dropped."""
    run = Path(trainer.default_root_dir)
    try:
        datamodule.setup("fit")
    except LabelMismatch as e:
        path = run / "label_mismatch.csv"
        if trainer.is_global_zero:
            e.images.to_csv(path, index=False)
        raise StartupError(
            f"{e} (all {len(e.images)} listed in {path}); data.label_issues=drop trains "
            "without them"
        ) from e
    except (FileNotFoundError, ValueError) as e:
        raise StartupError(str(e)) from e
    if not trainer.is_global_zero:
        return
    if len(getattr(datamodule, "mismatched", ())):
        datamodule.mismatched.to_csv(run / "label_mismatch.csv", index=False)
        log.info("images left out: %s", run / "label_mismatch.csv")
    issues = getattr(datamodule, "label_issues", [])
    if issues:
        issues_frame(issues).to_csv(run / "label_issues.csv", index=False)
        log.info("label issues: %s", run / "label_issues.csv")


def best_score(trainer: pl.Trainer) -> float | None:
    """Log the best and last checkpoints; the best monitored value (what sweeps optimise)."""
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    if best is not None:
        log.info("best checkpoint: %s", best.best_model_path or "(none)")
    log.info("last checkpoint: %s", last if last.is_file() else "(none)")
    if best is not None and best.best_model_score is not None:
        return float(best.best_model_score)
    return None
