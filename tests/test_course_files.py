"""Every course file is read exactly, or refused with its path, line and problem; the scripts end such a
refusal in one line. Each case below builds one damaged (or merely unusual) file."""
import os
import re
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import classifier
import evaluation
import paraphrase_detection
import sonnet_generation
from course.files import SENTIMENT_HEADER, read_paraphrase, read_predictions, read_sentiment, write_predictions
from course.gold import read_gold
from course.sonnets import read_sonnets, write_sonnets
from flags import UserError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

SST = b"\tid\tsentence\tsentiment\n"
SST_TEST = b"0\t\tid\tsentence\n"  # the test files' header: two index columns, the first named "0"
QUORA = b"\tid\tsentence1\tsentence2\tis_duplicate\n"
QUORA_TEST = b"\tid\tsentence1\tsentence2\n"
COURSE_HEADER = b"Sonnets\nby William Shakespeare\n\n\n"


def sst(path):
    return [(e.id, e.sentence, e.label) for e in read_sentiment(path, 5)]


def sst_test(path):
    return [(e.id, e.sentence) for e in read_sentiment(path, 5, labelled=False)]


def quora(path):
    return [(e.id, e.sentence1, e.sentence2, e.label) for e in read_paraphrase(path)]


def quora_test(path):
    return [(e.id, e.sentence1, e.sentence2) for e in read_paraphrase(path, labelled=False)]


def gold(path):
    labels = read_gold(path, num_labels=5)
    return labels.labels, labels.unlabelled


def prompts(path):
    return read_sonnets(path, prompt_lines=3)


@dataclass
class Read:
    rows: object
    warning: str | None = None  # a warning that must be given


@dataclass
class Refused:
    problem: str  # "line N: ..." or "...": the message, after the file's path


