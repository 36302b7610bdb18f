"""Tokenised datasets are cached on disk and reused only for the same examples, tokenizer and options."""
import warnings

import pytest

from course.files import ParaphraseExample, SentimentExample
from datasets import tokenize_paraphrase, tokenize_sentiment
from models.tokenizer import load_tokenizer
from training import token_cache
from training.token_cache import cached_tokens

SENTENCES = [SentimentExample("a", "a fine film", 3), SentimentExample("b", "dull " * 40, 0)]
PAIRS = [ParaphraseExample("p", "How old are you?", "What is your age?", 1),
         ParaphraseExample("q", "Is it raining?", "Where is Paris?", 0)]


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """tokenize_sentiment, counting its calls, with the cache in tmp_path."""
    monkeypatch.setenv("GPT2_FINETUNE_CACHE", str(tmp_path))
    calls = []

    def tokenize_sentiment_counted(*args):
        calls.append(args[2:])
        return tokenize_sentiment(*args)
    return tokenize_sentiment_counted, calls


def test_the_second_run_reuses_the_tokens_and_their_warnings(counted):
    tokenize, calls = counted
    tokenizer = load_tokenizer()
    with pytest.warns(UserWarning, match="1 sentence.s. were longer than 16 tokens"):
        first = cached_tokens(tokenize, SENTENCES, tokenizer, "{sentence}", 16, "train.csv")
    with pytest.warns(UserWarning, match="1 sentence.s. were longer than 16 tokens"):
        again = cached_tokens(tokenize, SENTENCES, tokenizer, "{sentence}", 16, "train.csv")
    assert len(calls) == 1
    assert again == first == tokenize_sentiment(SENTENCES, tokenizer, "{sentence}", 16, "train.csv")


@pytest.mark.parametrize("change", ["template", "max_len", "examples"])
def test_other_examples_or_options_are_a_new_entry(counted, change):
    tokenize, calls = counted
    tokenizer = load_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached_tokens(tokenize, SENTENCES, tokenizer, "{sentence}", 16, "train.csv")
        examples = SENTENCES[:1] if change == "examples" else SENTENCES
        template = "Review: {sentence}" if change == "template" else "{sentence}"
        other = cached_tokens(tokenize, examples, tokenizer, template, 17 if change == "max_len" else 16, "train.csv")
    assert len(calls) == 2
    assert other == tokenize_sentiment(examples, tokenizer, template, 17 if change == "max_len" else 16, "x")


def test_symmetric_pairs_and_unlabelled_files_round_trip(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2_FINETUNE_CACHE", str(tmp_path))
    tokenizer = load_tokenizer()
    unlabelled = [ParaphraseExample(e.id, e.sentence1, e.sentence2, None) for e in PAIRS]
    for examples in (PAIRS, unlabelled):
        expected = tokenize_paraphrase(examples, tokenizer, "{s1} / {s2}:", 64, "x", True)
        assert cached_tokens(tokenize_paraphrase, examples, tokenizer, "{s1} / {s2}:", 64, "x", True) == expected
        assert cached_tokens(tokenize_paraphrase, examples, tokenizer, "{s1} / {s2}:", 64, "x", True) == expected


def test_a_damaged_entry_is_built_again(counted, tmp_path):
    tokenize, calls = counted
    tokenizer = load_tokenizer()
    first = cached_tokens(tokenize, SENTENCES[:1], tokenizer, "{sentence}", 64, "x")
    (entry,) = token_cache.cache_dir().glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:50])
    assert cached_tokens(tokenize, SENTENCES[:1], tokenizer, "{sentence}", 64, "x") == first
    assert len(calls) == 2 and token_cache.read_entry(entry) is not None
