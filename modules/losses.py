"""Losses: language-model losses over padded, right-aligned batches, and the regularisers of classification."""
import torch
import torch.nn.functional as F


def language_model_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; `logits` are `[B, T, V]` at every input position. Padding is neither
    predicted nor counted, so adding padding leaves the loss unchanged."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    # Shift the targets, not the logits: the last position predicts nothing, and the logits stay contiguous
    # (slicing them off would copy the largest tensor of the step).
    targets = F.pad(targets, (0, 1), value=-100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def unlikelihood_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token-level unlikelihood (Welleck et al., 2020): at each step, push down the probability of every
    distinct earlier token of the row that is not the next token, -sum log(1 - p(candidate)), so the
    model learns not to repeat itself."""
    context, targets = input_ids[:, :-1], input_ids[:, 1:]
    steps = context.size(1)
    probs = logits[:, :-1].float().softmax(-1)
    # candidate_probs[b, t, j]: the probability, at step t, of the token at earlier position j.
    candidate_probs = probs.gather(-1, context[:, None, :].expand(-1, steps, -1))
    earlier = torch.ones(steps, steps, dtype=torch.bool, device=input_ids.device).tril()
    same = context[:, :, None] == context[:, None, :]
    first_occurrence = ~(same & earlier.tril(-1)).any(-1)  # count each distinct token once
    real = attention_mask[:, :-1].bool()
    candidates = (earlier & (context[:, None, :] != targets[:, :, None]) & first_occurrence[:, None, :]
                  & real[:, None, :] & attention_mask[:, 1:].bool()[:, :, None])
    penalty = -torch.log1p(-candidate_probs.clamp(max=1 - 1e-6)) * candidates
    return penalty.sum() / attention_mask[:, 1:].sum().clamp(min=1)


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """R-Drop's symmetric KL divergence between the class distributions of two dropout passes."""
    p, q = first.float().log_softmax(-1), second.float().log_softmax(-1)
    return (F.kl_div(p, q, log_target=True, reduction="batchmean")
            + F.kl_div(q, p, log_target=True, reduction="batchmean")) / 2


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCSE's contrastive loss: row i of `first` should be most similar (cosine) to row i of `second`."""
    similarity = F.normalize(first.float(), dim=-1) @ F.normalize(second.float(), dim=-1).T / temperature
    return F.cross_entropy(similarity, torch.arange(len(first), device=first.device))
