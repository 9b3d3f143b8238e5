"""Running an exported detector (``cxrdet export``): ONNX through ONNX Runtime, or TorchScript.

Needs neither Lightning nor the checkpoint: ``predict.py model_file=FILE.onnx`` runs on a
deployment machine with ``pip install cxrdet[onnx]``, or on a GPU with ``cxrdet[onnx-gpu]``
(onnxruntime-gpu: ONNX Runtime's CUDA provider).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from cxrdet.data.classes import class_set
from cxrdet.data.dataset import grey_pixels

log = logging.getLogger(__name__)


def onnx_providers(device: torch.device, available: list[str]) -> list:
    """ONNX Runtime's execution providers for ``device``: on a CUDA device its CUDA provider on
    that GPU (``cuda:N``, or this process's ``LOCAL_RANK`` under DDP), then the CPU's; a CUDA
    device without a CUDA provider is refused, naming the package to install."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise ValueError(
            f"device={device}: this ONNX Runtime has no CUDA provider (it has "
            f"{', '.join(available) or 'none'}); install the GPU build in place of the CPU one "
            "(pip uninstall onnxruntime; pip install 'cxrdet[onnx-gpu]'), or predict with "
            "device=cpu"
        )
    index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def check_one_runtime(installed=None) -> None:
    """``onnxruntime`` and ``onnxruntime-gpu`` installed together overwrite each other's files
    (which one loads is an accident): refuse, naming the one to remove. ``installed``: the
    distribution names (default: this environment's)."""
    if installed is None:
        from importlib.metadata import distributions

        installed = {d.metadata["Name"].lower() for d in distributions()}
    if {"onnxruntime", "onnxruntime-gpu"} <= set(installed):
        raise ValueError(
            "onnxruntime and onnxruntime-gpu are both installed and shadow each other: pip "
            "uninstall -y onnxruntime onnxruntime-gpu, then install one (pip install "
            "'cxrdet[onnx]' for the CPU, 'cxrdet[onnx-gpu]' for a GPU)"
        )


def load_exported(path: str | Path, device: torch.device | str = "cpu"):
    """A callable ``grey uint8 [H, W] → (boxes, scores, class ids)`` (numpy) for an exported
    file, run on ``device`` (ONNX Runtime's CUDA provider, or TorchScript on the GPU), and what
    the file records (:func:`export_info`)."""
    device = torch.device(device)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError as e:
            raise ValueError(f"{path}: ONNX needs onnxruntime: pip install 'cxrdet[onnx]'") from e
        check_one_runtime()
        providers = onnx_providers(device, onnxruntime.get_available_providers())
        session = onnxruntime.InferenceSession(str(path), providers=providers)
        if device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise ValueError(  # its libraries failed to load: ONNX Runtime fell back to the CPU
                f"{path}: ONNX Runtime could not start its CUDA provider (the session runs on "
                f"{', '.join(session.get_providers())}); its log above says why (often a "
                "CUDA/cuDNN version it was not built for), or predict with device=cpu"
            )
        meta = session.get_modelmeta().custom_metadata_map
        info = {k.removeprefix("cxrdet."): v for k, v in meta.items() if k.startswith("cxrdet.")}
        return (lambda image: tuple(session.run(None, {"image": image}))), export_info(info)
    extra = {"cxrdet.json": ""}
    try:
        with warnings.catch_warnings():  # torch's deprecation notice for TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated")
            scripted = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except RuntimeError as e:
        raise ValueError(f"{path}: not an ONNX or TorchScript file from cxrdet export") from e
    info = export_info(json.loads(extra["cxrdet.json"] or "{}"))

    def run(image: np.ndarray):
        with torch.inference_mode(), warnings.catch_warnings():
            # torchvision's scripted detector notes its (losses, detections) return on each call
            warnings.filterwarnings("ignore", message="RCNN always returns")
            return tuple(t.cpu().numpy() for t in scripted(torch.from_numpy(image).to(device)))

    return run, info


def export_info(recorded: dict) -> dict:
    """What ``cxrdet export`` records in the file: the prepared size its checkpoint trained on
    (512 if absent), whether it scores "No finding" as a class (no, for older files) and its
    class set (Kaggle's for older files)."""
    return {
        "prepared_size": int(recorded.get("prepared_size", 512)),
        "class14": str(recorded.get("class14", False)).lower() in ("true", "1"),
        "classes": class_set(recorded.get("classes")),
    }


class ExportedDetector:
    """An exported file called like a torchvision detector: a batch of ``[3, H, W]`` images in
    [0, 1] (grey, as the datasets make them) → one ``{"boxes", "scores", "labels"}`` per image
    (labels = class id + 1). Its score threshold and detection cap are the checkpoint's;
    ``score_thresh`` drops lower scores on top of that."""

    def __init__(
        self,
        path: str | Path,
        score_thresh: float | None = None,
        device: torch.device | str = "cpu",
    ):
        self.run, info = load_exported(path, device)
        self.prepared_size, self.class14 = info["prepared_size"], info["class14"]
        self.classes = info["classes"]
        self.score_thresh = score_thresh

    def __call__(self, images: list[torch.Tensor]) -> list[dict]:
        outputs = []
        for image in images:
            grey = grey_pixels(image)
            boxes, scores, classes = self.run(np.ascontiguousarray(grey))
            keep = scores >= (self.score_thresh or 0.0)
            outputs.append(
                {
                    "boxes": torch.from_numpy(boxes[keep]),
                    "scores": torch.from_numpy(scores[keep]),
                    "labels": torch.from_numpy(classes[keep]) + 1,
                }
            )
        return outputs
