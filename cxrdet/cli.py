"""The ``cxrdet`` command: one subcommand per tool (``cxrdet <tool> --help`` for its options).

``python -m cxrdet <tool>`` is the same. Training and prediction are the Hydra entry points
``train.py`` and ``predict.py``.
"""

from __future__ import annotations

import importlib
import sys

# tool → (module with main(argv), one line for ``cxrdet --help``), in pipeline order
TOOLS = {
    "synth": ("cxrdet.demo.synth", "write a synthetic dataset of DICOM phantoms (Kaggle layout)"),
    "prepare": ("cxrdet.data.prepare", "convert DICOMs to PNGs at one or more sizes + meta CSV"),
    "eda": ("cxrdet.reports.eda", "the dataset's figures and tables from train.csv"),
    "weights": ("cxrdet.models.weights", "list or save the pretrained weights for offline use"),
    "report": ("cxrdet.reports.report", "result figures and report/index.html of a training run"),
    "score": (
        "cxrdet.evaluation.score",
        "score a submission.csv (mAP40, AP40; FROC, readers, errors, calibration)",
    ),
    "check": ("cxrdet.evaluation.check", "check a submission.csv against sample_submission.csv"),
    "calibrate": (
        "cxrdet.inference.calibrate",
        "fit a No-finding classifier's temperature on its validation images",
    ),
    "cv": ("cxrdet.inference.cv", "out-of-fold scores of a k-fold sweep, and its ensemble command"),
    "export": (
        "cxrdet.inference.export",
        "export a checkpoint to ONNX or TorchScript, parity-checked",
    ),
    "serve": (
        "cxrdet.inference.serve",
        "an AI node a PACS routes studies to: C-STORE in, SR and GSPS back",
    ),
    "demo": ("cxrdet.demo.run", "the whole job on synthetic phantoms, offline, on the CPU"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = [f"  {name:<{width}}  {line}" for name, (_, line) in TOOLS.items()]
    return "\n".join(
        [
            "usage: cxrdet <tool> [options]   (cxrdet <tool> --help for the tool's options)",
            "",
            "tools:",
            *lines,
            "",
            "Training and prediction: python train.py [key=value ...], python predict.py "
            "ckpt_path=PATH (--help for each).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    tool, rest = argv[0], argv[1:]
    if tool not in TOOLS:
        print(f"cxrdet: unknown tool {tool!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(TOOLS[tool][0])
    return int(module.main(rest) or 0)
