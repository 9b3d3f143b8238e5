"""cxrdet export: ONNX and TorchScript with a parity check, and predict.py on the exported file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import in_process

from cxrdet.evaluation.submission import read_submission
from cxrdet.inference import export

OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.005, "momentum": 0.9}


@pytest.fixture(scope="module")
def checkpoint(module_tmp):
    """A random-init detector saved as train.py saves it (the export does not care how good)."""
    from cxrdet.models.module import DetectorModule

    torch.manual_seed(0)
    module = DetectorModule(model={"num_classes": 14, "image_size": 64}, optim=OPTIM)
    path = module_tmp / "model.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.mark.parametrize(("fmt", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_writes_the_file_and_passes_its_parity_check(
    fmt, suffix, checkpoint, tiny_data, tmp_path, capsys
):
    out = tmp_path / f"model{suffix}"
    images = tiny_data["prepared"] / "64" / "test"
    args = [str(checkpoint), "--format", fmt, "--out", str(out), "--images", str(images)]
    assert export.main([*args, "--n", "2"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "parity ok" in text
    assert "0 missing" in text and "200 detections above 0.05 on 2 images" in text


def test_a_parity_failure_fails_and_says_by_how_much(checkpoint, tmp_path, capsys, monkeypatch):
    real = export.load_exported

    def shifted(path):  # an exported file whose boxes are 2 px off
        run, size = real(path)
        return (lambda image: (run(image)[0] + 2.0, *run(image)[1:])), size

    monkeypatch.setattr(export, "load_exported", shifted)
    out = tmp_path / "model.onnx"
    args = [str(checkpoint), "--format", "onnx", "--out", str(out), "--size", "64", "--n", "1"]
    assert export.main(args) == 1
    text = capsys.readouterr().out
    error = re.search(r"largest box error ([\d.]+) px \(allowed 1.0\)", text)
    assert "parity FAILED" in text and float(error.group(1)) == pytest.approx(2.0, abs=0.01)


def test_predict_with_the_onnx_file_matches_the_checkpoint(checkpoint, tiny_data, tmp_path):
    from cxrdet.inference.config import PredictConfig
    from cxrdet.inference.predictor import predict

    onnx_file = tmp_path / "model.onnx"
    assert export.main([str(checkpoint), "--format", "onnx", "--out", str(onnx_file)]) == 0
    prepared = tiny_data["prepared"] / "64"
    common = [f"image_dir={prepared / 'test'}", f"meta_csv={prepared / 'test_meta.csv'}"]
    in_process(  # no ckpt_path: the exported file is all a deployment machine needs
        "predict.py",
        [
            f"model_file={onnx_file}",
            *common,
            f"output={tmp_path / 'onnx.csv'}",
            "num_workers=0",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    predict(
        PredictConfig(
            ckpt_path=str(checkpoint),
            output=str(tmp_path / "torch.csv"),
            image_dir=str(prepared / "test"),
            meta_csv=str(prepared / "test_meta.csv"),
            progress=False,
        )
    )
    exported, eager = (
        read_submission(tmp_path / "onnx.csv"),
        read_submission(tmp_path / "torch.csv"),
    )
    assert exported.keys() == eager.keys()
    for image_id, (boxes, scores, classes) in eager.items():
        got_boxes, got_scores, got_classes = exported[image_id]
        findings = (scores > 0.05) & (classes < 14)
        assert findings.sum() > 0
        assert export.compare(eager[image_id], exported[image_id])[0] == 0  # none missing
        for box, score, label in zip(boxes[findings], scores[findings], classes[findings]):
            same = np.flatnonzero(got_classes == label)
            error = np.abs(got_boxes[same] - box).max(axis=1)
            k = same[np.argmin(error)]
            # Boxes in original pixels (64-96 px originals of a 64-px PNG: up to 1.5 px per
            # px), written to 0.1 px; scores written to 4 decimals.
            assert error.min() <= 1.5 + 0.1, (image_id, box, got_boxes[k])
            assert abs(got_scores[k] - score) <= 2e-4, (image_id, score, got_scores[k])
        # Every image's No-finding line too.
        np.testing.assert_allclose(got_scores[got_classes == 14], scores[classes == 14], atol=2e-4)


def test_onnx_runtime_takes_the_cuda_provider_on_a_gpu_and_says_when_it_cannot(caplog):
    from cxrdet.inference.exported import onnx_providers

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level("WARNING", logger="cxrdet.inference.exported"):
        assert onnx_providers(cuda, gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert onnx_providers(cpu, gpu_build) == ["CPUExecutionProvider"]
        assert not caplog.records
        assert onnx_providers(cuda, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    (line,) = caplog.records
    assert "runs on the CPU" in line.getMessage() and "cxrdet[onnx-gpu]" in line.getMessage()
