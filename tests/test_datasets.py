"""Reading the course files, prompts, and batching."""
import pytest
import torch

from datasets import batch_indices, encode_prompt, pad_to_longest, tokenize_sentiment
from models.tokenizer import load_tokenizer
from training.course_files import read_sentiment

HEADER = "\tid\tsentence\tsentiment\n"


def write(tmp_path, text: str, name: str = "ids-sst-train.csv", newline: str = "\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_reads_lf_and_crlf_files_alike(tmp_path, newline):
    path = write(tmp_path, HEADER + '0\ta1\t A "quoted" caf\u00e9 .\t4\n1\tb2\tfine\t0\n', newline=newline)
    examples = read_sentiment(path, 5)
    assert [(e.id, e.sentence, e.label) for e in examples] == [("a1", 'A "quoted" caf\u00e9 .', 4), ("b2", "fine", 0)]


def test_test_files_extra_unnamed_column_is_ignored():
    examples = read_sentiment("data/ids-sst-test-student.csv", 5, labelled=False)
    assert len(examples) == 2210 and examples[0].label is None
    assert examples[0].id == "b7573736a6ddf7be102b7fee0" and examples[0].sentence.startswith("Effective")


@pytest.mark.parametrize("rows, message", [
    ("0\ta1\t   \t3\n", "line 2: id a1 has an empty sentence"),
    ("0\ta1\tok\t3\n1\ta1\tagain\t2\n", "line 3: id a1 appears twice"),
    ("0\ta1\tok\t5\n", "line 2: label '5' is outside the label set 0..4"),
    ("0\ta1\tok\tgreat\n", "line 2: label 'great' is not a number"),
    ("0\t\tok\t1\n", "line 2: the row has no id"),
    ("0\ta1\tok\n", "line 2: label None is not a number"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, rows, message):
    path = write(tmp_path, HEADER + rows)
    with pytest.raises(ValueError, match=f"{path.name}, {message}"):
        read_sentiment(path, 5)


def test_missing_file_and_missing_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; run `bash setup.sh`"):
        read_sentiment(tmp_path / "nope.csv", 5)
    path = write(tmp_path, "\tid\ttext\tsentiment\n0\ta\tb\t1\n")
    with pytest.raises(ValueError, match=r"line 1: missing column\(s\) sentence"):
        read_sentiment(path, 5)


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
