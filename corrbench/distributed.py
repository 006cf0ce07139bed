"""Several processes, one run: ``torchrun --nproc-per-node N -m corrbench run ...`` (or Slurm's srun).

Any launcher that sets ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT`` works. The unique
images are split across ranks in a balanced, deterministic way (sorted by content hash, dealt
round-robin); each rank fills the shared feature cache with its share; after a barrier rank 0 reads
every map back, runs the readout and the metrics and writes the results. The output is identical to
a single-process run because the features are the same files and the readout runs once.

Backends: NCCL when the run is on CUDA, gloo on CPU. Errors are agreed on: when one rank fails, all
raise instead of waiting forever at the next barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import CorrbenchError, UsageError

T = TypeVar("T")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (already in a deterministic order): round-robin, so balanced."""
        return list(items[self.rank::self.world_size]) if self.active else list(items)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, error: BaseException | None) -> None:
        """Collective: re-raise this rank's error, or raise when any other rank failed."""
        if not self.active:
            if error is not None:
                raise error
            return
        messages = self.all_gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            rank, message = failed[0]
            raise CorrbenchError(f"rank {rank} failed: {message}")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device: str) -> tuple[DistContext, str]:
    """Join the process group a launcher described in the environment; returns the context and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    if device.startswith("cuda:"):
        raise UsageError(f"--device {device} under a launcher would put every rank on one GPU; "
                         f"use --device cuda and each rank takes cuda:LOCAL_RANK")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    return DistContext(rank, world, local_rank, owns), device
