"""Prediction files, gold labels, metrics and the `grade` command of evaluation.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from course.files import PARAPHRASE_HEADER, SENTIMENT_HEADER, read_predictions, write_predictions
from course.gold import Gold, read_gold
from course.metrics import classification_metrics
from evaluation import grade, main
from flags import UserError

ROOT = Path(__file__).resolve().parent.parent


def write_gold(path, rows, columns=("id", "sentence", "sentiment"), line_end="\n"):
    """A labelled course CSV: tab-separated, with the unnamed leading index column."""
    lines = ["\t" + "\t".join(columns)] + [f"{n}\t" + "\t".join(row) for n, row in enumerate(rows)]
    path.write_text("".join(line + line_end for line in lines), newline="")
    return path


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def sst_gold(tmp_path):
    """An SST dev file (by its name: labels 0-4) that holds classes 0, 2 and 4 only."""
    return write_gold(tmp_path / "ids-sst-dev.csv", [("a", "good .", "4"), ("b", "bad .", "0"), ("c", "meh .", "2")])


# -----------------------------------------------------------------------------
# metrics

def test_three_class_metrics_match_hand_computed_values():
    golds = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(golds, preds, range(3))
    # per class: 0 -> P 1/2 R 1/2 F1 1/2; 1 -> P 2/3 R 1 F1 4/5; 2 -> P 1 R 1/2 F1 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["labels"] == ["0", "1", "2"]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["1"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 4 / 5, "support": 2})
    assert m["per_class"]["2"] == pytest.approx({"precision": 1.0, "recall": 1 / 2, "f1": 2 / 3, "support": 2})
    assert "f1" not in m  # binary scores only for {0, 1}


def test_binary_metrics_score_the_positive_class():
    golds = ["1", "1", "1", "1", "0", "0"]
    preds = [1, 1, 0, 0, 1, 0]  # ints and strings compare as the same labels
    m = classification_metrics(golds, preds, [0, 1])
    # class 1: tp 2, fp 1, fn 2
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    assert m["confusion_matrix"] == [[1, 1], [2, 2]]


def test_metrics_follow_the_given_label_order_and_are_json_serialisable():
    m = classification_metrics(["2", "10", "10"], ["10", "10", "2"], labels=["10", "2", "7"])
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert list(m["per_class"]) == ["10", "2", "7"]
    assert json.loads(json.dumps(m)) == m


def test_metrics_refuse_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        classification_metrics([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [], [0, 1])


def test_macro_f1_averages_over_the_label_set_and_refuses_labels_outside_it():
    # class 2 is never predicted nor gold: it still counts, with F1 0
    assert classification_metrics([0, 1], [0, 1], range(3))["macro_f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="label.s. 7 are not in the label set 0, 1"):
        classification_metrics([0, 1], [0, 7], [0, 1])


# -----------------------------------------------------------------------------
# prediction files

def test_write_then_read_keeps_ids_and_order_in_the_course_layout(tmp_path):
    path = tmp_path / "out" / "sst-dev-output.csv"  # the parent directory is created
    ids = ["z9", "a1", "m5"]
    write_predictions(path, ids, [3, 0, 4], SENTIMENT_HEADER)
    assert path.read_text() == "id \t Predicted_Sentiment \nz9 , 3 \na1 , 0 \nm5 , 4 \n"
    assert list(read_predictions(path).items()) == [("z9", "3"), ("a1", "0"), ("m5", "4")]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "para-dev-output.csv"
    write_predictions(path, ["a", "b"], [0, 1], PARAPHRASE_HEADER)
    write_predictions(path, ["c"], [1], PARAPHRASE_HEADER)
    assert path.read_text() == "id \t Predicted_Is_Paraphrase \nc , 1 \n"


def test_write_refuses_duplicate_ids_and_length_mismatch(tmp_path):
    path = tmp_path / "out.csv"
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        write_predictions(path, ["a", "b", "a"], [1, 2, 3], SENTIMENT_HEADER)
    with pytest.raises(ValueError, match="3 ids but 2 labels"):
        write_predictions(path, ["a", "b", "c"], [1, 2], SENTIMENT_HEADER)
    assert not path.exists()


def test_reading_is_tolerant_of_spacing_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_bytes(b"id \t Predicted_Sentiment \r\n a ,3\r\nb,  1 \r\n\r\n")
    assert read_predictions(path) == {"a": "3", "b": "1"}


@pytest.mark.parametrize("line, problem", [
    ("a 3", "no comma"),
    (" , 3", "empty id"),
    ("a , ", "empty label"),
    ("x , 1", "duplicate id 'x'"),
])
def test_malformed_prediction_lines_are_reported_with_file_and_line(tmp_path, line, problem):
    path = write_lines(tmp_path / "preds.csv", "id \t Predicted_Sentiment ", "x , 1", "y , 2", line)
    with pytest.raises(ValueError, match=rf"preds\.csv, line 4: {problem}"):
        read_predictions(path)


def test_a_prediction_file_without_header_is_reported(tmp_path):
    path = write_lines(tmp_path / "preds.csv", "x , 1", "y , 2")
    with pytest.raises(ValueError, match=r"preds\.csv, line 1: expected a header"):
        read_predictions(path)


def test_missing_prediction_file_is_reported_by_name(tmp_path):
    with pytest.raises(UserError, match=r"nope\.csv does not exist"):
        read_predictions(tmp_path / "nope.csv")


# -----------------------------------------------------------------------------
# gold labels

def test_gold_labels_detect_the_label_column_and_read_crlf(tmp_path):
    path = write_gold(tmp_path / "ids-sst-dev.csv", [("a", "x", "3", "1"), ("b", "y", "0", "2")],
                      ("id", "sentence", "sentiment", "stars"), line_end="\r\n")
    assert read_gold(path) == Gold({"a": "3", "b": "0"}, [], "sentiment", ["0", "1", "2", "3", "4"])
    assert read_gold(path, label_column="stars", num_labels=3) == Gold({"a": "1", "b": "2"}, [], "stars",
                                                                        ["0", "1", "2"])


def test_gold_without_label_column_or_with_empty_id_is_reported(tmp_path):
    unlabelled = write_gold(tmp_path / "test.csv", [("a", "x")], columns=("id", "sentence"))
    with pytest.raises(ValueError, match=r"test\.csv, line 1: no 'sentiment' or 'is_duplicate' label column"):
        read_gold(unlabelled)
    with pytest.raises(ValueError, match=r"test\.csv, line 1: column 'label' is missing"):
        read_gold(unlabelled, label_column="label")
    no_id = write_gold(tmp_path / "ids-sst-dev.csv", [("a", "x", "1"), ("", "y", "2")])
    with pytest.raises(ValueError, match=r"ids-sst-dev\.csv, line 3: the row has no id"):
        read_gold(no_id)


def test_quora_gold_skips_empty_labels_and_normalises_floats(tmp_path):
    columns = ("id", "sentence1", "sentence2", "is_duplicate")
    gold = write_gold(tmp_path / "quora.csv", [("p", "q1", "q2", "1.0"), ("q", "q3", "q4", ""),
                                               ("r", "q5", "q6", "0.0"), ("s", "q7", "q8", "1.0")], columns)
    assert read_gold(gold) == Gold({"p": "1", "r": "0", "s": "1"}, ["q"], "is_duplicate", ["0", "1"])

    preds = tmp_path / "para-dev-output.csv"
    write_predictions(preds, ["p", "r", "s"], [1, 1, 1], PARAPHRASE_HEADER)  # no prediction for unlabelled 'q'
    result = grade(preds, gold)
    assert (result["count"], result["skipped"]) == (3, 1)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert (result["precision"], result["recall"]) == pytest.approx((2 / 3, 1.0))

    write_predictions(preds, ["p", "q", "r", "s"], [1, 0, 0, 1], PARAPHRASE_HEADER)  # a prediction for 'q' is ignored
    assert grade(preds, gold)["accuracy"] == 1.0


def test_paraphrase_answers_grade_alike_as_token_ids_or_0_1_but_not_mixed(tmp_path):
    gold = write_gold(tmp_path / "quora.csv", [("p", "q1", "q2", "1.0"), ("r", "q5", "q6", "0.0"),
                                               ("s", "q7", "q8", "1.0")], ("id", "sentence1", "sentence2", "is_duplicate"))
    plain, tokens = tmp_path / "plain.csv", tmp_path / "tokens.csv"
    write_predictions(plain, ["p", "r", "s"], [1, 1, 0], PARAPHRASE_HEADER)
    write_predictions(tokens, ["p", "r", "s"], [8505, 8505, 3919], PARAPHRASE_HEADER)  # "yes", "yes", "no"
    assert grade(tokens, gold) == grade(plain, gold)
    assert grade(tokens, gold)["accuracy"] == pytest.approx(1 / 3)

    write_predictions(tokens, ["p", "r", "s"], [8505, 0, 3919], PARAPHRASE_HEADER)
    with pytest.raises(UserError, match=r"tokens.csv: id p is predicted 8505 .* but id r is predicted 0 .*one encoding"):
        grade(tokens, gold)
    write_predictions(tokens, ["p", "r", "s"], [8505, 50256, 3919], PARAPHRASE_HEADER)
    with pytest.raises(UserError, match=r"tokens.csv, line 3: id r is predicted '50256', which is not one of the labels \(0, 1, 3919, 8505\)"):
        grade(tokens, gold)


# -----------------------------------------------------------------------------
# grading

def test_grade_reports_missing_and_unknown_ids_with_counts(tmp_path, sst_gold):
    preds = tmp_path / "p.csv"
    write_predictions(preds, ["a", "b"], [4, 0], SENTIMENT_HEADER)
    with pytest.raises(ValueError, match=r"1 of 3 gold ids have no prediction \(c\)"):
        grade(preds, sst_gold)
    write_predictions(preds, ["a", "b", "c", "x", "y"], [4, 0, 2, 0, 0], SENTIMENT_HEADER)
    with pytest.raises(ValueError, match=r"2 of 5 predicted ids are not in the gold file \(x, y\)"):
        grade(preds, sst_gold)


def test_grade_reports_duplicate_predictions(tmp_path, sst_gold):
    preds = write_lines(tmp_path / "p.csv", "id \t Predicted_Sentiment ", "a , 4", "b , 0", "a , 1", "c , 2")
    with pytest.raises(ValueError, match=r"p\.csv, line 4: duplicate id 'a'"):
        grade(preds, sst_gold)


def test_grade_reports_a_missing_gold_file(tmp_path):
    preds = tmp_path / "p.csv"
    write_predictions(preds, ["a"], [1], SENTIMENT_HEADER)
    with pytest.raises(UserError, match=r"missing\.csv does not exist"):
        grade(preds, tmp_path / "missing.csv")


# -----------------------------------------------------------------------------
# command line

def test_cli_prints_the_report_and_exits_zero(tmp_path, sst_gold, capsys):
    preds = tmp_path / "p.csv"
    write_predictions(preds, ["a", "b", "c"], [4, 0, 0], SENTIMENT_HEADER)
    main(["grade", str(preds), str(sst_gold)])
    out = capsys.readouterr().out
    assert "accuracy   0.6667" in out and "macro-F1" in out and "confusion matrix" in out


def test_cli_fails_with_a_one_line_error_and_no_traceback(tmp_path, sst_gold):
    preds = write_lines(tmp_path / "p.csv", "id \t Predicted_Sentiment ", "a , 4", "b 0")
    run = subprocess.run([sys.executable, "evaluation.py", "grade", str(preds), str(sst_gold)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "p.csv, line 3: no comma" in run.stderr


def test_gold_labels_of_the_real_sst_dev_file_grade_perfectly(tmp_path, capsys):
    gold_path = ROOT / "data" / "ids-sst-dev.csv"
    if not gold_path.exists():
        pytest.skip("course data not in data/")
    gold = read_gold(gold_path).labels
    preds = tmp_path / "sst-dev-output.csv"
    write_predictions(preds, list(gold), list(gold.values()), SENTIMENT_HEADER)
    main(["grade", str(preds), str(gold_path)])
    out = capsys.readouterr().out
    assert f"examples   {len(gold)}" in out and "accuracy   1.0000" in out


def test_grade_refuses_a_prediction_outside_the_tasks_label_set(tmp_path, sst_gold, capsys):
    preds = write_lines(tmp_path / "p.csv", "id \t Predicted_Sentiment ", "a , 4", "b , 7", "c , 2")
    with pytest.raises(UserError, match=r"p\.csv, line 3: id b is predicted '7', which is not one of the labels "
                                        r"\(0, 1, 2, 3, 4\)"):
        grade(preds, sst_gold)
    with pytest.raises(SystemExit) as stop:
        main(["grade", str(preds), str(sst_gold)])
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_grade_equals_the_training_scripts_dev_metrics(tmp_path):
    gold_path = ROOT / "data" / "ids-sst-dev.csv"
    if not gold_path.exists():
        pytest.skip("course data not in data/")
    gold = read_gold(gold_path).labels
    preds = [(int(label) + n % 3) % 4 for n, label in enumerate(gold.values())]  # never class 4, some right
    path = tmp_path / "sst-dev-output.csv"
    write_predictions(path, list(gold), preds, SENTIMENT_HEADER)
    per_epoch = classification_metrics(list(gold.values()), preds, range(5))  # what classifier.py logs
    graded = grade(path, gold_path)
    assert (graded["accuracy"], graded["macro_f1"]) == (per_epoch["accuracy"], per_epoch["macro_f1"])


# -----------------------------------------------------------------------------
# the task's label set

def test_a_dev_file_that_lacks_a_class_grades_a_prediction_of_that_class_over_every_class(tmp_path, sst_gold,
                                                                                          capsys):
    preds = write_lines(tmp_path / "p.csv", "id \t Predicted_Sentiment ", "a , 4", "b , 1", "c , 3")  # gold: 4, 0, 2
    graded = grade(preds, sst_gold)
    per_epoch = classification_metrics(["4", "0", "2"], ["4", "1", "3"], range(5))  # what classifier.py logs
    assert graded["labels"] == ["0", "1", "2", "3", "4"]
    assert (graded["accuracy"], graded["macro_f1"]) == (pytest.approx(1 / 3), per_epoch["macro_f1"])
    main(["grade", str(preds), str(sst_gold)])
    assert "accuracy   0.3333" in capsys.readouterr().out


def test_the_label_set_comes_from_the_gold_files_name_or_from_num_labels(tmp_path, capsys):
    rows = [("a", "good .", "1"), ("b", "bad .", "0")]
    preds = write_lines(tmp_path / "p.csv", "id \t Predicted_Sentiment ", "a , 1", "b , 3")
    with pytest.raises(UserError, match=r"p\.csv, line 3: id b is predicted '3', which is not one of the labels "
                                        r"\(0, 1\)$"):
        grade(preds, write_gold(tmp_path / "ids-cfimdb-dev.csv", rows))
    assert grade(preds, write_gold(tmp_path / "ids-sst-dev.csv", rows))["accuracy"] == 0.5

    small = write_gold(tmp_path / "small-dev.csv", rows)
    with pytest.raises(SystemExit) as stop:
        main(["grade", str(preds), str(small)])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1
    assert error.startswith(f"evaluation.py: error: {small}: neither its name nor its label column 'sentiment' says "
                            "how many classes the task has")
    assert "evaluation.py grade --num-labels 5 for SST" in error
    main(["grade", str(preds), str(small), "--num-labels", "5"])  # as advised
    assert "accuracy   0.5000" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["grade", str(preds), str(small), "--num-labels", "1"])
    assert capsys.readouterr().err == "evaluation.py: error: --num-labels 1: must be at least 2\n"


def test_a_gold_label_outside_the_tasks_label_set_is_refused_with_its_line(tmp_path):
    gold = write_gold(tmp_path / "ids-cfimdb-dev.csv", [("a", "good .", "1"), ("b", "bad .", "4")])
    preds = write_lines(tmp_path / "p.csv", "id \t Predicted_Sentiment ", "a , 1", "b , 0")
    with pytest.raises(UserError, match=r"ids-cfimdb-dev\.csv, line 3: label '4' is outside the label set 0\.\.1"):
        grade(preds, gold)


def test_paraphrase_answers_written_as_floats_grade_as_written_as_integers(tmp_path):
    gold = write_gold(tmp_path / "quora.csv", [("p", "q1", "q2", "1.0"), ("r", "q5", "q6", "0.0"),
                                               ("s", "q7", "q8", "1.0")],
                      ("id", "sentence1", "sentence2", "is_duplicate"))
    tokens = write_lines(tmp_path / "tokens.csv", PARAPHRASE_HEADER, "p , 8505", "r , 8505", "s , 3919")
    floats = write_lines(tmp_path / "floats.csv", PARAPHRASE_HEADER, "p , 8505.0", "r , 8505.0", "s , 3919.0")
    plain = write_lines(tmp_path / "plain.csv", PARAPHRASE_HEADER, "p , 1.0", "r , 1.0", "s , 0.0")
    assert grade(floats, gold) == grade(tokens, gold) == grade(plain, gold)
    assert grade(floats, gold)["accuracy"] == pytest.approx(1 / 3)


# -----------------------------------------------------------------------------
# tables, and JSON for scripts

def test_grade_prints_json_with_json(tmp_path, sst_gold, capsys):
    preds = tmp_path / "p.csv"
    write_predictions(preds, ["a", "b", "c"], [4, 0, 0], SENTIMENT_HEADER)
    main(["grade", str(preds), str(sst_gold), "--json"])
    assert json.loads(capsys.readouterr().out) == grade(preds, sst_gold)


def test_the_sonnets_command_prints_a_table_and_json_with_json(tmp_path, capsys):
    sonnets = "Sonnets\n\n1\nShall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n"
    generated = write_lines(tmp_path / "generated.txt", sonnets)
    main(["sonnets", str(generated), str(generated)])
    table = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in table] == ["sonnets", "chrF", "distinct-1", "distinct-2", "14-line share",
                                                       "rhyme accuracy"]
    assert table[0].split() == ["sonnets", "1"] and table[1].split() == ["chrF", "100.0000"]
    main(["sonnets", str(generated), str(generated), "--json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 1 and metrics["chrf"] == pytest.approx(100.0)
    assert table[2].split()[-1] == f"{metrics['distinct_1']:.4f}"
