"""Batched decoding over left-padded prompts with the key/value cache: greedy, sampling, beam and
contrastive search, with repetition and line-length controls. Every strategy ends a row at <|endoftext|>, as
transformers' `generate` does; the results leave that token out.

The per-token loops keep their work on the device: they read nothing back to the host per token (the host
looks whether every row has stopped only every CHECK_EVERY tokens), and they build no tensor from Python data."""
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from config import END_OF_TEXT_ID
from flags import FREE, require, require_range, setting
from models.gpt2 import GPT2Model
from models.logits_processors import ban_repeated_ngrams, degeneration_penalty, penalise_repeats, sampling_distribution
from modules.attention import KVCache

STRATEGIES = ("greedy", "sample", "beam", "contrastive")
CONTRASTIVE_PENALTIES = ("max", "mean")
# Fills the rows that have stopped; being <|endoftext|>, it also ends a row stopped at --max_lines in the results.
PAD_ID = END_OF_TEXT_ID
CHECK_EVERY = 16  # tokens between the host's looks at whether every row has stopped: each look waits for the device


def decoding_flag(default: object, help: str, **options: object) -> object:
    """A decoding flag: it never changes training, so `--resume` accepts new values, but it changes the text
    generated, so runs that differ in it are compared apart."""
    return setting(default, help, on_resume=FREE, changes_results=True, **options)


@dataclass(frozen=True)
class DecodingConfig:
    """How each new token is chosen, and when generation stops. The fields are also the decoding flags of
    sonnet_generation.py (`decoding_flag`)."""
    strategy: str = decoding_flag("greedy", "decoding strategy", choices=STRATEGIES)
    temperature: float = decoding_flag(1.0, "divides the logits before sampling")
    top_k: int = decoding_flag(0, "sample from the k likeliest tokens; 0: no top-k filter")
    top_p: float = decoding_flag(1.0, "sample from the smallest set of tokens whose probability reaches p")
    repetition_penalty: float = decoding_flag(1.0, "CTRL-style penalty on tokens already in the prompt or output "
                                                   "(beam search: on log-probabilities, as transformers'); 1: off")
    no_repeat_ngram: int = decoding_flag(0, "forbid repeating any n-gram of this size; 0: off")
    num_beams: int = decoding_flag(4, "beams of beam search")
    length_penalty: float = decoding_flag(1.0, "beam score = sum of log-probabilities / length ** this; the length "
                                               "counts the <|endoftext|> that ends a hypothesis, as in transformers")
    contrastive_alpha: float = decoding_flag(0.6, "contrastive search: weight of the degeneration penalty (at the "
                                                  "first new token, with --contrastive_alpha_end)")
    contrastive_alpha_end: float | None = decoding_flag(
        None, "contrastive search: the penalty's weight goes in a straight line from --contrastive_alpha at the "
              "first new token to this at the --max_new_tokens-th (default: constant --contrastive_alpha)")
    contrastive_penalty: str = decoding_flag("max", "contrastive search: a candidate's degeneration penalty is the "
                                                    "max or the mean of its cosine similarities to the row's earlier "
                                                    "tokens", choices=CONTRASTIVE_PENALTIES)
    contrastive_k: int = decoding_flag(4, "contrastive search: candidates per step")
    max_new_tokens: int = decoding_flag(128, "most tokens generated per prompt")
    max_lines: int = decoding_flag(0, "stop a row right after its max_lines-th line break; 0: off")
    line_end_nudge: float = decoding_flag(0.0, "logit bonus for punctuation and line breaks once a line has "
                                               "--line_length tokens")
    line_length: int = decoding_flag(12, "tokens in a line before --line_end_nudge applies")

    def __post_init__(self) -> None:
        require(self, "strategy", self.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}")
        require_range(self, "temperature", 0, low_open=True)
        require_range(self, "top_p", 0, 1, low_open=True)
        require_range(self, "repetition_penalty", 0, low_open=True)
        require_range(self, "length_penalty")
        require(self, "contrastive_penalty", self.contrastive_penalty in CONTRASTIVE_PENALTIES,
                f"must be one of {', '.join(CONTRASTIVE_PENALTIES)}")
        require_range(self, "contrastive_alpha", 0, 1)
        require_range(self, "contrastive_alpha_end", 0, 1)
        require_range(self, "line_end_nudge", 0)
        for name in ("top_k", "no_repeat_ngram", "max_lines"):
            require_range(self, name, 0)
        for name in ("num_beams", "contrastive_k", "max_new_tokens", "line_length"):
            require_range(self, name, 1)

    def contrastive_alpha_at(self, step: int) -> float:
        """The weight of contrastive search's degeneration penalty at new token `step` (counted from 0). A weight
        that grows lets the first tokens follow the model and pushes later ones harder away from repeating."""
        if self.contrastive_alpha_end is None or self.max_new_tokens == 1:
            return self.contrastive_alpha
        growth = (self.contrastive_alpha_end - self.contrastive_alpha) / (self.max_new_tokens - 1)
        return self.contrastive_alpha + growth * step


