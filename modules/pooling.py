"""Pool GPT-2's per-token hidden states into one vector per sequence for a classification head."""
import torch
from torch import nn

POOLING = ("last", "mean", "max", "attention", "mix")


class Pooler(nn.Module):
    """`last`: the last real token's state. `mean` / `max`: over real tokens. `attention`: a weighted sum
    of real tokens, weighted by a softmax of a learned score of each token. `mix`: `w * mean + (1 - w) * last`
    with `w = sigmoid(mix_logit)`, a learned scalar starting at an even mix."""

    def __init__(self, hidden_size: int, method: str):
        super().__init__()
        if method not in POOLING:
            raise ValueError(f"pooling must be one of {', '.join(POOLING)}, got {method!r}")
        self.method = method
        self.score = nn.Linear(hidden_size, 1) if method == "attention" else None
        # A logit rather than w itself: the sigmoid keeps the mix convex, so the pooled vector stays on the
        # scale of the token states whatever the optimizer does.
        self.mix_logit = nn.Parameter(torch.zeros(())) if method == "mix" else None

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                last_token: torch.Tensor) -> torch.Tensor:
        """`hidden` is `[B, T, H]`, `attention_mask` `[B, T]` with 1 for real tokens (None: all real),
        `last_token` `[B, H]`. Returns `[B, H]`."""
        if self.method == "last":
            return last_token
        real = self.real_tokens(hidden, attention_mask)
        # Fill rather than multiply by the mask: 0 * nan is nan, and pad states are never to be read.
        if self.method == "max":
            return hidden.masked_fill(~real[..., None], float("-inf")).amax(dim=1)
        real_hidden = hidden.masked_fill(~real[..., None], 0.0)
        if self.method == "attention":
            weights = self.attention_weights(hidden, attention_mask)
            return (weights[..., None] * real_hidden).sum(dim=1)
        counts = real.sum(dim=1, keepdim=True).clamp(min=1)
        mean = real_hidden.sum(dim=1) / counts.to(hidden.dtype)
        if self.method == "mean":
            return mean
        weight = torch.sigmoid(self.mix_logit).to(hidden.dtype)
        return weight * mean + (1 - weight) * last_token

    def attention_weights(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`[B, T]` softmax weights of the attention pooling: they sum to 1 over each row's real tokens
        and are 0 at pads."""
        if self.score is None:
            raise ValueError(f"{self.method!r} pooling has no attention weights")
        real = self.real_tokens(hidden, attention_mask)
        scores = self.score(hidden).squeeze(-1).masked_fill(~real, float("-inf"))
        # Softmax in float32: under autocast the scores may be bfloat16.
        return scores.float().softmax(dim=-1).to(hidden.dtype)

    @staticmethod
    def real_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return attention_mask.bool()
