"""Issue 22's edge cases of data, grading, resumes and NaN advice: each was accepted, or ended in a traceback or a
misleading refusal, before; each is now read as documented or refused at start-up in one line."""
import hashlib
import json
import math
import shlex
from pathlib import Path

import pytest
import torch

import classifier
import paraphrase_detection
from course.files import lines_from_bytes, read_lines, read_predictions, read_table
from course.gold import read_gold
from course.sonnets import read_sonnets
from flags import UserError
from training import loop

DATA = Path("data")
BOM = b"\xef\xbb\xbf"


def sentiment_file(path: Path, rows: list[tuple[str, str, int | None]]) -> Path:
    """A course sentiment CSV; rows without a label (None) make an unlabelled (test) file."""
    labelled = rows[0][2] is not None
    lines = ["\tid\tsentence" + ("\tsentiment" if labelled else "")]
    lines += [f"{k}\t{i}\t{text}" + (f"\t{label}" if labelled else "") for k, (i, text, label) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def refusal(capsys: pytest.CaptureFixture, main, argv: list[str]) -> str:
    """The one line a refused command prints on stderr (after any warnings); it must exit with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in message
    return message


def file_hashes(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def dev_epochs(run_dir: Path) -> list[int]:
    return [record["epoch"] for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if record["split"] == "dev"]


def sst_run(checkpoint: Path, out: Path, *flags: str) -> list[str]:
    """The flags of a small full-model SST run writing everything under `out`."""
    return ["--model_path", str(checkpoint), "--dataset", "sst", "--fine-tune-mode", "full-model", "--train_limit",
            "16", "--batch_size", "8", "--epochs", "1", "--lr", "1e-3", "--run_dir", str(out / "run"),
            "--predictions_dir", str(out / "predictions"), *flags]


# -----------------------------------------------------------------------------
# a byte-order mark inside a file; one line reader for files and standard input

JOINED = {
    "sonnets": (read_sonnets, BOM + b"Sonnets\n\n1\nA\nB\n" + BOM + b"Sonnets\n\n2\nC\n", 6),
    "course CSV": (lambda path: read_table(path, ("id", "sentence")), b"\tid\tsentence\n0\ta\tok\n" + BOM
                   + b"\tid\tsentence\n1\tb\tfine\n", 3),
    "gold labels": (lambda path: read_gold(path, num_labels=5), b"\tid\tsentence\tsentiment\n0\ta\tok\t1\n" + BOM
                    + b"1\tb\tfine\t2\n", 3),
    "predictions": (read_predictions, b"id \t Predicted_Sentiment \na , 1 \n" + BOM + b"b , 2 \n", 3),
}


@pytest.mark.parametrize("kind", JOINED)
def test_two_files_joined_with_cat_are_refused_at_the_inner_byte_order_mark(tmp_path, kind):
    read, content, line = JOINED[kind]
    path = tmp_path / "joined.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"^{path}, line {line}: a byte-order mark inside the file: two files joined"):
        read(path)
    path.write_bytes(content[:3] + content[3:].replace(BOM, b""))  # the first one is allowed: the file's own
    read(path)


def test_joined_sonnet_files_no_longer_merge_the_second_files_first_sonnet_into_the_one_before(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(BOM + b"Sonnets\n\n1\nA\nB\n")
    second.write_bytes(BOM + b"Sonnets\n\n2\nC\n")
    joined = tmp_path / "joined.txt"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    with pytest.raises(UserError, match="line 6: a byte-order mark inside the file"):
        read_sonnets(joined)
    joined.write_bytes(first.read_bytes() + second.read_bytes()[3:])  # joined without the second mark
    assert read_sonnets(joined) == {1: ["A", "B", "Sonnets"], 2: ["C"]}  # "Sonnets" is text, as in any sonnet


def test_lines_from_bytes_reads_standard_input_by_the_file_rules_and_names_its_source(tmp_path):
    data = BOM + b"first\r\nsecond\n"
    assert lines_from_bytes(data, "standard input") == ["first", "second"]
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    assert read_lines(path) == lines_from_bytes(data, str(path))
    for bad, problem in ((b"ok\n\xe9\n", r"line 2: byte 0xe9 \(column 1\) is not UTF-8"),
                         (b"ok\nso\rso\n", "line 2: a carriage return inside the line"),
                         (b"ok\n" + BOM + b"again\n", "line 2: a byte-order mark inside the file")):
        with pytest.raises(UserError, match="^standard input, " + problem):
            lines_from_bytes(bad, "standard input")


# -----------------------------------------------------------------------------
# grading over the task's label set, from a training script

def test_a_dev_file_that_lacks_a_class_trains_writes_and_grades_its_predictions(tmp_path, long_context_checkpoint,
                                                                                capsys):
    sentences = [example.split("\t")[2] for example in (DATA / "ids-sst-train.csv").read_text().splitlines()[1:25]]
    data = tmp_path / "data"
    data.mkdir()
    sentiment_file(data / "ids-sst-train.csv", [(f"t{k}", text, 4) for k, text in enumerate(sentences[:16])])
    sentiment_file(data / "ids-sst-dev.csv", [(f"d{k}", text, 0) for k, text in enumerate(sentences[16:22])])
    sentiment_file(data / "ids-sst-test-student.csv", [(f"s{k}", text, None) for k, text in enumerate(sentences[22:])])
    classifier.main(sst_run(long_context_checkpoint, tmp_path, "--data_dir", str(data), "--lr", "1e-2"))
    predicted = read_predictions(tmp_path / "predictions/full-model-sst-dev-out.csv")
    assert set(predicted.values()) - {"0"}, "the test needs a prediction of a class the dev file lacks"
    accuracy = sum(label == "0" for label in predicted.values()) / len(predicted)
    assert f"sst dev: accuracy {accuracy:.4f}" in capsys.readouterr().out
    assert "result" in json.loads((tmp_path / "run/sst/settings.json").read_text())


# -----------------------------------------------------------------------------
# --extra_train rows that would be trained on twice

def test_the_same_extra_train_file_given_twice_is_refused_at_start_up(tmp_path, capsys):
    extra = sentiment_file(tmp_path / "extra.csv", [("new-0", "Good.", 1)])
    again = tmp_path / "." / "extra.csv"
    message = refusal(capsys, classifier.main, ["--dataset", "cfimdb", "--extra_train", str(extra), str(again),
                                                "--run_dir", str(tmp_path / "run")])
    assert message == (f"classifier.py: error: --extra_train {again}: the same file as --extra_train {extra}; its rows "
                       "would be trained on twice")
    assert not (tmp_path / "run").exists()


def test_an_extra_row_with_a_training_id_is_refused_naming_both_lines(tmp_path, capsys):
    train = read_table(DATA / "ids-cfimdb-train.csv", ("id",))[6]
    extra = sentiment_file(tmp_path / "extra.csv", [("new-0", "Good.", 1), (train.fields["id"], "Again.", 0)])
    message = refusal(capsys, classifier.main, ["--dataset", "cfimdb", "--extra_train", str(extra),
                                                "--run_dir", str(tmp_path / "run")])
    assert message == (f"classifier.py: error: --extra_train {extra}, line 3: id {train.fields['id']} is also the row "
                       f"of data/ids-cfimdb-train.csv, line {train.line}: it would be trained on twice")
    assert not (tmp_path / "run").exists()


def test_an_id_in_two_extra_files_is_refused_naming_both_lines(tmp_path, capsys):
    first = sentiment_file(tmp_path / "first.csv", [("new-0", "Good.", 1), ("new-1", "Bad.", 0)])
    second = sentiment_file(tmp_path / "second.csv", [("new-2", "Fine.", 1), ("new-3", "Dull.", 0),
                                                      ("new-1", "Bad again.", 0)])
    message = refusal(capsys, classifier.main, ["--dataset", "cfimdb", "--extra_train", str(first), str(second),
                                                "--run_dir", str(tmp_path / "run")])
    assert message == (f"classifier.py: error: --extra_train {second}, line 4: id new-1 is also the row of {first}, "
                       "line 3: it would be trained on twice")


def test_an_extra_paraphrase_row_with_a_training_id_is_refused(tmp_path, capsys):
    train = read_table(DATA / "quora-train.csv", ("id",))[2]
    extra = tmp_path / "extra.csv"
    extra.write_text(f"\tid\tsentence1\tsentence2\tis_duplicate\n0\t{train.fields['id']}\tQ1?\tQ2?\t1.0\n")
    message = refusal(capsys, paraphrase_detection.main, ["--extra_train", str(extra), "--run_dir",
                                                          str(tmp_path / "run")])
    assert message.endswith(f"--extra_train {extra}, line 2: id {train.fields['id']} is also the row of "
                            f"data/quora-train.csv, line {train.line}: it would be trained on twice")
    assert not (tmp_path / "run").exists()


# -----------------------------------------------------------------------------
# --label_words

@pytest.mark.parametrize("words, problem", [
    (" bad, good, bad, fine, great", "'bad' is given twice, so its second class could never be predicted"),
    (" bad,, okay, good, great", "a word is empty: give one word per class, apart by commas"),
    (" bad, good, okay, good, great", "'good' is given twice"),
])
def test_label_words_with_a_repeated_or_empty_word_are_refused_at_start_up(tmp_path, capsys, words, problem):
    message = refusal(capsys, classifier.main, ["--cloze", "--fine-tune-mode", "full-model", "--dataset", "sst",
                                                "--label_words", words, "--run_dir", str(tmp_path / "run")])
    assert message.startswith(f"classifier.py: error: --label_words {words!r}: {problem}")
    assert not (tmp_path / "run").exists()


# -----------------------------------------------------------------------------
# a refused --resume changes no file

def test_a_resume_refused_for_a_damaged_best_pt_changes_no_file(tmp_path, capsys, long_context_checkpoint):
    flags = sst_run(long_context_checkpoint, tmp_path)
    classifier.main(flags)
    best = tmp_path / "run/sst/best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    before = file_hashes(tmp_path)
    for epochs in ("1", "2"):  # nothing left to train, or one more epoch
        message = refusal(capsys, classifier.main, flags + ["--resume", "--epochs", epochs])
        assert message.startswith(f"classifier.py: error: {best} cannot be read (the file is damaged or incomplete")
        assert message.endswith("restore it, or start the run again with --overwrite")
        assert file_hashes(tmp_path) == before

    classifier.main(flags + ["--overwrite"])  # as advised
    assert dev_epochs(tmp_path / "run/sst") == [0]
    assert torch.load(best, weights_only=True)["epoch"] == 0


# -----------------------------------------------------------------------------
# NaN advice after an epoch that had already blown up

def test_a_nan_after_an_epoch_that_blew_up_advises_starting_again_which_trains(monkeypatch, tmp_path,
                                                                               long_context_checkpoint):
    # --lr 1e5 blows the model up in epoch 0 (its dev loss ~1e11, really); in epoch 1 its loss turns NaN, which
    # happens to such a model sooner or later: made certain here, at the rates that blow it up.
    optimizers = []
    make_optimizer = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda *a, **k: optimizers.append(make_optimizer(*a, **k))
                        or optimizers[-1])
    cross_entropy, steps = classifier.F.cross_entropy, [0]

    def nan_in_epoch_1_at_a_blowing_up_rate(*args, **kwargs):
        loss = cross_entropy(*args, **kwargs)
        if not loss.requires_grad:  # the dev loss
            return loss
        steps[0] += 1
        blowing_up = optimizers[-1].param_groups[-1]["lr"] >= 1e5
        return loss * float("nan") if blowing_up and steps[0] > 2 else loss

    monkeypatch.setattr(classifier.F, "cross_entropy", nan_in_epoch_1_at_a_blowing_up_rate)
    flags = sst_run(long_context_checkpoint, tmp_path, "--epochs", "3", "--lr", "1e5")
    with pytest.raises(SystemExit) as stopped:
        classifier.main(flags)
    message = str(stopped.value.code)
    assert "the training loss is nan at epoch 1" in message
    assert f"{tmp_path / 'run/sst/last.pt'} holds a model that had already blown up (its dev loss after epoch 0 is" \
           in message and "resuming from it would diverge again, so start again more gently" in message
    advice = shlex.split(message.rsplit("add ", 1)[1])
    assert advice == ["--overwrite", "--lr", "10000", "--clip_norm", "1.0"]

    classifier.main(flags + advice)
    assert dev_epochs(tmp_path / "run/sst") == [0, 1, 2]  # trained from the start, all its epochs
    record = json.loads((tmp_path / "run/sst/settings.json").read_text())
    assert "result" in record and record["settings"]["train"]["lr"] == 1e4 and "resumed" not in record


@pytest.mark.parametrize("losses, blown", [
    ([1.6, 1.4, 1.5], None),
    ([1.6, 17.0], "its dev loss after epoch 1, 17, is more than 10 times epoch 0's, 1.6"),
    ([3e11], "its dev loss after epoch 0 is 3e+11"),
    ([1.6, math.nan], "its dev loss after epoch 1 is nan"),
    ([1.6, math.inf], "its dev loss after epoch 1 is inf"),
])
def test_a_blown_up_model_is_told_by_its_last_dev_loss(losses, blown):
    records = [{"split": "train", "epoch": 0, "loss": 1e20}]  # training losses do not count
    records += [{"split": "dev", "epoch": epoch, "accuracy": 0.2, "loss": loss} for epoch, loss in enumerate(losses)]
    assert loop.blown_up(records) == blown
    assert loop.blown_up([{"split": "dev", "epoch": 0, "chrf": 1e9}]) is None  # a task without a dev loss
