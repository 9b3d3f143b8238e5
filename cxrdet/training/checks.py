"""What ``train.py`` refuses at start, before any data or weights load: each check raises
:class:`StartupError` with one line that names the setting and the cure, and ``train.py``
reports it as ``error: <line>`` (in the terminal and the run's log)."""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

from omegaconf import DictConfig


class StartupError(Exception):
    """A run that cannot start as configured; the message is the whole explanation."""


def refuse_local_ddp_sweep(cfg: DictConfig, multirun: bool, launcher: str) -> None:
    """A sweep launched in this process that would train on several processes: Lightning's
    DDP re-runs the command line in its child processes, the sweep's included. Decided by the
    number of processes (``devices=2`` alone builds DDP), not by the strategy's name."""
    from cxrdet.training.devices import process_count

    processes = process_count(cfg.trainer)
    if processes >= 2 and multirun and "submitit" not in launcher:
        raise StartupError(
            f"a sweep (-m or hparams_search) on {processes} processes "
            "(DDP) needs one job per run: add hydra/launcher=slurm (each run then starts its own "
            "DDP processes), or sweep on one device"
        )


def check_resume_checkpoint(ckpt_path: str | None, trust: bool) -> None:
    """A checkpoint to resume that is missing or unreadable, or that needs full unpickling
    without ``trust_checkpoint=true`` (nothing in it runs: it is read as tensors and plain
    values, memory-mapped, before Lightning reads it the same way)."""
    if not ckpt_path:
        return
    from cxrdet.models.safe_load import UntrustedFile, safe_load

    if not Path(ckpt_path).is_file():
        raise StartupError(f"ckpt_path: {ckpt_path} not found")
    if trust:
        return
    try:
        safe_load(ckpt_path, mmap=True)
    except UntrustedFile as e:
        raise StartupError(f"ckpt_path={e}") from e
    except (RuntimeError, OSError) as e:
        raise StartupError(f"ckpt_path: cannot read {ckpt_path} as a checkpoint ({e})") from e


def refuse_unlogged_monitor(monitor: str | None, logs: set[str], evaluation: str) -> None:
    """A checkpoint monitor that neither the module nor a chosen evaluation logs (the best
    checkpoint would never be chosen, and Lightning would fail at the first validation)."""
    from cxrdet.training.evaluation import unlogged_monitor

    if unlogged_monitor(monitor, logs):
        raise StartupError(
            f"callbacks.model_checkpoint.monitor={monitor} is logged by no chosen "
            f"evaluation (evaluation={evaluation}); choose one that logs it (competition: "
            "val/AP40, val/mAP40; coco adds val/AP, val/AP50, ...), or monitor another metric"
        )


def refuse_unknown_keys(group: str, given, takes) -> None:
    """A key of ``group`` that ``takes`` (a function or class) has no parameter for (added with
    ``+group.key=``), naming the closest one it has."""
    accepted = [p for p in inspect.signature(takes).parameters if p not in ("self", "kwargs")]
    for key in given:
        if key not in accepted and not key.startswith("_"):
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {group}.{close[0]}?" if close else ""
            owner = takes.__qualname__.removesuffix(".__init__")
            raise StartupError(f"{group}.{key}: {owner} takes no such key{hint}")


def check_gpu_arch(cuda=None) -> None:
    """A GPU this torch build has no kernels for (its first CUDA operation would fail with "no
    kernel image is available"): e.g. P100 (6.0) and V100 (7.0) under the CUDA 13 wheels, which
    start at compute capability 7.5. ``cuda``: ``torch.cuda`` (a stand-in in tests)."""
    import torch

    cuda = cuda or torch.cuda
    if not cuda.is_available():
        return
    major, minor = cuda.get_device_capability()
    have = major * 10 + minor
    arches = cuda.get_arch_list()
    # Real code for this GPU, or PTX of the same or an older capability (compiled at load).
    sm = {int(a.split("_")[1]) for a in arches if a.startswith("sm_")}
    ptx = {int(a.split("_")[1]) for a in arches if a.startswith("compute_")}
    if have in sm or any(p <= have for p in ptx):
        return
    name = cuda.get_device_name()
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    raise StartupError(
        f"{build} has no kernels for {name} (compute capability {major}.{minor}; it has "
        f"{', '.join(arches) or 'none'}): install a torch build whose "
        f"torch.cuda.get_arch_list() holds sm_{have}, e.g. one for CUDA 12.6: pip install "
        "torch torchvision --index-url https://download.pytorch.org/whl/cu126 (those cover the "
        "P100 and V100)"
    )
