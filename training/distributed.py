"""Data-parallel training on torchrun (PyTorch DistributedDataParallel). Import only.

``torchrun --nproc_per_node N -m training.train ...`` starts N copies of the training
CLI with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in their environment;
``init`` joins them into one process group (gloo on CPU, NCCL on GPUs, one GPU per local
rank). A plain ``python -m training.train`` has no WORLD_SIZE and runs alone: the same
code path with ``Cluster.rank == 0`` and ``world == 1``.

What each rank does (``training.train``): the same seeded permutation of the training
events, rank r takes every world-th event from position r (its shard); the configured
``batch_size`` is the global batch, each rank builds ``ceil(batch_size / world)`` of it,
and DDP averages the gradients, so one step of N processes is one step of one process
on the same number of events. Rank 0 alone validates, early-stops (its decision is
broadcast), writes checkpoints, TensorBoard and the summary, and exports with
``--export``. A worker that dies ends the job: torchrun's agent stops the other workers
and exits non-zero with the failed rank's error; checkpoints are written atomically, so
the run dir holds the last complete best checkpoint or none.

Several machines: the same command on every node with ``--nnodes M --node_rank K
--rdzv_backend c10d --rdzv_endpoint HOST:PORT`` (docs/TRAINING.md).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# a collective that waits longer than this (a peer stuck, not dead) fails the job
TIMEOUT = datetime.timedelta(minutes=30)


class LaunchError(RuntimeError):
    """The launcher's environment is incomplete or does not match the machine."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in the job: rank in [0, world), its device, the backend."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, checkpoints and exports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    """True in a worker that torchrun (or any launcher setting WORLD_SIZE > 1) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[Cluster, torch.device]:
    """Join the torchrun job, if any: the cluster and this rank's device.

    CPU: gloo. CUDA: NCCL, one GPU per local rank (LOCAL_RANK). Raises LaunchError with
    what to fix when the launcher's variables are incomplete.
    """
    if not launched_by_torchrun():
        return Cluster(), device
    needed = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise LaunchError(
            f"WORLD_SIZE is set but {missing} are not: launch with `torchrun --nproc_per_node N "
            "-m training.train ...`, which sets them all"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise LaunchError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    cluster = Cluster(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    log.info("rank %d of %d (%s on %s)", cluster.rank, cluster.world, backend, device)
    return cluster, device


def broadcast_flag(cluster: Cluster, flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. its early-stopping decision)."""
    if not cluster.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier(cluster: Cluster) -> None:
    if cluster.distributed:
        dist.barrier()


def shutdown(cluster: Cluster) -> None:
    if cluster.distributed and dist.is_initialized():
        dist.destroy_process_group()
