"""What a decoding step does to the next-token logits (beam search: log-probabilities) before it picks: the
repetition penalty, banned repeated n-grams, temperature with top-k and top-p (nucleus) filtering, and contrastive
search's degeneration penalty. Each works on a batch of rows at once, on the device."""
import torch
import torch.nn.functional as F

NUCLEUS_HEAD = 256  # on the CPU top-p first looks at this many likeliest tokens, and sorts only rows they don't settle


def penalise_repeats(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on every token already in the row: positive scores divided, negative multiplied, so the
    token always becomes less likely; `logits` may be log-probabilities (beam search), all multiplied. Padding
    does not count as seen."""
    seen = torch.zeros_like(logits).scatter_add_(1, tokens, mask.to(logits.dtype)) > 0
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def ban_repeated_ngrams(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid each token that would complete an n-gram already present in the row's real tokens."""
    length = tokens.size(1)
    if length < n:
        return logits
    windows = tokens.unfold(1, n, 1)  # [R, W, n]
    real_windows = mask.bool().unfold(1, n, 1).all(dim=-1)
    prefix = tokens[:, length - n + 1:]  # the n - 1 tokens the next one extends
    prefix_real = mask[:, length - n + 1:].bool().all(dim=-1)
    matches = (windows[:, :, :-1] == prefix[:, None]).all(dim=-1) & real_windows & prefix_real[:, None]
    # scatter_add, not scatter: the same token may be hit by matching and non-matching windows.
    banned = torch.zeros_like(logits).scatter_add_(1, windows[:, :, -1], matches.to(logits.dtype)) > 0
    return logits.masked_fill(banned, float("-inf"))


def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Probabilities after temperature, top-k and nucleus (top-p) filtering."""
    logits = logits / temperature
    if top_k > 0:
        kth_largest = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p < 1.0:
        logits = logits.masked_fill(logits < nucleus_floor(logits, top_p), float("-inf"))
    return logits.softmax(dim=-1)


def nucleus_floor(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """`[R, 1]`: the smallest logit top-p keeps in each row. Tokens taken likeliest first stay while the ones
    before them hold less than top_p of the probability; tokens tied with the last one kept stay too.
    On the CPU the NUCLEUS_HEAD likeliest tokens settle most rows and only the others are sorted whole (its
    cumsum adds in order, so both give the same sums). A GPU sorts every row: choosing rows would wait for it."""
    probs = logits.softmax(dim=-1)
    if logits.device.type != "cpu":
        return nucleus_cut(*descending(logits, probs), top_p)[0]
    floor, settled = nucleus_cut(*descending(logits, probs, NUCLEUS_HEAD), top_p)
    unsettled = ~settled
    if unsettled.any():
        floor[unsettled] = nucleus_cut(*descending(logits[unsettled], probs[unsettled]), top_p)[0]
    return floor


def descending(logits: torch.Tensor, probs: torch.Tensor, head: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's logits in descending order with their probabilities: all of them, or the `head` largest."""
    if head is None or head >= logits.size(-1):
        values, ids = logits.sort(dim=-1, descending=True)
    else:
        values, ids = logits.topk(head, dim=-1)
    return values, probs.gather(1, ids)


def nucleus_cut(logits: torch.Tensor, probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For the likeliest logits of each row in descending order, with their probabilities: the smallest one
    top-p keeps `[R, 1]`, and whether their mass reaches top_p `[R]`, which settles that no later one is kept."""
    mass = probs.cumsum(dim=-1)
    # Token i + 1 stays while the mass up to token i is below top_p; the likeliest always stays.
    kept = 1 + (mass[:, :-1] < top_p).sum(dim=-1, keepdim=True)
    return logits.gather(1, kept - 1), mass[:, -1] >= top_p


def degeneration_penalty(candidates: torch.Tensor, history: torch.Tensor, real: torch.Tensor,
                         reduction: str) -> torch.Tensor:
    """`[B, k]`: the max or the mean of each candidate's cosine similarities to the row's earlier hidden states
    (`history` `[B, L, H]`, of which `real` `[B, L]` marks the non-padding ones). The max punishes a candidate
    close to any one earlier token; the mean, one close to the text as a whole."""
    candidates = F.normalize(candidates.float(), dim=-1)
    history = F.normalize(history.float(), dim=-1)
    similarity = candidates @ history.transpose(1, 2)  # [B, k, L]
    real = real[:, None, :]
    if reduction == "max":
        return similarity.masked_fill(~real, float("-inf")).amax(dim=-1)
    return similarity.masked_fill(~real, 0.0).sum(dim=-1) / real.sum(dim=-1)
