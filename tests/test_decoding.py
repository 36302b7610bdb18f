"""Batched decoding strategies on a tiny random GPT-2 with left-padded prompts of unequal length."""
import pytest
import torch

from config import GPT2Config, UserError
from models.decoding import DecodingConfig, generate, greedy_decode
from models.gpt2 import GPT2Model

PROMPT_LENGTHS = [8, 3, 5]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model() -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=128)).eval()


@pytest.fixture(scope="module")
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts (distinct tokens, so a prompt holds no repeated n-gram)."""
    generator = torch.Generator().manual_seed(1)
    width = max(PROMPT_LENGTHS)
    mask = (torch.arange(width)[None] >= width - torch.tensor(PROMPT_LENGTHS)[:, None]).long()
    ids = torch.stack([torch.randperm(50000, generator=generator)[:width] for _ in PROMPT_LENGTHS])
    return ids.masked_fill(mask == 0, 50256), mask


def run(model, prompts, **settings) -> list[list[int]]:
    settings.setdefault("max_new_tokens", NEW_TOKENS)
    generator = settings.pop("generator", None)
    line_ids = {key: settings.pop(key, ()) for key in ("line_break_ids", "line_end_ids")}
    return generate(model, *prompts, DecodingConfig(**settings), generator=generator, **line_ids)


def greedy_reference(model, prompts, new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    input_ids, mask = prompts
    return greedy_decode(model, input_ids, new_tokens, mask)[:, input_ids.size(1):].tolist()


def real_tokens(prompts, row: int, generated: list[int]) -> list[int]:
    input_ids, mask = prompts
    return input_ids[row][mask[row].bool()].tolist() + generated


def sequence_logprob(model, prompts, row: int, generated: list[int]) -> float:
    """Log-probability of `generated` after prompt `row`, from one forward pass without the cache."""
    tokens = torch.tensor([real_tokens(prompts, row, []) + generated])
    prompt_len = tokens.size(1) - len(generated)
    with torch.no_grad():
        logits = model.hidden_state_to_token(model(tokens)["last_hidden_state"])
    logprobs = logits[0, prompt_len - 1:-1].log_softmax(dim=-1)
    return logprobs.gather(1, torch.tensor(generated)[:, None]).sum().item()


def test_generate_greedy_equals_greedy_decode(model, prompts):
    assert run(model, prompts, strategy="greedy") == greedy_reference(model, prompts)


@pytest.mark.parametrize("settings", [
    dict(strategy="beam", num_beams=1),
    dict(strategy="sample", top_k=1, temperature=5.0),
    dict(strategy="sample", top_p=1e-9, temperature=5.0),
    dict(strategy="contrastive", contrastive_alpha=0.0, contrastive_k=4),
], ids=["beam1", "top_k1", "top_p0", "contrastive_alpha0"])
def test_degenerate_settings_equal_greedy(model, prompts, settings):
    generator = torch.Generator().manual_seed(0)
    assert run(model, prompts, generator=generator, **settings) == greedy_reference(model, prompts)


def test_sampling_is_reproducible_from_the_generator(model, prompts):
    def sample(seed: int) -> list[list[int]]:
        return run(model, prompts, strategy="sample", temperature=2.0, generator=torch.Generator().manual_seed(seed))

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def count_repeats(rows: list[list[int]]) -> int:
    return sum(len(row) - len(set(row)) for row in rows)


def test_repetition_penalty_reduces_repeats(model, prompts):
    plain = run(model, prompts, strategy="greedy", max_new_tokens=30)
    penalised = run(model, prompts, strategy="greedy", max_new_tokens=30, repetition_penalty=5.0)
    assert count_repeats(penalised) < count_repeats(plain)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam", "contrastive"])
def test_no_repeat_ngram_leaves_no_bigram_twice(model, prompts, strategy):
    rows = run(model, prompts, strategy=strategy, max_new_tokens=30, no_repeat_ngram=2,
               generator=torch.Generator().manual_seed(0))
    for row, generated in enumerate(rows):
        tokens = real_tokens(prompts, row, generated)
        bigrams = list(zip(tokens, tokens[1:]))
        assert len(bigrams) == len(set(bigrams))


def cut_after_lines(row: list[int], line_break_ids: set[int], max_lines: int) -> list[int]:
    breaks = [i for i, token in enumerate(row) if token in line_break_ids]
    return row[:breaks[max_lines - 1] + 1] if len(breaks) >= max_lines else row


def test_max_lines_stops_each_row_after_its_last_line_break(model, prompts):
    """Stopping must not change a row's tokens, only cut them: compare with unstopped decoding, taking
    pretend line breaks from its output so that rows stop at different steps."""
    reference = run(model, prompts, max_new_tokens=30, repetition_penalty=5.0)
    line_breaks = {reference[0][2], reference[0][6], reference[1][4], reference[1][9]}
    rows = run(model, prompts, max_new_tokens=30, repetition_penalty=5.0, max_lines=2,
               line_break_ids=list(line_breaks))
    assert rows == [cut_after_lines(row, line_breaks, 2) for row in reference]
    assert len({len(row) for row in rows}) == len(rows)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam", "contrastive"])
def test_line_end_nudge_caps_line_length(model, prompts, strategy):
    """A huge nudge on a pretend newline forces one once a line has `line_length` tokens (the model
    may still choose one earlier), and the row stops right after the third."""
    newline = 198
    rows = run(model, prompts, strategy=strategy, max_new_tokens=40, max_lines=3, line_length=4,
               line_end_nudge=1e4, line_break_ids=[newline], line_end_ids=[newline],
               generator=torch.Generator().manual_seed(0))
    for row in rows:
        assert row[-1] == newline and row.count(newline) == 3
        breaks = [-1] + [i for i, token in enumerate(row) if token == newline]
        assert all(end - start - 1 <= 4 for start, end in zip(breaks, breaks[1:]))


def test_beam_search_finds_likelier_sequences_than_greedy(model, prompts):
    greedy = greedy_reference(model, prompts)
    beam = run(model, prompts, strategy="beam", num_beams=4, length_penalty=0.0)
    for row in range(len(PROMPT_LENGTHS)):
        assert len(beam[row]) == NEW_TOKENS
        beam_score = sequence_logprob(model, prompts, row, beam[row])
        assert beam_score >= sequence_logprob(model, prompts, row, greedy[row]) - 1e-4


def contrastive_reference(model, prompt: list[int], alpha: float, k: int, new_tokens: int) -> list[int]:
    """Contrastive search written out for one unpadded prompt, recomputing everything without a cache."""
    tokens = list(prompt)
    for _ in range(new_tokens):
        hidden = model(torch.tensor([tokens]))["last_hidden_state"][0]
        probs = model.hidden_state_to_token(hidden[-1]).softmax(dim=-1)
        top_probs, top_ids = probs.topk(k)
        scores = []
        for p, token in zip(top_probs.tolist(), top_ids.tolist()):
            candidate = model(torch.tensor([tokens + [token]]))["last_hidden_state"][0, -1]
            similarity = torch.cosine_similarity(candidate[None], hidden, dim=-1).max().item()
            scores.append((1 - alpha) * p - alpha * similarity)
        tokens.append(top_ids[max(range(k), key=scores.__getitem__)].item())
    return tokens[len(prompt):]


@torch.no_grad()
def test_contrastive_search_matches_unbatched_reference(model, prompts):
    rows = run(model, prompts, strategy="contrastive", contrastive_alpha=0.6, contrastive_k=4)
    for row, generated in enumerate(rows):
        assert generated == contrastive_reference(model, real_tokens(prompts, row, []), 0.6, 4, NEW_TOKENS)


def test_kv_cache_reorder_permutes_rows(model, prompts):
    input_ids, mask = prompts
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        cache = model.new_cache(input_ids.size(1) + 1)
        model(input_ids, mask, cache)
        for layer in cache:
            layer.reorder(order)
        step_mask = torch.cat([mask[order], torch.ones(3, 1, dtype=torch.long)], dim=1)
        next_token = torch.tensor([[5], [6], [7]])
        cached = model(next_token, step_mask, cache)["last_token"]
        full = model(torch.cat([input_ids[order], next_token], dim=1), step_mask)["last_token"]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("settings, message", [
    (dict(strategy="nucleus"), "--strategy 'nucleus': must be one of greedy, sample, beam, contrastive"),
    (dict(top_p=0.0), r"--top_p 0: must be in \(0, 1\]"), (dict(top_p=1.5), r"--top_p 1.5: must be in \(0, 1\]"),
    (dict(num_beams=0), "--num_beams 0: must be at least 1"),
    (dict(temperature=0.0), "--temperature 0: must be greater than 0"),
    (dict(max_lines=-1), "--max_lines -1: must be at least 0"),
    (dict(length_penalty=float("nan")), "--length_penalty nan: must be a finite number"),
])
def test_config_rejects_invalid_settings_naming_the_flag(settings, message):
    with pytest.raises(UserError, match=message):
        DecodingConfig(**settings)
