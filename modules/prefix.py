"""Prefix-tuning (Li and Liang, 2021): trained keys and values that every layer attends to before the
real tokens, while GPT-2's own weights stay frozen."""
import torch
from torch import nn

from config import GPT2Config


class PrefixTuning(nn.Module):
    def __init__(self, config: GPT2Config, length: int):
        super().__init__()
        if length < 1:
            raise ValueError(f"the prefix needs at least one position, got {length}")
        shape = (config.num_hidden_layers, config.num_attention_heads, length, config.head_size)
        self.length = length
        self.keys = nn.Parameter(torch.randn(shape) * config.initializer_range)
        self.values = nn.Parameter(torch.randn(shape) * config.initializer_range)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s prefix keys and values, `[heads, length, head_size]` each."""
        return self.keys[index], self.values[index]


def add_prefix(gpt: nn.Module, length: int) -> None:
    """Freeze `gpt` and give it a trainable prefix of `length` positions in every layer."""
    gpt.requires_grad_(False)
    gpt.prefix = PrefixTuning(gpt.config, length).to(gpt.word_embedding.weight.device)
