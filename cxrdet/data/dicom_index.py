"""The list of DICOMs a prediction reads, from a folder tree or a manifest, at archive scale.

An archive is a tree of hundreds of thousands to millions of files, often on a network
filesystem where every ``stat`` and ``open`` is a round trip. The index:

- **walks** the tree with a pool of threads, each listing one folder at a time (``os.scandir``:
  the listing carries each entry's type; one ``stat`` per DICOM for its size and time);
- reads **headers only** (pydicom, ``stop_before_pixels``), in a pool of processes, to leave
  out what is not an image (SR, presentation states, key objects, ... of a PACS export: one
  count per kind in the log) and to name a file that is not DICOM at all; a file it cannot read
  stays in the list, so that it gets its row and its line in ``failures.csv``;
- is **cached** in a CSV (path, image id, size, modification time, modality, problem): a file
  whose size and time are unchanged is not opened again, so a relaunch (a requeued job, the
  next run over the same archive) only walks, and the other processes read the list from it;
- shows progress: files found while walking, headers read with an ETA.

Or a **manifest** lists the files: a CSV (or Parquet, with pyarrow installed) with a ``path``
column (relative paths are relative to the manifest's folder) and optionally ``image_id``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cxrdet.atomic import atomic_open
from cxrdet.data.prepare import DICOM_SUFFIXES

log = logging.getLogger(__name__)

NOT_IMAGES = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "DOC", "REG", "PLAN", "AU", "ECG"}
COLUMNS = ["path", "image_id", "size", "mtime_ns", "modality", "problem"]


@dataclass
class DicomIndex:
    """The DICOMs to predict, in a stable order, and what was left out."""

    files: list[Path]
    ids: list[str]
    left_out: Counter = field(default_factory=Counter)  # modality → files that are no image


def listing(folder: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """The DICOMs directly in ``folder`` (path, size, mtime_ns) and its sub-folders."""
    files, folders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                folders.append(entry.path)
            elif entry.name.lower().endswith(DICOM_SUFFIXES) and entry.is_file():
                st = entry.stat()
                files.append((entry.path, st.st_size, st.st_mtime_ns))
    return files, folders


def walk(root: Path, threads: int, progress: bool) -> list[tuple[str, int, int]]:
    """Every DICOM under ``root``, listed by ``threads`` folders at a time."""
    found = []
    bar = tqdm(desc="index: files found", unit="file", disable=not progress)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="walk") as pool:
        pending = {pool.submit(listing, str(root))}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                files, folders = future.result()
                found += files
                bar.update(len(files))
                pending |= {pool.submit(listing, f) for f in folders}
    bar.close()
    return found


def read_header(path: str) -> tuple[str, str]:
    """(modality, problem) of one file from its header; the problem is empty when there is
    none."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except InvalidDicomError as e:
        return "", f"not a DICOM file ({e})"
    except Exception as e:  # noqa: BLE001 (truncated, unreadable: named, and the rest go on)
        return "", f"header cannot be read ({type(e).__name__}: {e})"
    return str(header.get("Modality", "") or ""), ""


def read_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(COLUMNS) - set(rows[0]):
        log.warning("%s is not a DICOM index (columns %s): building it again", path, list(rows[0]))
        return {}
    return {r["path"]: r for r in rows}


def write_index(path: Path, rows: list[dict]) -> None:
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def manifest_files(manifest: Path) -> tuple[list[str], list[str] | None]:
    """The paths a manifest lists (absolute), and its image ids when it has a column of them."""
    import pandas as pd

    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found")
    if manifest.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(manifest)
        except ImportError:
            raise ValueError(
                f"{manifest}: reading Parquet needs pyarrow (pip install pyarrow), or give a CSV"
            ) from None
    else:
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        raise ValueError(f"{manifest}: no 'path' column (columns: {list(frame.columns)})")
    paths = [os.path.normpath(manifest.resolve().parent / p) for p in frame["path"]]
    twice = [p for p, n in Counter(paths).items() if n > 1]
    if twice:
        raise ValueError(f"{manifest}: {len(twice)} files listed twice, e.g. {twice[0]}")
    ids = list(frame["image_id"].astype(str)) if "image_id" in frame.columns else None
    return paths, ids


