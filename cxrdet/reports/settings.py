"""What the report says about the run: its title, its settings, the checkpoint it evaluates
and the labels that had to change (no paths, no image ids)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrdet.models.safe_load import safe_load

PICK = {  # the page's name: the config key
    "weights": "model.weights",
    "image size": "data.image_size",
    "batch size": "data.batch_size",
    "training boxes fused": "data.fusion",
    "validation truth fused": "data.val_fusion",
    "steps": "trainer.max_steps",
    "learning rate": "optim.lr",
    "precision": "trainer.precision",
    "seed": "seed",
}
LAST_VALIDATION = ("val/mAP40", "val/AP40", "val/CPM", "val/mAP40_vs_readers")


def run_title(run_dir: Path, cfg) -> str:
    """``cxrdet run <run_name>/<folder>``, as under outputs/ (``latest`` resolved)."""
    folder = Path(run_dir).resolve().name
    name = cfg.get("run_name") if cfg is not None else None
    return f"cxrdet run {name}/{folder}" if name and name != folder else f"cxrdet run {folder}"


def checkpoint_step(path: Path, trust: bool = False) -> int | None:
    """The optimizer steps a checkpoint's weights have taken (its ``global_step``)."""
    step = safe_load(path, trust, "--trust", mmap=True).get("global_step")
    return int(step) if step is not None else None


def checkpoint_label(path: Path, step: int | None) -> str:
    return f"{path.name} (step {step})" if step is not None else path.name


def run_config(run_dir: Path):
    """The run's composed config and Hydra's group choices (None and {} without them)."""
    from omegaconf import OmegaConf

    hydra_dir = run_dir / ".hydra"
    config, hydra = hydra_dir / "config.yaml", hydra_dir / "hydra.yaml"
    cfg = OmegaConf.load(config) if config.is_file() else None
    choices = OmegaConf.load(hydra).hydra.runtime.choices if hydra.is_file() else {}
    return cfg, choices


def run_settings(
    run_dir: Path, cfg, choices, metrics: pd.DataFrame, ckpt: str | None, page: dict
) -> dict:
    """The run's main settings and headline figures: the evaluated checkpoint's when there is
    one (``page``: the validation's ``scores`` and ``radiology``), else the last validation's
    from metrics.csv, each named by its source."""
    from omegaconf import OmegaConf

    cfg = cfg if cfg is not None else OmegaConf.create({})
    settings = {
        group: choices[group]
        for group in ("experiment", "model", "data", "evaluation")
        if choices.get(group) is not None
    }
    for name, key in PICK.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            settings[name] = Path(str(value)).name if name == "weights" else value
    settings["checkpoint"] = ckpt or "none (curves only)"
    scores, radiology = page.get("scores"), page.get("radiology", {})
    if scores:
        settings["checkpoint mAP40"] = scores["mAP40"]
        settings["checkpoint AP40"] = scores["AP40"]
        if radiology.get("froc", {}).get("sensitivity"):
            settings["checkpoint CPM"] = radiology["froc"]["CPM"]
        readers = radiology.get("readers", {})
        if readers.get("readers"):
            settings["checkpoint mAP40 vs readers"] = readers["mAP40_vs_readers"]
        settings["validation images"] = scores["images"]
    else:
        for column in LAST_VALIDATION:
            if column in metrics and metrics[column].notna().any():
                rows = metrics[["step", column]].dropna()
                step = int(rows["step"].iloc[-1]) + 1
                settings[f"last validation {column.removeprefix('val/')} (step {step})"] = float(
                    rows[column].iloc[-1]
                )
    settings.update(label_changes(run_dir, OmegaConf.select(cfg, "data.label_issues")))
    return settings


def label_changes(run_dir: Path, mode: str | None) -> dict:
    """What training changed in the labels, from the files it wrote in the run's folder:
    boxes clipped to their image or dropped per split (``label_issues.csv``), images left out
    because their boxes cannot fit their size (``label_mismatch.csv``)."""
    out = {}
    issues, left_out = run_dir / "label_issues.csv", run_dir / "label_mismatch.csv"
    if issues.is_file():
        rows = pd.read_csv(issues, dtype={"image_id": str})
        for split, group in rows.groupby("split", sort=False):
            kinds = group["issue"].value_counts()
            out[f"{split} boxes clipped / dropped"] = (
                f"{kinds.get('clipped', 0)} / {kinds.get('dropped', 0)} "
                f"in {group['image_id'].nunique()} image(s) (label_issues.csv)"
            )
    if left_out.is_file():
        n = len(pd.read_csv(left_out, dtype={"image_id": str}))
        how = f"data.label_issues={mode}" if mode else "labels that do not fit their size"
        out["images left out"] = f"{n} ({how}; label_mismatch.csv)"
    return out


def headline(page: dict, checkpoint: str | None) -> dict:
    """The evaluated checkpoint's headline figures, as ``report/figures.json`` keeps them for
    the demo's summary and scripts: mAP40 and AP40, the CPM, the readers' baseline and the
    readers at their operating points, each interval beside its figure."""
    from cxrdet.evaluation.radiology import as_json

    scores = page["scores"]
    radiology = as_json(page.get("radiology", {}))
    out = {
        "checkpoint": checkpoint,
        "images": scores["images"],
        "mAP40": scores["mAP40"],
        "mAP40_ci": scores.get("mAP40_ci"),  # cxrdet.evaluation.bootstrap.class_interval
        "AP40": scores["AP40"],
    }
    if "froc" in radiology:
        froc = radiology["froc"]
        out.update(CPM=froc["CPM"], CPM_ci=froc.get("CPM_ci"))
    if "readers" in radiology:
        readers = radiology["readers"]
        out.update(
            readers_mAP40=readers["readers_mAP40"],
            mAP40_vs_readers=readers["mAP40_vs_readers"],
            operating_points=readers["operating_points"]["readers"],
        )
    return out
