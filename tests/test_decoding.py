"""Batched decoding strategies on a tiny random GPT-2 with left-padded prompts of unequal length."""
import copy
import sys
import warnings

import pytest
import torch
from transformers import GPT2LMHeadModel

from config import END_OF_TEXT_ID
from flags import UserError
from models import decoding, gpt2
from models.decoding import CHECK_EVERY, PAD_ID, Decoder, DecodingConfig, generate, greedy_decode
from models.gpt2 import GPT2Model
from models.logits_processors import NUCLEUS_HEAD, sampling_distribution
from modules import attention, gpt2_layer
from tests.conftest import TINY, random_hf_gpt2, tiny_gpt2

PROMPT_LENGTHS = [8, 3, 5]
NEW_TOKENS = 12
EOS_PROMPT_LENGTHS = [8, 3, 5, 6, 2]  # for the model that often ends a row: more rows, more tokens
EOS_NEW_TOKENS = 20


@pytest.fixture(scope="module")
def model() -> GPT2Model:
    return tiny_gpt2().eval()


@pytest.fixture(scope="module")
def peaked_model(model) -> GPT2Model:
    """The tiny model with its (tied) embeddings scaled up: its next-token distributions are as peaked as a
    trained model's, so top-p keeps few tokens, where the random model's nearly uniform ones keep most."""
    peaked = copy.deepcopy(model)
    with torch.no_grad():
        peaked.word_embedding.weight.mul_(30)
    return peaked


@pytest.fixture(scope="module")
def repetitive_model(model) -> GPT2Model:
    """The tiny model with its embeddings scaled up less: it tends to repeat its last token, the degeneration
    contrastive search is for, and its probabilities are peaked enough to weigh against the penalty."""
    repetitive = copy.deepcopy(model)
    with torch.no_grad():
        repetitive.word_embedding.weight.mul_(10)
    return repetitive


@pytest.fixture(scope="module")
def eos_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT2Model, GPT2LMHeadModel]:
    """A tiny random GPT-2 that ends rows with <|endoftext|> at some steps and not at others, as ours and as
    transformers' (the same weights, through a checkpoint). The end-of-text embedding (tied to the output layer) is
    the first unit vector, so its logit is the final LayerNorm's first output, gain * normalised + bias: from
    0.5 ± 0.5 it often beats the random model's other logits, whose largest is about 0.7."""
    reference = random_hf_gpt2(**TINY)
    with torch.no_grad():
        end_of_text = reference.transformer.wte.weight[END_OF_TEXT_ID]
        end_of_text.zero_()
        end_of_text[0] = 1.0
        reference.transformer.ln_f.weight[0] = 0.5
        reference.transformer.ln_f.bias[0] = 0.5
    directory = tmp_path_factory.mktemp("eos-gpt2")
    reference.save_pretrained(directory)
    return GPT2Model.from_pretrained(directory).eval(), reference


@pytest.fixture(scope="module")
def eos_model(eos_models) -> GPT2Model:
    return eos_models[0]


