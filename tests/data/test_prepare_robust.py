"""prepare against what kills processes: a worker that dies costs its file alone, and a run
killed with SIGKILL loses only the images it was writing."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import PY, REPO

from cxrdet.data import prepare as prep
from cxrdet.demo.synth import write_dicom


def _dicoms(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        ramp = np.tile(np.linspace(0, 1, 30 + i, dtype=np.float32), (40, 1))
        write_dicom(folder / f"img{i}.dicom", ramp)
    return folder


def _outputs(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_worker_that_dies_costs_only_the_file_it_was_on(tmp_path, monkeypatch):
    """Under this Python's default start method (fork here; forkserver from Python 3.14): the
    worker that takes img3 dies (tests/data/dying_worker.py reaches it however it starts)."""
    from dying_worker import DiesOn

    src = _dicoms(tmp_path / "in" / "train", 6)
    real = prep.isolated_map
    monkeypatch.setattr(
        prep,
        "isolated_map",
        lambda fn, items, workers, initializer=None: real(
            DiesOn(fn, "img3"), items, workers, initializer
        ),
    )
    counts = prep.prepare(src, tmp_path / "out", [16], workers=2, progress=False)
    assert counts["done"] == 5 and counts["failed"] == 1 and counts["images"] == 5
    failures = pd.read_csv(tmp_path / "out" / "failures_train.csv")
    assert failures.file.tolist() == [str(src / "img3.dicom")]
    assert failures.reason[0].endswith("img3.dicom: worker died: signal 9 (SIGKILL)")
    meta = pd.read_csv(tmp_path / "out" / "16" / "train_meta.csv")
    assert sorted(meta.image_id) == [f"img{i}" for i in (0, 1, 2, 4, 5)]


KILLED_RUN = """
import os, signal, sys
from cxrdet.data import prepare as p
real, written = p.write_png, []
def write_png(path, image):  # SIGKILL the whole run (no cleanup, no meta save) mid-image
    real(path, image)
    written.append(path)
    if len(written) == 11:  # five images whole, the sixth with one size of two
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
p.write_png = write_png
p.prepare(sys.argv[1], sys.argv[2], [32, 16], progress=False)
"""


def test_a_run_killed_with_sigkill_redoes_only_the_image_in_flight(tmp_path):
    src = _dicoms(tmp_path / "in" / "train", 8)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    prep.prepare(src, clean, [32, 16], progress=False)
    done = subprocess.run(
        [PY, "-c", KILLED_RUN, str(src), str(killed)], cwd=REPO, capture_output=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    assert len(list(killed.rglob("*.png"))) == 11
    assert pd.read_csv(killed / "32" / "train_meta.csv").empty  # the meta had no save yet
    before = {p: p.stat().st_mtime_ns for p in killed.rglob("*.png")}
    counts = prep.prepare(src, killed, [32, 16], progress=False)
    assert counts == {"done": 3, "skipped": 0, "adopted": 5, "failed": 0, "images": 8}
    rewritten = [
        p.parent.name + "/" + p.name for p, t in before.items() if p.stat().st_mtime_ns != t
    ]
    assert rewritten == ["train/img5.png"]  # only the image in flight was decoded again
    assert _outputs(killed) == _outputs(clean)  # byte for byte, meta CSVs included
