"""Labels, box scaling, augmentation and the data module."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_datamodule
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from cxrdet.config import CONF_DIR
from cxrdet.data.boxes import to_original, to_prepared
from cxrdet.data.datamodule import CXRDataModule
from cxrdet.data.dataset import load_png
from cxrdet.data.labels import read_labels
from cxrdet.data.splits import split_ids


def test_box_to_prepared_and_back_is_exact():
    box = np.array([[123.5, 456.25, 1789.0, 2345.75]])
    orig, prepared = (2500, 2048), (512, 512)
    small = to_prepared(box, orig, prepared)
    np.testing.assert_allclose(
        small, [[123.5 * 0.25, 456.25 * 512 / 2500, 1789 * 0.25, 2345.75 * 512 / 2500]]
    )
    np.testing.assert_allclose(to_original(small, orig, prepared), box, atol=1e-9)


def _augment(transforms):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["augment=seed"])
    cfg.augment.transforms = transforms
    return instantiate(cfg.augment)


def test_horizontal_flip_moves_boxes():
    flip = _augment([{"_target_": "albumentations.HorizontalFlip", "p": 1.0}])
    image = np.zeros((50, 100), np.uint8)
    image[10:20, 5:25] = 255
    out = flip(image=image, bboxes=np.array([[5.0, 10, 25, 20]]), labels=np.array([3]))
    np.testing.assert_allclose(out["bboxes"], [[75.0, 10, 95, 20]])
    assert out["image"][10:20, 75:95].min() == 255 and list(out["labels"]) == [3]


def test_seed_augmentation_keeps_the_box_on_what_it_marked():
    """The seed's flip, affine and brightness on a white rectangle: in every draw the box is
    kept and lies where the rectangle went (its bright pixels' extent; rotation widens both).
    Fails if a transform moves the image but not the box, or drops it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        aug = instantiate(compose(config_name="train").augment)
    from cxrdet.data.boxes import iou_matrix

    image = np.zeros((64, 64), np.uint8)
    image[10:40, 10:30] = 255  # the box [10, 10, 30, 40]
    moved = 0
    for _ in range(20):
        out = aug(image=image, bboxes=np.array([[10.0, 10, 30, 40]]), labels=np.array([5]))
        (box,) = np.asarray(out["bboxes"]).reshape(-1, 4)  # kept: exactly one
        ys, xs = np.nonzero(out["image"] > out["image"].max() / 2)
        content = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert iou_matrix([box], [content])[0, 0] > 0.75, (box, content)
        moved += not np.allclose(box, [10, 10, 30, 40], atol=0.5)
    assert moved >= 5  # the transforms did move it


def _write_labels(path, rows):
    cols = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)


def test_bad_label_rows_are_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "train.csv"
    _write_labels(
        path,
        [
            ["a", "Nodule/Mass", 8, "R1", 10, 10, 50, 50],
            ["a", "Nope", 17, "R1", 10, 10, 50, 50],  # unknown class
            ["b", "Nodule/Mass", 8, "R2", 10, 10, 10, 50],  # zero width
            ["b", "Nodule/Mass", 8, "R2", None, None, None, None],  # no box
            ["c", "No finding", 14, "R3", None, None, None, None],
        ],
    )
    labels, report = read_labels(path)
    assert list(labels.class_id) == [8, 14]
    assert report.n_skipped == 3
    assert report.skipped["an unknown class_id (expected 0..14)"] == [3]
    assert "train.csv: skipped 1 row(s) with a zero-area box" in caplog.text


