"""--ensemble in classifier.py and paraphrase_detection.py: finished runs rebuilt from their settings.json and
best.pt (a LoRA run beside a full-model one, each in its own prompt and head), their class probabilities
averaged into complete prediction files; mismatched or unfinished runs refused at start-up in one line."""
import json
import shutil
from pathlib import Path

import pytest

import classifier
import evaluation
import paraphrase_detection as para
from course.files import read_paraphrase, read_predictions, read_sentiment
from models.gpt2 import GPT2Model
from tests.test_settings import refusal

SPLITS = ("train", "dev", "test-student")
ROWS = 80  # of each course file: every class, and quick to score


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first rows of each course file, under the course's file names."""
    folder = tmp_path_factory.mktemp("ensemble-data")
    names = [f"ids-{dataset}-{split}.csv" for dataset in ("sst", "cfimdb") for split in SPLITS]
    for name in names + [f"quora-{split}.csv" for split in SPLITS]:
        lines = (Path("data") / name).read_text().splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:ROWS + 1]))
    return folder


def para_files(data: Path) -> list[str]:
    return ["--para_train", str(data / "quora-train.csv"), "--para_dev", str(data / "quora-dev.csv"),
            "--para_test", str(data / "quora-test-student.csv")]


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> dict[str, Path]:
    """Finished one-epoch runs on a tiny GPT-2, by name; each trained in its own folder, with its run directory
    under runs/ there and its own prediction files under predictions/."""
    root = tmp_path_factory.mktemp("ensemble-runs")
    common = ["--model_path", str(tiny_checkpoint[0]), "--epochs", "1", "--lr", "1e-3"]
    sentiment = [*common, "--data_dir", str(data), "--train_limit", "16", "--batch_size", "8"]
    full_model = [*sentiment, "--dataset", "cfimdb", "--fine-tune-mode", "full-model"]
    commands = {
        "full": (classifier, full_model),
        "lora": (classifier, [*full_model, "--lora", "--lora_rank", "2", "--pooling", "mean",
                              "--prompt", "Review: {sentence} Sentiment:"]),
        "sst": (classifier, [*sentiment, "--dataset", "sst"]),
        "para": (para, [*common, *para_files(data), "--train_limit", "32"]),
        "para_lora": (para, [*common, *para_files(data), "--train_limit", "32", "--lora", "--head", "last",
                             "--prompt", "Q1: {s1} Q2: {s2} Same? "]),
    }
    directories = {}
    for name, (script, flags) in commands.items():
        folder = root / name
        if script is classifier:
            script.main([*flags, "--run_dir", str(folder / "runs"), "--predictions_dir", str(folder / "predictions")])
            directories[name] = folder / "runs" / flags[flags.index("--dataset") + 1]
        else:
            script.main([*flags, "--run_dir", str(folder / "runs"), "--para_dev_out",
                         str(folder / "predictions/dev.csv"), "--para_test_out", str(folder / "predictions/test.csv")])
            directories[name] = folder / "runs"
    return directories


def own_predictions(run: Path, split: str) -> Path:
    """A training run's own prediction file (`runs` writes them to predictions/ beside runs/)."""
    if run.name == "runs":  # a paraphrase run
        return run.parent / f"predictions/{split}.csv"
    return run.parent.parent / f"predictions/full-model-{run.name}-{split}-out.csv"


def sentiment_ensemble(data: Path, out: Path, *runs: Path, flags: tuple[str, ...] = ()) -> list[str]:
    return ["--ensemble", *map(str, runs), "--data_dir", str(data), "--predictions_dir", str(out),
            "--fine-tune-mode", "full-model", *flags]


def para_ensemble(data: Path, out: Path, *runs: Path, flags: tuple[str, ...] = ()) -> list[str]:
    return ["--ensemble", *map(str, runs), *para_files(data), "--para_dev_out", str(out / "dev.csv"),
            "--para_test_out", str(out / "test.csv"), *flags]


def no_model(*args, **kwargs):
    raise AssertionError("a model was built before the --ensemble runs were checked")


def test_a_lora_and_a_full_model_run_ensemble_into_complete_files_graded_as_printed_and_logged(data, runs, tmp_path,
                                                                                               capsys):
    capsys.readouterr()
    classifier.main(sentiment_ensemble(data, tmp_path, runs["full"], runs["lora"]))
    dev_file, test_file = tmp_path / "full-model-cfimdb-dev-out.csv", tmp_path / "full-model-cfimdb-test-out.csv"
    test_ids = [example.id for example in read_sentiment(data / "ids-cfimdb-test-student.csv", 2, labelled=False)]
    assert list(read_predictions(test_file)) == test_ids  # every test id once, in input order

    graded = evaluation.grade(dev_file, data / "ids-cfimdb-dev.csv")
    log = json.loads((tmp_path / "full-model-cfimdb-dev-out.ensemble.json").read_text())
    assert log["ensemble"]["dev"] == {"accuracy": graded["accuracy"], "macro_f1": graded["macro_f1"]}
    assert f"ensemble of 2 run(s): dev accuracy {graded['accuracy']:.4f}" in capsys.readouterr().out
    # each run is rebuilt as it trained: its dev accuracy is that of the predictions its training wrote
    for member, name in zip(log["members"], ("full", "lora")):
        assert member["run"] == str(runs[name])
        own = evaluation.grade(own_predictions(runs[name], "dev"), data / "ids-cfimdb-dev.csv")
        assert member["dev"]["accuracy"] == own["accuracy"]
    # averaged probabilities: where both runs predict one class, so does the ensemble
    full, lora, ensemble = (read_predictions(path) for path in (own_predictions(runs["full"], "test"),
                                                                 own_predictions(runs["lora"], "test"), test_file))
    agreed = [i for i in test_ids if full[i] == lora[i]]
    assert agreed and all(ensemble[i] == full[i] for i in agreed)