def left_padded_prompts(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts (distinct tokens, so a prompt holds no repeated n-gram)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = (torch.arange(width)[None] >= width - torch.tensor(lengths)[:, None]).long()
    ids = torch.stack([torch.randperm(50000, generator=generator)[:width] for _ in lengths])
    return ids.masked_fill(mask == 0, END_OF_TEXT_ID), mask


@pytest.fixture(scope="module")
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded_prompts(PROMPT_LENGTHS)


@pytest.fixture(scope="module")
def eos_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded_prompts(EOS_PROMPT_LENGTHS)


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


def before_end_of_text(row: list[int]) -> list[int]:
    return row[:row.index(END_OF_TEXT_ID)] if END_OF_TEXT_ID in row else row


def ended_mid_generation(rows: list[list[int]]) -> set[int]:
    """The lengths of the rows that ended at <|endoftext|> before the last of EOS_NEW_TOKENS steps: the tests
    that end rows assert there are several, so that they show what they claim."""
    return {len(row) for row in rows if len(row) < EOS_NEW_TOKENS - 1}


def cut_after_lines(row: list[int], line_break_ids: set[int], max_lines: int) -> list[int]:
    breaks = [i for i, token in enumerate(row) if token in line_break_ids]
    return row[:breaks[max_lines - 1] + 1] if len(breaks) >= max_lines else row


@pytest.mark.parametrize("strategy", ["greedy", "sample", "contrastive"])
def test_max_lines_stops_each_row_after_its_last_line_break(model, prompts, strategy):
    """Stopping must not change a row's tokens, only cut them: compare with unstopped decoding, taking
    pretend line breaks from its output so that rows stop at different steps, all before the last."""
    settings = dict(strategy=strategy, max_new_tokens=30, repetition_penalty=5.0)
    reference = run(model, prompts, generator=torch.Generator().manual_seed(0), **settings)
    line_breaks = {reference[0][2], reference[0][6], reference[1][4], reference[1][9],
                   reference[2][5], reference[2][11]}
    rows = run(model, prompts, max_lines=2, line_break_ids=list(line_breaks),
               generator=torch.Generator().manual_seed(0), **settings)
    assert rows == [cut_after_lines(row, line_breaks, 2) for row in reference]
    assert len({len(row) for row in rows}) == len(rows) and max(map(len, rows)) < 30


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


def contrastive_reference(model, prompt: list[int], alpha: float, k: int, new_tokens: int, penalty: str = "max",
                          alpha_end: float | None = None) -> list[int]:
    """Contrastive search written out for one unpadded prompt, recomputing everything without a cache. The
    penalty is the max or the mean of the candidate's cosine similarities to every earlier token; its weight
    runs in a straight line from `alpha` at the first new token to `alpha_end` at the last. It stops at
    <|endoftext|>, which it leaves out."""
    tokens = list(prompt)
    for step in range(new_tokens):
        weight = alpha if alpha_end is None else alpha + (alpha_end - alpha) * step / (new_tokens - 1)
        hidden = model(torch.tensor([tokens]))["last_hidden_state"][0]
        probs = model.hidden_state_to_token(hidden[-1]).softmax(dim=-1)
        top_probs, top_ids = probs.topk(k)
        scores = []
        for p, token in zip(top_probs.tolist(), top_ids.tolist()):
            candidate = model(torch.tensor([tokens + [token]]))["last_hidden_state"][0, -1]
            similarities = torch.cosine_similarity(candidate[None], hidden, dim=-1)
            similarity = similarities.max() if penalty == "max" else similarities.mean()
            scores.append((1 - weight) * p - weight * similarity.item())
        chosen = top_ids[max(range(k), key=scores.__getitem__)].item()
        if chosen == END_OF_TEXT_ID:
            break
        tokens.append(chosen)
    return tokens[len(prompt):]


@torch.no_grad()
def test_contrastive_search_matches_unbatched_reference(model, prompts):
    rows = run(model, prompts, strategy="contrastive", contrastive_alpha=0.6, contrastive_k=4)
    for row, generated in enumerate(rows):
        assert generated == contrastive_reference(model, real_tokens(prompts, row, []), 0.6, 4, NEW_TOKENS)


def assert_contrastive_matches_reference(model, prompts, penalty: str, alpha_end: float | None) -> list[list[int]]:
    rows = run(model, prompts, strategy="contrastive", contrastive_alpha=0.6, contrastive_k=4,
               contrastive_penalty=penalty, contrastive_alpha_end=alpha_end, max_new_tokens=EOS_NEW_TOKENS)
    for row, generated in enumerate(rows):
        assert generated == contrastive_reference(model, real_tokens(prompts, row, []), 0.6, 4, EOS_NEW_TOKENS,
                                                  penalty, alpha_end)
    return rows


@pytest.mark.parametrize("penalty, alpha_end", [("mean", None), ("max", 0.95), ("mean", 0.95), ("max", 0.2)])
@torch.no_grad()
def test_contrastive_options_match_unbatched_reference(repetitive_model, eos_prompts, penalty, alpha_end):
    """The mean penalty (over real tokens only: the prompts are left-padded) and a weight that grows or shrinks
    over the new tokens, alone and together; each changes what the default writes."""
    rows = assert_contrastive_matches_reference(repetitive_model, eos_prompts, penalty, alpha_end)
    assert rows != run(repetitive_model, eos_prompts, strategy="contrastive", max_new_tokens=EOS_NEW_TOKENS)


@pytest.mark.parametrize("penalty, alpha_end", [("max", None), ("mean", 0.95)])
@torch.no_grad()
def test_contrastive_search_stops_at_end_of_text_as_unbatched_reference(eos_model, eos_prompts, penalty, alpha_end):
    rows = assert_contrastive_matches_reference(eos_model, eos_prompts, penalty, alpha_end)
    assert len(ended_mid_generation(rows)) >= 2


def test_contrastive_alpha_runs_from_alpha_to_its_end_value():
    config = DecodingConfig(contrastive_alpha=0.2, contrastive_alpha_end=0.8, max_new_tokens=4)
    assert [config.contrastive_alpha_at(step) for step in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert DecodingConfig(contrastive_alpha=0.3, max_new_tokens=4).contrastive_alpha_at(3) == 0.3


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
    (dict(contrastive_penalty="min"), "--contrastive_penalty 'min': must be one of max, mean"),
    (dict(contrastive_alpha_end=1.5), r"--contrastive_alpha_end 1.5: must be in \[0, 1\]"),
])
def test_config_rejects_invalid_settings_naming_the_flag(settings, message):
    with pytest.raises(UserError, match=message):
        DecodingConfig(**settings)


