"""--course_preprocessing: the classifying scripts prepare text as the course's code does (sentences lowercased; Quora
questions lowercased with . ? , ' split from their words) only when asked, and the token cache keeps the two apart."""
from dataclasses import replace

import pytest

import classifier
import paraphrase_detection as para
from course.files import ParaphraseExample, SentimentExample
from datasets import course_question, course_sentence, tokenize_paraphrase, tokenize_sentiment
from models.tokenizer import load_tokenizer
from training import token_cache
from training.token_cache import cached_tokens

SENTENCES = [SentimentExample("a", "A Fine Film by Kurosawa", 3), SentimentExample("b", "DULL , and Long .", 0)]
PAIRS = [ParaphraseExample("p", "What's the capital of the U.S.?", "Where is Washington, D.C.?", 1),
         ParaphraseExample("q", "Is it raining?", "Why is Paris   the capital?", 0)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def encoded(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer.encode(text) for text in texts]


def test_course_preprocessing_lowercases_and_splits_question_marks_as_the_course_does():
    assert course_sentence("A Fine Film by Kurosawa") == "a fine film by kurosawa"
    assert course_question("What's the capital of the U.S.?") == "what 's the capital of the u .s . ?"
    assert course_question("Where is Washington, D.C.?") == "where is washington , d .c . ?"
    assert course_question("Why is Paris   the capital?") == "why is paris the capital ?"


def test_sentences_are_lowercased_only_when_asked(tokenizer):
    as_written = tokenize_sentiment(SENTENCES, tokenizer, "{sentence}", 64, "train.csv")
    lowered = tokenize_sentiment(SENTENCES, tokenizer, "{sentence}", 64, "train.csv", course_preprocessing=True)
    assert as_written.tokens == encoded(tokenizer, [example.sentence for example in SENTENCES])
    assert lowered.tokens == encoded(tokenizer, ["a fine film by kurosawa", "dull , and long ."])


def test_questions_are_prepared_in_both_orders_only_when_asked(tokenizer):
    template = "{s1} | {s2}"
    as_written = tokenize_paraphrase(PAIRS, tokenizer, template, 64, "train.csv", symmetric=True)
    prepared = tokenize_paraphrase(PAIRS, tokenizer, template, 64, "train.csv", symmetric=True,
                                   course_preprocessing=True)
    assert as_written.tokens[0] == tokenizer.encode("What's the capital of the U.S.? | Where is Washington, D.C.?")
    first = "what 's the capital of the u .s . ? | where is washington , d .c . ?"
    assert prepared.tokens[0] == tokenizer.encode(first)
    assert prepared.mirror[1] == tokenizer.encode("why is paris the capital ? | is it raining ?")


def test_the_token_cache_never_serves_a_cased_entry_to_a_lowercased_run(tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2_FINETUNE_CACHE", str(tmp_path))
    options = ("{sentence}", 64, "train.csv")
    cased = cached_tokens(tokenize_sentiment, SENTENCES, tokenizer, *options, False)
    lowered = cached_tokens(tokenize_sentiment, SENTENCES, tokenizer, *options, True)
    assert len(list(token_cache.cache_dir().iterdir())) == 2
    assert lowered == tokenize_sentiment(SENTENCES, tokenizer, *options, course_preprocessing=True) != cased
    assert cached_tokens(tokenize_sentiment, SENTENCES, tokenizer, *options, False) == cased


def test_both_classifying_scripts_prepare_their_text_with_the_flag(tokenizer):
    sentiment = classifier.get_settings(["--course_preprocessing", "--dataset", "sst"]).task
    assert not classifier.get_settings(["--dataset", "sst"]).task.course_preprocessing
    data = classifier.tokenized(sentiment, "dev.csv", SENTENCES, tokenizer, 64)
    assert data.tokens == encoded(tokenizer, ["a fine film by kurosawa", "dull , and long ."])

    pairs = para.get_settings(["--course_preprocessing", "--k_shot", "1"]).task
    assert not para.get_settings([]).task.course_preprocessing
    template = para.prompt_template(pairs, PAIRS[:1], seed=0)
    assert template.startswith(para.PROMPT.format(s1="what 's the capital of the u .s . ?",
                                                  s2="where is washington , d .c . ?") + "yes\n")
    data = para.tokenized(replace(pairs, k_shot=0), PAIRS, pairs.para_dev, tokenizer, pairs.prompt, 128)
    prepared = [replace(pair, sentence1=course_question(pair.sentence1), sentence2=course_question(pair.sentence2))
                for pair in PAIRS]
    assert data.tokens == tokenize_paraphrase(prepared, tokenizer, pairs.prompt, 128, "dev.csv").tokens
