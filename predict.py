"""Write a Kaggle submission: python predict.py ckpt_path=PATH [key=value ...].

Boxes come back in original DICOM pixels; every image gets exactly one row. Prepared PNGs or
DICOMs (``dicom_dir=``), one checkpoint or a WBF ensemble (``ckpt_path=[a,b]``), ``tta=hflip``,
and the "No finding" line or classifier filter. See conf/predict.yaml.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import cxrdet  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations loads)
from cxrdet.config import unknown_override  # registers the typed PredictConfig predict.yaml extends
from cxrdet.inference.config import PredictConfig, missing_model
from cxrdet.training.run_log import point_latest

log = logging.getLogger("cxrdet.predict")

# torch and the models are imported in run(), after Hydra has composed the config: --help and a
# refused override answer without them.


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        if not cfg.model_file:
            sys.exit(
                "error: pass the checkpoint to predict with: python predict.py ckpt_path="
                "outputs/train/<run>/checkpoints/last.ckpt (or a list: ckpt_path=[a.ckpt,b.ckpt]"
                ", or an exported model: model_file=model.onnx)"
            )
        cfg.ckpt_path = None  # an exported model needs no checkpoint
    problem = missing_model(cfg.ckpt_path, cfg.model_file)
    if problem:  # before torch loads: a wrong path fails in a second
        sys.exit(f"error: {problem}")
    try:
        summary = run(cfg)
    except (FileNotFoundError, ValueError) as e:  # bad input: say what and where, no traceback
        sys.exit(f"error: {e}")
    except RuntimeError as e:
        from cxrdet.inference.processes import PeerStopped  # loaded by run() already

        if not isinstance(e, PeerStopped):
            raise
        sys.exit(f"error: {e}")  # another process's error says why
    if "submission" not in summary:  # another process of several: the first one merges
        return
    point_latest(Path(HydraConfig.get().runtime.output_dir))  # outputs/predict/latest
    print(
        f"submission: {summary['submission']} ({summary['images']} images, "
        f"{summary['images_per_s']} images/s on {summary['device']})"
    )


def checked_split(settings: PredictConfig):
    """The split to predict: the checkpoint's own with ``split.mode=from_checkpoint`` (the
    data settings train.py recorded in it); a split given outright, compared with the
    checkpoint's, with one warning when they differ (other images than the run validated on)."""
    from cxrdet.inference.config import checkpoint_split

    given = settings.split
    ckpt = settings.ckpt_path if isinstance(settings.ckpt_path, str) else settings.ckpt_path[0]
    recorded = checkpoint_split(ckpt, settings.trust_checkpoint) if ckpt else None
    if given.mode == "from_checkpoint":
        if recorded is None:
            raise ValueError(
                f"split.mode=from_checkpoint: {ckpt} records no data split (made before "
                "checkpoints held it): give split.mode=valid20|kfold and the run's settings"
            )
        if not Path(recorded.labels_csv).is_file():  # the labels moved: the given ones
            recorded.labels_csv = given.labels_csv
        return recorded
    if recorded is not None and recorded.mode in ("valid20", "kfold"):
        keys = ("mode", "val_fraction", "seed")
        keys += ("fold", "n_folds") if given.mode == "kfold" else ()
        differ = [k for k in keys if getattr(given, k) != getattr(recorded, k)]
        if differ:
            log.warning(
                "split.%s differ from the split %s was trained with (%s): these are not the "
                "images it validated on; split.mode=from_checkpoint takes its own",
                "/".join(differ),
                ckpt,
                ", ".join(f"{k}={getattr(recorded, k)}" for k in keys),
            )
    return given


def run(cfg: DictConfig) -> dict:
    """Predict with the settings in ``cfg`` (conf/predict.yaml, typed by PredictConfig)."""
    from cxrdet.data.labels import read_labels
    from cxrdet.data.splits import split_ids
    from cxrdet.inference.detectors import trained_size
    from cxrdet.inference.predictor import predict

    if cfg.prepared_size is None:  # the folders of the size the model trained at
        cfg.prepared_size = trained_size(cfg.ckpt_path, cfg.model_file, cfg.trust_checkpoint)
    settings: PredictConfig = OmegaConf.to_object(cfg)
    fetched = from_dicomweb(settings)  # source=dicomweb: the studies, fetched to a folder
    image_ids = None
    if settings.split.mode:  # the validation images of a training split, as train.py made it
        if settings.dicom_dir or settings.manifest:
            raise ValueError("split.mode works on prepared PNGs, not with dicom_dir or manifest")
        s = checked_split(settings)
        labels, _ = read_labels(s.labels_csv)
        _, image_ids = split_ids(labels, s.mode, s.val_fraction, s.seed, s.fold, s.n_folds)
        settings.split = s  # recorded in predict.json: cxrdet score --split from_checkpoint
    summary = predict(settings, image_ids)
    if fetched is not None:
        summary["dicomweb"] = to_dicomweb(settings, summary, fetched)
    return summary


def from_dicomweb(settings: PredictConfig) -> dict | None:
    """With ``source=dicomweb``: fetch the studies (WADO-RS) and point ``dicom_dir`` at them;
    the instances that failed (UID → why). None with ``source=files``."""
    if settings.source not in ("files", "dicomweb"):
        raise ValueError(f"source={settings.source}: expected files or dicomweb")
    if settings.results.stow and (settings.source != "dicomweb" or not settings.results.dicom):
        raise ValueError(
            "results.stow=true stores the DICOM results back where the studies came from: "
            "it needs source=dicomweb and results.dicom=[sr,gsps] (or one of them)"
        )
    if settings.source == "files":
        return None
    from cxrdet.inference.processes import processes_of

    if processes_of(settings.trainer.devices, settings.trainer.num_nodes) > 1:
        raise ValueError(
            "source=dicomweb fetches in one process: fetch with trainer.devices=1 first, then "
            "predict the folder it wrote (dicom_dir=<dicomweb.download_dir>) with several"
        )
    if settings.dicom_dir or settings.manifest:
        raise ValueError("source=dicomweb fetches its own DICOMs: drop dicom_dir / manifest")
    from cxrdet.inference.dicomweb import fetch

    folder = settings.dicomweb.download_dir or Path(settings.output).parent / "dicomweb"
    folder, failed = fetch(settings.dicomweb, folder, settings.progress)
    settings.dicom_dir = str(folder)
    return failed


def to_dicomweb(settings: PredictConfig, summary: dict, fetched: dict) -> dict:
    """With ``results.stow=true``, store the DICOM results back (STOW-RS); what was fetched
    and stored, for predict.json."""
    from cxrdet.inference.dicomweb import store

    out = {"url": settings.dicomweb.url, "not_fetched": sorted(fetched)}
    if settings.results.stow:
        files = [Path(f) for f in summary["dicom_results"]["files"]]
        failed = store(settings.dicomweb, files, settings.progress)
        out.update(stored=len(files) - len(failed), not_stored=sorted(failed))
    Path(summary["submission"]).with_name("predict.json").write_text(
        json.dumps({**summary, "dicomweb": out}, indent=2)
    )
    return out


if __name__ == "__main__":
    typo = unknown_override(sys.argv, "predict")
    if typo:
        sys.exit(f"error: {typo}")
    main()
