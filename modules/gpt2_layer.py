"""GPT-2's pre-LayerNorm transformer block."""
import torch
import torch.nn.functional as F
from torch import nn

from config import GPT2Config
from modules.attention import CausalSelfAttention, KVCache


class FeedForward(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.interm_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.out_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's GELU is the tanh approximation ("gelu_new"); torch fuses it into one kernel.
        return self.out_dense(F.gelu(self.interm_dense(x), approximate="tanh"))


class GPT2Layer(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.attention_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attention = CausalSelfAttention(config)
        self.out_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.residual_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.residual_dropout(self.self_attention(self.attention_layer_norm(x), mask, cache))
        return x + self.residual_dropout(self.feed_forward(self.out_layer_norm(x)))