def test_an_ensemble_of_one_run_writes_its_files_byte_for_byte(data, runs, tmp_path):
    classifier.main(sentiment_ensemble(data, tmp_path, runs["lora"]))
    for split in ("dev", "test"):
        ours = (tmp_path / f"full-model-cfimdb-{split}-out.csv").read_bytes()
        assert ours == own_predictions(runs["lora"], split).read_bytes()
    para.main(para_ensemble(data, tmp_path, runs["para_lora"]))
    for split in ("dev", "test"):
        assert (tmp_path / f"{split}.csv").read_bytes() == own_predictions(runs["para_lora"], split).read_bytes()


def test_paraphrase_runs_with_other_prompts_and_heads_ensemble_into_complete_files(data, runs, tmp_path, capsys):
    capsys.readouterr()
    para.main(para_ensemble(data, tmp_path, runs["para"], runs["para_lora"]))
    test_ids = [pair.id for pair in read_paraphrase(data / "quora-test-student.csv", labelled=False)]
    predictions = read_predictions(tmp_path / "test.csv")
    assert list(predictions) == test_ids and set(predictions.values()) <= {"8505", "3919"}
    graded = evaluation.grade(tmp_path / "dev.csv", data / "quora-dev.csv")
    log = json.loads((tmp_path / "dev.ensemble.json").read_text())
    assert log["task"] == "paraphrase" and [member["run"] for member in log["members"]] == [
        str(runs["para"]), str(runs["para_lora"])]
    assert log["ensemble"]["dev"] == {name: graded[name] for name in ("accuracy", "f1", "precision", "recall")}
    assert f"ensemble of 2 run(s): dev accuracy {graded['accuracy']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("script, names, flags, message", [
    ("classifier", ["full", "sst"], (), "--ensemble {sst}: a run of sentiment-sst, but {full} is a run of "
                                        "sentiment-cfimdb: an ensemble's runs share one task"),
    ("classifier", ["para"], (), "--ensemble {para}: a run of paraphrase, not of sentiment-sst or sentiment-cfimdb"),
    ("classifier", ["full"], ("--dataset", "sst"),
     "--ensemble {full}: a run of sentiment-cfimdb, not of sentiment-sst"),
    ("paraphrase", ["para", "full"], (), "--ensemble {full}: a run of sentiment-cfimdb, not of paraphrase"),
])
def test_runs_of_another_task_are_refused_in_one_line_naming_the_run(monkeypatch, data, runs, tmp_path, capsys,
                                                                     script, names, flags, message):
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    ensemble = sentiment_ensemble if script == "classifier" else para_ensemble
    argv = ensemble(data, tmp_path, *(runs[name] for name in names), flags=flags)
    expected = message.format(**{name: path for name, path in runs.items()})
    assert refusal(capsys, script, argv).endswith(f"error: {expected}")
    assert not list(tmp_path.iterdir())


def test_a_run_without_best_pt_is_refused_before_any_model(monkeypatch, data, runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs["full"] / "settings.json", unfinished)
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    message = refusal(capsys, "classifier", sentiment_ensemble(data, tmp_path / "out", runs["full"], unfinished))
    assert f"error: --ensemble {unfinished}: holds no best.pt, so it is not a run that finished an epoch" in message
    message = refusal(capsys, "classifier", sentiment_ensemble(data, tmp_path / "out", tmp_path / "nothing"))
    assert message.endswith(f"error: --ensemble {tmp_path / 'nothing'}: no such directory")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script, flags, message", [
    ("classifier", ("--run_dir", "somewhere"), "--run_dir somewhere: not with --ensemble, which trains nothing"),
    ("classifier", ("--resume",), "--resume: not with --ensemble, which trains nothing"),
    ("classifier", ("--lora",), "--lora: not with --ensemble: each run's settings.json decides its model"),
    ("classifier", ("--epochs", "3"), "--epochs 3: not with --ensemble"),
    ("paraphrase", ("--prompt", "{s1} {s2}"), "--prompt '{s1} {s2}': not with --ensemble"),
    ("paraphrase", ("--model_size", "gpt2-medium"), "--model_size 'gpt2-medium': not with --ensemble"),
    ("classifier", ("--fine-tune-mode", "last-linear-layer"),
     "--fine-tune-mode 'last-linear-layer': names the ensemble's prediction files, and no --ensemble run trained "
     "in this mode (they trained in full-model)"),
])
def test_flags_the_ensemble_would_ignore_are_refused(monkeypatch, data, runs, tmp_path, capsys, script, flags,
                                                     message):
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    ensemble = sentiment_ensemble if script == "classifier" else para_ensemble
    run = runs["full"] if script == "classifier" else runs["para"]
    assert message in refusal(capsys, script, ensemble(data, tmp_path, run, flags=flags))
    assert not list(tmp_path.iterdir())
