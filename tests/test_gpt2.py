"""Our GPT-2 against transformers' GPT-2 loaded from the same checkpoint."""
import math

import pytest
import torch

from config import PRESETS, GPT2Config
from models.decoding import greedy_decode
from models.gpt2 import GPT2Model
from modules.attention import KVCache
from modules.prefix import add_prefix
from tests.conftest import tiny_gpt2

IMPLEMENTATIONS = ["sdpa", "eager"]


def right_padded_batch(vocab_size: int, lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (len(lengths), max(lengths)), generator=generator)
    attention_mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return input_ids.masked_fill(attention_mask == 0, 50256), attention_mask


def assert_matches_reference(model: GPT2Model, reference, lengths: list[int], atol: float) -> None:
    input_ids, attention_mask = right_padded_batch(model.config.vocab_size, lengths)
    with torch.no_grad():
        ours = model(input_ids, attention_mask)
        theirs = reference(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    real = attention_mask.bool()
    hidden = theirs.hidden_states[-1]
    torch.testing.assert_close(ours["last_hidden_state"][real], hidden[real], atol=atol, rtol=0)
    last = torch.tensor(lengths) - 1
    torch.testing.assert_close(ours["last_token"], hidden[torch.arange(len(lengths)), last], atol=atol, rtol=0)
    logits = model.hidden_state_to_token(ours["last_hidden_state"])
    torch.testing.assert_close(logits[real], theirs.logits[real], atol=atol, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_transformers_on_tiny_config(tiny_checkpoint, implementation):
    directory, reference = tiny_checkpoint
    model = GPT2Model.from_pretrained(directory, attn_implementation=implementation).eval()
    assert_matches_reference(model, reference, lengths=[17, 9, 1, 12], atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_transformers_at_124m_shape(gpt2_124m_checkpoint, implementation):
    directory, reference = gpt2_124m_checkpoint
    model = GPT2Model.from_pretrained(directory, attn_implementation=implementation).eval()
    assert model.config.hidden_size == 768 and model.config.num_hidden_layers == 12
    assert_matches_reference(model, reference, lengths=[40, 23, 7], atol=1e-4)


def tiny_model(implementation: str = "sdpa", **overrides) -> GPT2Model:
    return tiny_gpt2(attn_implementation=implementation, **overrides).eval()


def left_padded_prompts(lengths: list[int], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, mask = right_padded_batch(50257, lengths, seed)
    # Roll each row so its padding comes first.
    shifts = [max(lengths) - n for n in lengths]
    return (torch.stack([row.roll(s) for row, s in zip(input_ids, shifts)]),
            torch.stack([row.roll(s) for row, s in zip(mask, shifts)]))


def test_attention_paths_agree_with_left_padding_and_cache():
    sdpa, eager = tiny_model("sdpa"), tiny_model("eager")
    input_ids, mask = left_padded_prompts([10, 4, 7])
    sdpa_cache, eager_cache = sdpa.new_cache(16), eager.new_cache(16)
    with torch.no_grad():
        for chunk in (slice(0, 6), slice(6, 9), slice(9, 10)):
            fused = sdpa(input_ids[:, chunk], mask[:, :chunk.stop], sdpa_cache)["last_hidden_state"]
            explicit = eager(input_ids[:, chunk], mask[:, :chunk.stop], eager_cache)["last_hidden_state"]
            torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_left_padded_rows_match_the_same_rows_alone(implementation):
    model = tiny_model(implementation)
    input_ids, mask = left_padded_prompts([10, 4, 7])
    with torch.no_grad():
        batched = model(input_ids, mask)["last_token"]
        for row, length in enumerate([10, 4, 7]):
            alone = model(input_ids[row:row + 1, -length:])["last_token"]
            torch.testing.assert_close(batched[row:row + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cached_chunks_equal_one_full_forward(implementation):
    model = tiny_model(implementation)
    input_ids, _ = right_padded_batch(50257, [12, 12])
    with torch.no_grad():
        full = model(input_ids)["last_hidden_state"]
        cache = model.new_cache(12)
        chunks = [model(input_ids[:, s], cache=cache)["last_hidden_state"]
                  for s in (slice(0, 5), slice(5, 6), slice(6, 12))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cached_decoding_equals_recomputation(implementation):
    model = tiny_model(implementation)
    input_ids, mask = left_padded_prompts([8, 3, 5])
    cached = greedy_decode(model, input_ids, 20, mask, use_cache=True)
    recomputed = greedy_decode(model, input_ids, 20, mask, use_cache=False)
    assert cached.shape == (3, 28)
    assert torch.equal(cached, recomputed)


def test_cached_decoding_matches_transformers_generate(tiny_checkpoint):
    directory, reference = tiny_checkpoint
    model = GPT2Model.from_pretrained(directory).eval()
    input_ids, mask = left_padded_prompts([8, 3, 5])
    ours = greedy_decode(model, input_ids, 20, mask)
    theirs = reference.generate(input_ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20,
                                do_sample=False, pad_token_id=50256)
    assert torch.equal(ours, theirs)


def test_cache_refuses_more_tokens_than_it_holds():
    model = tiny_model()
    cache = model.new_cache(4)
    with pytest.raises(ValueError, match="holds 4 tokens"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_sequence_longer_than_context_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="longer than the model's context of 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_every_parameter_receives_a_gradient():
    model = tiny_model().train()
    input_ids, mask = right_padded_batch(50257, [9, 5])
    out = model(input_ids, mask)
    loss = model.hidden_state_to_token(out["last_hidden_state"]).logsumexp(-1).mean() + out["last_token"].sum()
    loss.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_dropout_is_off_in_eval_and_on_in_train(implementation):
    model = tiny_model(implementation, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    input_ids, mask = right_padded_batch(50257, [9, 5])
    with torch.no_grad():
        first, second = (model(input_ids, mask)["last_hidden_state"] for _ in range(2))
        assert torch.equal(first, second)
        model.train()
        assert not torch.equal(model(input_ids, mask)["last_hidden_state"], first)



def test_from_pretrained_returns_evaluation_mode_as_transformers_does(tiny_checkpoint):
    """Two identical passes right after loading agree, as transformers' do: dropout (0.1 in the checkpoint) is off
    until training calls `.train()`."""
    model = GPT2Model.from_pretrained(tiny_checkpoint[0])
    assert model.config.hidden_dropout_prob == 0.1 and not model.training
    input_ids, mask = right_padded_batch(model.config.vocab_size, [9, 5])
    with torch.no_grad():
        assert torch.equal(model(input_ids, mask)["last_hidden_state"], model(input_ids, mask)["last_hidden_state"])

def test_random_init_follows_gpt2():
    model = tiny_model()
    residual_std = 0.02 / math.sqrt(2 * 2)
    for name, param in model.named_parameters():
        if name.endswith(("self_attention.dense.weight", "feed_forward.out_dense.weight")):
            assert abs(param.std().item() - residual_std) < 0.2 * residual_std, name
        elif name.endswith("bias") and "layer_norm" not in name:
            assert torch.all(param == 0), name
        elif "layer_norm.weight" in name:
            assert torch.all(param == 1), name
        elif name.endswith("weight"):
            assert abs(param.std().item() - 0.02) < 0.1 * 0.02, name


@pytest.mark.parametrize("preset, expected", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                              ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_presets_have_the_published_sizes(preset, expected):
    with torch.device("meta"):
        model = GPT2Model(GPT2Config.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert set(PRESETS) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


@pytest.mark.parametrize("fields, message", [
    (dict(hidden_size=100, num_attention_heads=12), "not divisible by num_attention_heads"),
    (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob must be in"),
    (dict(attn_implementation="flash"), "attn_implementation must be one of"),
    (dict(vocab_size=100), "pad_token_id 50256 is outside the vocabulary"),
])
def test_inconsistent_config_says_why(fields, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config(**fields)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="gpt2, gpt2-medium, gpt2-large, gpt2-xl"):
        GPT2Config.from_preset("gpt3")


def test_kv_cache_allocates_in_the_dtype_it_is_given():
    cache = KVCache(8)
    keys = torch.ones(2, 4, 3, 16, dtype=torch.bfloat16)
    all_keys, _ = cache.append(keys, keys)
    assert cache.keys.dtype == torch.bfloat16 and all_keys.shape == (2, 4, 3, 16) and cache.length == 3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_padding_said_by_the_caller_gives_the_outputs_of_reading_the_mask(implementation):
    model = tiny_model(implementation)
    right = right_padded_batch(50257, [9, 5, 9, 1])
    left = left_padded_prompts([9, 5, 9, 1])
    with torch.no_grad():
        for (input_ids, mask), said in ((right, "right"), (left, "left")):
            read = model(input_ids, mask)
            told = model(input_ids, mask, padding=said)
            assert all(torch.equal(read[key], told[key]) for key in read)
        # The full key mask serves right padding too, up to the pads' own states and the kernel's rounding.
        input_ids, mask = right
        read, masked = model(input_ids, mask), model(input_ids, mask, padding="left")
        real = mask.bool()
        torch.testing.assert_close(masked["last_hidden_state"][real], read["last_hidden_state"][real],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(masked["last_token"], read["last_token"], atol=1e-5, rtol=0)


def test_unknown_padding_is_refused():
    with pytest.raises(ValueError, match="padding must be one of"):
        tiny_model()(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), padding="middle")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_a_forward_told_the_padding_never_reads_a_tensor_on_the_host(implementation, padding):
    """On the meta device tensors have shapes but no values: any read of one (`.item()`, `bool()`, a Python
    branch on a comparison), which on a GPU waits for the device, raises. Training and scoring passes,
    with and without a mask, a cache or a prefix, must all run through."""
    with torch.device("meta"):
        model = tiny_gpt2(attn_implementation=implementation)
        input_ids, mask = torch.zeros(3, 9, dtype=torch.long), torch.ones(3, 9, dtype=torch.long)
    for training in (True, False):
        model.train(training)
        assert model(input_ids, mask, padding=padding)["last_token"].shape == (3, 64)
        assert model(input_ids)["last_hidden_state"].shape == (3, 9, 64)
    model.eval()
    cache = model.new_cache(12)
    model(input_ids, mask, cache, padding=padding)
    step_mask = torch.ones(3, 10, dtype=torch.long, device="meta")
    assert model(input_ids[:, :1], step_mask, cache, padding=padding)["last_token"].shape == (3, 64)
    add_prefix(model, 4)
    model.train()
    assert model(input_ids, mask, padding=padding)["last_token"].shape == (3, 64)
    with pytest.raises(RuntimeError, match="meta"):  # left to find out, the model reads the mask
        model(input_ids, mask)
