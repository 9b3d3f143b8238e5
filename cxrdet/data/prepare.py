"""DICOM → PNG at one or more sizes, keeping the original sizes for mapping boxes back.

    cxrdet prepare --input DIR/train --output OUT --sizes 256 512

writes ``OUT/<size>/train/<image_id>.png`` (8-bit, one channel, square, cv2 INTER_AREA) and
``OUT/<size>/train_meta.csv`` (``image_id,dim0,dim1`` = original rows, columns; with
``--keep-ratio`` the image is letterboxed and ``content_x0,content_y0,content_w,content_h`` say
where it lies, so boxes map back exactly). Each DICOM is decoded once for all sizes. The split name
(``train``/``test``) is the input folder's name unless ``--split`` says otherwise. A rerun skips
images whose PNGs exist, and refuses to mix modes: a size prepared squashed is not topped up
letterboxed, nor the reverse (``--redo`` prepares every image again in the asked mode);
unreadable files are skipped, counted and listed in ``OUT/failures_<split>.csv``. The exit code
is non-zero only when nothing could be prepared.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrdet.data.boxes import CONTENT_COLUMNS, letterbox_content
from cxrdet.data.dicom import DicomError, read_dicom

log = logging.getLogger(__name__)
DICOM_SUFFIXES = (".dicom", ".dcm")
SAVE_EVERY = 200  # images between meta CSV saves


def find_dicoms(root: Path) -> list[Path]:
    """All ``.dicom``/``.dcm`` files under ``root`` (recursively), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in DICOM_SUFFIXES)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG through a temporary name so an interrupted run never leaves half a file."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)