CASES = {
    # quotes
    "a test sentence that begins with a quote": (sst_test, SST_TEST + b'1\t0.0\ta\t"Hello, he said\n2\t1.0\tb\tok\n'
                                                 b'3\t2.0\tc\tand "so" on"\n',
                                                 Refused("line 2: the quoted field that opens at column 9 does not "
                                                         "close on this line")),
    "a quoted sentence followed by more text": (sst, SST + b'0\ta\t"Hello" he said\t1\n',
                                                Refused("line 2: text after the closing quote of field 3 "
                                                        r"\(column 12\)")),
    "CSV quoting: doubled quotes, a tab inside quotes": (quora, QUORA + b'0\ta\t"Say ""hi""?"\t"tab\there"\t1.0\n'
                                                         b'1\tb\tplain "inner" quotes\tQ?\t0.0\n',
                                                         Read([("a", 'Say "hi"?', "tab\there", 1),
                                                               ("b", 'plain "inner" quotes', "Q?", 0)])),
    "a quoted test question that never closes": (quora_test, QUORA_TEST + b'0\ta\t"Why?\tWhat?\n1\tb\tQ\tQ\n',
                                                 Refused("line 2: the quoted field that opens at column 5 does not "
                                                         "close")),
    # tabs and field counts
    "a tab inside a test sentence": (sst_test, SST_TEST + b"1\t0.0\ta\tgood\tbut long\n",
                                     Refused("line 2: 5 tab-separated fields where the header names 4; a tab inside "
                                             "a field must be within a quoted field")),
    "a row cut short": (sst, SST + b"0\ta\tok\t1\n1\tb\tno label\n",
                        Refused("line 3: 3 tab-separated fields where the header names 4; is the row cut short")),
    # encodings and line ends
    "a byte-order mark before the header": (sst, b"\xef\xbb\xbf" + SST + b"0\ta\tok\t1\n",
                                            Read([("a", "ok", 1)])),
    "a byte-order mark before 'id'": (gold, b"\xef\xbb\xbfid\tsentence\tsentiment\na\tok\t3\n",
                                      Read(({"a": "3"}, []))),
    "bytes that are not UTF-8": (sst, SST + b"0\ta\tok\t1\n1\tb\tcaf\xe9 noir\t2\n",
                                 Refused(r"line 3: byte 0xe9 \(column 8\) is not UTF-8; save the file as UTF-8")),
    "CRLF line ends": (quora_test, (QUORA_TEST + b"0\ta\tQ1\tQ2\n").replace(b"\n", b"\r\n"),
                       Read([("a", "Q1", "Q2")])),
    "a carriage return inside a line": (sst, SST + b"0\ta\tok\r1\tb\tfine\t2\n",
                                        Refused("line 2: a carriage return inside the line")),
    "two CSV files joined with cat: a byte-order mark inside": (
        sst, b"\xef\xbb\xbf" + SST + b"0\ta\tok\t1\n\xef\xbb\xbf" + SST + b"1\tb\tfine\t2\n",
        Refused(r"line 3: a byte-order mark inside the file: two files joined\?")),
    "a gold file with a byte-order mark inside": (gold, SST + b"0\ta\tok\t1\n1\tb\t\xef\xbb\xbffine\t2\n",
                                                  Refused("line 3: a byte-order mark inside the file")),
    # empty files, blank lines, headers
    "an empty file": (sst_test, b"", Refused("is empty: a course CSV starts with a header line")),
    "a header only": (sst_test, SST_TEST, Refused("has a header but no rows")),
    "blank lines between and after rows": (sst, SST + b"0\ta\tok\t1\n\n  \n1\tb\tfine\t2\n\n",
                                           Read([("a", "ok", 1), ("b", "fine", 2)])),
    "a blank first line": (sst, b"\n" + SST + b"0\ta\tok\t1\n", Refused("line 1: blank; the first line is the header")),
    "a missing column": (quora, b"\tid\tsentence1\tis_duplicate\n0\ta\tQ\t1\n",
                         Refused("line 1: column 'sentence2' is missing")),
    "a column named twice": (sst, b"\tid\tsentence\tsentence\tsentiment\n0\ta\tx\ty\t1\n",
                             Refused("line 1: column 'sentence' appears twice")),
    # rows that are not one example
    "a repeated id": (sst_test, SST_TEST + b"1\t0.0\ta\tok\n2\t1.0\ta\tagain\n",
                      Refused(r"line 3: id a appears twice \(first on line 2\)")),
    "a row without an id": (quora, QUORA + b"0\t\tQ\tQ\t1\n", Refused("line 2: the row has no id")),
    "a Quora test id holding a comma": (quora_test, QUORA_TEST + b"0\ta\tQ1\tQ2\n1\tb,c\tQ3\tQ4\n",
                                        Refused("line 3: id 'b,c' holds a comma, which a prediction file's 'id , "
                                                "label' lines cannot hold")),
    "an empty sentence": (sst, SST + b"0\ta\t   \t3\n", Refused("line 2: id a has an empty sentence")),
    "a label outside the label set": (sst, SST + b"0\ta\tok\t5\n",
                                      Refused("line 2: label '5' is outside the label set 0..4")),
    "a label that is not a number": (quora, QUORA + b"0\ta\tQ\tQ\tmaybe\n",
                                     Refused("line 2: label 'maybe' is not a number")),
    "a label 'nan'": (quora, QUORA + b"0\ta\tQ\tQ\tnan\n",
                      Refused("line 2: label 'nan' is outside the label set 0..1")),
    "Quora rows with an empty label, as in the course files": (
        quora, QUORA + b"0\ta\tQ1\tQ2\t1.0\n1\tb\tQ3\tQ4\t\n2\tc\tQ5\t\t0.0\n",
        Read([("a", "Q1", "Q2", 1), ("c", "Q5", "", 0)], r"skipped 1 row\(s\) with an empty label \(line 3\)")),
    # sonnet files
    "a sonnet whose number line is missing": (
        prompts, COURSE_HEADER + b"132\n\nA\nB\nC\n\n\nD\nE\nF\n\n\n134\n\nG\nH\nI\n",
        Refused(r"line 17: sonnet 134 follows sonnet 132 \(line 5\); the numbers count up by one, so is sonnet "
                "133's number line missing")),
    "the last held-out sonnet without its number line": (
        prompts, COURSE_HEADER + b"132\n\nA\nB\nC\n\n\nD\nE\nF\n",
        Read({132: ["A", "B", "C", "D", "E", "F"]},
             "line 5: prompt 132 has 6 lines, where a held-out prompt has 3 .is sonnet 133's number line missing")),
    "the first sonnet without its number line": (
        prompts, COURSE_HEADER + b"A\nB\nC\n\n133\n\nD\nE\nF\n",
        Refused("line 5: text after the header's blank line but before the first sonnet number")),
    "a sonnet number that repeats": (read_sonnets, b"1\nA\n2\nB\n2\nC\n",
                                     Refused(r"line 5: sonnet 2 appears twice \(first on line 3\)")),
    "a sonnet number with no lines": (read_sonnets, b"Sonnets\n\n1\n\n2\nB\n",
                                      Refused("line 3: sonnet 1 has a number but no lines")),
    "a sonnet file with a byte-order mark, CRLF and indented lines": (
        read_sonnets, b"\xef\xbb\xbfSonnets\r\n\r\n7\r\n\r\n  First,\r\nsecond.   \r\n8\r\nThird\r\n",
        Read({7: ["  First,", "second."], 8: ["Third"]})),
    "a sonnet file that is not UTF-8": (read_sonnets, b"Sonnets\n\n1\nA\nB\xff\n",
                                        Refused(r"line 5: byte 0xff \(column 2\) is not UTF-8")),
    "a sonnet file without numbers": (read_sonnets, b"Sonnets\nno numbers here\n",
                                      Refused("holds no numbered sonnets")),
    "two sonnet files joined with cat: a byte-order mark inside": (
        read_sonnets, b"\xef\xbb\xbfSonnets\n\n1\nA\nB\n\xef\xbb\xbfSonnets\n\n2\nC\n",
        Refused(r"line 6: a byte-order mark inside the file: two files joined\?")),
}


