"""Several processes on one job: the ranks `torchrun` or `accelerate launch` start.

Both launchers describe the job to each process in the same environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): that is the launchers'
protocol, read here once, not a way to configure dbgpu. `torch.distributed` is used
directly rather than accelerate's PartialState: a score job needs only a process group,
one agreement (did every rank start?) and one barrier (is every shard written?), and
ranks exchange no tensors (each writes its own row shards), so the thinner layer is
the clearer one. Backend: NCCL when the ranks use CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (rank 0 of 1 when not launched by a launcher)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> Ranks:
    """The ranks a launcher set up, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, ranks: Ranks) -> str:
    """Each rank its own GPU (cuda:LOCAL_RANK) when the job runs on CUDA; the CPU as given."""
    if ranks.world > 1 and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank}"
    return device


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (once per process)."""
    import torch.distributed as dist

    if ranks.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def all_agree(ok: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank iff `ok` is true on every rank."""
    if ranks.world == 1:
        return ok
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def stop(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
