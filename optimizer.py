"""AdamW with decoupled weight decay, as defined for the CS224N GPT-2 assignment.

Per parameter p with gradient g at step t (starting at 1):

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)   (just lr if not correct_bias)
    p = p - step_size * m / (sqrt(v) + eps)
    p = p - lr * weight_decay * p                        (decay of the *updated* p)

Unlike torch.optim.AdamW, weight decay is applied after the Adam update (torch: before)
and eps is added to the uncorrected sqrt(v) (torch: to sqrt(v / (1 - beta2^t))).
"""

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.optim.optimizer import ParamsT


# On the CPU a fresh sqrt(v) buffer the size of the model costs page faults at every step; slices of
# 2M elements (8 MB in float32) keep that scratch memory small and reused. CUDA's caching allocator
# reuses the whole buffer, and there one list per kernel means fewer launches.
CPU_SLICE = 2**21


def slices(device: torch.device, *lists: list[torch.Tensor]) -> Iterator[tuple[list[torch.Tensor], ...]]:
    """The same tensors, as flat views in groups of about CPU_SLICE elements when on the CPU."""
    if device.type != "cpu":
        yield lists
        return
    group: tuple[list[torch.Tensor], ...] = tuple([] for _ in lists)
    size = 0
    for tensors in zip(*lists):
        if not all(tensor.is_contiguous() for tensor in tensors):  # a flat view needs contiguous memory
            for views, tensor in zip(group, tensors):
                views.append(tensor)
            size += tensors[0].numel()
            continue
        for start in range(0, tensors[0].numel(), CPU_SLICE):
            for views, tensor in zip(group, tensors):
                views.append(tensor.view(-1)[start:start + CPU_SLICE])
            size += group[0][-1].numel()
            if size >= CPU_SLICE:
                yield group
                group, size = tuple([] for _ in lists), 0
    if group[0]:
        yield group


class AdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # validate here rather than in __init__ so per-group overrides are checked too
        hp = {**self.defaults, **param_group}
        if not hp["lr"] >= 0.0:
            raise ValueError(f"Invalid learning rate: {hp['lr']} (must be >= 0)")
        if not hp["eps"] >= 0.0:
            raise ValueError(f"Invalid epsilon: {hp['eps']} (must be >= 0)")
        for i, beta in enumerate(hp["betas"]):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} (must be in [0, 1))")
        if not hp["weight_decay"] >= 0.0:
            raise ValueError(f"Invalid weight_decay: {hp['weight_decay']} (must be >= 0)")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            # Bucket by (device, dtype, step): foreach kernels want uniform tensor lists and a
            # shared step count lets the bias correction be one host-side float per bucket.
            # In normal training every param of a group has the same step, so there is one bucket.
            buckets: dict[tuple, tuple[list, list, list, list]] = defaultdict(lambda: ([], [], [], []))
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients, please consider SparseAdam instead")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params, grads, exp_avgs, exp_avg_sqs = buckets[(p.device, p.dtype, int(state["step"]))]
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])

            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for (device, _, t), (params, grads, exp_avgs, exp_avg_sqs) in buckets.items():
                # mul+add rather than lerp keeps the definition's rounding, so we match it bit for bit
                torch._foreach_mul_(exp_avgs, beta1)
                torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
                torch._foreach_mul_(exp_avg_sqs, beta2)
                torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
                step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) if group["correct_bias"] else lr
                for param_slice, exp_avg_slice, exp_avg_sq_slice in slices(device, params, exp_avgs, exp_avg_sqs):
                    denom = torch._foreach_sqrt(exp_avg_sq_slice)
                    torch._foreach_add_(denom, eps)
                    torch._foreach_addcdiv_(param_slice, exp_avg_slice, denom, value=-step_size)
                if wd != 0.0:
                    # not mul_(1 - lr*wd): rounding that factor to float32 would skew a ~1e-5 decay by up to ~0.3%
                    torch._foreach_add_(params, params, alpha=-lr * wd)
        return loss
