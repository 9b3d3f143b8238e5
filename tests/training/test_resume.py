"""Exact resume and repeatable runs on CPU: same seed, same weights and metrics."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import tiny_overrides, train_in_process

pytestmark = pytest.mark.slow


def _train(tiny_data, run, *extra, max_steps=10):
    # 10 steps over two epochs (6 batches each), validation and a checkpoint every 4 steps,
    # the seed's augmentation, two loader workers: the resume at step 4 lands mid-epoch.
    args = [
        *tiny_overrides(tiny_data, run),
        "data.num_workers=2",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=4",
        "trainer.deterministic=true",
        "callbacks.model_checkpoint.save_top_k=-1",
        *extra,
    ]
    return train_in_process(args)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _val_metrics(run):
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    return metrics.dropna(subset=["val/loss"])[["step", "val/loss", "val/AP40", "val/mAP40"]]


@pytest.fixture(scope="module")
def straight(tiny_data, module_tmp):
    run = module_tmp / "straight"
    _train(tiny_data, run)
    return run


@pytest.mark.parametrize("step", [4, 8], ids=["mid-first-epoch", "mid-second-epoch"])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(
    tiny_data, straight, tmp_path, step
):
    mid = straight / "checkpoints" / f"best-step{step}.ckpt"
    assert torch.load(mid, weights_only=True)["global_step"] == step
    resumed = tmp_path / "resumed"
    log = _train(tiny_data, resumed, f"ckpt_path={mid}")
    assert "schedule is stretched" not in log  # same max_steps
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(resumed / "checkpoints" / "last.ckpt"),
    )
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    if step == 4:  # the validation at step 8 after the resume matches too
        pd.testing.assert_frame_equal(
            _val_metrics(straight).iloc[1:].reset_index(drop=True),
            _val_metrics(resumed).reset_index(drop=True),
        )


def test_same_seed_gives_the_same_weights_and_metrics(tiny_data, straight, tmp_path):
    again = tmp_path / "again"
    _train(tiny_data, again)
    pd.testing.assert_frame_equal(_val_metrics(straight), _val_metrics(again))
    a, b = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(again / "checkpoints" / "last.ckpt"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_last_checkpoint_holds_the_final_step_between_validations(straight):
    # max_steps=10 is no multiple of val_check_interval=4: last.ckpt is written at the end.
    assert (
        torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    )


def test_resuming_with_another_max_steps_says_the_schedule_is_stretched(
    tiny_data, straight, tmp_path
):
    mid = straight / "checkpoints" / "best-step8.ckpt"
    log = _train(tiny_data, tmp_path / "longer", f"ckpt_path={mid}", max_steps=12)
    assert "resuming at step 8 a LR schedule made for 10 steps with trainer.max_steps=12" in log
    assert "keep trainer.max_steps=10 to continue it unchanged" in log
