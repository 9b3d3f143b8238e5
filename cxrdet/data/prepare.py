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
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrdet.atomic import atomic_write
from cxrdet.data.boxes import CONTENT_COLUMNS, letterbox_content
from cxrdet.data.dicom import MAX_PIXELS, DicomError, header_size, read_dicom
from cxrdet.data.workers import isolated_map

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
    src: Path,
    out: Path,
    split: str,
    sizes: list[int],
    keep_ratio: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> tuple[str, int, int, str]:
    """Decode one DICOM once and write every requested size (an image declaring more than
    ``max_pixels`` is refused before decoding).

    Returns:
        (image_id, original rows, original columns, error message or "").
    """
    image_id = src.stem
    try:
        image = read_dicom(src, max_pixels=max_pixels)
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
        meta[CONTENT_COLUMNS] = pd.DataFrame(rects, index=meta.index, columns=CONTENT_COLUMNS)
    return meta


def write_metas(metas: dict[int, Path], dims: dict, keep_ratio: bool) -> None:
    """Write every size's meta CSV (atomically) for the images prepared so far."""
    for size, path in metas.items():
        atomic_csv(meta_frame(dims, size, keep_ratio), path)


def one_core() -> None:
    """Keep OpenCV to one thread in this process."""
    cv2.setNumThreads(1)


def atomic_csv(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` whole or not at all (:func:`cxrdet.atomic.atomic_write`)."""
    atomic_write(path, lambda f: df.to_csv(f, index=False), mode="w")


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
    max_pixels: int = MAX_PIXELS,
) -> dict:
    """Prepare every DICOM under ``input_dir`` (``redo``: also those already prepared) in
    ``workers`` processes (:func:`cxrdet.data.workers.isolated_map`: a worker that dies costs
    the file it was on, listed with the reason). PNGs a stopped run wrote after its last meta
    save are adopted, their original sizes read from the DICOM header alone.

    Returns:
        Counts ``{done (decoded now), skipped (already in the meta CSV), adopted, failed,
        images (in the meta CSV)}``.
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
    done_png = lambda f: all(  # noqa: E731
        (output / str(s) / split / f"{f.stem}.png").is_file() for s in sizes
    )
    adopted = 0
    if not redo:  # PNGs a killed run wrote after its last meta save: sizes from the header
        for f in files:
            if f.stem not in known and done_png(f):
                try:
                    known[f.stem] = header_size(f)
                    adopted += 1
                except DicomError:
                    pass  # decoded again below, and listed if that fails
    write_metas(metas, known, keep_ratio)  # from the start: records the mode for a rerun
    todo = [f for f in files if redo or f.stem not in known or not done_png(f)]
    failures = []
    one = partial(
        prepare_one,
        out=output,
        split=split,
        sizes=sizes,
        keep_ratio=keep_ratio,
        max_pixels=max_pixels,
    )
    results = isolated_map(one, todo, workers, initializer=one_core)
    bar = tqdm(results, total=len(todo), desc=f"prepare {split}", unit="img", disable=not progress)
    try:
        for n, (src, result, died) in enumerate(bar, start=1):
            image_id, rows, cols, error = result or (src.stem, 0, 0, f"{src}: {died}")
            if error:
                failures.append({"file": str(src), "reason": error})
            else:
                known[image_id] = (rows, cols)
            if n % SAVE_EVERY == 0:  # an interrupted run resumes from here
                write_metas(metas, known, keep_ratio)
    finally:  # also on Ctrl-C or an error: keep what is done
        write_metas(metas, known, keep_ratio)
    fail_path = output / f"failures_{split}.csv"
    if failures:
        atomic_csv(pd.DataFrame(failures), fail_path)
        for f in failures[:5]:
            log.warning("skipped %s", f["reason"])
        log.warning("%d file(s) skipped; all listed in %s", len(failures), fail_path)
    elif fail_path.exists():
        fail_path.unlink()
    if adopted:
        log.info(
            "adopted %d image(s) a stopped run had written (sizes from their headers)", adopted
        )
    return {
        "done": len(todo) - len(failures),
        "skipped": len(files) - len(todo) - adopted,
        "adopted": adopted,
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
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse an image whose header declares more pixels, before decoding it (default "
        f"{MAX_PIXELS:,}: well above any chest radiograph)",
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
            a.input,
            a.output,
            a.sizes,
            a.split,
            a.workers,
            keep_ratio=a.keep_ratio,
            redo=a.redo,
            max_pixels=a.max_pixels,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    adopted = f", adopted {counts['adopted']}" if counts["adopted"] else ""
    print(
        f"prepared {counts['done']}, already done {counts['skipped']}{adopted}, "
        f"failed {counts['failed']}; {counts['images']} images in {a.output}"
    )
    return 1 if counts["images"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
