"""Lightning DDP on CPU (2 processes, gloo, from trainer.devices=2 alone): training runs,
validation covers every image, and a NaN loss on one rank is skipped or stops on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pandas as pd
import pytest
from conftest import PY, REPO, run_fails, run_ok, tiny_overrides

pytestmark = pytest.mark.slow

NAN_ON_RANK_1 = [  # rank 1's batch at step 1 turns NaN (tests/training/nan_on_rank.py)
    "+callbacks.nan._target_=nan_on_rank.NanBatchOnRank",
    "+callbacks.nan.rank=1",
    "+callbacks.nan.step=1",
]


def _ddp_train(tiny_data, run, *extra) -> subprocess.CompletedProcess:
    overrides = [
        *tiny_overrides(tiny_data, run),
        "trainer.accelerator=cpu",
        "trainer.devices=2",  # no strategy key: Lightning builds DDP from this alone
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "data.val_fraction=0.5",
        *NAN_ON_RANK_1,
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "training")}
    # A rank left waiting in an all-reduce would hang until the process group's 30-minute
    # timeout: the subprocess's own timeout turns that into a failure.
    return subprocess.run(
        [PY, "train.py", *overrides], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


def _recorded(path) -> list[dict]:
    """The batches :class:`record_samples.RecordSamples` wrote, every rank's."""
    return [json.loads(line) for p in sorted(path.parent.glob(path.name + ".*"))
            for line in p.read_text().splitlines()]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_run(tiny_data, module_tmp):
    """Two processes, where rank 1's loss is NaN at step 1 and on_nonfinite=skip; each rank's
    trained image ids recorded in ``samples.<rank>``."""
    run = module_tmp / "run"
    record = [
        "+callbacks.samples._target_=record_samples.RecordSamples",
        f"+callbacks.samples.out={module_tmp / 'samples'}",
    ]
    done = _ddp_train(tiny_data, run, "on_nonfinite=skip", *record)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return run, done.stdout + done.stderr


def test_ddp_training_on_two_cpu_processes_checkpoints_and_validates_all_images(ddp_run):
    run, _ = ddp_run
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    # 8 validation images, 4 per rank: both shards are scored.
    assert metrics["val/images"].dropna().tolist() == [8.0]
    assert metrics["step"].max() == 2  # steps 0-2 all ran: the skipped one included


def test_nan_on_one_rank_is_skipped_on_every_rank_and_the_run_finishes(ddp_run):
    _, out = ddp_run
    assert "non-finite loss at step 1 (rank 1: loss_" in out and "batch skipped" in out


def test_nan_on_one_rank_stops_every_rank_with_the_message(tiny_data, tmp_path):
    """Both ranks stop with the same one line: the step, rank 1's losses (rank 0's were
    finite) and images, the cures; within the start-up time and a step (no rank left waiting
    in an all-reduce)."""
    import re

    start = time.monotonic()
    done = _ddp_train(tiny_data, tmp_path / "run", "on_nonfinite=stop")
    assert done.returncode != 0
    assert time.monotonic() - start < 90  # start-up (~30 s on 2 cores) + the stop: no hang
    expected = (
        r"error: non-finite loss at step 1 \(rank 1: loss_objectness=[^,\s]+, "
        r"loss_rpn_box_reg=[^,\s]+, loss_classifier=[^,\s]+, loss_box_reg=[^;\s]+; images "
        r"[0-9a-f]{32}, [0-9a-f]{32}\)\. Lower optim\.lr, set trainer\.gradient_clip_val, or "
        r"on_nonfinite=skip; the checkpoints written so far are intact\."
    )
    # Found in the whole of stderr: the two ranks write to one pipe, and one rank's line can
    # land inside the other's (seen on 2 cores).
    errors = re.findall(expected, done.stderr)
    assert len(errors) == done.stderr.count("error:") >= 1, done.stderr[-2000:]
    assert all("nan" in e for e in errors) and len(set(errors)) == 1  # every rank the same
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # no step 3


def _validate(ckpt, tiny_data, devices):

    done = run_ok(
        [
            "tests/training/ddp_validate.py",
            str(ckpt),
            str(tiny_data["prepared"]),
            str(tiny_data["raw"]),
            str(devices),
        ]
    )
    out = done.stdout + done.stderr
    line = [x for x in out.splitlines() if x.startswith("METRICS ")][-1]
    return json.loads(line.removeprefix("METRICS "))


def test_two_ranks_give_the_same_ap40_as_one(ddp_run, tiny_data):
    from ddp_validate import validate

    ckpt = ddp_run[0] / "checkpoints" / "last.ckpt"
    one = validate(str(ckpt), str(tiny_data["prepared"]), str(tiny_data["raw"]), 1)  # here
    two = _validate(ckpt, tiny_data, 2)  # two processes
    assert one["val/images"] == two["val/images"] == 8
    assert two["val/AP40"] == pytest.approx(one["val/AP40"], abs=1e-9)
    assert two["val/mAP40"] == pytest.approx(one["val/mAP40"], abs=1e-9)
    assert 0 < one["val/mAP40"] < 1  # a real score, not an empty case


def test_a_local_sweep_on_two_processes_is_refused_at_start_in_one_line(tiny_data, tmp_path):
    # trainer.devices=2 alone builds DDP (no trainer=ddp, no strategy key).
    overrides = [
        *[o for o in tiny_overrides(tiny_data, tmp_path / "run") if not o.startswith("hydra.")],
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = run_fails(["train.py", "-m", "optim.lr=0.001,0.002", *overrides])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "on 2 processes (DDP)" in errors[0], done.stderr[-2000:]
    assert "add hydra/launcher=slurm" in errors[0]


def test_a_two_process_checkpoint_resumes_in_one_process(ddp_run, tiny_data, tmp_path):
    """The checkpoint holds both ranks' RNG states; one process takes rank 0's, says once that
    the run will not repeat exactly, and trains on (it used to index states by GPU). The
    epoch it resumes in (8 training images, 2 per rank and step: step 3 trained 4 of epoch 1)
    is finished with the other 4, each once: fails when the loader's position is rank 0's
    batches (torchdata's), which skips and repeats samples in another world size."""
    from conftest import train_in_process

    ckpt = ddp_run[0] / "checkpoints" / "last.ckpt"
    import torch

    assert len(torch.load(ckpt, weights_only=True)["rng_states"]["ranks"]) == 2
    samples = tmp_path / "samples"
    log = train_in_process(
        [
            *tiny_overrides(tiny_data, tmp_path / "one"),
            f"ckpt_path={ckpt}",
            "trainer.max_steps=5",
            "trainer.val_check_interval=5",
            "data.val_fraction=0.5",
            "+callbacks.samples._target_=record_samples.RecordSamples",
            f"+callbacks.samples.out={samples}",
        ]
    )
    assert "saved by 2 process(es), this run has 1" in log
    assert (
        torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        == 5
    )
    before = [b for b in _recorded(ddp_run[0].parent / "samples") if b["epoch"] == 1]
    after = _recorded(samples)
    assert [b["step"] for b in after] == [3, 4] and {b["epoch"] for b in after} == {1}
    ids = [i for b in before + after for i in b["ids"]]
    assert len(before) == 2 and len(ids) == len(set(ids)) == 8  # the whole epoch, each once
