"""LoRA: fine-tune a frozen GPT-2 through small low-rank updates to chosen linear layers; optionally DoRA,
which also learns each output unit's weight norm."""
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# Attribute names of GPT-2's linear layers: attention projections, attention output, feed-forward.
LORA_TARGETS = ("query", "key", "value", "dense", "interm_dense", "out_dense")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable rank-`rank` update:
    y = base(x) + dropout(x) @ A^T @ B^T * (alpha / rank)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        # Dividing by rank lets one alpha (and learning rate) work across ranks.
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        # B starts at zero so the wrapped layer computes exactly what the base layer did.
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.low_rank_update(x)

    def low_rank_update(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The weight this layer computes with, `W0 + scale * B A`, in float32: summing in float32 keeps a
        bfloat16 base from rounding the small update away twice."""
        delta = self.lora_B.float() @ self.lora_A.float()
        return self.base.weight.float() + self.scale * delta

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with the update folded into its weight: no extra cost at inference."""
        base = self.base
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(self.merged_weight())
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged.requires_grad_(base.weight.requires_grad)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout.p}"


class DoRALinear(LoRALinear):
    """DoRA (Liu et al., 2024): LoRA's updated weight `V = W0 + scale * B A` split into a direction and a
    trainable magnitude, `W' = m * V / ||V||`, where `||V||` is the L2 norm of each output unit's weight row
    and `m` starts at `||W0||`, so the wrapped layer starts out computing what the base layer did.

    The forward pass works on activations rather than building W'. Without dropout (or in eval mode) it is
    exactly `x @ W'^T + bias = s * (x @ W0^T + scale * x @ A^T @ B^T) + bias`, with `s = m / ||V||`. With
    dropout it follows PEFT: the base layer sees `x`, and the magnitude's correction of it and the low-rank
    path see the dropped input `d`: `y = x @ W0^T + bias + (s - 1) * d @ W0^T + s * scale * d @ A^T @ B^T`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__(base, rank, alpha, dropout)
        norms = _row_norms(self.base.weight.float()).to(self.base.weight.dtype)
        # Named "lora_" like the factors: callers pick out adapter parameters by that prefix.
        self.lora_magnitude = nn.Parameter(norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = self.dropout(x)
        low_rank = F.linear(F.linear(dropped, self.lora_A), self.lora_B) * self.scale
        base = F.linear(x, self.base.weight)
        # Cast the float32 rescaling so that under autocast the layer returns what nn.Linear would.
        rescale = self.magnitude_scale().to(base.dtype)
        if self.training and self.dropout.p > 0:  # a second product with W0, for the dropped input's correction
            out = base + (rescale - 1) * F.linear(dropped, self.base.weight) + rescale * low_rank
        else:
            out = rescale * (base + low_rank)
        return out if self.base.bias is None else out + self.base.bias.to(out.dtype)

    def magnitude_scale(self) -> torch.Tensor:
        """`m / ||V||` per output unit, `[out]`. As in the paper, `||V||` is a constant to backprop: no
        gradient flows through the norm, so the `[out, in]` weight V is never kept for the backward pass."""
        with torch.no_grad():
            norms = _row_norms(super().merged_weight())
        return self.lora_magnitude / norms

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """`W' = m * V / ||V||`, in float32."""
        return self.magnitude_scale()[:, None] * super().merged_weight()


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output unit's weights: `nn.Linear` stores its weight as `[out, in]`."""
    return torch.linalg.vector_norm(weight, dim=1)


def _replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, module)


def apply_lora(model: nn.Module, targets: Iterable[str], rank: int = 8, alpha: float = 16,
               dropout: float = 0.05, dora: bool = False) -> list[str]:
    """Wrap every `nn.Linear` whose attribute name is in `targets` in a `LoRALinear` (a `DoRALinear` if
    `dora`), then freeze every parameter except the adapters' own (`lora_A`, `lora_B`, DoRA's
    `lora_magnitude`); callers unfreeze their own head afterwards. Returns the names of the wrapped
    modules."""
    targets = set(targets)
    unknown = targets - set(LORA_TARGETS)
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be a non-empty subset of {', '.join(LORA_TARGETS)}; "
                         f"got {sorted(targets)}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    # Collect first: replacing modules while named_modules() walks them would skip or revisit some.
    chosen = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name.rpartition(".")[2] in targets]
    if not chosen:
        raise ValueError(f"no unwrapped nn.Linear named {sorted(targets)} found in {type(model).__name__}")
    wrapper = DoRALinear if dora else LoRALinear
    for name in chosen:
        _replace_module(model, name, wrapper(model.get_submodule(name), rank, alpha, dropout))
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            # A wrapper's own parameters are exactly its adapter; the base layer's sit one level down.
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)
    return chosen


def merge_lora(model: nn.Module) -> None:
    """Replace every `LoRALinear` (`DoRALinear` included) in `model` by its merged `nn.Linear`, restoring
    the original module (and state-dict) names."""
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name in wrapped:
        _replace_module(model, name, model.get_submodule(name).merged())
