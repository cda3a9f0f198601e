"""Distributed runs with torch.distributed directly, driven by the environment that `torchrun` and
`accelerate launch` set (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    torchrun --nproc-per-node 4 -m trainer.cli train --data runs/gen1 --out runs/train1
    accelerate launch -m trainer.cli train --data runs/gen1 --out runs/train1
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500 --nproc-per-node 8 \\
        -m trainer.cli train ...

WORLD_SIZE > 1 starts a process group: NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo
on CPU. Without those variables everything here is a no-op and the run is a plain single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device)


def teardown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        # NCCL wants to know the rank's GPU, else it guesses (and warns).
        dist.barrier(device_ids=[info.device.index]) if info.device.type == "cuda" else dist.barrier()


def sum_all(info: DistInfo, *values: float) -> list[float]:
    """Sum scalars over all ranks (one all_reduce)."""
    if not info.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (so all ranks stop together)."""
    return sum_all(info, float(flag))[0] > 0 if info.active else flag
