"""Our GPT-2 against transformers' on the published `gpt2` weights (124M), where this machine has them: in the
directory GPT2_WEIGHTS_DIR names, else in the Hugging Face cache. Nothing is downloaded; without the weights the
tests skip. Run them alone with `pytest -m pretrained`."""
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import try_to_load_from_cache
from transformers import GPT2LMHeadModel

from config import ATTENTION_IMPLEMENTATIONS, END_OF_TEXT_ID
from flags import UserError
from models.decoding import DecodingConfig, generate, greedy_decode
from models.gpt2 import GPT2Model
from models.hf_checkpoint import WEIGHT_FILES, resolve_checkpoint, weights_file
from models.tokenizer import load_tokenizer

pytestmark = pytest.mark.pretrained

NOT_HERE = ("the published gpt2 weights are not on this machine: set GPT2_WEIGHTS_DIR to a directory holding them, "
            "or download them once into the Hugging Face cache, where these tests look, with "
            "`hf download gpt2 config.json model.safetensors`")
# The course's sanity check (sanity_check.py): right-padded ids, compared with transformers at the real positions.
SANITY_IDS = [[101, 7592, 2088, 102, 0, 0, 0, 0], [101, 7592, 15756, 2897, 2005, 17953, 2361, 102]]
SANITY_MASK = [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
TEXTS = ["Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
         "The café's naïve owner sold 1,024 croissants — in 3 hours!"]
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived"]
NEW_TOKENS = 20
# Far tighter than the course's atol 1e-1. float32 sums in another order differ by rounding that grows with the
# values: atol 1e-4 is what the random-weight 124M test in test_gpt2.py allows, and rtol 1e-5 (torch.allclose's
# default, which minGPT's test of these same weights uses) covers the published model's logits of about -100,
# where float32 values lie 7.6e-6 apart.
TOLERANCE = dict(atol=1e-4, rtol=1e-5)


def cached_gpt2() -> Path | None:
    """The `gpt2` snapshot in the Hugging Face cache, when it holds config.json and the weights (a cache that
    only has the tokenizer files, as load_tokenizer leaves it, does not count)."""
    config = try_to_load_from_cache("gpt2", "config.json")
    if isinstance(config, str) and any(isinstance(try_to_load_from_cache("gpt2", name), str) for name in WEIGHT_FILES):
        return Path(config).parent
    return None


def checkpoint_failure(error: UserError, prefix: str = "") -> BaseException:
    """A failure saying in one line what is wrong with the checkpoint (raised `from None`: no traceback repeats it)."""
    return pytest.fail.Exception(f"{prefix}{error}", pytrace=False)


@pytest.fixture(scope="module")
def weights_dir() -> Path:
    """Named by GPT2_WEIGHTS_DIR, the directory must hold a checkpoint: the user asked for it, so a wrong one fails."""
    named = os.environ.get("GPT2_WEIGHTS_DIR")
    if not named:
        cached = cached_gpt2()
        if cached is None:
            pytest.skip(NOT_HERE)
        return cached
    directory = Path(named).expanduser()
    if not directory.is_dir():
        pytest.fail(f"GPT2_WEIGHTS_DIR={named}: no such directory; point it at a Hugging Face checkpoint directory "
                    "(config.json with model.safetensors or pytorch_model.bin), or unset it", pytrace=False)
    try:
        weights_file(resolve_checkpoint(directory))
    except UserError as error:
        raise checkpoint_failure(error, f"GPT2_WEIGHTS_DIR={named}: ") from None
    return directory


@pytest.fixture(scope="module", params=ATTENTION_IMPLEMENTATIONS)
def ours(request, weights_dir) -> GPT2Model:
    try:
        return GPT2Model.from_pretrained(weights_dir, attn_implementation=request.param).eval()
    except UserError as error:  # a damaged weights file
        raise checkpoint_failure(error) from None


@pytest.fixture(scope="module")
def reference(weights_dir) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(weights_dir, attn_implementation="eager", dtype=torch.float32).eval()


@torch.no_grad()
def test_course_sanity_check_matches_transformers(ours, reference):
    input_ids, mask = torch.tensor(SANITY_IDS), torch.tensor(SANITY_MASK)
    hf_gpt2 = reference.transformer  # transformers.GPT2Model, under the LM head
    theirs = hf_gpt2(input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    real = mask.bool()
    torch.testing.assert_close(ours(input_ids, mask)["last_hidden_state"][real], theirs[real], **TOLERANCE)


@torch.no_grad()
def test_logits_of_real_text_match_transformers(ours, reference):
    batch = load_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = ours.hidden_state_to_token(ours(input_ids, mask)["last_hidden_state"])
    real = mask.bool()
    torch.testing.assert_close(logits[real], reference(input_ids, attention_mask=mask).logits[real], **TOLERANCE)


@pytest.fixture(scope="module")
def greedy_by_transformers(reference) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """The prompts, left-padded as our decoding takes them, and transformers' greedy continuations."""
    tokenizer = load_tokenizer()
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    # eos_token_id=None: a fixed length, as greedy_decode runs; `generate` stops a row at end-of-text, as
    # transformers' own default does, and leaves that token out.
    tokens = reference.generate(input_ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                                eos_token_id=None, pad_token_id=END_OF_TEXT_ID)
    return input_ids, mask, tokens[:, input_ids.size(1):].tolist()


def test_greedy_decoding_equals_transformers_generate(ours, greedy_by_transformers):
    input_ids, mask, expected = greedy_by_transformers
    assert greedy_decode(ours, input_ids, NEW_TOKENS, mask)[:, input_ids.size(1):].tolist() == expected
    until_end = [row[:row.index(END_OF_TEXT_ID)] if END_OF_TEXT_ID in row else row for row in expected]
    assert generate(ours, input_ids, mask, DecodingConfig(strategy="greedy", max_new_tokens=NEW_TOKENS)) == until_end
