"""predict.py: a finished run's best model, rebuilt from its settings.json and best.pt, labels new inputs as the
run labelled its dev file (its prompt, demonstrations, both orders, head and adapters), completes sonnets with the
run's decoding unless told otherwise, and refuses unfinished runs, other tasks' flags and malformed lines in one
line before any model is built. The runs are conftest's `finished_runs`, trained once per session."""
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

import classifier
import predict
from course.files import read_paraphrase, read_predictions, read_sentiment
from course.sonnets import read_sonnets
from models.gpt2 import GPT2Model

PROMPTS = Path("data/sonnets_held_out_dev.txt")


@pytest.fixture
def runs(finished_runs: dict[str, Path]) -> dict[str, Path]:
    """conftest's `finished_runs`, by a short name."""
    return finished_runs


def printed(capsys: pytest.CaptureFixture, argv: list[str]) -> list[str]:
    capsys.readouterr()
    predict.main(argv)
    return capsys.readouterr().out.splitlines()


def refusal(capsys: pytest.CaptureFixture, argv: list[str], main=predict.main, prog: str = "predict.py") -> str:
    """The one line a refused command prints; it must exit with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"{prog}: error: ") and "\n" not in message and "Traceback" not in message
    return message.removeprefix(f"{prog}: error: ")


def no_model(*args, **kwargs):
    raise AssertionError("a model was built before the command was checked")


def test_sentiment_labels_equal_the_runs_dev_predictions(course_rows, runs, tmp_path, capsys):
    dev = read_sentiment(course_rows / "ids-sst-dev.csv", 5)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("".join(f"{example.sentence}\n" for example in dev))
    lines = printed(capsys, [str(runs["sentiment"]), "--input", str(sentences), "--probabilities"])
    written = read_predictions(runs["sentiment"].parent.parent / "predictions/full-model-sst-dev-out.csv")
    assert [line.split("\t")[0] for line in lines] == [written[example.id] for example in dev]
    assert len(set(written.values())) > 1  # a run that labels everything alike would prove little
    for line in lines:
        label, *probabilities = line.split("\t")
        values = [float(p) for p in probabilities]
        assert len(values) == 5 and abs(sum(values) - 1) < 1e-3 and values[int(label)] == max(values)


def test_paraphrase_answers_equal_the_runs_dev_predictions_with_its_demonstrations_and_both_orders(course_rows, runs,
                                                                                                   tmp_path, capsys):
    dev = read_paraphrase(course_rows / "quora-dev.csv")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{pair.sentence1}\t{pair.sentence2}\n" for pair in dev))
    lines = printed(capsys, [str(runs["paraphrase"]), "--input", str(pairs), "--batch_size", "7"])
    written = read_predictions(runs["paraphrase"].parent / "predictions/dev.csv")
    answers = {"yes": "8505", "no": "3919"}
    assert [answers[line.split("\t")[0]] for line in lines] == [written[pair.id] for pair in dev]
    assert len(set(written.values())) > 1
    assert all(0.5 <= float(line.split("\t")[1]) <= 1 for line in lines)  # the probability of the answer given


def prompts_text() -> str:
    """The dev prompts of the course's held-out file, as predict.py reads prompts: apart by a blank line."""
    return "\n\n".join("\n".join(lines) for lines in read_sonnets(PROMPTS, 3).values()) + "\n"


def test_sonnets_from_standard_input_are_the_runs_dev_sonnets(runs, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(prompts_text().encode())))
    sonnets = "\n".join(printed(capsys, [str(runs["sonnets"])])).split("\n\n")
    written = read_sonnets(runs["sonnets"].parent / "predictions/dev.txt")
    assert [sonnet.split("\n") for sonnet in sonnets] == list(written.values())  # sampled as the run sampled them


