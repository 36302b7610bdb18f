"""Batched decoding over left-padded prompts with the key/value cache: greedy, sampling, beam and
contrastive search, with repetition and line-length controls."""
from dataclasses import dataclass

import torch

from config import END_OF_TEXT_ID, FREE, require, require_range, setting
from models.gpt2 import GPT2Model

STRATEGIES = ("greedy", "sample", "beam", "contrastive")
PAD_ID = END_OF_TEXT_ID  # fills the rows that have stopped


@dataclass(frozen=True)
class DecodingConfig:
    """How each new token is chosen, and when generation stops. The fields are also the decoding flags of
    sonnet_generation.py; changing them never changes training, so `--resume` accepts new values."""
    strategy: str = setting("greedy", "decoding strategy", choices=STRATEGIES, on_resume=FREE)
    temperature: float = setting(1.0, "divides the logits before sampling", on_resume=FREE)
    top_k: int = setting(0, "sample from the k likeliest tokens; 0: no top-k filter", on_resume=FREE)
    top_p: float = setting(1.0, "sample from the smallest set of tokens whose probability reaches p",
                           on_resume=FREE)
    repetition_penalty: float = setting(1.0, "CTRL-style penalty on tokens already in the prompt or output; "
                                             "1: off", on_resume=FREE)
    no_repeat_ngram: int = setting(0, "forbid repeating any n-gram of this size; 0: off", on_resume=FREE)
    num_beams: int = setting(4, "beams of beam search", on_resume=FREE)
    length_penalty: float = setting(1.0, "beam score = sum of log-probabilities / length ** this",
                                    on_resume=FREE)
    contrastive_alpha: float = setting(0.6, "contrastive search: weight of the degeneration penalty",
                                       on_resume=FREE)
    contrastive_k: int = setting(4, "contrastive search: candidates per step", on_resume=FREE)
    max_new_tokens: int = setting(128, "most tokens generated per prompt", on_resume=FREE)
    max_lines: int = setting(0, "stop a row right after its max_lines-th line break; 0: off", on_resume=FREE)
    line_end_nudge: float = setting(0.0, "logit bonus for punctuation and line breaks once a line has "
                                         "--line_length tokens", on_resume=FREE)
    line_length: int = setting(12, "tokens in a line before --line_end_nudge applies", on_resume=FREE)

    def __post_init__(self) -> None:
        require(self, "strategy", self.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}")
        require_range(self, "temperature", 0, low_open=True)
        require_range(self, "top_p", 0, 1, low_open=True)
        require_range(self, "repetition_penalty", 0, low_open=True)
        require_range(self, "length_penalty")
        require_range(self, "contrastive_alpha", 0, 1)
        require_range(self, "line_end_nudge", 0)
        for name in ("top_k", "no_repeat_ngram", "max_lines"):
            require_range(self, name, 0)
        for name in ("num_beams", "contrastive_k", "max_new_tokens", "line_length"):
            require_range(self, name, 1)


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