@torch.no_grad()
def greedy_decode(model: GPT2Model, input_ids: torch.Tensor, max_new_tokens: int,
                  attention_mask: torch.Tensor | None = None, use_cache: bool = True) -> torch.Tensor:
    """Append `max_new_tokens` argmax tokens to each prompt (prompts of unequal length are left-padded), going on
    past <|endoftext|>: a fixed length, to check and time the cache. With the cache each step feeds only the newest
    token; without it every step recomputes the prefix."""
    cache = model.new_cache(input_ids.size(1) + max_new_tokens) if use_cache else None
    tokens, step_input, padding = input_ids, input_ids, padding_of(attention_mask)
    for _ in range(max_new_tokens):
        hidden = model(step_input if use_cache else tokens, attention_mask, cache, padding)["last_hidden_state"]
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
    """New tokens for each left-padded prompt, without the prompt: up to the <|endoftext|> that ended the row
    (left out), or through the line break that stopped it at `config.max_lines`. `generator` makes sampling
    reproducible."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    decoder = Decoder(model, config, list(line_break_ids), list(line_end_ids), input_ids, attention_mask)
    if config.strategy == "beam":
        generated = decoder.beam_search(input_ids, attention_mask)
    elif config.strategy == "contrastive":
        generated = decoder.contrastive_search(input_ids, attention_mask)
    else:
        generated = decoder.sample(input_ids, attention_mask, generator)
    return [until_end_of_text(row) for row in generated.tolist()]


def until_end_of_text(generated: list[int]) -> list[int]:
    """A row's tokens before its first <|endoftext|>: the one it ended with, or the padding after its last line."""
    return generated[:generated.index(END_OF_TEXT_ID)] if END_OF_TEXT_ID in generated else generated


