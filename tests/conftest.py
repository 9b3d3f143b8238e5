"""Shared fixtures: a tiny synthetic dataset in the Kaggle layout, prepared at 64 px."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def share_the_cpus() -> None:
    """Each pytest process of ``make test`` (``-n 2``) runs torch, and the processes its tests
    start, on its share of the CPUs (``OMP_NUM_THREADS``, read when torch loads): two processes
    with torch's default of a thread per core each made a training step 3-4x slower than one
    thread each on 2 cores (each OpenMP thread spins waiting for a core the other holds)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
        if "torch" in sys.modules:  # a plugin loaded it first
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


share_the_cpus()

# The longest files first: make test hands whole files to its processes in collection order
# (--no-loadscope-reorder), and a long file handed out last keeps one process busy while the
# other has nothing left (`make test` prints the slowest tests: keep this list in step).
LONGEST_FIRST = (  # each file's seconds of pytest on a 2-vCPU AMD EPYC
    "test_demo_learns.py",  # 210
    "test_cluster_faults.py",  # 80
    "test_resume.py",  # 80
    "test_pipeline.py",  # 70
    "test_ddp.py",  # 60
    "test_pacs.py",  # 45
    "test_archive.py",  # 45
    "test_release.py",  # 25
    "test_first_hour.py",  # 25
    "test_export.py",  # 23
    "test_rcnn.py",  # 22
    "test_nofinding_probs.py",  # 22
    "test_sweeps.py",  # 19
    "test_coverage.py",  # 13
    "test_host_waits.py",  # 12
    "test_cv.py",  # 12
)


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TINY = 64


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_unchanged(folder: Path, before: dict) -> None:
    """Fail (the session, from a fixture's teardown) if anything under ``folder`` was added,
    removed or changed since ``before``: a session fixture is shared, and a test that writes
    into it changes what later tests see (a test that needs to write copies first)."""
    after = snapshot(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared fixture {folder}: {changed[:5]}"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Raw DICOMs + labels (16 train / 4 test, 64–96 px) and PNGs prepared at 64 px; read-only
    (the session fails if a test changes it)."""
    from cxrdet.data.prepare import prepare
    from cxrdet.demo.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    raw, prepared = root / "raw", root / "prepared"
    synthesize(raw, 16, 4, seed=3, normal_share=0.4, min_px=64, max_px=96, progress=False)
    for split in ("train", "test"):
        prepare(raw / split, prepared, [TINY], progress=False)
    before = snapshot(root)
    yield {"root": root, "raw": raw, "prepared": prepared, "size": TINY}
    assert_unchanged(root, before)


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """A directory for one test module's shared runs, deleted when the module's tests end.

    pytest deletes a passed test's ``tmp_path`` at once but keeps ``tmp_path_factory``'s
    directories to the end of the session; R50-FPN checkpoints are ~0.3 GB each.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tiny_datamodule(data: dict, **kwargs):
    """A CXRDataModule over the tiny dataset's 64-px PNGs (no workers unless ``kwargs`` say)."""
    from cxrdet.data.datamodule import CXRDataModule

    prepared = data["prepared"] / str(data["size"])
    return CXRDataModule(
        str(kwargs.pop("labels_csv", data["raw"] / "train.csv")),
        str(prepared / "train"),
        str(prepared / "train_meta.csv"),
        image_size=data["size"],
        **{"num_workers": 0, **kwargs},
    )


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
        # a 64-px image has ~1,000 anchors in all: the real sizes' 1,000 proposals per image
        # would send every one to the box head at validation and prediction (5x the work)
        "model.rpn_post_nms_top_n_test=100",
        "model.weights=null",  # random init: nothing to download
        "model.channels_last=false",  # NHWC is the GPU's layout: slower on the CPU
        "data.empty_images=keep",  # every tiny image, so that epochs are 6 batches long
        f"hydra.run.dir={run_dir}",
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a server's, a process group's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cannot_run(reason: str):
    """A test that cannot run here: skipped, except in CI (``CI`` set), where what it needs is
    installed (``.ci/run``) and a skip would hide that it never ran."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


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


_ENTRY_POINTS: dict = {}  # train.py and predict.py loaded as modules, once each


def in_process(script: str, args: list[str], log_dir: Path | None = None) -> str:
    """Run ``python SCRIPT ARGS`` (train.py or predict.py) in this process; what it logged.

    The same Hydra app as on the command line (its run or sweep directory, ``.hydra/``, its
    log file, ``-m`` and the sweepers), without starting an interpreter: on 2 cores the
    imports alone take ~10 s a run. What a run changes process-wide (argv, the environment,
    the root logger's handlers, torch's deterministic-algorithms flag) is put back afterwards.
    A clear error (``sys.exit("error: ...")``) propagates as SystemExit. Returns the text of
    every ``*.log`` file under ``log_dir`` (default: the ``hydra.run.dir``/``hydra.sweep.dir``
    in ``args``). Command-line behaviour (exit codes, stderr, signals, DDP) stays with
    :func:`run_ok` / :func:`run_fails`.
    """
    import torch

    from cxrdet.config import quote_numeric_choices

    name = Path(script).stem
    if name not in _ENTRY_POINTS:
        spec = importlib.util.spec_from_file_location(name, REPO / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _ENTRY_POINTS[name] = module
    if log_dir is None:
        dirs = [
            a.split("=", 1)[1] for a in args if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))
        ]
        log_dir = Path(dirs[-1])
    root = logging.getLogger()
    saved = (sys.argv, dict(os.environ), root.handlers[:], root.level)
    deterministic = torch.are_deterministic_algorithms_enabled()
    sys.argv = [script, f"--config-path={REPO / 'conf'}", *quote_numeric_choices(args)]
    try:
        _ENTRY_POINTS[name].main()
    finally:
        sys.argv = saved[0]
        os.environ.clear()
        os.environ.update(saved[1])
        for handler in root.handlers[:]:
            if handler not in saved[2]:
                root.removeHandler(handler)
                handler.close()
        for handler in saved[2]:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved[3])
        torch.use_deterministic_algorithms(deterministic)
    return "\n".join(p.read_text() for p in sorted(Path(log_dir).rglob("*.log")))


def train_in_process(args: list[str], log_dir: Path | None = None) -> str:
    """``python train.py ARGS`` in this process (:func:`in_process`)."""
    return in_process("train.py", args, log_dir)
