"""Export a trained detector for deployment, with its preprocessing inside, and check parity.

    cxrdet export CKPT --format onnx|torchscript --out FILE [--size 512] [--images PNG_DIR]

The exported model takes one grey uint8 image ``[H, W]`` (a prepared PNG as it is) and returns
``boxes [N, 4]`` (xyxy, in that image's pixels), ``scores [N]`` and ``labels [N]`` (class ids,
0-13; 14 for "No finding" when it was trained), with the checkpoint's score threshold and
detection cap. ONNX runs in ONNX Runtime (``predict.py model_file=FILE.onnx``); TorchScript in
``torch.jit.load``. After writing, the file is run beside the PyTorch model on a few images
(``--images``: the first ``--n`` PNGs of a folder; else smooth random images of ``--size``):
the same detections above 0.05 with boxes within 1 px, or the command fails and says by how
much. It prints one line with the word "parity" and the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrdet.data.classes import NO_FINDING_NAME
from cxrdet.data.dataset import load_png
from cxrdet.inference.exported import load_exported
from cxrdet.models.module import load_detector
from cxrdet.models.safe_load import TRUST_HELP

FORMATS = ("onnx", "torchscript")
PARITY_SCORE = 0.05  # detections compared: those scoring above this
PARITY_PX = 1.0  # largest box error allowed, in image pixels
SCORE_TOLERANCE = 0.01  # a detection this close to PARITY_SCORE may be missing on the other side


class GreyImageDetector(nn.Module):
    """A torchvision detector behind a deployment interface: grey uint8 ``[H, W]`` in; boxes,
    scores and class ids (torchvision's label - 1) out."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.to(torch.float32).div(255.0).unsqueeze(0).expand(3, -1, -1)
        if torch.jit.is_scripting():  # noqa: SIM108 (TorchScript needs the if statement)
            detections = self.detector([x])[1]  # scripted detectors return (losses, detections)
        else:
            detections = self.detector([x])
        out = detections[0]
        return out["boxes"], out["scores"], out["labels"] - 1


def export(
    ckpt: str, fmt: str, out: str | Path, size: int = 512, trust: bool = False
) -> tuple[Path, nn.Module]:
    """Write ``ckpt``'s detector as ``fmt`` to ``out``; returns the path and the eager model.
    ``trust``: load a checkpoint that needs full unpickling (``--trust``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401  (the parity check runs the file in it)
        except ImportError as e:
            raise ValueError(f"ONNX export needs {e.name}: pip install 'cxrdet[onnx]'") from e
    module = load_detector(ckpt, trust, "--trust", for_export=True)
    model = GreyImageDetector(module.model.eval()).eval()
    info = {
        "prepared_size": int(module.hparams.model.get("image_size", size)),
        "class14": NO_FINDING_NAME in module.class_names,  # "No finding" scored by the head
        "classes": module.classes.name,  # kaggle14 | local22: the ids it writes
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The tracer's notes on torchvision's shape arithmetic, the ONNX symbolic functions'
        # notes and torch's deprecation notice for TorchScript: the parity check below is what
        # tells whether the file is right.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated")
        write(model, fmt, out, size, info)
    return out, model


def write(model: nn.Module, fmt: str, out: Path, size: int, info: dict) -> None:
    """Script or trace ``model`` into ``out``, recording ``info`` (the prepared size it expects,
    whether it scores "No finding" as a class)."""
    if fmt == "torchscript":
        scripted = torch.jit.script(model)
        extra = {"cxrdet.json": json.dumps(info)}
        torch.jit.save(scripted, str(out), _extra_files=extra)
        return
    example = torch.from_numpy(smooth_images(1, size, seed=0)[0])
    torch.onnx.export(
        model,
        (example,),
        str(out),
        dynamo=False,  # the TorchScript-based exporter, which handles torchvision's detectors
        opset_version=17,
        input_names=["image"],
        output_names=["boxes", "scores", "labels"],
        dynamic_axes={
            "image": {0: "height", 1: "width"},
            "boxes": {0: "detections"},
            "scores": {0: "detections"},
            "labels": {0: "detections"},
        },
    )
    import onnx

    proto = onnx.load(str(out))
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"cxrdet.{key}", str(value)
    onnx.save(proto, str(out))


def smooth_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` grey uint8 images with structure at several scales (a stand-in for X-rays)."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        image = np.zeros((size, size), np.float32)
        for cells in (4, 16, 64):
            image += cv2.resize(rng.random((cells, cells), np.float32), (size, size))
        images.append(np.uint8(255 * (image - image.min()) / np.ptp(image)))
    return images


def compare(expected, actual) -> tuple[int, float]:
    """Detections above :data:`PARITY_SCORE` in ``expected`` without a counterpart in
    ``actual`` (same class, the closest box), and the largest box error among those matched.

    A detection within :data:`SCORE_TOLERANCE` of the threshold may be missing on the other
    side (rounding can move it across); the comparison runs both ways.
    """
    missing, worst = 0, 0.0
    for (b1, s1, c1), (b2, s2, c2) in ((expected, actual), (actual, expected)):
        b2, s2, c2 = np.asarray(b2), np.asarray(s2), np.asarray(c2)
        for box, score, label in zip(*(np.asarray(a) for a in (b1, s1, c1))):
            if score <= PARITY_SCORE:
                continue
            same = np.flatnonzero((c2 == label) & (s2 > PARITY_SCORE - SCORE_TOLERANCE))
            if not len(same):
                missing += int(score > PARITY_SCORE + SCORE_TOLERANCE)
                continue
            worst = max(worst, float(np.abs(b2[same] - box).max(axis=1).min()))
    return missing, worst


def check_parity(model: nn.Module, path: str | Path, images: list[np.ndarray]) -> dict:
    """Run the exported file and the eager model on ``images``; the figures of the comparison."""
    run, _ = load_exported(path)
    missing, worst, compared = 0, 0.0, 0
    for image in images:
        with torch.inference_mode():
            eager = tuple(t.numpy() for t in model(torch.from_numpy(image)))
        m, w = compare(eager, run(image))
        missing, worst = missing + m, max(worst, w)
        compared += int((eager[1] > PARITY_SCORE).sum())
    ok = missing == 0 and worst <= PARITY_PX
    return {
        "ok": ok,
        "images": len(images),
        "detections": compared,
        "missing": missing,
        "max_box_error_px": round(worst, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet export", description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="a train.py checkpoint")
    p.add_argument("--format", choices=FORMATS, required=True, help="onnx or torchscript")
    p.add_argument("--out", required=True, help="the file to write (.onnx / .pt)")
    p.add_argument("--size", type=int, default=512, help="parity images' side (default 512)")
    p.add_argument("--images", help="a folder of prepared PNGs to check parity on")
    p.add_argument("--n", type=int, default=4, help="images to check parity on (default 4)")
    p.add_argument(
        "--trust",
        action="store_true",
        help=TRUST_HELP,
    )
    a = p.parse_args(argv)
    try:
        path, model = export(a.ckpt, a.format, a.out, a.size, a.trust)
        if a.images:
            files = sorted(Path(a.images).glob("*.png"))[: a.n]
            if not files:
                raise FileNotFoundError(f"no PNGs in {a.images}")
            images = [load_png(f) for f in files]
        else:
            images = smooth_images(a.n, a.size)
        r = check_parity(model, path, images)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    line = (
        f"parity {'ok' if r['ok'] else 'FAILED'}: {r['detections']} detections above "
        f"{PARITY_SCORE} on {r['images']} images, {r['missing']} missing, largest box error "
        f"{r['max_box_error_px']} px (allowed {PARITY_PX})"
    )
    print(f"wrote {path}\n{line}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
