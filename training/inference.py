"""Scoring a dataset in batches, in dataset order, with the work split between processes under torchrun; and
keeping the dev set's outputs of each epoch, so that the best epoch's are not computed twice."""
from collections.abc import Callable
from typing import Generic, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from training.device import autocast, to_device
from training.distributed import Batch, gather_objects, is_main, items_for_this_process
from training.run_dir import Run, result_of
from training.run_log import RunLog

Outputs = TypeVar("Outputs")


@torch.no_grad()
def predict(model: nn.Module, batches: list[Batch], device: torch.device, precision: str,
            score: Callable[[Batch], torch.Tensor], size: int, desc: str) -> torch.Tensor:
    """`score(batch)` for every example, in dataset order (the batches may be sorted by length). Under
    torchrun each process scores its share of the batches and every process gets all the scores."""
    model.eval()
    indices, scores = [], []
    for batch in tqdm(items_for_this_process(batches), desc=desc, leave=False, disable=not is_main()):
        with autocast(device, precision):
            scores.append(score(to_device(batch, device)).float())  # kept on the device: no sync per batch
        indices.append(batch["indices"])
    mine = (torch.cat(indices), torch.cat(scores).cpu()) if scores else None
    shares = [share for share in gather_objects(mine) if share is not None]
    outputs = torch.empty((size, *shares[0][1].shape[1:]))
    for share_indices, share_scores in shares:
        outputs[share_indices] = share_scores
    return outputs


class DevOutputs(Generic[Outputs]):
    """The dev set's outputs (logits, generated sonnets) after each epoch of this session. The task's evaluation
    scores them; the dev prediction file takes the best epoch's, which the restored weights would only compute
    again."""

    def __init__(self, compute: Callable[[], Outputs]):
        self.compute = compute  # the outputs of the model's weights as they are now
        self.kept: list[Outputs] = []

    def after_epoch(self) -> Outputs:
        self.kept.append(self.compute())
        return self.kept[-1]

    def restored(self, run: Run | None, log: RunLog | None, exact: bool) -> Outputs:
        """The outputs of the weights `train_and_restore_best` restored: the best epoch's as kept, when this session
        scored that epoch and the weights are `exact`ly its (merging LoRA rounds them otherwise); else computed."""
        result = result_of(run.record) if run is not None and log is not None and exact else None
        if result is None or not self.kept:
            return self.compute()
        # this session's dev records, one for each epoch it scored, in order
        epochs = [record["epoch"] for record in log.records if record["split"] == "dev"][-len(self.kept):]
        return self.kept[epochs.index(result.best_epoch)] if result.best_epoch in epochs else self.compute()