def index_dicoms(
    source: str | Path, cache: str | Path, workers: int = 1, progress: bool = True
) -> DicomIndex:
    """The DICOMs of ``source`` (a folder tree, or a ``.csv``/``.parquet`` manifest), their
    headers read by ``workers`` processes (those of the ``cache`` file that are unchanged not
    at all); the index written to ``cache``."""
    source, cache = Path(source), Path(cache)
    ids = None
    if source.is_dir():
        found = walk(source, max(4, 2 * workers), progress)
    elif source.suffix.lower() in (".csv", ".parquet"):
        paths, ids = manifest_files(source)
        found = []
        for p in tqdm(paths, desc="index: files listed", unit="file", disable=not progress):
            try:
                st = os.stat(p)
                found.append((p, st.st_size, st.st_mtime_ns))
            except OSError as e:
                found.append((p, -1, -1))  # named in failures.csv when its turn comes
                log.warning("%s (in %s): %s", p, source, e.strerror)
    else:
        raise FileNotFoundError(f"{source}: no such folder (or .csv/.parquet manifest)")
    if not found:
        raise FileNotFoundError(f"no .dicom/.dcm files under {source}")
    known = read_cache(cache)
    rows, new = [], []
    for path, size, mtime in found:
        row = known.get(path)
        if row is None or int(row["size"]) != size or int(row["mtime_ns"]) != mtime:
            row = {"path": path, "size": size, "mtime_ns": mtime, "modality": "", "problem": ""}
            new.append(row)
        rows.append(row)
    if new:
        log.info(
            "index: %d headers to read (%d known from %s)", len(new), len(rows) - len(new), cache
        )
        paths = [r["path"] for r in new]
        bar = tqdm(total=len(paths), desc="index: headers", unit="file", disable=not progress)
        if workers > 1 and len(paths) > 64:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                headers = pool.map(read_header, paths, chunksize=64)
                for row, (modality, problem) in zip(new, headers):
                    row.update(modality=modality, problem=problem)
                    bar.update()
        else:
            for row, path in zip(new, paths):
                row["modality"], row["problem"] = read_header(path)
                bar.update()
        bar.close()
    for row, image_id in zip(rows, ids or (Path(r["path"]).stem for r in rows)):
        row["image_id"] = image_id  # the manifest's, else the file's name without its suffix
    if ids is None:
        rows.sort(key=lambda r: Path(r["path"]))
    write_index(cache, rows)
    return to_index(rows, source)


def read_index(cache: str | Path, source: str | Path) -> DicomIndex:
    """The index another process of the same prediction wrote (:func:`index_dicoms`)."""
    return to_index(list(read_cache(Path(cache)).values()), Path(source))


def to_index(rows: list[dict], source: Path) -> DicomIndex:
    """The images among ``rows`` (those of another modality left out, counted) with their
    ids, checked to be unique."""
    left_out = Counter(r["modality"] for r in rows if r["modality"].upper() in NOT_IMAGES)
    keep = [k for k, r in enumerate(rows) if r["modality"].upper() not in NOT_IMAGES]
    if left_out:
        kinds = ", ".join(f"{n} {m}" for m, n in sorted(left_out.items()))
        log.warning(
            "index: %d DICOM objects that are no image left out (%s)", sum(left_out.values()), kinds
        )
    unreadable = sum(1 for k in keep if rows[k]["problem"])
    if unreadable:
        log.warning(
            "index: %d files whose header cannot be read: each gets a row and a line in "
            "failures.csv",
            unreadable,
        )
    ids = [rows[k]["image_id"] for k in keep]
    dup = sorted(k for k, n in Counter(ids).items() if n > 1)
    if dup:
        raise ValueError(
            f"{source}: {len(dup)} image ids occur twice (files of the same name in different "
            f"folders), e.g. {dup[:3]}: give a manifest with an image_id column"
        )
    return DicomIndex([Path(rows[k]["path"]) for k in keep], ids, left_out)
