"""Prompts, tokenising and batching."""
import pytest
import torch

from course.files import read_sentiment
from datasets import EpochBatches, TokenizedDataset, batch_indices, encode_prompt, pad_to_longest, tokenize_sentiment
from flags import UserError
from models.tokenizer import load_tokenizer


def test_prompt_tokenises_like_the_whole_string():
    tokenizer = load_tokenizer()
    ids, cut = encode_prompt(tokenizer, "Review: {sentence} Sentiment:", {"sentence": "a great movie"}, 100)
    assert ids == tokenizer.encode("Review: a great movie Sentiment:") and not cut


def test_long_fields_are_cut_from_their_end_and_the_template_survives():
    tokenizer = load_tokenizer()
    template = 'Is "{s1}" a paraphrase of "{s2}"? Answer "yes" or "no":'
    long = " ".join(["word"] * 50)
    ids, cut = encode_prompt(tokenizer, template, {"s1": long, "s2": "short one"}, 30)
    assert cut and len(ids) == 30
    assert tokenizer.decode(ids).endswith('" a paraphrase of "short one"? Answer "yes" or "no":')


def test_a_prompt_that_leaves_no_room_for_its_fields_is_refused():
    with pytest.raises(UserError, match="the prompt is 17 tokens without its fields, which leaves no room for them "
                                        r"in the model's 12: shorten --prompt \(or use a smaller --k_shot\)"):
        encode_prompt(load_tokenizer(), 'Is "{s1}" a paraphrase of "{s2}"? Answer "yes" or "no":',
                      {"s1": "a", "s2": "b"}, 12)


def test_sentences_longer_than_the_context_are_cut_with_a_warning():
    examples = read_sentiment("data/ids-cfimdb-dev.csv", 2)[:20]
    with pytest.warns(UserWarning, match="longer than 64 tokens"):
        data = tokenize_sentiment(examples, load_tokenizer(), "{sentence}", 64, "cfimdb dev")
    assert max(len(t) for t in data.tokens) == 64


def test_batches_pad_to_the_longest_row_and_cover_every_row_once():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    for shuffle in (False, True):
        batches = batch_indices(lengths, 3, shuffle, seed=4)
        assert sorted(i for b in batches for i in b) == list(range(7))
    assert batch_indices(lengths, 3, shuffle=False) == [[1, 5, 3], [0, 4, 6], [2]]
    assert batch_indices(lengths, 3, True, seed=4) == batch_indices(lengths, 3, True, seed=4)
    input_ids, mask = pad_to_longest([[1, 2, 3], [4]], pad_id=0)
    assert torch.equal(input_ids, torch.tensor([[1, 2, 3], [4, 0, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 0, 0]]))


def test_batches_are_built_once_per_epoch_and_evaluation_batches_once():
    data = TokenizedDataset(["a", "b", "c"], [[1, 2], [3], [4, 5, 6]], [0, 1, 0])
    epochs = EpochBatches(data, 2, seed=1)
    first = epochs(0)
    assert epochs(0) is first and epochs(1) is not first and epochs(1) is epochs(1)
    assert [b["indices"].tolist() for b in epochs(0)] == [b["indices"].tolist() for b in data.batches(2, True, 1)]
    assert data.batches(2, shuffle=False) is data.batches(2, shuffle=False)
    assert data.batches(3, shuffle=False) is not data.batches(2, shuffle=False)
