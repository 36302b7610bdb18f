"""Processes under torchrun: who they are, who writes files, and each process's share of the work. With
one process every function here is the trivial one."""
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from flags import UserError, errors_name

Batch = dict[str, torch.Tensor]


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes logs, checkpoints and predictions (rank 0, or the only process)."""
    return rank() == 0


def gather_objects(local: Any) -> list[Any]:
    """Every process's `local`, in rank order, on every process."""
    if world_size() == 1:
        return [local]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(values)
    return values


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def items_for_this_process(items: list[Any]) -> list[Any]:
    """This process's part of an evaluation: every world_size-th item, starting at its rank."""
    return items[rank()::world_size()]


def batches_for_this_process(batches: list[Batch]) -> list[tuple[Batch, float]]:
    """This process's training batches with their loss weights: every world_size-th batch, starting at its
    rank. Processes short of a batch at the end repeat one with weight 0, so all take the same number of
    steps, and N processes with gradient accumulation g train exactly as one process with N * g."""
    per_process = -(-len(batches) // world_size())
    return [(batches[i], 1.0) if i < len(batches) else (batches[i % len(batches)], 0.0)
            for i in range(rank(), per_process * world_size(), world_size())]


def main_only(action: Callable[[], None]) -> None:
    """`action()` in the main process only; a `UserError` it raises is raised in every process, so that all
    stop alike rather than wait for the main one."""
    refusal = None
    if is_main():
        try:
            action()
        except UserError as error:
            refusal = str(error)
    refusal = gather_objects(refusal)[0]
    if refusal is not None:
        raise UserError(refusal)


def write_on_main(write: Callable[..., None], path: Path, *contents: Any) -> None:
    """`write(path, *contents)` in the main process only (a failure names `path`); every process returns once
    the file is there."""
    if is_main():
        with errors_name(path):
            write(path, *contents)
        print(f"wrote {path}")
    barrier()
