"""Shared fixtures: a tiny synthetic dataset in the Kaggle layout, prepared at 64 px."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TINY = 64


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Raw DICOMs + labels (16 train / 4 test, 64–96 px) and PNGs prepared at 64 px."""
    from cxrdet.data.prepare import prepare
    from cxrdet.demo.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    raw, prepared = root / "raw", root / "prepared"
    synthesize(raw, 16, 4, seed=3, normal_share=0.4, min_px=64, max_px=96, progress=False)
    for split in ("train", "test"):
        prepare(raw / split, prepared, [TINY], progress=False)
    return {"root": root, "raw": raw, "prepared": prepared, "size": TINY}


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """A directory for one test module's shared runs, deleted when the module's tests end.

    pytest deletes a passed test's ``tmp_path`` at once but keeps ``tmp_path_factory``'s
    directories to the end of the session; R50-FPN checkpoints are ~0.3 GB each.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tiny_overrides(data: dict, run_dir: Path) -> list[str]:
    """train.py overrides that point at the tiny dataset and keep a run to seconds."""
    return [
        "data=256",
        f"paths.raw_dir={data['raw']}",
        f"paths.prepared_dir={data['prepared']}",
        f"data.image_size={data['size']}",
        "data.num_workers=0",
        "data.batch_size=2",
        "trainer=cpu",
        "model.roi_batch_size_per_image=32",
        "model.weights=null",  # random init: nothing to download
        "data.empty_images=keep",  # every tiny image, so that epochs are 6 batches long
        f"hydra.run.dir={run_dir}",
    ]


def run_ok(args: list[str], timeout: int = 600, env: dict | None = None):
    """Run ``python ARGS`` in the repository as a user would; fail the test with its output
    unless it exits 0. Returns the CompletedProcess."""
    done = subprocess.run(
        [PY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def run_fails(args: list[str], timeout: int = 120, env: dict | None = None):
    """Run ``python ARGS`` in the repository as a user would; fail the test unless it exits
    non-zero without a traceback (a clear error). Returns the CompletedProcess."""
    done = subprocess.run(
        [PY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done