# --- the batched loops against the strategies written out plainly ---

def top_p_reference(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p over every token sorted: taken likeliest first, a token stays while the ones before it hold
    less than top_p of the probability; tokens tied with the last one kept stay too."""
    probs = logits.softmax(dim=-1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    mass = probs.gather(1, order).cumsum(dim=-1)
    mass_before = torch.cat([torch.zeros_like(mass[:, :1]), mass[:, :-1]], dim=1)
    last_kept = sorted_logits.gather(1, (mass_before < top_p).sum(dim=-1, keepdim=True) - 1)
    return logits.masked_fill(logits < last_kept, float("-inf")).softmax(dim=-1)


@torch.no_grad()
def sample_reference(model, prompts, generator: torch.Generator, temperature: float, top_p: float,
                     new_tokens: int, line_breaks: set[int] = frozenset(), max_lines: int = 0) -> list[list[int]]:
    """Sampling written out: each step recomputes the whole batch without a cache, top-p sorts every token,
    stopped rows (at <|endoftext|> or max_lines) get padding and the loop ends at the first step after which every
    row has stopped."""
    input_ids, mask = prompts
    tokens, done = input_ids, torch.zeros(len(input_ids), dtype=torch.bool)
    for _ in range(new_tokens):
        logits = model.hidden_state_to_token(model(tokens, mask)["last_token"]) / temperature
        probs = top_p_reference(logits, top_p) if top_p < 1 else logits.softmax(dim=-1)
        next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1).masked_fill(done, PAD_ID)
        tokens, mask = torch.cat([tokens, next_token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        generated = [before_end_of_text(row) for row in tokens[:, input_ids.size(1):].tolist()]
        done |= torch.tensor([max_lines > 0 and sum(t in line_breaks for t in row) >= max_lines for row in generated])
        done |= next_token == END_OF_TEXT_ID
        if done.all():
            break
    return [cut_after_lines(row, line_breaks, max_lines) if max_lines else row for row in generated]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (1.3, 0.9), (0.7, 0.5)])
@pytest.mark.parametrize("peaked", [False, True], ids=["flat", "peaked"])
@pytest.mark.parametrize("max_lines", [0, 2])
def test_sampling_matches_plain_sampling_and_leaves_the_generator_alike(model, peaked_model, prompts, temperature,
                                                                        top_p, peaked, max_lines):
    """Same seed, same tokens; and when every row stops early, the generator ends where a loop that looks at
    the rows every step leaves it (so a later call drawing from it draws the same)."""
    model = peaked_model if peaked else model
    settings = dict(strategy="sample", temperature=temperature, top_p=top_p, max_new_tokens=2 * CHECK_EVERY + 3)
    unstopped = run(model, prompts, generator=torch.Generator().manual_seed(1), **settings)
    line_breaks = {unstopped[0][3], unstopped[0][8], unstopped[1][6], unstopped[1][9], unstopped[2][1],
                   unstopped[2][12]}
    ours, theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    rows = run(model, prompts, generator=ours, max_lines=max_lines, line_break_ids=list(line_breaks), **settings)
    assert rows == sample_reference(model, prompts, theirs, temperature, top_p, settings["max_new_tokens"],
                                    line_breaks, max_lines)
    assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=theirs))
    if max_lines:
        assert max(map(len, rows)) < CHECK_EVERY  # every row stopped between two looks: the loop ran on


def test_sampling_without_a_generator_draws_from_the_default_one(model, prompts):
    settings = dict(strategy="sample", temperature=1.3, max_new_tokens=2 * CHECK_EVERY)
    torch.manual_seed(2)
    line_breaks = {row[4] for row in run(model, prompts, **settings)}  # every row stops by its fifth token
    torch.manual_seed(2)
    rows, after = run(model, prompts, max_lines=1, line_break_ids=list(line_breaks), **settings), torch.rand(4)
    torch.manual_seed(2)
    expected = sample_reference(model, prompts, torch.default_generator, 1.3, 1.0, 2 * CHECK_EVERY, line_breaks, 1)
    assert rows == expected and torch.equal(torch.rand(4), after)


@torch.no_grad()
def next_logprobs(model, tokens: list[int]) -> torch.Tensor:
    return model.hidden_state_to_token(model(torch.tensor([tokens]))["last_hidden_state"][0, -1]).log_softmax(dim=-1)


def beam_reference(model, prompt: list[int], beams: int, length_penalty: float, line_breaks: set[int],
                   max_lines: int, new_tokens: int = NEW_TOKENS) -> list[int]:
    """Beam search written out for one unpadded prompt, recomputing without a cache. Each step takes the 2K
    likeliest extensions of the beams best first: one that ends (at <|endoftext|> or its last line break)
    finishes if it is among the K best, the K best of the others continue. The search ends once K have finished
    and the best open beam, scored at its length, is no better than the K-th of them; beams open at the end
    finish too. The length counts the <|endoftext|>; the hypothesis returned leaves it out."""
    def normalised(score: float, length: int) -> float:
        return score / length ** length_penalty

    def ends(hypothesis: list[int]) -> bool:
        lines = sum(token in line_breaks for token in hypothesis)
        return hypothesis[-1] == END_OF_TEXT_ID or 0 < max_lines <= lines and hypothesis[-1] in line_breaks

    def best() -> list[int]:
        return before_end_of_text(max(finished, key=lambda h: h[0])[1])

    open_beams, finished = [(0.0, [])], []
    for length in range(1, new_tokens + 1):
        candidates = []
        for score, generated in open_beams:
            totals = torch.tensor(score) + next_logprobs(model, prompt + generated)  # float32 sums, as batched
            top = totals.topk(2 * beams)
            candidates += [(s, generated + [t]) for s, t in zip(top.values.tolist(), top.indices.tolist())]
        open_beams = []
        for rank, (score, hypothesis) in enumerate(sorted(candidates, key=lambda c: -c[0])[:2 * beams]):
            if ends(hypothesis):
                if rank < beams:
                    finished.append((normalised(score, length), hypothesis))
            elif len(open_beams) < beams:
                open_beams.append((score, hypothesis))
        kth_best = sorted((s for s, _ in finished), reverse=True)[beams - 1] if len(finished) >= beams else None
        if not open_beams or kth_best is not None and normalised(open_beams[0][0], length) <= kth_best:
            return best()
    finished += [(normalised(score, new_tokens), hypothesis) for score, hypothesis in open_beams]
    return best()


@pytest.mark.parametrize("beams, length_penalty, max_lines", [(1, 1.0, 0), (3, 1.0, 0), (4, 0.0, 0), (2, 2.0, 1),
                                                              (4, 1.0, 2), (5, 0.5, 1)])
def test_beam_search_matches_unbatched_reference(model, prompts, beams, length_penalty, max_lines):
    greedy = greedy_reference(model, prompts)
    line_breaks = {greedy[0][2], greedy[1][5], greedy[1][7], greedy[2][3]}  # tokens the model likes, as breaks
    rows = run(model, prompts, strategy="beam", num_beams=beams, length_penalty=length_penalty, max_lines=max_lines,
               line_break_ids=list(line_breaks))
    for row, generated in enumerate(rows):
        assert generated == beam_reference(model, real_tokens(prompts, row, []), beams, length_penalty, line_breaks,
                                           max_lines)


@pytest.mark.parametrize("beams, length_penalty, max_lines", [(3, 0.0, 2), (4, 0.5, 3), (5, 0.7, 2)])
def test_beam_search_ends_at_end_of_text_or_last_line_as_unbatched_reference(eos_model, eos_prompts, beams,
                                                                             length_penalty, max_lines):
    """Both endings in one search: hypotheses that end at <|endoftext|> compete with those that end at their
    last line break (pretend line breaks: the first tokens of the rows beam search writes without them)."""
    settings = dict(strategy="beam", num_beams=beams, length_penalty=length_penalty, max_new_tokens=EOS_NEW_TOKENS)
    line_breaks = {row[0] for row in run(eos_model, eos_prompts, **settings) if row}
    rows = run(eos_model, eos_prompts, max_lines=max_lines, line_break_ids=list(line_breaks), **settings)
    for row, generated in enumerate(rows):
        assert generated == beam_reference(eos_model, real_tokens(eos_prompts, row, []), beams, length_penalty,
                                           line_breaks, max_lines, EOS_NEW_TOKENS)
    at_last_line = [sum(token in line_breaks for token in row) == max_lines for row in rows]
    at_end_of_text = [len(row) < EOS_NEW_TOKENS and not lines for row, lines in zip(rows, at_last_line)]
    assert any(at_last_line) and any(at_end_of_text)


# --- ending at <|endoftext|>, against transformers' `generate` on the same weights ---

def transformers_generate(reference: GPT2LMHeadModel, prompts, new_tokens: int = EOS_NEW_TOKENS,
                          **settings) -> list[list[int]]:
    """The new tokens of each sequence transformers' `generate` returns, before <|endoftext|>."""
    input_ids, mask = prompts
    sequences = reference.generate(input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                                   pad_token_id=END_OF_TEXT_ID, **settings)
    return [before_end_of_text(row) for row in sequences[:, input_ids.size(1):].tolist()]


def test_greedy_stops_at_end_of_text_as_transformers(eos_models, eos_prompts):
    model, reference = eos_models
    rows = run(model, eos_prompts, strategy="greedy", max_new_tokens=EOS_NEW_TOKENS)
    assert rows == transformers_generate(reference, eos_prompts, do_sample=False)
    assert len(ended_mid_generation(rows)) >= 3


# Seeds with which every row ends before the last step at temperature 0.1, so that both loops stop early, and
# some do at 0.15.
@pytest.mark.parametrize("temperature, top_k, top_p, seed", [(0.1, 0, 1.0, 3), (0.1, 100, 1.0, 6), (0.1, 0, 0.9, 0),
                                                              (0.15, 0, 1.0, 2)])
def test_sampling_stops_at_end_of_text_as_transformers(eos_models, eos_prompts, temperature, top_k, top_p, seed):
    """The same draws from the default generator, and the same state after them: once every row has ended,
    both stop drawing."""
    model, reference = eos_models
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    torch.manual_seed(seed)
    theirs = transformers_generate(reference, eos_prompts, do_sample=True, **sampling)
    after_theirs = torch.rand(4)
    torch.manual_seed(seed)
    rows = run(model, eos_prompts, strategy="sample", max_new_tokens=EOS_NEW_TOKENS, **sampling)
    assert rows == theirs and torch.equal(torch.rand(4), after_theirs)
    assert len(ended_mid_generation(rows)) >= 2


@pytest.mark.parametrize("beams, length_penalty", [(3, 1.0), (4, 1.0), (4, 0.5), (4, 2.0)])
def test_beam_search_ends_at_end_of_text_as_transformers(eos_models, eos_prompts, beams, length_penalty):
    """transformers' beam search with early_stopping=False: a hypothesis ends at <|endoftext|>, scored by the sum
    of its log-probabilities, that token's included, over its length counting that token. transformers' K
    finished hypotheses per prompt show hypotheses ending there mid-generation for several prompts."""
    model, reference = eos_models
    theirs = transformers_generate(reference, eos_prompts, do_sample=False, num_beams=beams,
                                   length_penalty=length_penalty, early_stopping=False, num_return_sequences=beams)
    rows = run(model, eos_prompts, strategy="beam", num_beams=beams, length_penalty=length_penalty,
               max_new_tokens=EOS_NEW_TOKENS)
    assert rows == theirs[::beams]
    assert sum(bool(ended_mid_generation(theirs[row:row + beams])) for row in range(0, len(theirs), beams)) >= 2


@pytest.mark.parametrize("beams, seed", [(3, 3), (4, 3), (2, 10)])
def test_beam_search_finishes_only_among_the_k_best_candidates_as_transformers(eos_models, beams, seed):
    """An <|endoftext|> candidate ranked below the K best of the 2K is dropped, not finished, as in transformers.
    Found by search: in these batches finishing it (once fewer than K candidates above it continue) would
    change one prompt's result."""
    model, reference = eos_models
    prompts = left_padded_prompts([8, 3, 5, 6, 2, 7, 4, 1], seed)
    theirs = transformers_generate(reference, prompts, 30, do_sample=False, num_beams=beams, early_stopping=False)
    assert run(model, prompts, strategy="beam", num_beams=beams, max_new_tokens=30) == theirs



@pytest.fixture(scope="module")
def repetitive_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT2Model, GPT2LMHeadModel]:
    """Like `repetitive_model`, as ours and as transformers' (the same weights, through a checkpoint): a model
    that repeats itself, where the repetition controls decide the beams."""
    reference = random_hf_gpt2(**TINY)
    with torch.no_grad():
        reference.transformer.wte.weight.mul_(10)
    directory = tmp_path_factory.mktemp("repetitive-gpt2")
    reference.save_pretrained(directory)
    return GPT2Model.from_pretrained(directory), reference


