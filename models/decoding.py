"""Greedy decoding with and without the key/value cache."""
import torch

from models.gpt2 import GPT2Model


@torch.no_grad()
def greedy_decode(model: GPT2Model, input_ids: torch.Tensor, max_new_tokens: int,
                  attention_mask: torch.Tensor | None = None, use_cache: bool = True) -> torch.Tensor:
    """Append `max_new_tokens` argmax tokens to each prompt (prompts of unequal length are left-padded).
    With the cache each step feeds only the newest token; without it every step recomputes the prefix."""
    cache = model.new_cache(input_ids.size(1) + max_new_tokens) if use_cache else None
    tokens, step_input = input_ids, input_ids
    for _ in range(max_new_tokens):
        hidden = model(step_input if use_cache else tokens, attention_mask, cache)["last_hidden_state"]
        next_token = model.hidden_state_to_token(hidden[:, -1]).argmax(dim=-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)
        step_input = next_token
    return tokens
