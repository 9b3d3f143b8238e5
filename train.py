"""Train a detector: python train.py [data=512] [model=frcnn_r50fpn] [key=value ...] [-m].

The recipe (Faster R-CNN R50-FPN, SGD, warmup-cosine, AP40 validation) is in conf/; see
``python train.py --help`` for the config groups and ``--cfg job`` for the resolved config.
Returns the best monitored metric, so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import cxrdet  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations loads)
from cxrdet.config import quote_numeric_choices, unknown_override  # registers the schemas too
from cxrdet.training.run_log import fail, note_if_no_checkpoint, point_latest, to_run_log

if TYPE_CHECKING:
    import pytorch_lightning as pl

# torch, Lightning and the models are imported in the functions below, after Hydra has composed
# the config: --help, --cfg and a refused override answer without them.
log = logging.getLogger("cxrdet.train")
# torchdata 0.11 calls a torch function that newer torch deprecates, once per loader iterator.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
# Lightning advertises its cloud services on every run ("💡 Tip: ... litlogger"): noise here.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "💡 Tip" not in record.getMessage()
)


def refuse_local_ddp_sweep(cfg: DictConfig) -> None:
    """Stop, in one line, a sweep launched in this process that would train on several
    processes: Lightning's DDP re-runs the command line in its child processes, the sweep's
    included. Decided by the number of processes (``devices=2`` alone builds DDP), not by the
    strategy's name."""
    from cxrdet.training.devices import process_count

    if process_count(cfg.trainer) < 2:
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and "submitit" not in str(hydra_cfg.launcher._target_):
        fail(
            f"a sweep (-m or hparams_search) on {process_count(cfg.trainer)} processes "
            "(DDP) needs one job per run: add hydra/launcher=slurm (each run then starts its own "
            "DDP processes), or sweep on one device"
        )


def check_resume_checkpoint(cfg: DictConfig) -> None:
    """Stop, in one line, on a ``ckpt_path`` that is missing or unreadable, or that needs full
    unpickling without ``trust_checkpoint=true`` (nothing in it runs: it is read as tensors and
    plain values, memory-mapped, before Lightning reads it the same way)."""
    if not cfg.ckpt_path:
        return
    from cxrdet.models.safe_load import UntrustedFile, safe_load

    if not Path(cfg.ckpt_path).is_file():
        fail(f"ckpt_path: {cfg.ckpt_path} not found")
    if cfg.trust_checkpoint:
        log.warning(
            "ckpt_path=%s is unpickled in full (trust_checkpoint=true): any Python code it "
            "carries runs with your permissions",
            cfg.ckpt_path,
        )
        return
    try:
        safe_load(cfg.ckpt_path, mmap=True)
    except UntrustedFile as e:
        fail(f"ckpt_path={e}")
    except (RuntimeError, OSError) as e:
        fail(f"ckpt_path: cannot read {cfg.ckpt_path} as a checkpoint ({e})")


def refuse_unlogged_monitor(cfg: DictConfig, module, evaluations: list) -> None:
    """Stop, in one line, a checkpoint monitor that neither the module nor a chosen evaluation
    logs (the best checkpoint would never be chosen, and Lightning would fail at the first
    validation)."""
    from cxrdet.training.evaluation import unlogged_monitor

    monitor = (cfg.get("callbacks") or {}).get("model_checkpoint", {}).get("monitor")
    logs = {*module.LOGS, *(name for e in evaluations for name in e.LOGS)}
    if unlogged_monitor(monitor, logs):
        choices = HydraConfig.get().runtime.choices.get("evaluation", "none")
        fail(
            f"callbacks.model_checkpoint.monitor={monitor} is logged by no chosen "
            f"evaluation (evaluation={choices}); choose one that logs it (competition: "
            "val/AP40, val/mAP40; coco adds val/AP, val/AP50, ...), or monitor another metric"
        )