@pytest.mark.parametrize("beams, penalty, ngram", [(3, 1.3, 0), (4, 2.0, 0), (4, 1.5, 2)])
def test_beam_search_with_repetition_controls_equals_transformers_generate(repetitive_models, beams, penalty, ngram):
    """transformers' beam search applies the repetition penalty and the n-gram ban to log-probabilities, and scores
    beams by their sums without normalising again: ours does the same. The prompts are unpadded: transformers'
    penalty also counts a prompt's padding as seen, ours does not."""
    model, reference = repetitive_models
    prompts = left_padded_prompts([6] * 3, seed=4)
    settings = dict(num_beams=beams, early_stopping=False, repetition_penalty=penalty, no_repeat_ngram_size=ngram)
    theirs = transformers_generate(reference, prompts, NEW_TOKENS, do_sample=False, **settings)
    assert run(model, prompts, strategy="beam", num_beams=beams, repetition_penalty=penalty,
               no_repeat_ngram=ngram) == theirs
    assert theirs != transformers_generate(reference, prompts, NEW_TOKENS, do_sample=False, num_beams=beams,
                                           early_stopping=False, no_repeat_ngram_size=ngram)  # the penalty counts

def test_contrastive_search_copies_only_the_newest_cache_position(model, prompts, monkeypatch):
    copied = []
    copy_rows = decoding.copy_cache_rows

    def spy(cache, order, start):
        copied.append(cache[0].length - start)
        return copy_rows(cache, order, start)

    monkeypatch.setattr(decoding, "copy_cache_rows", spy)
    run(model, prompts, strategy="contrastive")
    assert copied == [prompts[0].size(1) + 1] + [1] * (NEW_TOKENS - 1)  # the first step copies the prompt too