@torch.no_grad()
def generate(model: GPT2Model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
             config: DecodingConfig, generator: torch.Generator | None = None,
             line_break_ids: list[int] | tuple[int, ...] = (),
             line_end_ids: list[int] | tuple[int, ...] = ()) -> list[list[int]]:
    """New tokens for each left-padded prompt, without the prompt, ending right after the stopping line
    break when `config.max_lines` stopped the row. `generator` makes sampling reproducible."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    decoder = Decoder(model, config, list(line_break_ids), list(line_end_ids), input_ids.size(1))
    if config.strategy == "beam":
        return decoder.beam_search(input_ids, attention_mask)
    if config.strategy == "contrastive":
        generated = decoder.contrastive_search(input_ids, attention_mask)
    else:
        generated = decoder.sample(input_ids, attention_mask, generator)
    return [decoder.cut_at_last_line(row) for row in generated.tolist()]


class Decoder:
    """The decoding loops of one `generate` call; rows are `[R, prompt_len + generated]` token tensors."""

    def __init__(self, model: GPT2Model, config: DecodingConfig, line_break_ids: list[int],
                 line_end_ids: list[int], prompt_len: int):
        self.model, self.config, self.prompt_len = model, config, prompt_len
        self.line_break_ids, self.line_end_ids = line_break_ids, line_end_ids
        self.max_len = prompt_len + config.max_new_tokens

    # --- the strategies ---

    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
        """Greedy or sampled decoding; returns the `[B, generated]` new tokens, stopped rows padded."""
        cache = self.model.new_cache(self.max_len)
        hidden = self.model(input_ids, attention_mask, cache)["last_token"]
        tokens, mask = input_ids, attention_mask
        done = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
        for _ in range(self.config.max_new_tokens):
            logits = self.adjusted_logits(hidden, tokens, mask)
            next_token = self.choose(logits, generator).masked_fill(done, PAD_ID)
            tokens, mask = append(tokens, mask, next_token)
            done |= self.stopped(tokens)
            if done.all():
                break
            hidden = self.model(next_token[:, None], mask, cache)["last_token"]
        return tokens[:, self.prompt_len:]

    def contrastive_search(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Su et al. (2022): among the k likeliest tokens choose the one maximising
        (1 - alpha) * p - alpha * (max cosine similarity of its hidden state to the row's earlier ones).
        The cache holds k copies of every row so one batched step scores all k candidates; the copies
        then all take the cache of the chosen candidate."""
        k, alpha = self.config.contrastive_k, self.config.contrastive_alpha
        batch = input_ids.size(0)
        cache = self.model.new_cache(self.max_len)
        out = self.model(input_ids.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0), cache)
        history, hidden = out["last_hidden_state"][::k], out["last_token"][::k]
        tokens, mask = input_ids, attention_mask
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        rows = torch.arange(batch, device=input_ids.device)
        for _ in range(self.config.max_new_tokens):
            probs = self.adjusted_logits(hidden, tokens, mask).softmax(dim=-1)
            top_probs, top_ids = probs.topk(k, dim=-1)
            step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1).repeat_interleave(k, 0)
            candidates = self.model(top_ids.reshape(-1, 1), step_mask, cache)["last_token"].view(batch, k, -1)
            degeneration = max_cosine_similarity(candidates, history, mask.bool())
            best = ((1 - alpha) * top_probs - alpha * degeneration).argmax(dim=-1)
            for layer in cache:
                layer.reorder((rows * k + best).repeat_interleave(k))
            hidden = candidates[rows, best]
            history = torch.cat([history, hidden[:, None]], dim=1)
            next_token = top_ids[rows, best].masked_fill(done, PAD_ID)
            tokens, mask = append(tokens, mask, next_token)
            done |= self.stopped(tokens)
            if done.all():
                break
        return tokens[:, self.prompt_len:]

    def beam_search(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
        """Beam search over `B * num_beams` rows (prompt b owns rows b*K .. b*K+K-1) sharing one cache.
        A hypothesis ends at its max_lines-th line break or at max_new_tokens; the best by
        sum of log-probabilities / length ** length_penalty is returned for each prompt."""
        beams, device = self.config.num_beams, input_ids.device
        batch = input_ids.size(0)
        tokens, mask = input_ids.repeat_interleave(beams, 0), attention_mask.repeat_interleave(beams, 0)
        cache = self.model.new_cache(self.max_len)
        hidden = self.model(tokens, mask, cache)["last_token"]
        # The K copies of a prompt are identical: only the first may expand, or each hypothesis would appear K times.
        scores = torch.full((batch, beams), float("-inf"), device=device)
        scores[:, 0] = 0.0
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
        searching = [True] * batch
        for step in range(self.config.max_new_tokens):
            logprobs = self.adjusted_logits(hidden, tokens, mask).log_softmax(dim=-1)
            totals = (scores.view(-1, 1) + logprobs).view(batch, -1)
            # 2K candidates leave K to continue even if K of them finish now.
            top_scores, top_ids = totals.topk(2 * beams, dim=-1)
            sources, next_tokens, scores = self.select_beams(
                top_scores, top_ids, logprobs.size(-1), tokens, finished, searching, length=step + 1)
            order = sources.view(-1).to(device)
            for layer in cache:
                layer.reorder(order)
            tokens, mask = append(tokens[order], mask[order], next_tokens.view(-1).to(device))
            scores = scores.to(device)
            if not any(searching):
                break
            hidden = self.model(tokens[:, -1:], mask, cache)["last_token"]
        self.close_open_beams(tokens, scores, finished, searching)
        return [max(hypotheses, key=lambda h: h[0])[1] for hypotheses in finished]

    # --- beam bookkeeping ---

    def select_beams(self, top_scores: torch.Tensor, top_ids: torch.Tensor, vocab_size: int,
                     tokens: torch.Tensor, finished: list[list[tuple[float, list[int]]]],
                     searching: list[bool], length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each prompt still searching, move candidates that end a hypothesis into `finished` and keep
        the best K others as the next beams: (source row, new token, score), each `[B, K]`. Prompts no
        longer searching keep their rows, fed padding at score -inf."""
        batch, beams = len(searching), self.config.num_beams
        sources = torch.arange(batch * beams).view(batch, beams)
        next_tokens = torch.full((batch, beams), PAD_ID)
        next_scores = torch.full((batch, beams), float("-inf"))
        lines = self.line_state(tokens[:, self.prompt_len:])[0].tolist()
        for b in range(batch):
            if not searching[b]:
                continue
            kept = 0
            for score, index in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                if kept == beams or score == float("-inf"):
                    break
                row, token = b * beams + index // vocab_size, index % vocab_size
                if self.ends_row(token, lines[row]):
                    hypothesis = tokens[row, self.prompt_len:].tolist() + [token]
                    finished[b].append((score / length ** self.config.length_penalty, hypothesis))
                else:
                    sources[b, kept], next_tokens[b, kept], next_scores[b, kept] = row, token, score
                    kept += 1
            searching[b] = self.may_improve(finished[b], next_scores[b, 0].item(), length)
        return sources, next_tokens, next_scores

    def ends_row(self, token: int, lines_so_far: int) -> bool:
        limit = self.config.max_lines
        return limit > 0 and token in self.line_break_ids and lines_so_far + 1 >= limit

    def may_improve(self, finished: list[tuple[float, list[int]]], best_open: float, length: int) -> bool:
        """Keep searching until K hypotheses have finished and the best open beam, scored at its current
        length, is no better than the K-th best of them (the usual heuristic: it is not an exact bound)."""
        if best_open == float("-inf"):
            return False
        beams = self.config.num_beams
        if len(finished) < beams:
            return True
        kth_best = sorted((score for score, _ in finished), reverse=True)[beams - 1]
        return best_open / length ** self.config.length_penalty > kth_best

    def close_open_beams(self, tokens: torch.Tensor, scores: torch.Tensor,
                         finished: list[list[tuple[float, list[int]]]], searching: list[bool]) -> None:
        """Beams still open when the token budget ran out are hypotheses too."""
        generated = tokens[:, self.prompt_len:]
        normaliser = generated.size(1) ** self.config.length_penalty
        beams = self.config.num_beams
        for b, still_open in enumerate(searching):
            for k, score in enumerate(scores[b].tolist()):
                if still_open and score > float("-inf"):
                    finished[b].append((score / normaliser, generated[b * beams + k].tolist()))

    # --- shared pieces ---

    def adjusted_logits(self, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits `[R, V]` after the repetition and line-length controls, in float32."""
        logits = self.model.hidden_state_to_token(hidden).float()
        config = self.config
        if config.repetition_penalty != 1.0:
            logits = penalise_repeats(logits, tokens, mask, config.repetition_penalty)
        if config.no_repeat_ngram > 0:
            logits = ban_repeated_ngrams(logits, tokens, mask, config.no_repeat_ngram)
        if config.line_end_nudge and self.line_end_ids:
            line_len = self.line_state(tokens[:, self.prompt_len:])[1]
            bonus = torch.zeros_like(logits[0])
            bonus[self.line_end_ids] = config.line_end_nudge
            logits = logits + (line_len >= config.line_length)[:, None] * bonus
        return logits

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.config.strategy == "greedy":
            return logits.argmax(dim=-1)
        probs = sampling_distribution(logits, self.config.temperature, self.config.top_k, self.config.top_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def line_state(self, generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: line breaks generated so far, and tokens since the last one (or since the start)."""
        breaks = torch.isin(generated, torch.tensor(self.line_break_ids, dtype=generated.dtype,
                                                    device=generated.device))
        positions = torch.arange(1, generated.size(1) + 1, device=generated.device)
        # A zero column stands for "no break yet" and keeps the max defined before the first token.
        no_break = torch.zeros(generated.size(0), 1, dtype=torch.long, device=generated.device)
        last_break_end = torch.cat([no_break, breaks * positions], dim=1).amax(dim=1)
        return breaks.sum(dim=1), generated.size(1) - last_break_end

    def stopped(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.max_lines == 0:
            return torch.zeros(tokens.size(0), dtype=torch.bool, device=tokens.device)
        return self.line_state(tokens[:, self.prompt_len:])[0] >= self.config.max_lines

    def cut_at_last_line(self, generated: list[int]) -> list[int]:
        """Drop what follows the max_lines-th line break (the padding of a stopped row)."""
        if self.config.max_lines == 0:
            return generated
        lines = 0
        for i, token in enumerate(generated):
            lines += token in self.line_break_ids
            if lines == self.config.max_lines:
                return generated[:i + 1]
        return generated


def append(tokens: torch.Tensor, mask: torch.Tensor, next_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([tokens, next_token[:, None]], dim=1), torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)


def penalise_repeats(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on every token already in the row: positive logits divided, negative multiplied,
    so the token always becomes less likely. Padding does not count as seen."""
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
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # A token is dropped once the likelier ones already reach top_p; the likeliest always stays.
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(outside, float("-inf")))
    return logits.softmax(dim=-1)


def max_cosine_similarity(candidates: torch.Tensor, history: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """`[B, k]`: each candidate's highest cosine similarity to the row's earlier hidden states
    (`history` `[B, L, H]`, of which `real` `[B, L]` marks the non-padding ones)."""
    candidates = torch.nn.functional.normalize(candidates.float(), dim=-1)
    history = torch.nn.functional.normalize(history.float(), dim=-1)
    similarity = candidates @ history.transpose(1, 2)  # [B, k, L]
    return similarity.masked_fill(~real[:, None, :], float("-inf")).amax(dim=-1)
