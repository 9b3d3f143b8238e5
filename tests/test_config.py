"""Every config group option composes, and numeric group choices work from the command line."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from cxrdet.config import CONF_DIR, quote_numeric_choices
from cxrdet.data.config import fold_problem

GROUPS = [
    "data",
    "model",
    "augment",
    "optim",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "evaluation",
    "experiment",
    "hparams_search",
]
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONF_DIR / group).glob("*.yaml"))]


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_resolves(group, option, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose("train", [f"{group}='{option}'"] if option.isdigit() else [f"{group}={option}"])
    assert cfg.hydra.runtime.choices[group] == option
    # As a running job sees it: ${hydra:runtime.output_dir} is the run directory.
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    del cfg.hydra
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    finally:
        HydraConfig.instance().cfg = None  # as outside a job again
    assert resolved["trainer"]["default_root_dir"] == str(tmp_path)
    assert {"data", "model", "optim", "trainer", "callbacks"} <= set(resolved)


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
    # The demo's summary prints the readers' baseline and the CPM: it validates with them.
    assert set(demo.evaluation) == {"competition", "radiology"}


def test_demo_summary_s_validation_figures_are_the_best_checkpoint_s(tmp_path):
    """The summary's validation rows come from the report's figures.json (the checkpoint the
    test set is predicted with, named), with their intervals and the readers' verdicts, not
    from metrics.csv's last validation."""
    import json

    from cxrdet.demo.summary import validation_rows

    figures = {
        "checkpoint": "best-step50.ckpt (step 50)",
        "images": 40,
        "mAP40": 0.148,
        "mAP40_ci": [0.1, 0.2],
        "AP40": 0.096,
        "CPM": 0.15,
        "CPM_ci": [0.05, 0.25],
        "operating_points": [{"verdict": v} for v in ("below", "below", "within")],
    }
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    rows = dict(validation_rows(tmp_path / "figures.json"))
    where = "(best-step50.ckpt (step 50), 40 images)"
    assert rows[f"validation mAP40 {where}"] == "0.148 [0.100, 0.200]"
    assert rows[f"validation AP40 {where}"] == "0.096"
    assert rows["validation CPM (FROC, 1/8-8 FPs/image)"] == "0.150 [0.050, 0.250]"
    assert rows["model at each reader's FP rate"].startswith("0 above, 1 within, 2 below")
    assert validation_rows(tmp_path / "none.json")[0][1].startswith("no ")


def test_demo_classifier_trains_on_the_demo_detector_s_data_and_split():
    detector = _compose("train", ["experiment=demo"])
    classifier = _compose("train", ["experiment=demo_nofinding"])
    assert classifier.model.arch == "resnet18" and classifier.model.weights is None
    for key in ("labels_csv", "image_dir", "image_size", "split", "val_fraction", "split_seed"):
        assert classifier.data[key] == detector.data[key], key
    assert classifier.data.empty_images == "keep"  # the normal images are half of its task
    assert classifier.callbacks.model_checkpoint.monitor == "val/AUC"
    assert classifier.trainer.accelerator == "cpu"
    assert classifier.hydra.run.dir == "outputs/demo/nofinding"


def test_predict_config_composes():
    cfg = _compose("predict", ["ckpt_path=x.ckpt", "prepared_size=256"])
    assert cfg.image_dir.endswith("/256/test")
    # The checkpoint's own threshold and cap: the operating point its val/mAP40 scored.
    assert cfg.score_thresh is None and cfg.max_detections is None


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


def test_the_headline_command_composes_the_real_data_recipe():
    # python train.py data=512 model=frcnn_r50fpn --cfg job
    cfg = _compose("train", ["data='512'", "model=frcnn_r50fpn"])
    assert cfg.model.weights == "DEFAULT" and cfg.model.trainable_backbone_layers == 3
    assert cfg.trainer.precision == "auto" and cfg.data.empty_images == "drop"
    assert cfg.model.rpn_post_nms_top_n_train == 1000


def _detectron2_table() -> dict[str, object]:
    """key → cxrdet value of every row of docs/detectron2.md's settings table that has both."""
    text = (CONF_DIR.parent / "docs" / "detectron2.md").read_text()
    table = text.split("## Every setting the report relied on")[1].split("\n## ")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4:
            continue
        key, value = re.fullmatch(r"`([a-z_.]+)`", cells[3]), re.match(r"`([^`]+)`", cells[2])
        if key and value:
            rows[key.group(1)] = yaml.safe_load(value.group(1))
    return rows