def resize(image: np.ndarray, size: int, keep_ratio: bool = False) -> np.ndarray:
    """Square ``size``² image: squashed (default) or letterboxed (aspect kept, centred, black)."""
    if not keep_ratio:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    x0, y0, w, h = letterbox_content(image.shape, size)
    out = np.zeros((size, size), dtype=image.dtype)
    out[y0 : y0 + h, x0 : x0 + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return out


def prepare_one(
    src: Path, out: Path, split: str, sizes: list[int], keep_ratio: bool = False
) -> tuple[str, int, int, str]:
    """Decode one DICOM once and write every requested size.

    Returns:
        (image_id, original rows, original columns, error message or "").
    """
    image_id = src.stem
    try:
        image = read_dicom(src)
    except DicomError as e:
        return image_id, 0, 0, str(e)
    for size in sizes:
        write_png(out / str(size) / split / f"{image_id}.png", resize(image, size, keep_ratio))
    return image_id, image.shape[0], image.shape[1], ""


def meta_frame(dims: dict[str, tuple[int, int]], size: int, keep_ratio: bool) -> pd.DataFrame:
    """The meta CSV: ``image_id,dim0,dim1`` (+ the letterbox content rectangle)."""
    rows = [(k, *v) for k, v in sorted(dims.items())]
    meta = pd.DataFrame(rows, columns=["image_id", "dim0", "dim1"])
    if keep_ratio:
        rects = [letterbox_content(v, size) for _, *v in rows]
        meta[CONTENT_COLUMNS] = pd.DataFrame(rects, index=meta.index)
    return meta


def write_metas(metas: dict[int, Path], dims: dict, keep_ratio: bool) -> None:
    """Write every size's meta CSV (atomically) for the images prepared so far."""
    for size, path in metas.items():
        _atomic_csv(meta_frame(dims, size, keep_ratio), path)


def one_core() -> None:
    """Keep OpenCV to one thread in this process."""
    cv2.setNumThreads(1)


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def check_mode(metas: dict[int, Path], keep_ratio: bool) -> None:
    """Refuse to add to a size prepared in the other mode: its meta CSV records the mode (the
    content columns are there exactly when it was letterboxed), and boxes map back through it."""
    for path in metas.values():
        if not path.is_file():
            continue
        columns = pd.read_csv(path, nrows=0).columns
        letterboxed = set(CONTENT_COLUMNS) <= set(columns)
        if letterboxed != keep_ratio:
            was, asked = ("letterboxed", "squashed") if letterboxed else ("squashed", "letterboxed")
            raise ValueError(
                f"{path.parent} was prepared {was} ({path.name}) and this run asks for {asked} "
                f"images{'' if keep_ratio else ' (no --keep-ratio)'}: mixing them would shift "
                f"every box; use another --output, or --redo to prepare every image again {asked}"
            )


def prepare(
    input_dir: str | Path,
    output: str | Path,
    sizes: list[int],
    split: str | None = None,
    workers: int = 1,
    progress: bool = True,
    keep_ratio: bool = False,
    redo: bool = False,
) -> dict:
    """Prepare every DICOM under ``input_dir`` (``redo``: also those already prepared).

    Returns:
        Counts ``{done, skipped (already prepared), failed, images (in the meta CSV)}``.
    """
    input_dir, output = Path(input_dir), Path(output)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    split = split or input_dir.name
    files = find_dicoms(input_dir)
    if not files:
        raise FileNotFoundError(f"no .dicom/.dcm files under {input_dir}")
    repeated = sorted(k for k, n in Counter(f.stem for f in files).items() if n > 1)
    if repeated:
        dup = repeated
        raise ValueError(f"{input_dir}: image ids occur twice in nested folders: {dup[:3]}")
    for s in sizes:
        (output / str(s) / split).mkdir(parents=True, exist_ok=True)

    metas = {s: output / str(s) / f"{split}_meta.csv" for s in sizes}
    if not redo:
        check_mode(metas, keep_ratio)
    known: dict[str, tuple[int, int]] = {}
    first = metas[sizes[0]]
    if first.is_file() and not redo:
        prev = pd.read_csv(first, dtype={"image_id": str})
        known = {r.image_id: (int(r.dim0), int(r.dim1)) for r in prev.itertuples()}
    todo = [
        f
        for f in files
        if f.stem not in known
        or not all((output / str(s) / split / f"{f.stem}.png").is_file() for s in sizes)
    ]
    failures = []
    by_id = {f.stem: f for f in todo}
    one = partial(prepare_one, out=output, split=split, sizes=sizes, keep_ratio=keep_ratio)
    one_core()  # one process = one core: --workers sets the parallelism
    with ExitStack() as stack:
        pool = (
            stack.enter_context(ProcessPoolExecutor(workers, initializer=one_core))
            if workers > 1
            else None
        )
        jobs = pool.map(one, todo) if pool else map(one, todo)
        bar = tqdm(jobs, total=len(todo), desc=f"prepare {split}", unit="img", disable=not progress)
        try:
            for n, (image_id, rows, cols, error) in enumerate(bar, start=1):
                if error:
                    failures.append({"file": str(by_id[image_id]), "reason": error})
                else:
                    known[image_id] = (rows, cols)
                if n % SAVE_EVERY == 0:  # an interrupted run resumes from here
                    write_metas(metas, known, keep_ratio)
        finally:  # also on Ctrl-C or an error: keep what is done
            write_metas(metas, known, keep_ratio)
    fail_path = output / f"failures_{split}.csv"
    if failures:
        _atomic_csv(pd.DataFrame(failures), fail_path)
        for f in failures[:5]:
            log.warning("skipped %s", f["reason"])
        log.warning("%d file(s) skipped; all listed in %s", len(failures), fail_path)
    elif fail_path.exists():
        fail_path.unlink()
    return {
        "done": len(todo) - len(failures),
        "skipped": len(files) - len(todo),
        "failed": len(failures),
        "images": len(known),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cxrdet prepare",
        description="Convert DICOMs to 8-bit PNGs at one or more square sizes, plus a meta CSV.",
    )
    p.add_argument("--input", required=True, help="folder of .dicom/.dcm files (searched deeply)")
    p.add_argument("--output", required=True, help="output root; writes <size>/<split>/...")
    p.add_argument("--sizes", type=int, nargs="+", default=[512], help="square sizes (px)")
    p.add_argument("--split", help="split name (default: the input folder's name)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument(
        "--keep-ratio",
        action="store_true",
        help="letterbox (keep the aspect ratio, pad black) instead of squashing to a square; "
        "the meta CSV records where the image lies",
    )
    p.add_argument(
        "--redo",
        action="store_true",
        help="prepare every image again, also those already done (e.g. to change --keep-ratio)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if any(s < 8 for s in a.sizes):
        p.error("--sizes must be at least 8 px")
    try:
        counts = prepare(
            a.input, a.output, a.sizes, a.split, a.workers, keep_ratio=a.keep_ratio, redo=a.redo
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"prepared {counts['done']}, already done {counts['skipped']}, "
        f"failed {counts['failed']}; {counts['images']} images in {a.output}"
    )
    return 1 if counts["images"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
