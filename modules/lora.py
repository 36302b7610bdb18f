"""LoRA: fine-tune a frozen GPT-2 through small low-rank updates to chosen linear layers."""
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
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with the update folded into its weight: no extra cost at inference."""
        base = self.base
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        # Sum in float32 so a bfloat16 base does not round the small update away twice.
        delta = self.lora_B.float() @ self.lora_A.float()
        merged.weight.copy_(base.weight.float() + self.scale * delta)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged.requires_grad_(base.weight.requires_grad)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout.p}"


def _replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, module)


def apply_lora(model: nn.Module, targets: Iterable[str], rank: int = 8, alpha: float = 16,
               dropout: float = 0.05) -> list[str]:
    """Wrap every `nn.Linear` whose attribute name is in `targets` in a `LoRALinear`, then freeze every
    parameter except the LoRA factors; callers unfreeze their own head afterwards. Returns the names of
    the wrapped modules."""
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
    for name in chosen:
        _replace_module(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_A.requires_grad_(True)
            module.lora_B.requires_grad_(True)
    return chosen


def merge_lora(model: nn.Module) -> None:
    """Replace every `LoRALinear` in `model` by its merged `nn.Linear`, restoring the original module
    (and state-dict) names."""
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name in wrapped:
        _replace_module(model, name, model.get_submodule(name).merged())