def test_labels_missing_columns_error_names_file(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ["a"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"labels\.csv: not a labels file: expected Kaggle"):
        read_labels(path)


def test_a_csv_with_another_separator_is_named_so(tmp_path):
    """A spreadsheet saved with semicolons or tabs reads as one column: the error says which
    separator it found (labels, meta and submission alike)."""
    from cxrdet.data.meta import read_meta
    from cxrdet.evaluation.submission import SubmissionError, read_submission

    labels, meta, sub = tmp_path / "train.csv", tmp_path / "meta.csv", tmp_path / "sub.csv"
    labels.write_text("image_id;class_name;class_id;rad_id\na;Aortic enlargement;0;R1\n")
    meta.write_text("image_id\tdim0\tdim1\na\t10\t10\n")
    sub.write_text("image_id;PredictionString\na;14 1 0 0 1 1\n")
    with pytest.raises(ValueError, match="train.csv: not a labels file.* separated by semicolons"):
        read_labels(labels)
    with pytest.raises(ValueError, match="meta.csv: missing .* separated by tabs"):
        read_meta(meta)
    with pytest.raises(SubmissionError, match="sub.csv: columns .* separated by semicolons"):
        read_submission(sub)
    labels.write_text("image_id,class_id\na,0\n")  # commas, a column short: no separator note
    with pytest.raises(ValueError, match="not a labels file") as e:
        read_labels(labels)
    assert "separated" not in str(e.value)


def _labels_for(ids, classes):
    return pd.DataFrame({"image_id": ids, "class_id": classes})


def test_split_has_no_leak_and_is_seeded():
    ids = [f"{i:032x}" for i in range(50)] * 3
    labels = _labels_for(ids, [i % 15 for i in range(150)])
    train, val = split_ids(labels, "valid20", 0.2, seed=1)
    assert len(val) == 10 and len(train) == 40 and not set(train) & set(val)
    assert split_ids(labels.iloc[::-1], "valid20", 0.2, seed=1) == (train, val)
    assert split_ids(labels, "valid20", 0.2, seed=2)[1] != val
    assert split_ids(labels, "all_train") == (sorted(set(ids)), [])


def test_kfold_covers_every_image_once_without_leak_and_stratifies():
    rng = np.random.default_rng(0)
    ids = [f"{i:032x}" for i in range(200)]
    rare = set(ids[:20])  # 20 images with class 12, the rest class 14 or 0
    rows = [(i, 12 if i in rare else int(rng.choice([0, 14]))) for i in ids for _ in range(3)]
    labels = _labels_for(*zip(*rows))
    seen = []
    for fold in range(5):
        train, val = split_ids(labels, "kfold", seed=7, fold=fold, n_folds=5)
        assert not set(train) & set(val) and len(train) + len(val) == 200
        assert len(set(val) & rare) == 4  # stratified: the rare class spread evenly
        seen += val
    assert sorted(seen) == ids
    # Pinned: the same images whatever the process (a hash seed, a set's order) or the rows'
    # order, so that training, scoring and cxrdet cv agree across runs and machines.
    _, val = split_ids(labels.iloc[::-1], "kfold", seed=7, fold=2)
    assert [int(i, 16) for i in val[:8]] == [6, 8, 9, 18, 22, 28, 36, 41] and len(val) == 40
    with pytest.raises(ValueError, match="fold"):
        split_ids(labels, "kfold", fold=5, n_folds=5)


def _tiny_datamodule(tiny_data, labels=None, prepared=None, **kwargs) -> CXRDataModule:
    """The tiny 64-px data as one all-train set (set up), with any other CXRDataModule option."""
    data = {**tiny_data, "prepared": prepared or tiny_data["prepared"]}
    labels = labels or tiny_data["raw"] / "train.csv"
    dm = tiny_datamodule(data, labels_csv=labels, **{"split": "all_train", **kwargs})
    dm.setup()
    return dm


def test_datamodule_scales_boxes_skips_missing_images_and_keeps_negatives(
    tiny_data, caplog, tmp_path
):
    raw, prepared = tiny_data["raw"], tiny_data["prepared"]
    labels = pd.read_csv(raw / "train.csv")
    extra = labels.iloc[:1].copy()
    extra["image_id"] = "f" * 32  # a CSV row whose image was never prepared
    outside = labels[labels.class_id < 14].iloc[:1].copy()
    outside[["x_min", "x_max"]] = [5000.0, 6000.0]  # entirely right of the image
    flat, inverted = outside.copy(), outside.copy()  # no area: the matcher must never see them
    flat[["x_min", "x_max"]] = [10.0, 10.0]
    inverted[["x_min", "x_max"]] = [30.0, 12.0]
    path = tmp_path / "train_extra.csv"
    pd.concat([labels, extra, outside, flat, inverted]).to_csv(path, index=False)
    dm = _tiny_datamodule(tiny_data, labels=path)
    assert len(dm.train_set) == 16 and dm.val_set is None and dm.val_dataloader() == []
    assert "skipped 1 image(s)" in caplog.text and "f" * 32 in caplog.text
    assert "skipped 2 row(s) with a zero-area box" in caplog.text
    assert "0 box(es) clipped to their image, 3 dropped (under 1 px left, or 2 with no area" in (
        caplog.text
    )
    assert sorted((i["issue"], i["class_id"], i["x_max"]) for i in dm.label_issues) == [
        ("dropped", int(outside.class_id.iloc[0]), 6000.0),
        ("no area", int(outside.class_id.iloc[0]), 10.0),
        ("no area", int(outside.class_id.iloc[0]), 12.0),
    ]

    meta = pd.read_csv(prepared / "64" / "train_meta.csv", dtype={"image_id": str}).set_index(
        "image_id"
    )
    n_empty = 0
    for image, target in dm.train_set:
        # The loader ships the PNG's pixels as read (the model normalises them on its device).
        assert image.shape == (1, 64, 64) and image.dtype == torch.uint8
        png = load_png(prepared / "64" / "train" / f"{target['image_id']}.png")
        assert np.array_equal(image[0].numpy(), png)
        assert target["labels"].dtype == torch.int64 and target["boxes"].shape[1] == 4
        rows = labels[(labels.image_id == target["image_id"]) & (labels.class_id < 14)]
        if rows.empty:
            n_empty += 1
            assert target["boxes"].shape == (0, 4)
            continue
        dim0, dim1 = meta.loc[target["image_id"], ["dim0", "dim1"]]
        expected = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy() * np.array(
            [64 / dim1, 64 / dim0] * 2
        )
        np.testing.assert_allclose(target["boxes"].numpy(), expected, rtol=1e-5, atol=1e-3)
        assert (target["labels"].numpy() == rows.class_id.to_numpy() + 1).all()
    assert n_empty > 0


def test_use_class14_adds_one_box_per_normal_image(tiny_data):
    """Every image no reader marked gets exactly one 0 0 1 1 class-14 box, and no other image
    gets one (chosen by the labels, not by the box itself)."""
    dm = _tiny_datamodule(tiny_data, use_class14=True)
    targets = [t for _, t in dm.train_set]
    normals = [t for t in targets if t["normal"]]
    assert normals and len(normals) < len(targets)
    for t in targets:
        line = t["labels"] == 15
        assert line.sum() == (1 if t["normal"] else 0), t["image_id"]
        if t["normal"]:
            np.testing.assert_allclose(t["boxes"][line].numpy(), [[0, 0, 1, 1]])


def test_letterboxed_data_places_boxes_inside_the_content(tiny_data, tmp_path):
    from cxrdet.data.boxes import letterbox_content
    from cxrdet.data.prepare import prepare

    prepare(tiny_data["raw"] / "train", tmp_path, [64], keep_ratio=True, progress=False)
    dm = _tiny_datamodule(tiny_data, prepared=tmp_path)
    labels = pd.read_csv(tiny_data["raw"] / "train.csv")
    checked = 0
    for record, (_, target) in zip(dm.train_set.records, dm.train_set):
        x0, y0, w, h = letterbox_content(record.orig_hw, 64)
        assert record.content == (x0, y0, w, h)
        rows = labels[(labels.image_id == record.image_id) & (labels.class_id < 14)]
        if rows.empty:
            continue
        oh, ow = record.orig_hw
        raw = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        expected = raw * np.array([w / ow, h / oh] * 2) + np.array([x0, y0] * 2)
        np.testing.assert_allclose(target["boxes"].numpy(), expected, rtol=1e-5, atol=1e-3)
        checked += 1
    assert checked > 0


def _seeded_datamodule(tiny_data, seed):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        augment = instantiate(compose(config_name="train").augment)
    return _tiny_datamodule(tiny_data, augment=augment, seed=seed)


def test_augmentation_depends_only_on_seed_epoch_and_sample(tiny_data):
    a, b = _seeded_datamodule(tiny_data, 7).train_set, _seeded_datamodule(tiny_data, 7).train_set
    order = range(len(a))
    first = [a[i][0] for i in order]
    again = [b[i][0] for i in reversed(order)][::-1]  # another instance, another loading order
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert all(torch.equal(a[(0, i)][0], first[i]) for i in order)  # a bare index is epoch 0
    assert sum(not torch.equal(a[(1, i)][0], first[i]) for i in order) > len(a) // 4
    other = _seeded_datamodule(tiny_data, 8).train_set
    assert sum(not torch.equal(other[i][0], first[i]) for i in order) > len(a) // 4


def test_training_order_is_seeded_per_epoch_and_sharded_across_ranks(tiny_data):
    from cxrdet.data.loaders import EpochSampler

    dm = _seeded_datamodule(tiny_data, 7)
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
    assert [i for _, i in epoch1] != [i for _, i in epoch0]
    sampler.set_epoch(0)
    assert list(sampler) == epoch0 and sorted(i for _, i in epoch0) == list(
        range(len(dm.train_set))
    )
    shards = [list(EpochSampler(dm.train_set, 2, rank, seed=7)) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(epoch0)
    assert not set(shards[0]) & set(shards[1])
    # The trainer's epoch counter wins over set_epoch: a resumed run's first iterator is made
    # before Lightning calls set_epoch.
    counter = EpochSampler(dm.train_set, 1, 0, seed=7, epoch_source=lambda: 1)
    counter.set_epoch(0)
    assert list(counter) == epoch1


class _Keys(torch.utils.data.Dataset):
    """Returns the sampler's key itself, so a loader's batches show the order."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return key[1]


NORMAL = [i % 3 != 0 for i in range(30)]  # 10 images with a finding (0, 3, ...), 20 without
ABNORMAL = [i for i, n in enumerate(NORMAL) if not n]


def _epoch(share, epoch=0, seed=5, replicas=1, rank=0):
    from cxrdet.data.loaders import EpochSampler

    sampler = EpochSampler(
        _Keys(30), replicas, rank, seed=seed, normal=NORMAL, normal_share=share, drop_last=True
    )
    sampler.set_epoch(epoch)
    return [i for _, i in sampler]


def test_empty_images_drop_keep_and_a_fraction_choose_what_the_sampler_yields():
    from cxrdet.data.datamodule import normal_share

    assert sorted(_epoch(0.0)) == ABNORMAL
    assert sorted(_epoch(1.0)) == list(range(30))
    quarter = [_epoch(0.25, epoch) for epoch in range(3)]
    for ids in quarter:  # every image with a finding, 5 of the 20 without, no repeats
        assert len(ids) == 15 == len(set(ids)) and set(ABNORMAL) <= set(ids)
    normals = [frozenset(ids) - set(ABNORMAL) for ids in quarter]
    assert len(set(normals)) == 3  # drawn anew each epoch
    assert _epoch(0.25, 1) == quarter[1] and _epoch(0.25, 1, seed=6) != quarter[1]
    shards = [_epoch(0.25, 1, replicas=2, rank=r) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 7
    assert set(shards[0] + shards[1]) <= set(quarter[1])
    assert [normal_share(v) for v in ("drop", "keep", 0.25, "0.5")] == [0.0, 1.0, 0.25, 0.5]
    for bad in ("some", 1.5, -0.1):
        with pytest.raises(ValueError, match="data.empty_images"):
            normal_share(bad)


def _loader(batch_size=2, replicas=1, rank=0, workers=0, shifts=None):
    """A TrainLoader over ``_Keys(30)`` (a quarter of the normal images each epoch) and the
    epoch counter it reads; ``shifts`` collects what it asks the trainer to add."""
    from cxrdet.data.loaders import EpochSampler, TrainLoader

    epoch = {"n": 0}
    sampler = EpochSampler(
        _Keys(30),
        replicas,
        rank,
        seed=5,
        normal=NORMAL,
        normal_share=0.25,
        epoch_source=lambda: epoch["n"],
    )
    loader = TrainLoader(
        _Keys(30),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        on_resume=None if shifts is None else shifts.append,
    )
    return loader, epoch


def test_a_fraction_of_empty_images_resumes_mid_epoch_in_the_same_order():
    straight, epoch = _loader()
    order = []
    for n in (0, 1):
        epoch["n"] = n
        order += [b.tolist() for b in straight]
    first, epoch = _loader(workers=2)
    it = iter(first)
    before = [next(it).tolist() for _ in range(3)]
    state = first.state_dict()
    resumed, epoch = _loader()
    resumed.load_state_dict(state)
    after = [b.tolist() for b in resumed]
    epoch["n"] = 1
    after += [b.tolist() for b in resumed]
    assert before + after == order


@pytest.mark.parametrize(
    ("before", "after"),
    [((2, 2), (1, 2)), ((1, 2), (2, 2)), ((1, 2), (1, 3)), ((2, 1), (1, 4))],
    ids=["2-to-1-process", "1-to-2-processes", "batch-2-to-3", "2x1-to-1x4"],
)
def test_a_resume_with_other_processes_or_batch_size_trains_each_sample_of_the_epoch_once(
    before, after
):
    """The epoch's samples handed out before the checkpoint (every rank's) and after the
    resume (every rank's, in the new world and batch size) together are the epoch's order:
    none skipped, none twice, apart from what full batches leave at the end; the trainer is
    told the epoch's batches in its new units. Fails if the position is kept per rank or in
    batches (torchdata's: another world size skips or repeats samples)."""
    (w0, b0), (w1, b1) = before, after
    loaders = [_loader(b0, w0, r)[0] for r in range(w0)]
    iterators = [iter(x) for x in loaders]
    trained = [i for _ in range(3) for it in iterators for i in next(it).tolist()]
    state = loaders[0].state_dict()  # rank 0 writes the checkpoint
    assert state["samples"] == 3 * b0 * w0
    shifts = []
    resumed = [_loader(b1, w1, r, shifts=shifts)[0] for r in range(w1)]
    for x in resumed:
        x.load_state_dict(state)
    rest = [i for x in resumed for b in x for i in b.tolist()]
    order = [i for _, i in _loader(1)[0].sampler]  # the epoch's order
    assert sorted(trained) == sorted(order[: len(trained)])
    assert len(set(trained + rest)) == len(trained + rest)  # nothing twice
    assert len(order) - len(trained + rest) < b1 * w1  # only what full batches leave out
    done = len(resumed[0]) - len(rest) // w1 // b1
    assert shifts == ([done - 3] * w1 if done != 3 else [])


def test_a_checkpoint_from_another_training_order_is_refused_naming_what_to_set():
    from cxrdet.data.loaders import ResumeMismatch

    loader = _loader()[0]
    state = {**loader.state_dict(), "epoch": 0, "samples": 4, "batches": 2, "seed": 6}
    with pytest.raises(ResumeMismatch, match="from seed 6, this run's from 5: resume with"):
        loader.load_state_dict(state)


def test_datamodule_drops_normal_images_from_training_but_validates_on_all(tiny_data):
    halves = {"split": "kfold", "n_folds": 2, "batch_size": 2}  # 8 validation images
    drop = _tiny_datamodule(tiny_data, empty_images="drop", **halves)
    with_finding = [i for i, r in enumerate(drop.train_set.records) if r.has_finding]
    assert 0 < len(with_finding) < len(drop.train_set)
    sampler = drop.train_dataloader().sampler
    assert sorted(i for _, i in sampler) == with_finding
    keep = _tiny_datamodule(tiny_data, empty_images="keep", **halves)
    assert len(keep.val_set) == len(drop.val_set) == 8
    assert any(not r.has_finding for r in drop.val_set.records)
    with pytest.raises(ValueError, match="per epoch"):
        _tiny_datamodule(
            tiny_data, empty_images="drop", **{**halves, "batch_size": len(with_finding) + 1}
        )


def test_no_finding_box_is_image_level_and_never_augmented(tiny_data):
    flip = _augment(
        [
            {"_target_": "albumentations.HorizontalFlip", "p": 1.0},
            {"_target_": "albumentations.Affine", "translate_percent": [0.2, 0.3], "p": 1.0},
        ]
    )
    dm = _tiny_datamodule(tiny_data, use_class14=True, augment=flip)
    normal = [i for i, r in enumerate(dm.train_set.records) if not r.has_finding]
    assert normal
    for i in normal:  # flipped and shifted images: the 0 0 1 1 box stays where it is
        _, target = dm.train_set[i]
        assert target["labels"].tolist() == [15]
        np.testing.assert_allclose(target["boxes"].numpy(), [[0, 0, 1, 1]])


def test_num_workers_auto_shares_the_usable_cpus_and_a_bad_value_is_named(monkeypatch, tiny_data):
    from cxrdet.data import cpus

    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(40)))
    assert cpus.worker_count("auto") == 16  # capped
    assert cpus.worker_count("auto", processes=4) == 10  # 4 GPUs of one node share them
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpus.worker_count("auto") == 2 and cpus.worker_count("auto", 8) == 1
    assert cpus.worker_count(3) == 3 and cpus.worker_count("0") == 0
    for bad in ("many", -1, 1.5):
        with pytest.raises(ValueError, match=r"data.num_workers=.*expected auto or a number"):
            cpus.worker_count(bad)
    data = tiny_datamodule(tiny_data, num_workers="auto")
    assert data.loader_options() == {
        "num_workers": 2,
        "persistent_workers": True,
        "pin_memory": False,
    }


def test_every_image_tensor_can_be_pinned_for_a_cuda_loader(tiny_data):
    """A CUDA loader pins each batch: torch writes every tensor into page-locked memory of the
    same sizes and strides, which fails for a view whose channels share memory (seen on an H200:
    every GPU training and prediction run stopped at its first batch). Done here on the CPU as
    pin_memory does it, for the training, prediction and DICOM datasets."""
    from cxrdet.data.dataset import DicomDataset, ImageDataset

    prepared = tiny_data["prepared"] / str(tiny_data["size"])
    dm = tiny_datamodule(tiny_data, batch_size=2)
    dm.setup("fit")
    images, _ = next(iter(dm.train_dataloader()))
    images += (
        ImageDataset(prepared / "test", prepared / "test_meta.csv")[0][0],
        DicomDataset(tiny_data["raw"] / "test", size=64)[0][0],
    )
    for image in images:
        assert image.shape[0] == 1 and image.dtype == torch.uint8  # grey, as read
        torch.empty_strided(image.size(), image.stride(), dtype=image.dtype).copy_(image)  # pinning


class _SignalsItself(torch.utils.data.Dataset):
    """Each item: the worker sends itself SLURM's signals (as slurmstepd signals every process
    of the job step), then returns its index."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i):
        import os
        import signal

        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
            os.kill(os.getpid(), sig)
        return i


def test_loader_workers_outlive_the_run_s_signals_and_still_end_when_the_loader_ends():
    """A worker survives SIGUSR1, SIGUSR2 and a SIGTERM that is not its loader's, and ends at
    once on a SIGTERM from the main process (how torch ends a worker that does not stop: a
    worker deaf to it would keep the process from exiting). Fails without the workers'
    signal handling (the first item's SIGUSR1 kills the worker) or with SIGTERM left blocked
    or ignored in them."""
    from cxrdet.data.loaders import WorkerSignalsLoader

    loader = WorkerSignalsLoader(
        _SignalsItself(), batch_size=None, num_workers=1, persistent_workers=True
    )
    iterator = iter(loader)
    assert list(iterator) == [0, 1, 2]
    (worker,) = iterator._workers
    assert worker.is_alive()
    worker.terminate()  # SIGTERM from its parent
    worker.join(5)
    assert not worker.is_alive() and worker.exitcode == 0
    iterator._shutdown_workers()