class Decoder:
    """The decoding loops of one `generate` call. Each loop writes its tokens into a `[R, prompt + new]` buffer,
    one column a step, and shows the model and the controls the filled columns; each returns the `[B, new]` new
    tokens, a row padded after its end."""

    def __init__(self, model: GPT2Model, config: DecodingConfig, line_break_ids: list[int],
                 line_end_ids: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model, self.config, self.prompt_len = model, config, input_ids.size(1)
        self.padding = padding_of(attention_mask)
        self.max_len = self.prompt_len + config.max_new_tokens
        vocab_size, device = model.config.vocab_size, input_ids.device
        # Built once on the device: a tensor made from Python data inside a loop is a copy from the host each step.
        self.is_line_break = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.is_line_break[torch.tensor(line_break_ids, dtype=torch.long, device=device)] = True
        self.line_end_bonus = None
        if config.line_end_nudge and line_end_ids:
            self.line_end_bonus = torch.zeros(vocab_size, device=device)
            self.line_end_bonus[torch.tensor(line_end_ids, dtype=torch.long, device=device)] = config.line_end_nudge

    # --- the strategies ---

    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
        """Greedy or sampled decoding."""
        generator = None if self.config.strategy == "greedy" else generator_of(generator, input_ids.device)
        tokens, mask = self.buffers(input_ids, attention_mask)
        cache = self.model.new_cache(self.max_len)
        hidden = self.feed(input_ids, attention_mask, cache)
        lines = LineState(input_ids.size(0), self.is_line_break)
        done = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
        early_stop = EarlyStop(self.config.max_new_tokens, input_ids.device, generator)
        for step in range(self.config.max_new_tokens):
            end = self.prompt_len + step
            logits = self.adjusted_logits(hidden, tokens[:, :end], mask[:, :end], lines)
            next_token = self.choose(logits, generator).masked_fill(done, PAD_ID)
            done = self.record(tokens, end, next_token, lines, done)
            if early_stop(step, done):
                break
            if step + 1 < self.config.max_new_tokens:
                hidden = self.feed(next_token[:, None], mask[:, :end + 1], cache)
        return tokens[:, self.prompt_len:end + 1]

    def contrastive_search(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Su et al. (2022): among the k likeliest tokens choose the one maximising
        (1 - alpha) * p - alpha * (the max, or mean, cosine similarity of its hidden state to the row's earlier
        ones), alpha taken at the step (`DecodingConfig.contrastive_alpha_at`). The cache holds k copies of every
        row so one batched step scores all k candidates. The copies agree on every position but the newest, where
        each holds its own candidate: only that position is copied from the chosen candidate to the others."""
        k = self.config.contrastive_k
        batch, device = input_ids.size(0), input_ids.device
        tokens, mask = self.buffers(input_ids, attention_mask)
        candidate_mask = mask.repeat_interleave(k, 0)
        cache = self.model.new_cache(self.max_len)
        out = self.model(input_ids.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0), cache,
                         self.padding)
        history, hidden = out["last_hidden_state"][::k], out["last_token"][::k]
        lines = LineState(batch, self.is_line_break)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        early_stop = EarlyStop(self.config.max_new_tokens, device)
        rows = torch.arange(batch, device=device)
        agreed = 0  # the prompt's copies were computed separately: the first step copies them whole
        for step in range(self.config.max_new_tokens):
            end = self.prompt_len + step
            probs = self.adjusted_logits(hidden, tokens[:, :end], mask[:, :end], lines).softmax(dim=-1)
            top_probs, top_ids = probs.topk(k, dim=-1)
            candidates = self.feed(top_ids.reshape(-1, 1), candidate_mask[:, :end + 1], cache).view(batch, k, -1)
            degeneration = degeneration_penalty(candidates, history, mask[:, :end].bool(),
                                                self.config.contrastive_penalty)
            alpha = self.config.contrastive_alpha_at(step)  # a Python number: no copy to the device
            best = ((1 - alpha) * top_probs - alpha * degeneration).argmax(dim=-1)
            agreed = copy_cache_rows(cache, (rows * k + best).repeat_interleave(k), agreed)
            hidden = candidates[rows, best]
            history = torch.cat([history, hidden[:, None]], dim=1)
            next_token = top_ids[rows, best].masked_fill(done, PAD_ID)
            done = self.record(tokens, end, next_token, lines, done)
            if early_stop(step, done):
                break
        return tokens[:, self.prompt_len:end + 1]

    def record(self, tokens: torch.Tensor, end: int, next_token: torch.Tensor, lines: "LineState",
               done: torch.Tensor) -> torch.Tensor:
        """Write the step's tokens into column `end`; the rows done after it: those that have emitted
        <|endoftext|> (their padding is that token too) or their --max_lines-th line break."""
        tokens[:, end] = next_token
        lines.advance(next_token)
        done = done | (next_token == END_OF_TEXT_ID)
        return done | (lines.count >= self.config.max_lines) if self.config.max_lines else done

    def beam_search(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Beam search over `B * num_beams` rows (prompt b owns rows b*K .. b*K+K-1) sharing one cache, all
        prompts at once, as transformers' with early_stopping=False. A hypothesis ends at <|endoftext|>, at its
        max_lines-th line break or at max_new_tokens; the best by sum of log-probabilities (the ending token's
        included) / length ** length_penalty is returned for each prompt."""
        beams, batch, device = self.config.num_beams, input_ids.size(0), input_ids.device
        input_ids, attention_mask = input_ids.repeat_interleave(beams, 0), attention_mask.repeat_interleave(beams, 0)
        tokens, mask = self.buffers(input_ids, attention_mask)
        cache = self.model.new_cache(self.max_len)
        hidden = self.feed(input_ids, attention_mask, cache)
        # The K copies of a prompt are identical: only the first may expand, or each hypothesis would appear K times.
        scores = torch.full((batch, beams), float("-inf"), device=device)
        scores[:, 0] = 0.0
        own_rows = torch.arange(batch * beams, device=device).view(batch, beams)
        finished = FinishedHypotheses(batch, beams, self.config, device)
        searching = torch.ones(batch, dtype=torch.bool, device=device)
        lines = LineState(batch * beams, self.is_line_break)
        early_stop = EarlyStop(self.config.max_new_tokens, device)
        for step in range(self.config.max_new_tokens):
            end = self.prompt_len + step
            logprobs = self.adjusted_logprobs(hidden, tokens[:, :end], mask[:, :end], lines)
            totals = (scores.view(-1, 1) + logprobs).view(batch, -1)
            # 2K candidates leave K to continue even if K of them finish now.
            top_scores, top_ids = totals.topk(2 * beams, dim=-1)
            rows, next_tokens = own_rows[:, :1] + top_ids // logprobs.size(-1), top_ids % logprobs.size(-1)
            ends, kept = self.split_candidates(top_scores, rows, next_tokens, lines, searching)
            finished.add(torch.where(ends, top_scores.double(), float("-inf")), step + 1,
                         lambda pick: torch.cat([tokens[rows.gather(1, pick).squeeze(1), self.prompt_len:end],
                                                 next_tokens.gather(1, pick)], dim=1))
            sources, next_tokens, scores = next_beams(kept, rows, next_tokens, top_scores, own_rows)
            searching &= finished.may_improve(scores[:, 0], step + 1)
            # A prompt's beams share its prompt and mask: only the cache and the generated tokens move.
            order = sources.view(-1)
            for layer in cache:
                layer.reorder(order)
            tokens[:, self.prompt_len:end] = tokens[order, self.prompt_len:end]
            tokens[:, end] = next_tokens.view(-1)
            lines.reorder(order)
            lines.advance(tokens[:, end])
            if early_stop(step, ~searching):
                break
            if step + 1 < self.config.max_new_tokens:
                hidden = self.feed(tokens[:, end:end + 1], mask[:, :end + 1], cache)
        # Beams still open when the token budget ran out are hypotheses too.
        finished.add(torch.where(searching[:, None], scores.double(), float("-inf")), step + 1,
                     lambda pick: tokens[own_rows.gather(1, pick).squeeze(1), self.prompt_len:end + 1])
        return finished.best_tokens

    # --- beam bookkeeping ---

    def split_candidates(self, top_scores: torch.Tensor, rows: torch.Tensor, next_tokens: torch.Tensor,
                        lines: "LineState", searching: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Of each prompt's 2K candidates, best first, `[B, 2K]` masks: those that finish a hypothesis, and the
        K best of those that don't, kept as the next beams. As in transformers, only the K best candidates may
        finish one: an ending candidate below them is dropped. A prompt no longer searching, and a candidate at
        score -inf, have neither."""
        candidate = (top_scores > float("-inf")) & searching[:, None]
        ends = candidate & self.ends_row(next_tokens, lines.count[rows])
        continues = candidate & ~ends
        ends[:, self.config.num_beams:] = False
        return ends, continues & (continues.cumsum(dim=1) <= self.config.num_beams)

    def ends_row(self, tokens: torch.Tensor, lines_so_far: torch.Tensor) -> torch.Tensor:
        """Whether each token ends its hypothesis: <|endoftext|>, or the line break that completes --max_lines."""
        ends = tokens == END_OF_TEXT_ID
        if self.config.max_lines:
            ends |= self.is_line_break[tokens] & (lines_so_far + 1 >= self.config.max_lines)
        return ends

    # --- shared pieces ---

    def feed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """The hidden state of each row's last token after feeding `input_ids` through the cache."""
        return self.model(input_ids, attention_mask, cache, self.padding)["last_token"]

    def buffers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and attention mask of the whole generation, the prompt written in; the new tokens are real."""
        new = self.config.max_new_tokens
        return F.pad(input_ids, (0, new), value=PAD_ID), F.pad(attention_mask, (0, new), value=1)

    def adjusted_logits(self, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                        lines: "LineState") -> torch.Tensor:
        """Next-token logits `[R, V]` after the repetition and line-length controls, in float32."""
        return self.controlled(self.model.hidden_state_to_token(hidden).float(), tokens, mask, lines)

    def adjusted_logprobs(self, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                          lines: "LineState") -> torch.Tensor:
        """Next-token log-probabilities `[R, V]`, the controls applied to them and not normalised again after:
        beam search's scores, as transformers' beam search applies its logits processors (a penalised
        log-probability scales by the penalty, where a penalised logit changes its share of the softmax)."""
        logprobs = self.model.hidden_state_to_token(hidden).float().log_softmax(dim=-1)
        return self.controlled(logprobs, tokens, mask, lines)

    def controlled(self, scores: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                   lines: "LineState") -> torch.Tensor:
        """Next-token `scores` `[R, V]`, logits or log-probabilities, after the repetition and line-length
        controls."""
        config = self.config
        if config.repetition_penalty != 1.0:
            scores = penalise_repeats(scores, tokens, mask, config.repetition_penalty)
        if config.no_repeat_ngram > 0:
            scores = ban_repeated_ngrams(scores, tokens, mask, config.no_repeat_ngram)
        if self.line_end_bonus is not None:
            scores = scores + (lines.length >= config.line_length)[:, None] * self.line_end_bonus
        return scores

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.config.strategy == "greedy":
            return logits.argmax(dim=-1)
        probs = sampling_distribution(logits, self.config.temperature, self.config.top_k, self.config.top_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class LineState:
    """Per row: line breaks generated so far (`count`), and tokens since the last one or the start (`length`)."""

    def __init__(self, rows: int, is_line_break: torch.Tensor):
        self.is_line_break = is_line_break  # [V]
        self.count = torch.zeros(rows, dtype=torch.long, device=is_line_break.device)
        self.length = torch.zeros_like(self.count)

    def advance(self, token: torch.Tensor) -> None:
        is_break = self.is_line_break[token]
        self.count = self.count + is_break
        self.length = torch.where(is_break, 0, self.length + 1)

    def reorder(self, order: torch.Tensor) -> None:
        self.count, self.length = self.count[order], self.length[order]


class EarlyStop:
    """Whether every row has stopped, read on the host only every CHECK_EVERY steps and at the last one. The
    steps run after the last row stopped emit padding only, which the results drop; `generator` is wound back
    to where stopping at once would have left it, so later draws from it are unchanged."""

    def __init__(self, steps: int, device: torch.device, generator: torch.Generator | None = None):
        self.steps, self.generator = steps, generator
        self.steps_all_stopped = torch.zeros((), dtype=torch.long, device=device)
        self.generator_states: list[torch.Tensor] = []  # after each step since the last look

    def __call__(self, step: int, stopped: torch.Tensor) -> bool:
        self.steps_all_stopped += stopped.all()
        if self.generator is not None:
            self.generator_states.append(self.generator.get_state())
        if (step + 1) % CHECK_EVERY and step + 1 < self.steps:
            return False
        overrun = int(self.steps_all_stopped)  # the one read from the device
        if overrun and self.generator is not None:
            self.generator.set_state(self.generator_states[-overrun])
        self.generator_states.clear()
        return overrun > 0


class FinishedHypotheses:
    """Per prompt: the best finished hypothesis so far (`best_tokens`, padded after it), and the K best scores,
    which tell when to stop searching. Scores are length-normalised in float64, as Python floats would be; among
    equal scores the earliest found stays best. Hypotheses come in order of length, so a better one overwrites
    every token of the one before."""

    def __init__(self, batch: int, beams: int, config: DecodingConfig, device: torch.device):
        self.length_penalty = config.length_penalty
        self.best_score = torch.full((batch,), float("-inf"), dtype=torch.float64, device=device)
        self.best_tokens = torch.full((batch, config.max_new_tokens), PAD_ID, device=device)
        self.top_scores = torch.full((batch, beams), float("-inf"), dtype=torch.float64, device=device)

    def add(self, scores: torch.Tensor, length: int, tokens_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """`scores` `[B, C]`: sums of log-probabilities of C hypotheses of `length` tokens each, -inf where there
        is none, in the order they were found; `tokens_of(pick)` gives the tokens of the `[B, 1]` picked ones."""
        scores = scores / length ** self.length_penalty
        pick = scores.argmax(dim=1, keepdim=True)  # the first of equals
        score = scores.gather(1, pick).squeeze(1)
        better = score > self.best_score
        self.best_tokens[:, :length] = torch.where(better[:, None], tokens_of(pick), self.best_tokens[:, :length])
        self.best_score = torch.where(better, score, self.best_score)
        self.top_scores = torch.cat([self.top_scores, scores], dim=1).topk(self.top_scores.size(1), dim=1).values

    def may_improve(self, best_open: torch.Tensor, length: int) -> torch.Tensor:
        """Keep searching until K hypotheses have finished and the best open beam, scored at its current
        length, is no better than the K-th best of them (the usual heuristic: it is not an exact bound)."""
        normalised = best_open.double() / length ** self.length_penalty
        return (best_open > float("-inf")) & (normalised > self.top_scores[:, -1])


def next_beams(kept: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor,
               own_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept candidates, best first, as the next beams: (source row, new token, score), each `[B, K]`.
    Beams left over keep their row, fed padding at score -inf."""
    beams = own_rows.size(1)
    # Kept candidates go to slots 0, 1, ...; the others all land in an extra slot, dropped after.
    slot = torch.where(kept, kept.cumsum(dim=1) - 1, beams)

    def place(values: torch.Tensor, default: torch.Tensor | float) -> torch.Tensor:
        start = torch.zeros_like(values[:, :beams + 1])
        start[:, :beams] = default
        return start.scatter(1, slot, values)[:, :beams].contiguous()

    return place(rows, own_rows), place(tokens, PAD_ID), place(scores, float("-inf"))


def padding_of(attention_mask: torch.Tensor | None) -> str | None:
    """Where the prompts' pads are, for the model: read once per call, so that the model need not look at the
    mask at every step (each look waits for the GPU). New tokens are real: prompts without pads never get any,
    and "right" leaves them the plain causal mask, as looking would."""
    if attention_mask is None:
        return None
    return "left" if bool((attention_mask == 0).any()) else "right"


def generator_of(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The generator sampling draws from: the one given, or the device's default."""
    if generator is not None:
        return generator
    return torch.cuda.default_generators[device.index] if device.type == "cuda" else torch.default_generator


def copy_cache_rows(cache: list[KVCache], order: torch.Tensor, start: int) -> int:
    """Make cache row i hold what row `order[i]` holds at the positions from `start` on, where the rows may
    differ; returns the filled length, up to which they now agree."""
    for layer in cache:
        differ = slice(start, layer.length)
        layer.keys[:, :, differ] = layer.keys[:, :, differ].index_select(0, order)
        layer.values[:, :, differ] = layer.values[:, :, differ].index_select(0, order)
    return cache[0].length
