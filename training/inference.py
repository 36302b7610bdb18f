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
    scored = []
    for batch in tqdm(items_for_this_process(batches), desc=desc, leave=False, disable=not is_main()):
        with autocast(device, precision):
            scored.append((batch["indices"], score(to_device(batch, device)).float().cpu()))
    scored = [pair for process_scores in gather_objects(scored) for pair in process_scores]
    outputs = torch.empty((size, *scored[0][1].shape[1:]))
    for indices, scores in scored:
        outputs[indices] = scores
    return outputs