# --- top-p over the likeliest tokens ---

def test_top_p_equals_sorting_every_token():
    """Bitwise the same probabilities, hence the same draws, as sorting all tokens, over rows flat enough that
    the NUCLEUS_HEAD likeliest tokens fall short of top_p (sorted whole) and peaked ones (settled by them),
    with ties at the cut, and top_p values so close to 1 that most rows are sorted whole."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.05, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])[:, None]
    settled_seen = unsettled_seen = False
    for seed in range(4):
        logits = torch.randn(len(scales), 50257, generator=generator) * scales
        if seed == 3:  # coarse logits: many ties, also at the cut
            logits = (logits * 2).round() / 2
        for temperature in (0.6, 1.0, 1.7):
            for top_k in (0, 1000):
                for top_p in (0.05, 0.5, 0.9, 0.99, 0.9999, 1 - 1e-9):
                    probs = sampling_distribution(logits, temperature, top_k, top_p)
                    filtered = logits / temperature
                    if top_k:
                        filtered = filtered.masked_fill(filtered < filtered.topk(top_k).values[:, -1:], float("-inf"))
                    expected = top_p_reference(filtered, top_p)
                    assert torch.equal(probs, expected), (seed, temperature, top_k, top_p)
                    settled = filtered.softmax(dim=-1).topk(NUCLEUS_HEAD).values.sum(dim=-1) >= top_p
                    settled_seen |= bool(settled.any())
                    unsettled_seen |= bool((~settled).any())
    assert settled_seen and unsettled_seen


# --- what the host reads per token ---

@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """Names of the calls made from the decoding and the model's code that read a tensor's value on the host
    or build a tensor from Python data: on a GPU each waits for the device or copies to it."""
    reads, files = [], {decoding.__file__, gpt2.__file__, attention.__file__, gpt2_layer.__file__}

    def counted(name, original):
        def wrapper(*args, **kwargs):
            if sys._getframe(1).f_code.co_filename in files:
                reads.append(name)
            return original(*args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "tensor", counted("tensor", torch.tensor))
    return reads


CONTROLS = dict(repetition_penalty=1.3, no_repeat_ngram=2, line_end_nudge=2.0, line_length=3)


# Every control that runs per token; neither <|endoftext|> nor the pretend line break 50 times comes, so no row stops
# and the host looks every CHECK_EVERY tokens. Top-p is left out: on the CPU it looks at its rows each token by design.
@pytest.mark.parametrize("settings", [dict(strategy="greedy"), dict(strategy="greedy", max_lines=50, **CONTROLS),
                                      dict(strategy="sample", temperature=1.5, top_k=20, max_lines=50, **CONTROLS)],
                         ids=["greedy", "greedy-controls", "sample-controls"])
def test_greedy_and_sampling_read_nothing_back_per_token(model, prompts, host_reads, settings):
    def reads(new_tokens: int) -> int:
        host_reads.clear()
        run(model, prompts, max_new_tokens=new_tokens, line_break_ids=[198], line_end_ids=[198],
            generator=torch.Generator().manual_seed(0), **settings)
        assert "tolist" in host_reads and "tensor" in host_reads  # the results, the constants: the spy works
        return len(host_reads)

    assert reads(3 * CHECK_EVERY) - reads(CHECK_EVERY) == 2  # the looks at whether every row has stopped


@pytest.fixture
def on_gpu(model, prompts) -> tuple[GPT2Model, torch.Tensor, torch.Tensor]:
    return copy.deepcopy(model).cuda(), *(tensor.cuda() for tensor in prompts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("settings", [dict(strategy="greedy"), dict(strategy="greedy", **CONTROLS),
                                      dict(strategy="sample", temperature=1.5, top_k=20, **CONTROLS),
                                      dict(strategy="sample", temperature=1.2, top_p=0.9),
                                      dict(strategy="sample", max_lines=50, **CONTROLS)],
                         ids=["greedy", "greedy-controls", "sample-controls", "top-p", "max-lines"])
def test_greedy_and_sampling_wait_for_the_gpu_once_every_check(on_gpu, settings):
    """The loop waits for the GPU only to look whether every row has stopped (at <|endoftext|> or max_lines;
    none does here), every CHECK_EVERY tokens and at the last: counted as sync warnings. The Decoder, built
    outside, copies its constants to the GPU and reads the prompts' padding once."""
    model, input_ids, mask = on_gpu
    config = DecodingConfig(max_new_tokens=2 * CHECK_EVERY + 3, **settings)
    decoder = Decoder(model, config, [198], [198], input_ids, mask)
    decoder.sample(input_ids, mask, torch.Generator("cuda").manual_seed(0))  # warm-up: first launches, allocations
    generator = torch.Generator("cuda").manual_seed(0)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            decoder.sample(input_ids, mask, generator)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert sum("synchronizing" in str(warning.message) for warning in caught) == 3
