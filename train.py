"""Train a detector: python train.py [data=512] [model=frcnn_r50fpn] [key=value ...] [-m].

The recipe (Faster R-CNN R50-FPN, SGD, warmup-cosine, AP40 validation) is in conf/; see
``python train.py --help`` for the config groups and ``--cfg job`` for the resolved config.
Returns the best monitored metric, so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import cxrdet  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations loads)
from cxrdet.config import quote_numeric_choices, unknown_override  # registers the schemas too
from cxrdet.training.run_log import (
    fail,
    note_if_no_checkpoint,
    point_latest,
    quiet_library_noise,
    to_run_log,
)

# torch, Lightning and the models are imported in the functions below, after Hydra has composed
# the config: --help, --cfg and a refused override answer without them.
log = logging.getLogger("cxrdet.train")


def train(cfg: DictConfig, ckpt_path: str | None) -> float | None:
    """Build data, model, callbacks and loggers from ``cfg``; fit (from ``ckpt_path`` when it
    continues a run); report; return the best monitored metric."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from cxrdet.data.loaders import ResumeMismatch
    from cxrdet.training import build

    pl.seed_everything(cfg.seed, workers=True)
    build.prepare_device(cfg)
    augment = instantiate(cfg.augment) if cfg.augment else None
    datamodule = instantiate(cfg.data, augment=augment, seed=cfg.seed, _recursive_=False)
    module = build.build_module(cfg)  # pretrained weights that cannot load stop here
    trainer, loggers, wandb_images = build.build_trainer(cfg, module)
    build.setup_data(datamodule, trainer)  # bad data stops here, before any training
    trust = cfg.trust_checkpoint  # checked at start: no code runs
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
    except (FloatingPointError, ResumeMismatch) as e:
        fail(str(e))
    if (cfg.get("report") or wandb_images) and trainer.is_global_zero:
        from cxrdet.reports.report import report_run

        report_run(trainer.default_root_dir, loggers if wandb_images else [])
    return build.best_score(trainer)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from cxrdet.data.config import input_problem
    from cxrdet.training import checks

    quiet_library_noise()  # per run: the warnings' filters may have been reset since import
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        problem = input_problem(cfg.data)
        if problem:  # before torch and Lightning load: a wrong path fails in a second
            fail(problem)
        from cxrdet.training.resume import resume_checkpoint

        checks.refuse_local_ddp_sweep(cfg, sweep, str(hydra_cfg.launcher._target_))
        checks.check_resume_checkpoint(cfg.ckpt_path, cfg.trust_checkpoint)
        return train(cfg, resume_checkpoint(run_dir, cfg.ckpt_path, cfg.resume))
    except checks.StartupError as e:
        fail(str(e))
    except Exception:  # a traceback reaches the run's log too, not only the terminal
        to_run_log(logging.ERROR, "the run stopped on an error:", exc_info=sys.exc_info())
        raise
    finally:  # latest: the newest run (or sweep) that wrote a checkpoint, never a failed start
        if note_if_no_checkpoint(run_dir):
            point_latest(Path(hydra_cfg.sweep.dir) if sweep else run_dir)


if __name__ == "__main__":
    sys.argv = quote_numeric_choices(sys.argv)
    typo = unknown_override(sys.argv, "train")
    if typo:
        sys.exit(f"error: {typo}")
    main()