def _stages(model) -> int:
    body = model.backbone.body
    names = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    return sum(any(p.requires_grad for p in getattr(body, n).parameters()) for n in names)


MODEL_GETTERS = {
    "model.trainable_backbone_layers": _stages,
    "model.rpn_pre_nms_top_n_train": lambda m: m.rpn._pre_nms_top_n["training"],
    "model.rpn_pre_nms_top_n_test": lambda m: m.rpn._pre_nms_top_n["testing"],
    "model.rpn_post_nms_top_n_train": lambda m: m.rpn._post_nms_top_n["training"],
    "model.rpn_post_nms_top_n_test": lambda m: m.rpn._post_nms_top_n["testing"],
    "model.rpn_batch_size_per_image": lambda m: m.rpn.fg_bg_sampler.batch_size_per_image,
    "model.roi_batch_size_per_image": lambda m: m.roi_heads.fg_bg_sampler.batch_size_per_image,
    "model.box_score_thresh": lambda m: m.roi_heads.score_thresh,
    "model.box_nms_thresh": lambda m: m.roi_heads.nms_thresh,
    "model.box_detections_per_img": lambda m: m.roi_heads.detections_per_img,
    "model.min_size": lambda m: list(m.transform.train_sizes),
    "model.max_size": lambda m: m.transform.max_size,
    "model.test_size": lambda m: m.transform.test_size,
}


def test_seed_experiment_builds_the_model_of_the_detectron2_table(tmp_path, monkeypatch):
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
    from torchvision.ops.misc import FrozenBatchNorm2d

    from cxrdet.models.detector import build_fasterrcnn
    from cxrdet.models.weights import cache_file

    rows = _detectron2_table()
    assert len(rows) >= 25 and set(MODEL_GETTERS) <= set(rows)
    cfg = _compose("train", ["experiment=seed_r50fpn_512"])
    for key, value in rows.items():
        got = cfg.hydra.runtime.choices[key] if key in GROUPS else OmegaConf.select(cfg, key)
        assert got == value, f"{key}: config {got!r}, docs/detectron2.md {value!r}"
    # DEFAULT from a TORCH_HOME made here, holding a COCO-shaped state dict.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    coco = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    cache_file(coco).parent.mkdir(parents=True)
    state = build_fasterrcnn(num_classes=90, image_size=64, frozen_bn=True).state_dict()
    torch.save(state, cache_file(coco))
    model = build_fasterrcnn(num_classes=14, **OmegaConf.to_container(cfg.model, resolve=True))
    expected = {**rows, "model.min_size": [rows["model.min_size"]]}
    expected["model.test_size"] = rows["model.test_size"] or rows["model.min_size"]
    for key, getter in MODEL_GETTERS.items():
        assert getter(model) == expected[key], key
    body = model.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, state["backbone.body.layer2.0.conv1.weight"])
    norms = [m for m in body.modules() if "BatchNorm" in type(m).__name__]
    assert all(isinstance(m, FrozenBatchNorm2d) for m in norms)


def _fold_sweeps() -> list[list[str]]:
    """Every fold sweep the docs show: ``python train.py -m ... data.fold=0,1,2,3,4``."""
    docs = [CONF_DIR.parent / "README.md", *sorted((CONF_DIR.parent / "docs").glob("*.md"))]
    commands = []
    for line in (line for doc in docs for line in doc.read_text().splitlines()):
        found = re.search(r"python train\.py -m ((?:[\w./=,'\[\]-]+ ?)+)", line.replace("`", " "))
        if found and "data.fold=" in found.group(1):
            commands.append(found.group(1).split())
    return commands


def test_every_fold_sweep_in_the_docs_makes_five_distinct_kfold_runs():
    commands = _fold_sweeps()
    assert len(commands) >= 2  # the detector's and the classifier's
    for args in commands:
        (sweep,) = [a for a in args if a.startswith("data.fold=")]
        runs = []
        for fold in sweep.split("=", 1)[1].split(","):
            job = [a if a != sweep else f"data.fold={fold}" for a in args]
            cfg = _compose("train", quote_numeric_choices(job))
            assert fold_problem(cfg.data) is None, " ".join(args)
            runs.append((cfg.data.split, cfg.data.fold, cfg.data.n_folds))
        assert runs == [("kfold", k, 5) for k in range(5)], " ".join(args)


