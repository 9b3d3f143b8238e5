"""Lightning DDP on CPU (2 processes, gloo): training runs, and validation covers every image."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import run_fails, run_ok, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_run(tiny_data, module_tmp):
    run = module_tmp / "run"
    overrides = [
        *tiny_overrides(tiny_data, run),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "data.val_fraction=0.5",
    ]
    run_ok(["train.py", *overrides])
    return run


def test_ddp_training_on_two_cpu_processes_checkpoints_and_validates_all_images(ddp_run):
    assert (ddp_run / "checkpoints" / "last.ckpt").is_file()
    metrics = pd.read_csv(ddp_run / "csv" / "metrics.csv")
    # 8 validation images, 4 per rank: both shards are scored.
    assert metrics["val/images"].dropna().tolist() == [8.0]


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
    ckpt = ddp_run / "checkpoints" / "last.ckpt"
    one, two = _validate(ckpt, tiny_data, 1), _validate(ckpt, tiny_data, 2)
    assert one["val/images"] == two["val/images"] == 8
    assert two["val/AP40"] == pytest.approx(one["val/AP40"], abs=1e-9)
    assert two["val/mAP40"] == pytest.approx(one["val/mAP40"], abs=1e-9)
    assert 0 < one["val/mAP40"] < 1  # a real score, not an empty case


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["on_nonfinite=skip"], "on_nonfinite=skip cannot run under DDP"),
        (["-m", "optim.lr=0.001,0.002"], "add hydra/launcher=slurm"),
    ],
    ids=["skip-a-batch", "local-sweep"],
)
def test_what_ddp_cannot_do_is_refused_at_start_in_one_line(tiny_data, tmp_path, extra, message):
    overrides = [
        *[o for o in tiny_overrides(tiny_data, tmp_path / "run") if not o.startswith("hydra.")],
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = run_fails(["train.py", *extra, *overrides])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