@pytest.mark.parametrize("name", CASES)
def test_each_file_is_read_exactly_or_refused_naming_file_and_line(tmp_path, name):
    reader, content, expected = CASES[name]
    path = tmp_path / "file.txt"
    path.write_bytes(content)
    if isinstance(expected, Refused):
        after_path = ", " if expected.problem.startswith("line") else " "
        with pytest.raises(UserError, match=re.escape(str(path)) + after_path + expected.problem) as refusal:
            reader(path)
        assert "\n" not in str(refusal.value)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reader(path) == expected.rows
    messages = [str(w.message) for w in caught]
    if expected.warning is None:
        assert messages == []
    else:
        assert len(messages) == 1 and re.search(re.escape(str(path)) + ".*" + expected.warning, messages[0])


def course_data_except(tmp_path, name, path):
    """A copy of data/ (links) where `name` is replaced by the file at `path`."""
    directory = tmp_path / "data"
    directory.mkdir()
    for source in DATA.glob("*.csv"):
        (directory / source.name).symlink_to(source)
    (directory / name).unlink()
    (directory / name).symlink_to(path)
    return directory


def command_for(reader, path, tmp_path):
    """The script, and its flags, that reads a file like `path` with `reader` before any model is loaded; and
    the path by which it names the file."""
    outputs = tmp_path / "out"
    if reader in (sst, sst_test):
        name = "ids-sst-train.csv" if reader is sst else "ids-sst-test-student.csv"
        data = course_data_except(tmp_path, name, path)
        return classifier.main, ["--dataset", "sst", "--data_dir", str(data), "--predictions_dir", str(outputs),
                                 "--run_dir", str(tmp_path / "run")], data / name
    if reader in (quora, quora_test):
        flag = "--para_train" if reader is quora else "--para_test"
        return paraphrase_detection.main, [flag, str(path), "--para_dev_out", str(outputs / "dev.csv"),
                                           "--para_test_out", str(outputs / "test.csv"), "--run_dir",
                                           str(tmp_path / "run")], path
    if reader is gold:
        predictions = outputs / "p.csv"
        write_predictions(predictions, ["a"], [3], SENTIMENT_HEADER)
        return evaluation.main, ["grade", str(predictions), str(path), "--num-labels", "5"], path
    flag = "--held_out_path" if reader is prompts else "--sonnet_path"
    return sonnet_generation.main, [flag, str(path), "--sonnet_out", str(outputs / "test.txt"), "--sonnet_dev_out",
                                    str(outputs / "dev.txt"), "--run_dir", str(tmp_path / "run")], path


