"""The processes of one prediction: one, or ``trainer.devices`` per node on
``trainer.num_nodes`` nodes, each predicting its own share of the images.

Lightning Fabric starts them as Lightning's training does: ``predict.py trainer.devices=4``
re-runs the same command three more times on this node (Hydra's run folder passed on), and
under ``srun`` (SLURM's tasks) or ``torchrun`` each task is one process already. The processes
share nothing but the run folder (the first one's, broadcast at the start) and two barriers
(before the models load, once the first has the list of images; before the merge); they wait
in them over ``gloo`` on any device, so no GPU is held by a waiting rank and no NCCL timeout
applies to a rank that has more to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

log = logging.getLogger(__name__)

BARRIER_TIMEOUT = timedelta(hours=48)  # ranks wait for the slowest one's share, however long


@dataclass
class Ranks:
    """This process's place among the prediction's processes."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    fabric: object = None  # lightning_fabric.Fabric when there is more than one process

    def broadcast(self, value):
        """The first process's ``value``, on every process."""
        if self.fabric is None:
            return value
        return self.together("broadcast", lambda: self.fabric.broadcast(value, src=0))

    def barrier(self, name: str) -> None:
        """Wait for every process."""
        if self.fabric is not None:
            self.together(f"{name} barrier", lambda: self.fabric.barrier(name))

    def together(self, what: str, call):
        """``call()``, a collective: :class:`PeerStopped` when another process has stopped."""
        try:
            return call()
        except RuntimeError as e:  # gloo: "Connection closed by peer"
            raise PeerStopped(
                f"process {self.rank} of {self.world}: another process stopped before the "
                f"{what} (its error is above): {str(e).splitlines()[0][:200]}"
            ) from None


class PeerStopped(RuntimeError):
    """Another process of the prediction stopped (its own error says why)."""


def launched_tasks() -> int:
    """How many processes a launcher (srun, torchrun) started for this command."""
    for key in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def processes_of(devices, num_nodes: int) -> int:
    """The number of processes ``trainer.devices`` × ``trainer.num_nodes`` asks for."""
    try:
        per_node = int(devices)
    except (TypeError, ValueError):
        raise ValueError(
            f"trainer.devices={devices!r}: expected a number of processes per node"
        ) from None
    if per_node < 1 or int(num_nodes) < 1:
        raise ValueError(
            f"trainer.devices={devices}, trainer.num_nodes={num_nodes}: expected >= 1 each"
        )
    return per_node * int(num_nodes)


def start_ranks(devices, num_nodes: int, device: torch.device) -> Ranks:
    """Start (or join) the prediction's processes; this one's rank, their number and its
    device (with CUDA: the GPU of its local rank)."""
    world = processes_of(devices, num_nodes)
    if world == 1:
        tasks = launched_tasks()
        if tasks > 1:  # every task would predict every image into the same file
            raise ValueError(
                f"started as {tasks} tasks (srun / torchrun) with trainer.devices=1: each would "
                f"predict every image; set trainer.devices to the tasks per node (and "
                f"trainer.num_nodes to the nodes)"
            )
        return Ranks(device=device)
    if device.index is not None:
        raise ValueError(
            f"device={device} with trainer.devices={devices}: each process takes the GPU of its "
            "rank; say which GPUs with CUDA_VISIBLE_DEVICES and device=cuda"
        )
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    fabric = Fabric(
        accelerator="cuda" if device.type == "cuda" else "cpu",
        devices=int(devices),
        num_nodes=int(num_nodes),
        strategy=DDPStrategy(process_group_backend="gloo", timeout=BARRIER_TIMEOUT),
    )
    fabric.launch()
    log.info("process %d of %d on %s", fabric.global_rank, fabric.world_size, fabric.device)
    return Ranks(fabric.global_rank, fabric.world_size, fabric.device, fabric)


def share(n: int, batch_size: int, rank: int, world: int) -> list[range]:
    """The batches of ``n`` images that ``rank`` of ``world`` predicts: the single process's
    batches (``batch_size`` images in order), every ``world``-th from its rank. Each image is
    one rank's, and each batch holds the images it holds in one process: batched kernels
    (matrix products over a batch's proposals) give the same bits, and so the same file."""
    starts = range(rank * batch_size, n, world * batch_size)
    return [range(s, min(s + batch_size, n)) for s in starts]