def test_a_fold_without_kfold_is_refused_at_start_naming_both_keys(tmp_path):
    from conftest import run_fails

    done = run_fails(
        ["train.py", "experiment=nofinding", "data.fold=3", f"hydra.run.dir={tmp_path}"]
    )
    assert done.stderr.strip() == (
        "error: data.fold=3 needs data.split=kfold (data.split=valid20 has no folds, so every "
        "fold would train on the same split): add data.split=kfold"
    )


def test_class_14_with_no_normal_image_to_learn_from_is_refused(tiny_data, tmp_path):
    from conftest import run_fails, tiny_datamodule

    done = run_fails(["train.py", "data.use_class14=true", f"hydra.run.dir={tmp_path}"])
    assert done.stderr.strip().startswith(
        "error: data.use_class14=true trains 'No finding' on the normal images, and "
        "data.empty_images=drop trains on none of them: set data.empty_images=keep"
    )
    for empty in ("drop", 0.0):
        with pytest.raises(ValueError, match="data.use_class14=true"):
            tiny_datamodule(tiny_data, use_class14=True, empty_images=empty).setup("fit")
    tiny_datamodule(tiny_data, use_class14=True, empty_images=0.25).setup("fit")  # some: fine


@pytest.mark.parametrize("experiment", [None, "seed_r50fpn_512", "winners_512"])
def test_1024_px_composes_with_the_schedules_evaluations_and_experiments(experiment):
    overrides = ["data=1024", "scheduler=warmup_multistep", "evaluation=[competition,coco]"]
    cfg = _compose(
        "train", quote_numeric_choices(overrides + [f"experiment={experiment}"] * bool(experiment))
    )
    assert cfg.data.image_size == cfg.model.image_size == 1024
    assert cfg.data.image_dir.endswith("/1024/train") and cfg.data.batch_size == 2
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert model["min_size"] == 1024  # the experiments train at the prepared size too
    assert cfg.scheduler._target_.endswith("warmup_multistep_scheduler")
    assert set(cfg.evaluation) == {"competition", "coco"}


def test_demo_stages_print_one_line_each_and_the_report_opens_with_the_same_table(tmp_path):
    """Each stage: what it did and its seconds, or 'reused'; the report's page gets the table
    right after its title, and a rerun replaces it instead of stacking a second."""
    from cxrdet.demo.summary import Stage, add_to_report

    stages = [Stage("train", "400 steps of 4 images", 408.4), Stage("predict", "50 images", None)]
    assert stages[0].line() == "train     400 steps of 4 images: 408 s"
    assert stages[1].line().startswith("predict   50 images: reused")
    page = tmp_path / "index.html"
    page.write_text("<html><body><h1>run</h1><h2>Run</h2></body></html>")
    assert add_to_report(page, stages, [("test mAP40 (50 images)", "0.584 [0.502, 0.708]")])
    add_to_report(page, stages, [("test mAP40 (50 images)", "0.600")])
    html = page.read_text()
    assert html.count("<h2>make demo</h2>") == 1 and "0.584" not in html and "0.600" in html
    assert html.index("</h1>") < html.index("408 s") < html.index("<h2>Run</h2>")
    assert not add_to_report(tmp_path / "none.html", stages, [])


def test_demo_classifier_test_row_scores_the_probabilities_predict_wrote(tmp_path):
    """The classifier's test AUC is that of nofinding_probs.csv against the test labels'
    normal images, with '≈ chance' when its interval holds 0.5."""
    import pandas as pd

    from cxrdet.demo.summary import auc_text, classifier_test_row

    labels = tmp_path / "test_labels.csv"
    rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    rows += [f"n{i},No finding,14,consensus,,,," for i in range(4)]
    rows += [f"a{i},Nodule/Mass,8,consensus,1,1,5,5" for i in range(4)]
    labels.write_text("\n".join(rows) + "\n")
    probs = tmp_path / "nofinding_probs.csv"
    ids = [f"n{i}" for i in range(4)] + [f"a{i}" for i in range(4)]
    values = [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9]  # one normal above one abnormal
    pd.DataFrame({"image_id": ids, "p_abnormal": values}).to_csv(probs, index=False)
    name, text = classifier_test_row(probs, labels, tmp_path / "best-step180.ckpt")
    assert name == "classifier test AUC (best-step180.ckpt, 8 images)"
    assert text.startswith("0.938 [")  # 15 of the 16 (normal, abnormal) pairs ordered
    assert auc_text(0.55, [0.4, 0.7]).endswith(": ≈ chance")
    assert "chance" not in auc_text(0.95, [0.85, 1.0])