@pytest.mark.skipif(not (DATA / "ids-sst-train.csv").is_file(), reason="course data not in data/ (bash setup.sh)")
@pytest.mark.parametrize("name", [name for name, case in CASES.items() if isinstance(case[2], Refused)])
def test_a_refused_file_ends_the_script_in_one_line(tmp_path, capsys, name):
    reader, content, expected = CASES[name]
    path = tmp_path / "damaged.txt"
    path.write_bytes(content)
    main, argv, shown = command_for(reader, path, tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    *warned, error = capsys.readouterr().err.splitlines()  # warnings first (the course's dev file has one)
    assert stop.value.code == 2
    assert re.search(re.escape(str(shown)) + ".*" + expected.problem, error), error
    assert all(re.match(r"\S+\.py: warning: ", line) for line in warned), warned
    assert not (tmp_path / "run").exists() and not (tmp_path / "out" / "test.csv").exists()


@pytest.mark.skipif(not (DATA / "ids-sst-train.csv").is_file(), reason="course data not in data/ (bash setup.sh)")
def test_the_command_line_shows_no_traceback(tmp_path):
    damaged = tmp_path / "ids-sst-test-student.csv"
    damaged.write_bytes(SST_TEST + b'1\t0.0\ta\t"unclosed\n')
    data = course_data_except(tmp_path, damaged.name, damaged)
    run = subprocess.run([sys.executable, "classifier.py", "--dataset", "sst", "--data_dir", str(data),
                          "--predictions_dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [f"classifier.py: error: {data / damaged.name}, line 2: the quoted field that "
                                       "opens at column 9 does not close on this line; a row sits on one line, and a "
                                       "field that starts with a quote is quoted whole, with each quote inside it "
                                       'doubled ("")']


@pytest.mark.skipif(not (DATA / "ids-sst-train.csv").is_file(), reason="course data not in data/ (bash setup.sh)")
def test_the_course_files_read_as_they_always_have():
    counts = {
        "ids-sst-train.csv": (sst, 8544), "ids-sst-dev.csv": (sst, 1101), "ids-sst-test-student.csv": (sst_test, 2210),
        "ids-cfimdb-train.csv": (lambda p: read_sentiment(p, 2), 1707), "ids-cfimdb-dev.csv":
        (lambda p: read_sentiment(p, 2), 245), "ids-cfimdb-test-student.csv": (sst_test, 488),
        "quora-train.csv": (quora, 14000), "quora-test-student.csv": (quora_test, 2000),
    }
    for name, (reader, count) in counts.items():
        assert len(reader(DATA / name)) == count, name
    with pytest.warns(UserWarning, match="skipped 1 row"):  # the course's dev file has one unlabelled pair
        assert len(quora(DATA / "quora-dev.csv")) == 1999
    assert list(read_sonnets(DATA / "sonnets.txt")) == list(range(1, 132))
    assert list(prompts(DATA / "sonnets_held_out_dev.txt")) == list(range(132, 144))
    assert list(prompts(DATA / "sonnets_held_out.txt")) == list(range(145, 157))
    assert list(read_sonnets(DATA / "TRUE_sonnets_held_out_dev.txt")) == list(range(132, 144))
    # quoted CFIMDB reviews lose their CSV quoting, not their own quotes
    review = next(e for e in read_sentiment(DATA / "ids-cfimdb-dev.csv", 2) if e.id == "2766d390a07e99e4d8a6dff29")
    assert review.sentence.startswith('""" Slow paced and unfunny satire about that original "" "" reality TV "" ""')


def test_files_we_write_have_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_predictions(tmp_path / "p.csv", ["a"], [1], SENTIMENT_HEADER)
        write_sonnets(tmp_path / "s.txt", {1: ["A line"]})
    finally:
        os.umask(mask)
    for name in ("p.csv", "s.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert read_predictions(tmp_path / "p.csv") == {"a": "1"}


@pytest.mark.skipif(not (DATA / "sonnets.txt").is_file(), reason="course data not in data/ (bash setup.sh)")
def test_a_script_shows_a_warning_in_one_line(tmp_path, capsys):
    held_out, gold, damaged = tmp_path / "held_out_dev.txt", tmp_path / "gold.txt", tmp_path / "sonnets.txt"
    held_out.write_bytes(CASES["the last held-out sonnet without its number line"][1])
    gold.write_bytes(COURSE_HEADER + b"132\n\n" + b"A line\n" * 14)
    damaged.write_bytes(b"")
    with pytest.raises(SystemExit):
        sonnet_generation.main(["--held_out_dev_path", str(held_out), "--gold_dev_path", str(gold), "--sonnet_path",
                                str(damaged)])
    assert capsys.readouterr().err.splitlines() == [
        f"sonnet_generation.py: warning: {held_out}, line 5: prompt 132 has 6 lines, where a held-out prompt has 3 "
        "(is sonnet 133's number line missing?)",
        f"sonnet_generation.py: error: {damaged} holds no numbered sonnets"]
