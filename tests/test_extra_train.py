"""--extra_train: more labelled rows in the course's format reach the training set, read with the course files'
rules; an id of a dev or test row is refused before anything loads."""
import json
from pathlib import Path

import pytest

import classifier
import paraphrase_detection
from course.files import read_paraphrase, read_sentiment

DATA = Path("data")


def sentiment_file(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["\tid\tsentence\tsentiment"] + [f"{k}\t{i}\t{text}\t{label}" for k, (i, text, label) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def paraphrase_file(path: Path, rows: list[tuple[str, str, str, int]]) -> Path:
    lines = ["\tid\tsentence1\tsentence2\tis_duplicate"]
    lines += [f"{k}\t{i}\t{s1}\t{s2}\t{label}.0" for k, (i, s1, s2, label) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_extra_sentiment_rows_reach_the_training_set(tmp_path, tiny_checkpoint, capsys):
    extra = sentiment_file(tmp_path / "back-translated.csv", [(f"bt-{k}", f"A fine film, number {k}.", k % 2)
                                                             for k in range(5)])
    run_dir = tmp_path / "run"
    classifier.main(["--model_path", str(tiny_checkpoint[0]), "--dataset", "cfimdb", "--fine-tune-mode", "full-model",
                     "--train_limit", "8", "--epochs", "1", "--extra_train", str(extra), "--run_dir", str(run_dir),
                     "--predictions_dir", str(tmp_path / "predictions")])
    out = capsys.readouterr().out
    assert f"--extra_train {extra}: 5 rows added to the training rows" in out
    assert "cfimdb: 13 train" in out  # the 8 sampled course rows, then the 5 extra ones
    record = json.loads((run_dir / "cfimdb" / "settings.json").read_text())
    assert record["settings"]["task"]["extra_train"] == [str(extra)]
    assert f"--extra_train ({extra})" in record["data"]  # a resume checks the extra file's contents too


@pytest.mark.parametrize("split", ["dev", "test-student"])
def test_an_extra_sentiment_row_with_a_held_out_id_is_refused(tmp_path, capsys, split):
    held_out = read_sentiment(DATA / f"ids-cfimdb-{split}.csv", 2, labelled=False)[3]
    extra = sentiment_file(tmp_path / "extra.csv", [("new-0", "Good.", 1), (held_out.id, held_out.sentence, 0)])
    with pytest.raises(SystemExit) as stop:
        classifier.main(["--dataset", "cfimdb", "--extra_train", str(extra), "--run_dir", str(tmp_path / "run")])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"classifier.py: error: --extra_train {extra}: 1 id(s) are also in --data_dir "
        f"data/ids-cfimdb-{split}.csv ({held_out.id}): training on them would leak their answers\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--extra_train", "nowhere.csv", "--dataset", "sst"], "--extra_train nowhere.csv: no such file"),
    (["--extra_train", "data/ids-sst-train.csv"], "--extra_train data/ids-sst-train.csv: holds one dataset's "
                                                  "labels: add --dataset sst or --dataset cfimdb"),
])
def test_extra_train_is_checked_at_start_up(flags, message, capsys):
    with pytest.raises(SystemExit):
        classifier.main(flags)
    assert capsys.readouterr().err == f"classifier.py: error: {message}\n"


def test_extra_paraphrase_rows_reach_the_training_set_and_leaks_are_refused(tmp_path, tiny_checkpoint, capsys):
    extra = paraphrase_file(tmp_path / "adversarial.csv", [(f"adv-{k}", f"Is {k} even?", f"Is {k} odd?", 0)
                                                           for k in range(4)])
    paraphrase_detection.main(["--model_path", str(tiny_checkpoint[0]), "--train_limit", "16", "--epochs", "1",
                               "--extra_train", str(extra), "--run_dir", str(tmp_path / "run"),
                               "--para_dev_out", str(tmp_path / "dev.csv"), "--para_test_out", str(tmp_path / "test.csv")])
    out = capsys.readouterr().out
    assert f"--extra_train {extra}: 4 rows added to the training rows" in out and "20 train" in out

    test_pair = read_paraphrase(DATA / "quora-test-student.csv", labelled=False)[0]
    leaking = paraphrase_file(tmp_path / "leak.csv", [(test_pair.id, test_pair.sentence1, test_pair.sentence2, 1)])
    with pytest.raises(SystemExit) as stop:
        paraphrase_detection.main(["--extra_train", str(leaking), "--run_dir", str(tmp_path / "run2")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (  # after the course file's own warning of an empty label
        f"paraphrase_detection.py: error: --extra_train {leaking}: 1 id(s) are also in --para_test "
        f"data/quora-test-student.csv ({test_pair.id}): training on them would leak their answers")
