"""AdamW parameter groups (weight decay on matrices only, per-layer learning rates) and the learning-rate
schedules."""
import math
import re
from typing import Any

import torch
from torch import nn

from optimizer import AdamW

SCHEDULERS = ("constant", "linear", "cosine", "slanted_triangular")


def layer_of(name: str, num_layers: int) -> int:
    """Depth of a parameter for per-layer learning rates: 0 for the embeddings, i + 1 for GPT-2 layer i,
    num_layers + 1 for everything above (final LayerNorm, task heads)."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return 0 if re.search(r"(?:^|\.)(word|position)_embedding\.", name) else num_layers + 1


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, num_layers: int,
                     layer_lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters. Weight decay applies to matrices only (biases and
    LayerNorm gains are exempt); each layer's learning rate is lr * layer_lr_decay^(layers above it)."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth, decays = layer_of(name, num_layers), param.ndim >= 2
        group = groups.setdefault((depth, decays), {
            "params": [], "lr": lr * layer_lr_decay ** (num_layers + 1 - depth),
            "weight_decay": weight_decay if decays else 0.0})
        group["params"].append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, num_layers: int,
                   layer_lr_decay: float = 1.0) -> AdamW:
    return AdamW(parameter_groups(model, lr, weight_decay, num_layers, layer_lr_decay), lr=lr)


def lr_multiplier(kind: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The schedule's factor on each group's learning rate at optimizer step `step` (0-based)."""
    total_steps = max(total_steps, 1)
    if kind == "slanted_triangular":  # ULMFiT: a short linear rise, a long linear fall, from lr/32 to lr
        cut = max(warmup_steps, 1)
        rise = step / cut if step < cut else 1 - (step - cut) / max(total_steps - cut, 1)
        return (1 + max(rise, 0.0) * 31) / 32
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    if kind == "linear":
        return max(0.0, 1 - progress)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                   warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(kind, step, total_steps, warmup_steps))


def set_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                        base_lrs: list[float], weight_decays: list[float]) -> None:
    """Give a restored optimizer and schedule other base learning rates and weight decays (one per group),
    continuing the schedule where it stands: a checkpoint stores the old values, which would otherwise win."""
    scheduler.base_lrs = list(base_lrs)
    for group, base_lr, decay, multiplier in zip(optimizer.param_groups, base_lrs, weight_decays,
                                                 scheduler.lr_lambdas):
        group["initial_lr"], group["weight_decay"] = base_lr, decay
        group["lr"] = base_lr * multiplier(scheduler.last_epoch)
