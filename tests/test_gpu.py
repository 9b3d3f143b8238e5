"""CUDA and AMP paths (run by benchmarks/gpu_check.sh on a GPU machine; skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_datamodule

from cxrdet.models.module import DetectorModule
from cxrdet.training.evaluation import CompetitionEvaluation

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.005, "momentum": 0.9}


def _data(tiny_data):
    return tiny_datamodule(tiny_data, seed=0)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_training_and_validation_on_cuda(tiny_data, tmp_path, precision):
    torch.manual_seed(0)
    module = DetectorModule(model={"num_classes": 14, "image_size": 64}, optim=OPTIM)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=4,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[CompetitionEvaluation()],  # evaluation=competition, as train.py adds it
    )
    dtypes = set()
    body = module.model.backbone.body
    body.layer2.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype) if m.training else None)
    before = body.layer2[0].conv1.weight.detach().clone()
    trainer.fit(module, datamodule=_data(tiny_data))
    metrics = trainer.callback_metrics
    assert np.isfinite(float(metrics["train/loss"])) and np.isfinite(float(metrics["val/loss"]))
    assert "val/AP40" in metrics and float(metrics["val/images"]) > 0
    expected = {"32-true": torch.float32, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
    assert dtypes == {expected[precision]}  # the steps really ran in that precision
    assert not torch.equal(before.cpu(), body.layer2[0].conv1.weight.detach().cpu())  # trained


def test_fp16_prediction_on_cuda_runs_in_fp16_and_matches_fp32_on_cpu(tiny_data):
    from torchvision.ops import box_iou

    from cxrdet.data.dataset import ImageDataset
    from cxrdet.inference.prediction_pass import PassOptions, predict_dataset

    torch.manual_seed(0)
    module = DetectorModule(model={"num_classes": 14, "image_size": 64}, optim=OPTIM)
    prepared = tiny_data["prepared"] / "64"
    dataset = ImageDataset(prepared / "test", prepared / "test_meta.csv")
    cpu_model = module.model.eval()
    fp32, _, _ = predict_dataset([cpu_model], dataset, "cpu", PassOptions(progress=False))
    gpu_model = DetectorModule(model={"num_classes": 14, "image_size": 64}, optim=OPTIM).model
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model = gpu_model.cuda().eval()
    dtypes = []
    gpu_model.backbone.body.conv1.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    fp16, _, _ = predict_dataset(
        [gpu_model], dataset, "cuda", PassOptions(precision="16-mixed", progress=False)
    )
    assert dtypes and set(dtypes) == {torch.float16}  # the layers ran in fp16
    assert fp16.keys() == fp32.keys()
    matched, total = 0, 0
    for image_id, (boxes, scores, classes) in fp32.items():
        got_boxes, _, got_classes = fp16[image_id]
        assert got_boxes.dtype.kind == "f"
        for box, label in zip(boxes[scores > 0.05], classes[scores > 0.05]):
            total += 1
            same = got_boxes[got_classes == label]
            if len(same) == 0:
                continue
            iou = box_iou(torch.tensor(box[None]), torch.tensor(same))[0]
            k = int(iou.argmax())
            matched += int(iou[k] >= 0.5 and np.abs(same[k] - box).max() <= 1.0)
    # fp16's rounding may change which near-tied boxes survive NMS; most stay within a pixel
    # (original pixels; box geometry runs in float32).
    assert total > 0 and matched / total >= 0.8, (matched, total)
