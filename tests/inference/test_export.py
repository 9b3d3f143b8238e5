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


def test_onnx_runtime_takes_the_cuda_provider_of_the_chosen_gpu_or_refuses(monkeypatch):
    """The CUDA provider on cuda:N (or this rank's GPU under DDP), never a silent fall-back to
    the CPU, and never both runtimes at once. Fails if device_id is dropped (every rank on GPU
    0) or the fall-back comes back."""
    from cxrdet.inference.exported import check_one_runtime, onnx_providers

    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cuda_provider = lambda i: [("CUDAExecutionProvider", {"device_id": i}), "CPUExecutionProvider"]  # noqa: E731
    assert onnx_providers(torch.device("cuda:1"), gpu_build) == cuda_provider(1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert onnx_providers(torch.device("cuda"), gpu_build) == cuda_provider(3)
    assert onnx_providers(torch.device("cpu"), gpu_build) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"no CUDA provider .*cxrdet\[onnx-gpu\].*device=cpu"):
        onnx_providers(torch.device("cuda"), ["CPUExecutionProvider"])
    check_one_runtime({"onnxruntime", "numpy"})
    with pytest.raises(ValueError, match="both installed.*pip uninstall -y onnxruntime"):
        check_one_runtime({"onnxruntime", "onnxruntime-gpu"})
