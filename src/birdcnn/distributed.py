"""Data-parallel training across processes and machines, as started by `torchrun`.

    torchrun --nproc-per-node 2 -m birdcnn train --data cifar10 ...

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process. Every rank builds the same data,
network and epoch order (all seeded); each trains on its slice of every global batch and
PyTorch's DistributedDataParallel averages the gradients (gloo on CPUs, NCCL on CUDA), so the
global batch, the number of steps and the learning-rate rule are those of one process. Rank 0
alone prints, validates and writes files. BatchNorm statistics are per rank during the step
(synchronised BatchNorm is CUDA-only in PyTorch) and rank 0's are kept (DDP broadcasts them).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import BirdcnnError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def from_env() -> Ranks:
    """The ranks torchrun gave this process (none: a single process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Ranks()
        return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError) as e:
        raise BirdcnnError(f"WORLD_SIZE/RANK/LOCAL_RANK are set but unusable ({e}); start with torchrun") from None


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (CUDA: one GPU per local rank)."""
    if not ranks.parallel:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise BirdcnnError(f"torchrun training runs on CUDA or CPUs, not {device.type}")
    # A dead rank fails the others' next collective; the timeout bounds a rank that hangs instead.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def wrap(net: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """`net` inside DistributedDataParallel when there are several ranks (weights copied from rank 0)."""
    if not ranks.parallel:
        return net
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank if it is true on any (e.g. Ctrl-C seen by one process: all stop at the same step)."""
    if not ranks.parallel:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def total(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (epoch loss, correct and seen counts)."""
    if not ranks.parallel:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_replicas(net: torch.nn.Module, ranks: Ranks, device: torch.device) -> None:
    """Raise if the ranks' weights differ (they must be bit-identical after every step)."""
    if not ranks.parallel:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in net.parameters()])
        mine = torch.stack([flat.sum(), (flat * flat).sum(),
                            (flat * torch.arange(len(flat), device=flat.device)).sum()])
    gathered = [torch.empty_like(mine) for _ in range(ranks.world)]
    dist.all_gather(gathered, mine.to(device))
    if any(not torch.equal(g.cpu(), gathered[0].cpu()) for g in gathered):
        raise BirdcnnError("the training processes ended with different weights (a rank diverged); "
                           "the model was not saved")


def leave_together(ranks: Ranks) -> None:
    """Wait until every rank is here (rank 0 may still be writing the run's files). A rank that
    tears down its gloo connections while a peer's last collective is still in flight can abort
    (SIGABRT, "terminate called without an active exception"), so no rank leaves alone."""
    if ranks.parallel:
        dist.barrier()


def stop(ranks: Ranks) -> None:
    """Leave the process group. A DistributedDataParallel wrapper outlives its scope in a reference
    cycle, and its reducer holds the group: collected only at interpreter exit, the group's gloo
    threads are torn down during finalisation, which can abort the process (SIGABRT, "terminate
    called without an active exception", seen in CI on a rank that had finished). So the cycle is
    collected here, while everything is alive, before the group is destroyed."""
    if ranks.parallel and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