def test_decoding_flags_replace_the_runs_decoding(runs, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text(prompts_text())
    argv = [str(runs["sonnets"]), "--input", str(tmp_path / "prompts.txt")]
    sampled = printed(capsys, argv)
    greedy = printed(capsys, [*argv, "--decoding", "greedy"])
    assert greedy != sampled and greedy == printed(capsys, [*argv, "--decoding", "greedy", "--batch_size", "5"])
    prompts = read_sonnets(PROMPTS, 3)
    one_token = "\n".join(printed(capsys, [*argv, "--max_new_tokens", "1"])).split("\n\n")
    assert [sonnet.split("\n")[:3] for sonnet in one_token] == list(prompts.values())
    assert all(len(sonnet.split("\n")) <= 4 for sonnet in one_token)


@pytest.mark.parametrize("task, text, message", [
    ("sentiment", "A fine film.\n\nDull.\n", "{input}, line 2: an empty line; give one sentence a line"),
    ("sentiment", "A fine film.\n3\tDull.\n", "{input}, line 2: a tab; give one sentence a line"),
    ("sentiment", "", "{input}: no inputs; give them one a line"),
    ("paraphrase", "Why?\tHow?\nWhy not?\n", "{input}, line 2: no tab; give two questions a line, apart by one tab"),
    ("paraphrase", "Why?\t \n", "{input}, line 1: an empty question; give two questions a line, apart by one tab"),
    ("sonnets", "Shall I compare thee\n\n" + "a line\n" * 14, "{input}, line 3: a prompt of 14 lines or more leaves "
                                                                "no line of the sonnet to write"),
])
def test_a_malformed_input_is_refused_with_its_line_before_any_model(runs, tmp_path, monkeypatch, capsys, task, text,
                                                                     message):
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    given = tmp_path / "inputs.txt"
    given.write_text(text)
    assert refusal(capsys, [str(runs[task]), "--input", str(given)]).startswith(message.format(input=given))


@pytest.mark.parametrize("task, flags, message", [
    ("sentiment", ("--temperature", "0.7"), "--temperature 0.7: only for a run of sonnets; {run} is a run of "
                                            "sentiment-sst"),
    ("paraphrase", ("--decoding", "beam"), "--decoding 'beam': only for a run of sonnets"),
    ("sonnets", ("--probabilities",), "--probabilities: only for a run that classifies; {run} is a run of sonnets"),
    ("sonnets", ("--temperature", "0"), "--temperature 0: must be greater than 0"),
    ("sonnets", ("--mbr_samples", "0"), "--mbr_samples 0: must be at least 1"),
    ("sentiment", ("--batch_size", "0"), "--batch_size 0: must be at least 1"),
    ("sentiment", ("--precision", "bf16"), "--precision 'bf16': is for GPUs: add --use_gpu, or use --precision fp32"),
    ("sentiment", ("--input", "missing.txt"), "--input missing.txt: no such file"),
])
def test_flags_out_of_range_or_for_another_task_are_refused_before_any_model(runs, monkeypatch, capsys, task, flags,
                                                                             message):
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Why?\tHow?\n")))
    assert refusal(capsys, [str(runs[task]), *flags]).startswith(message.format(run=runs[task]))


def test_unfinished_runs_and_folders_of_runs_are_refused_naming_what_to_do(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["sentiment"], unfinished)
    record = json.loads((unfinished / "settings.json").read_text())
    del record["result"]
    (unfinished / "settings.json").write_text(json.dumps(record))
    assert refusal(capsys, [str(unfinished)]) == (
        f"{unfinished}: its settings.json has no result, so the run has not finished (it is training, or it "
        "stopped): repeat its command with --resume to finish it")
    (unfinished / "best.pt").unlink()
    assert refusal(capsys, [str(unfinished)]).startswith(f"RUN_DIR {unfinished}: holds no best.pt, so it is not a "
                                                         "run that finished an epoch")
    folder = runs["sentiment"].parent  # the classifier's --run_dir: a run per dataset
    assert refusal(capsys, [str(folder)]).endswith(f"the runs in it are {runs['sentiment']}: give one of those")


def test_a_run_this_code_cannot_rebuild_is_refused_naming_it_here_and_in_an_ensemble(course_rows, runs, tmp_path,
                                                                                      monkeypatch, capsys):
    foreign = tmp_path / "foreign"
    shutil.copytree(runs["sentiment"], foreign)
    record = json.loads((foreign / "settings.json").read_text())
    record["settings"]["task"]["sharpness"] = 2
    (foreign / "settings.json").write_text(json.dumps(record))
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    problem = "its settings.json does not rebuild the run's model with this code: 'sharpness' is not a setting"
    assert refusal(capsys, [str(foreign)]).startswith(f"{foreign}: {problem}")
    ensemble = ["--ensemble", str(foreign), "--dataset", "sst", "--fine-tune-mode", "full-model", "--data_dir",
                str(course_rows), "--predictions_dir", str(tmp_path / "predictions")]
    assert refusal(capsys, ensemble, classifier.main, "classifier.py").startswith(f"--ensemble {foreign}: {problem}")


def test_a_k_shot_run_whose_training_file_changed_is_refused(runs, tmp_path, monkeypatch, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(runs["paraphrase"], moved)
    record = json.loads((moved / "settings.json").read_text())
    record["settings"]["task"]["para_train"] = record["settings"]["task"]["para_dev"]
    (moved / "settings.json").write_text(json.dumps(record))
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Why?\tHow?\n")))
    assert refusal(capsys, [str(moved)]).startswith(f"{moved}: its prompt holds 2 pairs of its --para_train ")


def test_standard_input_that_is_not_utf8_is_refused_with_its_line(runs, monkeypatch, capsys):
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"A fine film.\nCaf\xe9 society.\n")))
    assert refusal(capsys, [str(runs["sentiment"])]).startswith("standard input, line 2: byte 0xe9 (column 4) is not "
                                                                "UTF-8")


def test_a_sentence_cut_to_fit_the_context_is_warned_about_naming_the_input(runs, tmp_path, capsys):
    given = tmp_path / "long.txt"
    given.write_text("A fine film.\n" + "very " * 300 + "long.\n")
    capsys.readouterr()
    predict.main([str(runs["sentiment"]), "--input", str(given)])
    printed_out = capsys.readouterr()
    assert len(printed_out.out.splitlines()) == 2
    assert (f"predict.py: warning: {given}: 1 sentence(s) were longer than 256 tokens and were cut at the end"
            in printed_out.err)
