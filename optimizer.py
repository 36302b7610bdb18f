"""AdamW with decoupled weight decay, as defined for the CS224N GPT-2 assignment.

Per parameter p with gradient g at step t (starting at 1):

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)   (just lr if not correct_bias)
    p = p - step_size * m / (sqrt(v) + eps)
    p = p - lr * weight_decay * p                        (decay of the *updated* p)

Unlike torch.optim.AdamW, weight decay is applied after the Adam update (torch: before)
and eps is added to the uncorrected sqrt(v) (torch: to sqrt(v / (1 - beta2^t))).

The update runs in PyTorch's fused AdamW kernel, one pass over each parameter's memory on CPU and GPU,
with its hyper-parameters chosen so that it computes the definition above. The kernel computes

    p = p - (lr_k / bc1) * m / (sqrt(v) / sqrt(bc2) + eps_k)        (bc_i = 1 - beta_i^t)

so lr_k = step_size * bc1 / sqrt(bc2) and eps_k = eps / sqrt(bc2) give step_size * m / (sqrt(v) + eps)
exactly in real arithmetic (float32 rounding differs from the eager definition by an ulp here and there).
The kernel's own weight decay comes before the update: p = p - lr_k * wd_k * p. On CUDA it is computed in
double precision, so lr_k scaled by (1 - lr * wd) and wd_k = lr * wd / lr_k make it the decay of the updated p
in the same pass. On CPU the kernel multiplies p by (1 - lr_k * wd_k) rounded to float32 instead, which skews
every element's decay the same way (lr * wd = 1e-7 would decay 19% too much), so there the decay is a second
pass, as defined, and only when weight_decay is not 0.
"""

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import ParamsT


def in_layout_of(param: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, laid out in memory as `param` is: the fused kernel walks each tensor's memory in order, so a
    transposed parameter with a contiguous gradient would pair the wrong elements."""
    return tensor if tensor.stride() == param.stride() else torch.empty_like(param).copy_(tensor)


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

        # Parameters whose hyper-parameters and step agree share one kernel call, whichever group they are in.
        buckets: dict[tuple, tuple[list, list, list, list]] = defaultdict(lambda: ([], [], [], []))
        for group in self.param_groups:
            settings = (group["lr"], *group["betas"], group["eps"], group["weight_decay"], group["correct_bias"])
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
                for name in ("exp_avg", "exp_avg_sq"):  # e.g. loaded from a state dict as contiguous tensors
                    state[name] = in_layout_of(p, state[name])
                params, grads, exp_avgs, exp_avg_sqs = buckets[(p.device, p.dtype, int(state["step"]), *settings)]
                params.append(p)
                grads.append(in_layout_of(p, p.grad))
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])

        for (device, _, t, lr, beta1, beta2, eps, wd, correct_bias), tensors in buckets.items():
            params, grads, exp_avgs, exp_avg_sqs = tensors
            bc1, root_bc2 = 1 - beta1**t, math.sqrt(1 - beta2**t)
            step_size = lr * root_bc2 / bc1 if correct_bias else lr
            decay = lr * wd
            decay_in_kernel = device.type == "cuda" and 0.0 < decay < 1.0  # see the module docstring
            kernel_lr = step_size * bc1 / root_bc2 * (1.0 - decay if decay_in_kernel else 1.0)
            # the kernel reads t from a tensor on the parameters' device: made there, so no copy from the host
            step = torch.full((), float(t), dtype=torch.float32, device=device)
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params), lr=kernel_lr,
                                beta1=beta1, beta2=beta2, weight_decay=decay / kernel_lr if decay_in_kernel else 0.0,
                                eps=eps / root_bc2, amsgrad=False, maximize=False)
            if decay != 0.0 and not decay_in_kernel:
                # not mul_(1 - decay): rounding that factor would skew a small decay (see the module docstring)
                torch._foreach_add_(params, params, alpha=-decay)
        return loss
