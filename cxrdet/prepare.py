"""DICOM → PNG at one or more sizes, keeping the original sizes for mapping boxes back.

    python -m cxrdet.prepare --input DIR/train --output OUT --sizes 256 512

writes ``OUT/<size>/train/<image_id>.png`` (8-bit, one channel, square, cv2 INTER_AREA) and
``OUT/<size>/train_meta.csv`` (``image_id,dim0,dim1`` = original rows, columns). The split name
(``train``/``test``) is the input folder's name unless ``--split`` says otherwise. A rerun skips
images whose PNGs exist; unreadable files are skipped, counted and listed in
``OUT/failures_<split>.csv``. The exit code is non-zero only when nothing could be prepared.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrdet.dicom import DicomError, read_dicom

log = logging.getLogger(__name__)
DICOM_SUFFIXES = (".dicom", ".dcm")


def find_dicoms(root: Path) -> list[Path]:
    """All ``.dicom``/``.dcm`` files under ``root`` (recursively), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in DICOM_SUFFIXES)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG through a temporary name so an interrupted run never leaves half a file."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)


def prepare_one(src: Path, out: Path, split: str, sizes: list[int]) -> tuple[str, int, int, str]:
    """Decode one DICOM and write every requested size; returns (image_id, rows, cols, error)."""
    image_id = src.stem
    targets = [out / str(s) / split / f"{image_id}.png" for s in sizes]
    try:
        image = read_dicom(src)
    except DicomError as e:
        return image_id, 0, 0, str(e)
    for size, target in zip(sizes, targets):
        write_png(target, cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
    return image_id, image.shape[0], image.shape[1], ""


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def prepare(
    input_dir: str | Path,
    output: str | Path,
    sizes: list[int],
    split: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Prepare every DICOM under ``input_dir``; returns counts ``{done, skipped, failed}``."""
    input_dir, output = Path(input_dir), Path(output)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    split = split or input_dir.name
    files = find_dicoms(input_dir)
    if not files:
        raise FileNotFoundError(f"no .dicom/.dcm files under {input_dir}")
    for s in sizes:
        (output / str(s) / split).mkdir(parents=True, exist_ok=True)

    metas = {s: output / str(s) / f"{split}_meta.csv" for s in sizes}
    known: dict[str, tuple[int, int]] = {}
    first = metas[sizes[0]]
    if first.is_file():
        prev = pd.read_csv(first, dtype={"image_id": str})
        known = {r.image_id: (int(r.dim0), int(r.dim1)) for r in prev.itertuples()}
    todo = [
        f
        for f in files
        if f.stem not in known
        or not all((output / str(s) / split / f"{f.stem}.png").is_file() for s in sizes)
    ]
    failures = []
    one = partial(prepare_one, out=output, split=split, sizes=sizes)
    with ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(workers)) if workers > 1 else None
        jobs = pool.map(one, todo, chunksize=4) if pool else map(one, todo)
        results = list(
            tqdm(jobs, total=len(todo), desc=f"prepare {split}", unit="img", disable=not progress)
        )
    by_id = {f.stem: f for f in todo}
    for image_id, rows, cols, error in results:
        if error:
            failures.append({"file": str(by_id[image_id]), "reason": error})
        else:
            known[image_id] = (rows, cols)
    meta = pd.DataFrame(
        [(k, *v) for k, v in sorted(known.items())], columns=["image_id", "dim0", "dim1"]
    )
    for path in metas.values():
        _atomic_csv(meta, path)
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
        prog="python -m cxrdet.prepare",
        description="Convert DICOMs to 8-bit PNGs at one or more square sizes, plus a meta CSV.",
    )
    p.add_argument("--input", required=True, help="folder of .dicom/.dcm files (searched deeply)")
    p.add_argument("--output", required=True, help="output root; writes <size>/<split>/...")
    p.add_argument("--sizes", type=int, nargs="+", default=[512], help="square sizes (px)")
    p.add_argument("--split", help="split name (default: the input folder's name)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if any(s < 8 for s in a.sizes):
        p.error("--sizes must be at least 8 px")
    try:
        counts = prepare(a.input, a.output, a.sizes, a.split, a.workers)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"prepared {counts['done']}, already done {counts['skipped']}, "
        f"failed {counts['failed']}; {counts['images']} images in {a.output}"
    )
    return 1 if counts["images"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