def refuse_unknown_keys(group: str, given, takes) -> None:
    """Stop, in one line, on a key of ``group`` that ``takes`` (a function or class) has no
    parameter for (added with ``+group.key=``), naming the closest one it has."""
    import difflib
    import inspect

    accepted = [p for p in inspect.signature(takes).parameters if p not in ("self", "kwargs")]
    for key in given:
        if key not in accepted and not key.startswith("_"):
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {group}.{close[0]}?" if close else ""
            owner = takes.__qualname__.removesuffix(".__init__")
            fail(f"{group}.{key}: {owner} takes no such key{hint}")


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """The detector, or the "No finding" classifier when the model config names an ``arch``."""
    from cxrdet.data.labels import CLASS_NAMES, NUM_FINDINGS
    from cxrdet.models.classifier import NoFindingModule, build_classifier
    from cxrdet.models.detector import build_fasterrcnn
    from cxrdet.models.module import DetectorModule

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    takes = build_classifier if "arch" in model_cfg else build_fasterrcnn
    refuse_unknown_keys("model", [k for k in model_cfg if k not in ("low", "high")], takes)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    scheduler = (
        OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None
    )
    if "arch" in model_cfg:
        low, high = model_cfg.pop("low", 0.08), model_cfg.pop("high", 0.95)
        return NoFindingModule(
            model_cfg, optim, scheduler, low=low, high=high, trust_weights=cfg.trust_checkpoint
        )
    num_classes = NUM_FINDINGS + 1 if cfg.data.use_class14 else NUM_FINDINGS
    return DetectorModule(
        model={**model_cfg, "num_classes": num_classes},
        optim=optim,
        scheduler=scheduler,
        class_names=CLASS_NAMES[:num_classes],
        on_nonfinite=cfg.on_nonfinite,
        trust_weights=cfg.trust_checkpoint,
    )


def train(cfg: DictConfig) -> float | None:
    """Build data, model, callbacks and loggers from ``cfg``; fit; return the best metric."""
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import LearningRateMonitor

    from cxrdet.data.label_check import issues_frame
    from cxrdet.models.precision import choose_precision
    from cxrdet.reports.report import upload_figures, write_report
    from cxrdet.training.devices import trainer_device
    from cxrdet.training.loggers import build_loggers, run_info
    from cxrdet.training.overlays import WandbBoxOverlays

    pl.seed_everything(cfg.seed, workers=True)
    device = trainer_device(cfg.trainer)
    if device == "cuda":  # TF32 matmuls; the CPU's float32 stays as it is
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    cfg.trainer.precision = choose_precision(cfg.trainer.precision, device, "trainer.precision")
    augment = instantiate(cfg.augment) if cfg.augment else None
    datamodule = instantiate(cfg.data, augment=augment, seed=cfg.seed, _recursive_=False)
    try:  # pretrained weights that cannot load stop here, before any data loads
        module = build_module(cfg)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    evaluations = [instantiate(e) for e in (cfg.get("evaluation") or {}).values()]
    refuse_unlogged_monitor(cfg, module, evaluations)
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
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:  # bad data fails here, before any training, with the file and the reason
        datamodule.setup("fit")
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    issues = getattr(datamodule, "label_issues", [])
    if issues and trainer.is_global_zero:  # every box clipped or dropped, where the run lives
        path = Path(trainer.default_root_dir) / "label_issues.csv"
        issues_frame(issues).to_csv(path, index=False)
        log.info("label issues: %s", path)
    try:
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=cfg.ckpt_path,
            weights_only=not cfg.trust_checkpoint,  # checked at start: no code runs
        )
    except FloatingPointError as e:
        fail(str(e))

    if (cfg.get("report") or wandb_images) and trainer.is_global_zero:
        try:  # the checkpoints are written: a report that cannot be made only warns
            figures = write_report(trainer.default_root_dir)
        except (FileNotFoundError, ValueError) as e:
            log.warning("no report: %s (the figures need the csv logger: logger=[csv,wandb])", e)
            figures = []
        if figures:
            log.info("report: %d files in %s (open index.html)", len(figures), figures[0].parent)
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
    from cxrdet.data.config import input_problem

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    point_latest(Path(hydra_cfg.sweep.dir) if sweep else run_dir)
    try:
        problem = input_problem(cfg.data)
        if problem:  # before torch and Lightning load: a wrong path fails in a second
            fail(problem)
        refuse_local_ddp_sweep(cfg)
        check_resume_checkpoint(cfg)
        return train(cfg)
    except Exception:  # a traceback reaches the run's log too, not only the terminal
        to_run_log(logging.ERROR, "the run stopped on an error:", exc_info=sys.exc_info())
        raise
    finally:
        note_if_no_checkpoint(run_dir)


if __name__ == "__main__":
    sys.argv = quote_numeric_choices(sys.argv)
    typo = unknown_override(sys.argv, "train")
    if typo:
        sys.exit(f"error: {typo}")
    main()
