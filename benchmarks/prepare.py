"""DICOM → PNG speed: cxrdet's prepare vs the usual Kaggle notebook recipe, same files.

    python benchmarks/prepare.py [--images 128] [--size 512]

The recipe: pydicom ``apply_voi_lut`` in float64, MONOCHROME1 flip, min-max, PIL LANCZOS
resize, PIL PNG save. cxrdet: ``cxrdet.data.prepare.prepare_one`` (lookup-table LUTs, cv2
INTER_AREA, cv2 PNG). Files are synthetic ~2000 px CR-like DICOMs. Prints ms per image on one
core for both, the speed-up (target >= 3x) and the 1 → 2 worker speed-up of ``prepare``
(target >= 1.8x); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_voi_lut

from cxrdet.data.prepare import one_core, prepare, prepare_one
from cxrdet.demo.synth import synthesize


def recipe(src: Path, dst: Path, size: int) -> None:
    ds = pydicom.dcmread(src)
    data = apply_voi_lut(ds.pixel_array, ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    image = Image.fromarray((data * 255).astype(np.uint8))
    image.resize((size, size), Image.LANCZOS).save(dst)


def per_image_ms(fn, files) -> float:
    start = time.perf_counter()
    for f in files:
        fn(f)
    return (time.perf_counter() - start) / len(files) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=128, help="DICOMs to time (default 128)")
    p.add_argument("--size", type=int, default=512, help="output side (default 512)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "raw", a.images, 0, seed=1, min_px=1800, max_px=2400, progress=False)
        files = sorted((tmp / "raw" / "train").glob("*.dicom"))
        (tmp / "recipe").mkdir()
        (tmp / "one" / str(a.size) / "train").mkdir(parents=True)
        one_core()  # both paths on one thread (PIL and numpy use one anyway)
        per_image_ms(lambda f: pydicom.dcmread(f).pixel_array, files[:4])  # warm the page cache
        ms_recipe = per_image_ms(
            lambda f: recipe(f, tmp / "recipe" / f"{f.stem}.png", a.size), files
        )
        ms_ours = per_image_ms(lambda f: prepare_one(f, tmp / "one", "train", [a.size]), files)
        seconds = {}
        for workers in (1, 2):
            shutil.rmtree(tmp / "out", ignore_errors=True)
            start = time.perf_counter()
            prepare(tmp / "raw" / "train", tmp / "out", [a.size], workers=workers, progress=False)
            seconds[workers] = time.perf_counter() - start
    speedup, scaling = ms_recipe / ms_ours, seconds[1] / seconds[2]
    print(f"Kaggle recipe: {ms_recipe:.1f} ms/image (one core)")
    print(f"cxrdet:        {ms_ours:.1f} ms/image (one core), {speedup:.2f}x faster (target >= 3x)")
    print(
        f"prepare, 1 -> 2 workers: {seconds[1]:.2f} s -> {seconds[2]:.2f} s, "
        f"{scaling:.2f}x (target >= 1.8x); {len(files)} images at {a.size} px"
    )
    print(
        json.dumps(
            {
                "recipe_ms": round(ms_recipe, 2),
                "cxrdet_ms": round(ms_ours, 2),
                "speedup": round(speedup, 3),
                "workers_2_speedup": round(scaling, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
