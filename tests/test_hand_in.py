"""prepare_submit.py zips only a predictions folder that answers every input id and prompt, and names every
missing or wrong file at once otherwise. Each case builds a small course data folder and a complete
predictions folder, then damages one thing."""
import shlex
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import classifier
import prepare_submit
from course import hand_in
from course.files import PARAPHRASE_HEADER, SENTIMENT_HEADER, read_predictions, write_predictions
from course.hand_in import check_predictions, gpu_flag
from course.sonnets import write_sonnets
from flags import UserError

SENTIMENT_DEV = "\tid\tsentence\tsentiment"
SENTIMENT_TEST = "0\t\tid\tsentence"  # the test files' header: two index columns, the first named "0"
QUORA_DEV = "\tid\tsentence1\tsentence2\tis_duplicate"
QUORA_TEST = "\tid\tsentence1\tsentence2"
PROMPTS = {"sonnets_held_out.txt": {145: ["Those lips that Love's own hand did make", "Breathed forth the sound",
                                          "To me that languished for her sake;"],
                                    146: ["Poor soul, the center of my sinful earth,", "Pressed with these",
                                          "  Why dost thou pine within and suffer dearth,"]},
           "sonnets_held_out_dev.txt": {20: ["A woman's face with nature's own hand painted", "Hast thou",
                                             "A woman's gentle heart but not acquainted"]}}
GENERATED = {"generated_sonnets.txt": "sonnets_held_out.txt", "generated_sonnets_dev.txt": "sonnets_held_out_dev.txt"}
MORE = "And so the sonnet runs on past its prompt,"
GPU = gpu_flag()  # the advised commands take --use_gpu only where this machine has a GPU


def ids(name: str) -> list[str]:
    return [f"{name}-{n}" for n in range(3)]


def write_rows(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in [header, *rows]))


def write_course_data(data: Path) -> None:
    """Tiny course inputs in the course's layouts; the Quora dev file has a row with an empty label, which
    needs no prediction (the course's training script skips it)."""
    data.mkdir()
    for dataset in ("sst", "cfimdb"):
        write_rows(data / f"ids-{dataset}-dev.csv", SENTIMENT_DEV,
                   [f"{n}\t{i}\t A sentence .\t{n % 2}" for n, i in enumerate(ids(f"{dataset}-dev"))])
        write_rows(data / f"ids-{dataset}-test-student.csv", SENTIMENT_TEST,
                   [f"{n}\t{n}.0\t{i}\t A sentence ." for n, i in enumerate(ids(f"{dataset}-test"))])
    write_rows(data / "quora-dev.csv", QUORA_DEV,
               [f"{n}\t{i}\tOne?\tTwo?\t{n % 2}.0" for n, i in enumerate(ids("quora-dev"))]
               + ["3\tquora-dev-unlabelled\tA?\tB?\t"])
    write_rows(data / "quora-test-student.csv", QUORA_TEST,
               [f"{n}\t{i}\tOne?\tTwo?" for n, i in enumerate(ids("quora-test"))])
    for name, prompts in PROMPTS.items():  # the course's header block and CRLF line ends
        blocks = "".join(f"{number}\r\n\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
                         for number, lines in prompts.items())
        (data / name).write_bytes(("Sonnets\r\nby William Shakespeare\r\n\r\n\r\n" + blocks).encode())


