"""Causal multi-head self-attention with a key/value cache for decoding."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from config import GPT2Config


class KVCache:
    """One layer's keys and values, preallocated to `max_len` so each decoding step writes in place
    instead of concatenating the whole prefix again."""

    def __init__(self, max_len: int, prefix: tuple[torch.Tensor, torch.Tensor] | None = None):
        """`prefix`: prefix-tuning keys and values, `[heads, P, head_size]` each, that every row sees
        before its tokens; they take P positions beyond `max_len` and count in `length`."""
        self.prefix = prefix
        self.prefix_length = 0 if prefix is None else prefix[0].size(1)
        self.max_len = max_len + self.prefix_length
        self.length = self.prefix_length
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `[B, heads, T, head_size]` keys and values; return all stored so far."""
        end = self.length + keys.size(2)
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len - self.prefix_length} tokens; "
                             f"{end - self.prefix_length} were asked for")
        if self.keys is None:  # allocated on first use, in the dtype autocast produced
            shape = (keys.size(0), keys.size(1), self.max_len, keys.size(3))
            self.keys = keys.new_empty(shape)
            self.values = values.new_empty(shape)
            if self.prefix is not None:  # the same prefix for every row; gradients reach it through the copy
                self.keys[:, :, :self.prefix_length] = self.prefix[0].to(keys.dtype)
                self.values[:, :, :self.prefix_length] = self.prefix[1].to(values.dtype)
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reorder(self, indices: torch.Tensor) -> None:
        """Make row i hold what row `indices[i]` held, in place: beam and contrastive search keep the
        cache of the hypothesis each row continues. Only the filled positions are copied."""
        if self.keys is None:
            return
        filled = slice(0, self.length)
        self.keys[:, :, filled] = self.keys[:, :, filled].index_select(0, indices)
        self.values[:, :, filled] = self.values[:, :, filled].index_select(0, indices)


def causal_mask(num_queries: int, num_keys: int, device: torch.device) -> torch.Tensor:
    """`[T, S]` boolean mask; the T queries are the last T of the S key positions."""
    full = torch.ones(num_queries, num_keys, dtype=torch.bool, device=device)
    return full.tril(diagonal=num_keys - num_queries)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.use_sdpa = config.attn_implementation == "sdpa"

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """`x` is `[B, T, H]`. `mask` is a `[B, 1, T, S]` boolean of the keys each query may attend to,
        or None for the plain causal mask. With a cache, S counts the cached tokens too."""
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        # Keys before these queries, as a Python int: without a cache 0, so the attention path is decided in
        # Python and never from a (under torch.compile symbolic) shape.
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        attend = self.sdpa_attention if self.use_sdpa else self.eager_attention
        y = attend(q, k, v, mask, past)
        batch, _, seq_len, _ = y.shape
        return self.dense(y.transpose(1, 2).reshape(batch, seq_len, -1))

    def eager_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None, past: int = 0) -> torch.Tensor:
        """The attention math written out; `sdpa_attention` must give the same result. `past`: how many of
        the keys come before the queries (cached tokens)."""
        if mask is None:
            mask = causal_mask(q.size(2), k.size(2), q.device)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.dropout(scores.softmax(dim=-1), self.dropout_prob, self.training)
        return probs @ v

    def sdpa_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | None, past: int = 0) -> torch.Tensor:
        """Fused attention; with no mask it can use the flash kernels. `past`: how many of the keys come
        before the queries (cached tokens), a Python int, so that `is_causal` is a plain bool."""
        is_causal = mask is None and past == 0  # the queries are all the keys
        if mask is None and past and q.size(2) > 1:  # a chunk after a cache: causal with an offset
            mask = causal_mask(q.size(2), k.size(2), q.device)
        dropout = self.dropout_prob if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
