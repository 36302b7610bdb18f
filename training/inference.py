"""Scoring a dataset in batches, in dataset order, with the work split between processes under torchrun."""
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from training.device import autocast, to_device
from training.distributed import Batch, gather_objects, is_main, items_for_this_process


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