def write_complete_predictions(predictions: Path) -> None:
    """What the three task scripts write, with the paraphrases in the course's 8505/3919 encoding."""
    for dataset in ("sst", "cfimdb"):
        for split in ("dev", "test"):
            write_predictions(predictions / f"full-model-{dataset}-{split}-out.csv", ids(f"{dataset}-{split}"),
                              [1, 0, 1], SENTIMENT_HEADER)
    for split in ("dev", "test"):
        write_predictions(predictions / f"para-{split}-output.csv", ids(f"quora-{split}"), [8505, 3919, 3919],
                          PARAPHRASE_HEADER)
    for name, prompts in GENERATED.items():
        write_sonnets(predictions / name, {number: lines + [MORE] for number, lines in PROMPTS[prompts].items()})


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(a complete predictions folder, the data folder it answers)."""
    write_course_data(tmp_path / "data")
    write_complete_predictions(tmp_path / "predictions")
    return tmp_path / "predictions", tmp_path / "data"


def flags(tmp_path: Path) -> list[str]:
    return ["--predictions_dir", str(tmp_path / "predictions"), "--data_dir", str(tmp_path / "data"),
            "--out", str(tmp_path / "submission.zip")]


def rewrite_labels(path: Path, labels: list[str]) -> None:
    write_predictions(path, list(read_predictions(path)), labels, PARAPHRASE_HEADER)


def drop_ids(path: Path, dropped: set[str]) -> None:
    kept = {i: label for i, label in read_predictions(path).items() if i not in dropped}
    write_predictions(path, list(kept), list(kept.values()), SENTIMENT_HEADER)


# -----------------------------------------------------------------------------
# a complete folder

def test_a_complete_folder_is_zipped_with_the_code(folders, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Quora dev row without a label is skipped without a word
        prepare_submit.main(flags(tmp_path))
    out = capsys.readouterr()
    names = zipfile.ZipFile(tmp_path / "submission.zip").namelist()
    assert {"prepare_submit.py", "models/gpt2.py", "course/hand_in.py", "predictions/para-test-output.csv",
            "predictions/generated_sonnets_dev.txt"} <= set(names)
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith(("data/", "tests/"))]
    assert f"ok  {tmp_path / 'predictions' / 'para-dev-output.csv'}: 3 ids" in out.out.splitlines()
    assert out.out.splitlines()[-1] == (f"Submission zip file created: {tmp_path / 'submission.zip'} "
                                        f"({len(names)} files)")
    assert out.err == ""


def test_every_graded_file_is_checked(folders):
    report = check_predictions(*folders)
    assert len(report) == 4 + 2 + 2  # one mode's sentiment files, paraphrase, test and dev sonnets
    assert f"ok  {folders[0] / 'generated_sonnets.txt'}: 2 sonnets, each continuing its prompt" in report


def test_paraphrases_as_one_and_zero_are_accepted(folders):
    predictions, data = folders
    rewrite_labels(predictions / "para-test-output.csv", ["1", "0", "0"])
    check_predictions(predictions, data)


def test_a_prediction_for_an_unlabelled_dev_pair_is_no_error(folders):
    predictions, data = folders
    write_predictions(predictions / "para-dev-output.csv", ids("quora-dev") + ["quora-dev-unlabelled"], [3919] * 4,
                      PARAPHRASE_HEADER)
    check_predictions(predictions, data)


def test_either_mode_of_the_sentiment_files_will_do(folders):
    predictions, data = folders
    for path in predictions.glob("full-model-*"):
        path.rename(path.with_name(path.name.replace("full-model", "last-linear-layer")))
    assert sum("last-linear-layer" in line for line in check_predictions(predictions, data)) == 4


def test_the_zip_holds_the_code_without_caches_and_the_predictions_by_their_course_folder(tmp_path):
    root, predictions = tmp_path / "project", tmp_path / "my-predictions"
    files = [root / name for name in ("prepare_submit.py", "notes.txt", "models/gpt2.py", "course/hand_in.py",
                                      "models/__pycache__/gpt2.cpython-312.pyc", "training/stale.pyc",
                                      "data/ids-sst-dev.csv")] + [predictions / "para-test-output.csv"]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    out = tmp_path / "submission.zip"
    out.write_text("the previous zip")
    prepare_submit.write_zip(out, prepare_submit.submission_files(root, predictions))
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["course/hand_in.py", "models/gpt2.py", "predictions/para-test-output.csv",
                                              "prepare_submit.py"]
        assert archive.read("predictions/para-test-output.csv") == b"para-test-output.csv"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["my-predictions", "project", "submission.zip"]


# -----------------------------------------------------------------------------
# an incomplete folder: refused, every problem named, nothing zipped

def delete(name: str) -> Callable[[Path, Path], None]:
    return lambda predictions, data: (predictions / name).unlink()


def alter_prompt(predictions: Path, data: Path) -> None:
    sonnets = {number: lines + [MORE] for number, lines in PROMPTS["sonnets_held_out.txt"].items()}
    sonnets[146][1] = "Pressed with those"
    write_sonnets(predictions / "generated_sonnets.txt", sonnets)


def stop_at_prompt(predictions: Path, data: Path) -> None:
    write_sonnets(predictions / "generated_sonnets_dev.txt", PROMPTS["sonnets_held_out_dev.txt"])


def duplicate_id(predictions: Path, data: Path) -> None:
    path = predictions / "full-model-cfimdb-dev-out.csv"
    path.write_text(path.read_text() + "cfimdb-dev-0 , 1 \n")


DAMAGE = {
    "two ids missing": (lambda predictions, data: drop_ids(predictions / "full-model-sst-test-out.csv",
                                                           {"sst-test-0", "sst-test-2"}),
                        ["full-model-sst-test-out.csv: no prediction for 2 of the 3 ids of",
                         "(sst-test-0, sst-test-2)"]),
    "an unknown id": (lambda predictions, data: write_predictions(
                          predictions / "para-dev-output.csv", ids("quora-dev") + ["stray"], [8505] * 4,
                          PARAPHRASE_HEADER),
                      ["para-dev-output.csv: predictions for 1 id(s) not in", "quora-dev.csv (stray)"]),
    "a file missing": (delete("para-test-output.csv"),
                       ["missing", f"para-test-output.csv (written by `python paraphrase_detection.py{GPU}`)"]),
    "a mode with files missing": (delete("full-model-cfimdb-test-out.csv"),
                                  ["no fine-tune mode has all its sentiment files", "the hand-in needs all four "
                                   "sentiment files of one fine-tune mode",
                                   "full-model-cfimdb-test-out.csv (written by `python classifier.py --fine-tune-mode "
                                   f"full-model --dataset cfimdb{GPU}`)"]),
    "no sentiment files": (lambda predictions, data: [path.unlink() for path in predictions.glob("full-model-*")],
                           ["no sentiment predictions", f"`python classifier.py --fine-tune-mode full-model{GPU}`"]),
    "an altered prompt line": (alter_prompt, ["generated_sonnets.txt: 1 sonnet(s) not beginning with their "
                                              "prompt's lines unaltered (146)", "'Pressed with those'"]),
    "a sonnet that stops at its prompt": (stop_at_prompt, ["generated_sonnets_dev.txt: 1 sonnet(s) with no line "
                                                           "after their prompt (20)"]),
    "a sonnet missing": (lambda predictions, data: write_sonnets(predictions / "generated_sonnets.txt",
                                                                 {145: PROMPTS["sonnets_held_out.txt"][145] + [MORE]}),
                         ["generated_sonnets.txt: missing 1 of the 2 sonnets of", "(146)"]),
    "a label outside the set": (lambda predictions, data: write_predictions(
                                    predictions / "full-model-sst-dev-out.csv", ids("sst-dev"), [4, 5, 0],
                                    SENTIMENT_HEADER),
                                ["full-model-sst-dev-out.csv, line 3: id sst-dev-1 is predicted '5', which is not "
                                 "one of the labels (0, 1, 2, 3, 4)"]),
    "mixed encodings": (lambda predictions, data: rewrite_labels(predictions / "para-test-output.csv",
                                                                 ["8505", "3919", "1"]),
                        ["para-test-output.csv: id quora-test-0 is predicted 8505 (a token id, the course's "
                         "encoding) but id quora-test-2 is predicted 1 (0/1): a file uses one encoding"]),
    "an id predicted twice": (duplicate_id, ["full-model-cfimdb-dev-out.csv, line 5: duplicate id 'cfimdb-dev-0'"]),
    "an input file missing": (lambda predictions, data: (data / "quora-test-student.csv").unlink(),
                              ["quora-test-student.csv does not exist: run `bash setup.sh`"]),
}


@pytest.mark.parametrize("damage, named", DAMAGE.values(), ids=DAMAGE.keys())
def test_an_incomplete_folder_is_refused_in_one_line_and_nothing_is_zipped(folders, tmp_path, capsys, damage, named):
    damage(*folders)
    with pytest.raises(SystemExit) as stopped:
        prepare_submit.main(flags(tmp_path))
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("prepare_submit.py: error: not ready to hand in: ")
    for text in named:
        assert text in err
    assert not (tmp_path / "submission.zip").exists()


def test_every_problem_is_named_at_once(folders):
    predictions, data = folders
    drop_ids(predictions / "full-model-sst-test-out.csv", {"sst-test-1"})
    alter_prompt(predictions, data)
    (predictions / "para-dev-output.csv").unlink()
    with pytest.raises(UserError) as refused:
        check_predictions(predictions, data)
    problems = str(refused.value).removeprefix("not ready to hand in: ").split("; ")
    assert problems[0] == (f"missing {predictions / 'para-dev-output.csv'} "
                           f"(written by `python paraphrase_detection.py{GPU}`)")
    assert any("full-model-sst-test-out.csv: no prediction for 1 of the 3 ids" in problem for problem in problems)
    assert any("generated_sonnets.txt: 1 sonnet(s) not beginning" in problem for problem in problems)


# -----------------------------------------------------------------------------
# one mode complete, the other in part; the commands advised

def start_last_linear_layer(predictions: Path) -> None:
    """The README's `--fine-tune-mode last-linear-layer --dataset sst`: half of that mode's files."""
    for split in ("dev", "test"):
        write_predictions(predictions / f"last-linear-layer-sst-{split}-out.csv", ids(f"sst-{split}"), [4, 0, 2],
                          SENTIMENT_HEADER)


def test_a_mode_in_part_beside_a_complete_one_is_handed_in_with_a_warning(folders, tmp_path, capsys):
    predictions, _ = folders
    start_last_linear_layer(predictions)
    prepare_submit.main(flags(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert f"ok  {predictions / 'last-linear-layer-sst-test-out.csv'}: 3 ids" in out
    assert out[-2] == (
        "warning  last-linear-layer has 2 of its 4 sentiment files, and full-model has all of them, so the hand-in "
        "goes ahead (the hand-in needs all four sentiment files of one fine-tune mode, "
        "{mode}-{sst,cfimdb}-{dev,test}-out.csv for full-model or for last-linear-layer): "
        f"missing {predictions / 'last-linear-layer-cfimdb-dev-out.csv'} and "
        f"{predictions / 'last-linear-layer-cfimdb-test-out.csv'} (written by `python classifier.py --fine-tune-mode "
        f"last-linear-layer --dataset cfimdb{GPU}`)")
    assert "predictions/last-linear-layer-sst-dev-out.csv" in zipfile.ZipFile(tmp_path / "submission.zip").namelist()


def test_a_mode_in_part_beside_a_complete_one_is_still_checked(folders):
    predictions, data = folders
    start_last_linear_layer(predictions)
    drop_ids(predictions / "last-linear-layer-sst-dev-out.csv", {"sst-dev-1"})
    with pytest.raises(UserError, match="last-linear-layer-sst-dev-out.csv: no prediction for 1 of the 3 ids"):
        check_predictions(predictions, data)


def test_a_mode_in_part_alone_is_refused_stating_the_rule(folders):
    predictions, data = folders
    start_last_linear_layer(predictions)
    for path in predictions.glob("full-model-*"):
        path.unlink()
    with pytest.raises(UserError) as refused:
        check_predictions(predictions, data)
    problems = str(refused.value).removeprefix("not ready to hand in: ").split("; ")
    assert problems[:2] == [
        f"no fine-tune mode has all its sentiment files in {predictions}: the hand-in needs all four sentiment files "
        "of one fine-tune mode, {mode}-{sst,cfimdb}-{dev,test}-out.csv for full-model or for last-linear-layer",
        f"missing {predictions / 'last-linear-layer-cfimdb-dev-out.csv'} and "
        f"{predictions / 'last-linear-layer-cfimdb-test-out.csv'} (written by `python classifier.py --fine-tune-mode "
        f"last-linear-layer --dataset cfimdb{GPU}`)"]


@pytest.mark.parametrize("nvidia_smi, flag", [(None, ""), ("/usr/bin/nvidia-smi", " --use_gpu")])
def test_the_advised_commands_ask_for_the_gpu_only_where_there_is_one(folders, monkeypatch, nvidia_smi, flag):
    monkeypatch.setattr(hand_in.shutil, "which", lambda name: nvidia_smi if name == "nvidia-smi" else None)
    predictions, data = folders
    (predictions / "para-dev-output.csv").unlink()
    (predictions / "full-model-sst-dev-out.csv").unlink()
    with pytest.raises(UserError) as refused:
        check_predictions(predictions, data)
    assert f"(written by `python paraphrase_detection.py{flag}`)" in str(refused.value)
    assert f"(written by `python classifier.py --fine-tune-mode full-model --dataset sst{flag}`)" in str(refused.value)


def test_the_advised_command_completes_the_mode_on_this_machine(folders, tmp_path, capsys, tiny_checkpoint):
    """The warning's command, run as written (with a tiny model, on the test's data), writes the missing files:
    then both modes are complete and nothing is left to warn about."""
    predictions, data = folders
    start_last_linear_layer(predictions)
    write_rows(data / "ids-cfimdb-train.csv", SENTIMENT_DEV,
               [f"{n}\tcfimdb-train-{n}\t A sentence .\t{n % 2}" for n in range(8)])
    advice = check_predictions(predictions, data)[-1]
    command = advice[advice.index("(written by `") + len("(written by `"):-len("`)")]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "classifier.py"]
    classifier.main(argv[2:] + ["--model_path", str(tiny_checkpoint[0]), "--data_dir", str(data), "--predictions_dir",
                                str(predictions), "--run_dir", str(tmp_path / "runs"), "--epochs", "1"])
    report = check_predictions(predictions, data)
    assert sum(line.startswith(f"ok  {predictions / 'last-linear-layer-'}") for line in report) == 4
    assert not [line for line in report if line.startswith("warning")]
