"""Synthetic dataset in the VinBigData (Kaggle) or VinDr-CXR release layout: real DICOM
phantoms, 3 readers per train image.

    cxrdet synth --out DIR --train 200 --test 50 --seed 0 [--workers 2] [--format kaggle|release]

writes ``DIR/train/<id>.dicom``, ``DIR/test/<id>.dicom`` and, with ``--format kaggle`` (the
default), ``DIR/train.csv`` (Kaggle columns, three radiologists per image who jitter, sometimes
miss and sometimes disagree) and ``DIR/test_labels.csv`` (one consensus reader, for scoring).
With ``--format release`` the labels are the release's (:func:`release_files`):
``DIR/annotations/annotations_train.csv`` / ``annotations_test.csv`` (``class_name``, no
``class_id``; the test file without ``rad_id``) with the ``local22`` names, four of the phantoms'
kinds named as findings Kaggle does not have, and ``image_labels_train.csv`` /
``image_labels_test.csv`` (the 22 local and 6 global labels per reader, or per image; the test
file spells "Other disease"). Deterministic for a seed; the DICOMs carry no patient identifiers.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from tqdm import tqdm

from cxrdet.data.classes import GLOBAL6, LOCAL22, NO_FINDING_NAME
from cxrdet.data.labels import CLASS_NAMES, LABEL_COLUMNS, NO_FINDING, RELEASE_COLUMNS
from cxrdet.data.prepare import atomic_csv, one_core
from cxrdet.demo.phantom import CLASS_WEIGHTS, render

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
FREQUENT_READERS = ["R8", "R9", "R10"]  # read most images, never two of them on one image
OTHER_READERS = [f"R{i}" for i in range(1, 18) if f"R{i}" not in FREQUENT_READERS]
FORMATS = ("kaggle", "release")
# --format release: the phantoms' kinds (Kaggle ids) by their local22 names; four are named as
# findings only the release has, so that its ids beyond Kaggle's (up to 21) are exercised.
RELEASE_NAMES = {
    **{c: name for c, name in enumerate(CLASS_NAMES[:NO_FINDING])},
    1: "Edema",
    2: "Rib fracture",
    9: "Lung cavity",
    12: "Emphysema",
}
DIAGNOSIS_OF = {  # a local label → the diagnosis it stands for in the phantoms' image labels
    "Nodule/Mass": "Lung tumor",
    "Consolidation": "Pneumonia",
    "Infiltration": "Pneumonia",
    "Pulmonary fibrosis": "Tuberculosis",
    "Emphysema": "COPD",
}
# A reader who mislabels a finding picks a look-alike class.
CONFUSABLE = {0: 3, 3: 0, 4: 7, 7: 4, 6: 7, 5: 13, 13: 5, 10: 11, 11: 10, 8: 9, 9: 8, 1: 11}


def write_dicom(
    path: str | Path,
    display: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: bool = True,
    image_id: str = "",
) -> None:
    """Write a display image (float, bright = dense) as an uncompressed DX DICOM.

    MONOCHROME1 files store dense tissue dark, as real CR/DX devices do; the pixel values fill
    ``bits_stored`` bits and the window centre/width tags cover the display range.
    """
    top = 2**bits_stored - 1
    d = np.asarray(display, np.float32)
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    stored = np.rint((0.05 + 0.9 * d) * top)
    if photometric == "MONOCHROME1":
        stored = top - stored
    stored = stored.astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image_id or str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    # A study and series of its own, as an archive's images have them (results written as DICOM
    # reference them); the patient module's attributes present and empty but for a made-up id.
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[image_id or str(path), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[image_id or str(path), "series"])
    ds.PatientID = f"PHANTOM-{(image_id or Path(path).stem)[:8]}"
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.StudyID = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window:
        ds.WindowCenter = round(top / 2)
        ds.WindowWidth = round(top * 0.95)
    ds.PixelData = stored.tobytes()
    tmp = Path(f"{path}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def _image_id(seed: int, split: str, i: int) -> str:
    return np.random.default_rng([seed, 7 if split == "train" else 11, i]).bytes(16).hex()


def make_case(seed: int, split: str, i: int, normal_share: float, min_px: int, max_px: int):
    """One image: (image_id, full-size display image, finding classes, original-pixel boxes)."""
    rng = np.random.default_rng([seed, 1 if split == "train" else 2, i])
    findings: list[int] = []
    if rng.random() >= normal_share:
        n = rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])
        findings = sorted(rng.choice(len(CLASS_WEIGHTS), size=n, replace=False, p=CLASS_WEIGHTS))
    canvas, boxes = render(rng, 256, [int(c) for c in findings])
    rows = int(rng.integers(min_px, max_px + 1))
    cols = int(np.clip(round(rows * canvas.shape[1] / canvas.shape[0]), min_px, max_px))
    image = cv2.resize(canvas, (cols, rows), interpolation=cv2.INTER_LINEAR)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 0.01
    scale = np.array([cols, rows, cols, rows], np.float64)
    return _image_id(seed, split, i), image, findings, [np.array(b) * scale for b in boxes]


def read_boxes(rng, findings, boxes, rows, cols, miss=0.15, confuse=0.06, jitter=0.06):
    """What one radiologist marks: jittered boxes, some missed, some given a look-alike class."""
    out = []
    for cls, box in zip(findings, boxes):
        if rng.random() < miss:
            continue
        if rng.random() < confuse and cls in CONFUSABLE:
            cls = CONFUSABLE[cls]
        w, h = box[2] - box[0], box[3] - box[1]
        b = box + rng.normal(0, jitter, 4) * [w, h, w, h]
        b = np.clip(b, 0, [cols - 1, rows - 1, cols - 1, rows - 1])
        if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
            out.append((int(cls), np.round(b, 1)))
    return out


def label_rows(image_id, rad_id, marks):
    if not marks:
        return [[image_id, CLASS_NAMES[NO_FINDING], NO_FINDING, rad_id, *[np.nan] * 4]]
    return [[image_id, CLASS_NAMES[c], c, rad_id, *b.tolist()] for c, b in marks]


def write_case(
    out: Path, seed: int, split: str, i: int, normal_share: float, min_px: int, max_px: int
) -> list[list]:
    """Write image ``i`` of ``split`` as a DICOM under ``out/split/``; its label rows (three
    readers on a train image, one consensus reader on a test image). Deterministic per image."""
    image_id, image, findings, boxes = make_case(seed, split, i, normal_share, min_px, max_px)
    rng = np.random.default_rng([seed, 3 if split == "train" else 4, i])
    write_dicom(
        out / split / f"{image_id}.dicom",
        image,
        photometric=str(rng.choice(["MONOCHROME1", "MONOCHROME2"], p=[0.3, 0.7])),
        bits_stored=int(rng.choice([12, 14, 16])),
        image_id=image_id,
    )
    h, w = image.shape
    if split == "test":
        return label_rows(
            image_id, "consensus", [(c, np.round(b, 1)) for c, b in zip(findings, boxes)]
        )
    readers = [str(rng.choice(FREQUENT_READERS))]
    readers += list(rng.choice(OTHER_READERS, size=2, replace=False))
    rows = []
    for rad in readers:
        rows += label_rows(image_id, rad, read_boxes(rng, findings, boxes, h, w))
    return rows


def image_labels(rows: pd.DataFrame, reader: bool) -> pd.DataFrame:
    """The release's image-level labels of its box rows: per image and reader (``reader``) or
    per image, a 0/1 column per local label and per diagnosis (:data:`DIAGNOSIS_OF`; "Other
    diseases" for any other finding, "No finding" without one)."""
    keys = ["image_id", "rad_id"] if reader else ["image_id"]
    out = []
    for key, group in rows.groupby(keys, sort=False):
        marked = set(group["class_name"]) - {NO_FINDING_NAME}
        local = {name: int(name in marked) for name in LOCAL22.findings}
        diagnoses = {DIAGNOSIS_OF[n] for n in marked if n in DIAGNOSIS_OF}
        if marked - set(DIAGNOSIS_OF):
            diagnoses.add("Other diseases")
        if not marked:
            diagnoses.add(NO_FINDING_NAME)
        ids = dict(zip(keys, key))  # grouped by a list: a tuple key
        out.append({**ids, **local, **{d: int(d in diagnoses) for d in GLOBAL6}})
    frame = pd.DataFrame(out)
    return frame.rename(columns={"rad_id": "rad_ID"}) if reader else frame


def release_files(out: Path, split: str, rows: list[list]) -> None:
    """One split's labels in the release's layout (see the module docstring)."""
    df = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    df["class_name"] = [
        NO_FINDING_NAME if c == NO_FINDING else RELEASE_NAMES[c] for c in df["class_id"]
    ]
    reader = split == "train"
    columns = RELEASE_COLUMNS if reader else [c for c in RELEASE_COLUMNS if c != "rad_id"]
    (out / "annotations").mkdir(exist_ok=True)
    atomic_csv(df[columns], out / "annotations" / f"annotations_{split}.csv")
    labels = image_labels(df, reader)
    if not reader:  # the release's test file spells it so
        labels = labels.rename(columns={"Other diseases": "Other disease"})
    atomic_csv(labels, out / "annotations" / f"image_labels_{split}.csv")


def synthesize(
    out: str | Path,
    n_train: int = 200,
    n_test: int = 50,
    seed: int = 0,
    normal_share: float = 0.71,
    min_px: int = 1500,
    max_px: int = 3000,
    progress: bool = True,
    workers: int = 1,
    layout: str = "kaggle",
) -> None:
    """Write the whole synthetic dataset under ``out`` (see the module docstring), with
    ``workers`` processes, labels in ``layout`` (``kaggle`` or ``release``); the files do not
    depend on how many workers."""
    if layout not in FORMATS:
        raise ValueError(f"unknown format {layout!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    one_core()  # one process = one core: workers sets the parallelism
    with ExitStack() as stack:
        pool = (
            stack.enter_context(ProcessPoolExecutor(workers, initializer=one_core))
            if workers > 1
            else None
        )
        for split, n in (("train", n_train), ("test", n_test)):
            (out / split).mkdir(parents=True, exist_ok=True)
            one = partial(
                write_case,
                out,
                seed,
                split,
                normal_share=normal_share,
                min_px=min_px,
                max_px=max_px,
            )
            jobs = pool.map(one, range(n)) if pool else map(one, range(n))
            rows = []
            for case_rows in tqdm(
                jobs, total=n, desc=f"synth {split}", disable=not progress, unit="img"
            ):
                rows += case_rows
            if layout == "release":
                release_files(out, split, rows)
                continue
            name = "train.csv" if split == "train" else "test_labels.csv"
            atomic_csv(pd.DataFrame(rows, columns=LABEL_COLUMNS), out / name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="cxrdet synth",
        description="Write a synthetic chest-X-ray dataset in the VinBigData (Kaggle) layout "
        "or the VinDr-CXR release's.",
    )
    p.add_argument("--out", required=True, help="output root (train/, test/, train.csv, ...)")
    p.add_argument("--train", type=int, default=200, help="number of train images (default 200)")
    p.add_argument("--test", type=int, default=50, help="number of test images (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--normal-share",
        type=float,
        default=0.71,
        help="share of 'No finding' images (default 0.71, the real share)",
    )
    p.add_argument("--min-px", type=int, default=1500, help="smallest image side (default 1500)")
    p.add_argument("--max-px", type=int, default=3000, help="largest image side (default 3000)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="kaggle",
        help="kaggle: train.csv and test_labels.csv (default); release: the VinDr-CXR "
        "release's annotations/ (annotations_*.csv, image_labels_*.csv)",
    )
    a = p.parse_args(argv)
    if not 0.0 <= a.normal_share <= 1.0:
        p.error("--normal-share must be within [0, 1]")
    if not 16 <= a.min_px <= a.max_px:
        p.error("need 16 <= --min-px <= --max-px")
    if a.workers < 1:
        p.error("--workers must be at least 1")
    synthesize(
        a.out,
        a.train,
        a.test,
        a.seed,
        a.normal_share,
        a.min_px,
        a.max_px,
        workers=a.workers,
        layout=a.format,
    )
    print(f"wrote {a.train} train + {a.test} test DICOMs and labels under {a.out}")


if __name__ == "__main__":
    main()
