"""Every task script ends by saying what happened and what to do next: its run directory and logs, the best
epoch's dev metrics, every prediction file, and commands that run as printed; curves.png draws what a short run
logs; the dev set is scored once per epoch, not again for its prediction file."""
import json
import shlex
import subprocess
from pathlib import Path

import pytest

import classifier
import evaluation
import training.run_log
from training.run_log import learning_curves

DATA = Path("data")


def small_sentiment_data(folder: Path, rows: int = 120) -> Path:
    """The header and first `rows` rows of every sentiment file (each dev file then holds every class)."""
    folder.mkdir()
    for split in ("train", "dev", "test-student"):
        for dataset in ("sst", "cfimdb"):
            name = f"ids-{dataset}-{split}.csv"
            lines = (DATA / name).read_text().splitlines(keepends=True)
            (folder / name).write_text("".join(lines[:rows + 1]))
    return folder


def run_classifier(tmp_path: Path, checkpoint: Path, *flags: str) -> tuple[Path, Path]:
    """classifier.py on the small data; (its data folder, its predictions folder)."""
    data, predictions = small_sentiment_data(tmp_path / "data"), tmp_path / "predictions"
    predictions.mkdir()
    classifier.main(["--model_path", str(checkpoint), "--data_dir", str(data), "--predictions_dir", str(predictions),
                     "--run_dir", str(tmp_path / "runs"), "--batch_size", "16", *flags])
    return data, predictions


def summary_of(output: str) -> list[str]:
    return output[output.index("\nsummary:\n"):].splitlines()[2:]


def epoch_records(losses: list[float], steps_per_epoch: int, metric: list[float]) -> list[dict]:
    records = []
    for epoch, (loss, score) in enumerate(zip(losses, metric)):
        step = (epoch + 1) * steps_per_epoch
        records += [{"split": "epoch", "epoch": epoch, "step": step, "seconds": 1.0, "tokens_per_second": 9.0,
                     training.run_log.EPOCH_LOSS: loss},
                    {"split": "dev", "epoch": epoch, "step": step, "accuracy": score}]
    return records


def test_learning_curves_plot_each_epochs_mean_training_loss_when_no_step_was_logged():
    figure = learning_curves(epoch_records([2.5, 2.0, 1.75], 3, [0.3, 0.4, 0.35]), "sentiment-sst: runs/x")
    loss_panel = figure.axes[0]
    (line,) = loss_panel.get_lines()
    assert list(line.get_xdata()) == [3, 6, 9] and list(line.get_ydata()) == [2.5, 2.0, 1.75]


def test_learning_curves_have_whole_number_ticks_a_marked_best_epoch_and_a_title():
    figure = learning_curves(epoch_records([2.5, 2.0, 1.75], 3, [0.3, 0.4, 0.35]), "sentiment-sst: runs/x",
                             best_epoch=1)
    figure.canvas.draw()
    loss_panel, dev_panel = figure.axes
    assert figure.get_suptitle() == "sentiment-sst: runs/x"
    assert dev_panel.get_title() == "dev accuracy"
    for panel in (loss_panel, dev_panel):
        assert all(float(tick).is_integer() for tick in panel.get_xticks())
    marks = {panel: [list(line.get_xdata()) for line in panel.get_lines() if line.get_linestyle() == "--"]
             for panel in (loss_panel, dev_panel)}
    assert marks == {loss_panel: [[6, 6]], dev_panel: [[1, 1]]}  # epoch 1 ended at step 6


def test_classifier_on_both_datasets_summarises_each_and_its_printed_commands_run(tmp_path, tiny_checkpoint, capsys):
    data, predictions = run_classifier(tmp_path, tiny_checkpoint[0], "--epochs", "1")
    summary = summary_of(capsys.readouterr().out)
    text = "\n".join(summary)
    for dataset in ("sst", "cfimdb"):
        run = tmp_path / "runs" / dataset
        assert f"run directory {run}: its log {run}/metrics.jsonl, its curves {run}/curves.png" in text
        best = json.loads((run / "settings.json").read_text())["result"]["best_metrics"]
        assert f"best epoch 0 of 1 trained: dev accuracy {best['accuracy']:.4f}" in text
        assert (f"predictions {predictions}/last-linear-layer-{dataset}-dev-out.csv, "
                f"{predictions}/last-linear-layer-{dataset}-test-out.csv") in text
    commands = [shlex.split(line) for line in summary[summary.index("next:") + 1:]]
    grading = [words for words in commands if words[1].endswith("evaluation.py")]
    assert len(grading) == 2
    for words, dataset in zip(grading, ("sst", "cfimdb")):
        ran = subprocess.run(words, capture_output=True, text=True, timeout=120)
        graded = evaluation.grade(predictions / f"last-linear-layer-{dataset}-dev-out.csv",
                                  data / f"ids-{dataset}-dev.csv")
        assert ran.returncode == 0, ran.stderr
        assert f"accuracy   {graded['accuracy']:.4f}" in ran.stdout
    (hand_in,) = [words[:words.index("#")] for words in commands if "prepare_submit.py" in words[1]]
    assert hand_in[2:] == ["--predictions_dir", str(predictions), "--data_dir", str(data)]
    ran = subprocess.run(hand_in, capture_output=True, text=True, timeout=120)
    # it finds this task's files and their inputs; the other tasks have not written theirs
    assert ran.returncode == 2 and "para-dev-output.csv" in ran.stderr and "-out.csv" not in ran.stderr


def test_without_training_the_summary_says_there_is_no_run_directory(tmp_path, tiny_checkpoint, capsys):
    run_classifier(tmp_path, tiny_checkpoint[0], "--epochs", "0", "--dataset", "sst")
    summary = summary_of(capsys.readouterr().out)
    assert summary[1].strip() == ("--epochs 0: nothing trained, so no run directory; the model as loaded wrote the "
                                  "predictions")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("strategy, dev_scorings", [([], 2), (["--lora"], 3)])
def test_dev_is_scored_once_per_epoch_and_again_only_when_merging_lora_changed_the_weights(
        tmp_path, tiny_checkpoint, monkeypatch, strategy, dev_scorings):
    scored = []
    class_logits = classifier.class_logits

    def counted(model, data, settings, device, desc):
        scored.append(desc)
        return class_logits(model, data, settings, device, desc)

    monkeypatch.setattr(classifier, "class_logits", counted)
    data, predictions = run_classifier(tmp_path, tiny_checkpoint[0], "--epochs", "2", "--dataset", "sst",
                                       "--fine-tune-mode", "full-model", "--lr", "1e-3", *strategy)
    assert scored.count("sst dev") == dev_scorings and scored.count("sst test") == 1
    # the file holds the restored best epoch's predictions: they score what that epoch logged
    result = json.loads((tmp_path / "runs/sst/settings.json").read_text())["result"]
    graded = evaluation.grade(predictions / "full-model-sst-dev-out.csv", data / "ids-sst-dev.csv")
    assert graded["accuracy"] == pytest.approx(result["best_metrics"]["accuracy"], abs=0 if not strategy else 0.02)


def test_curves_of_a_finished_run_name_its_task_and_mark_its_best_epoch(tmp_path, tiny_checkpoint, monkeypatch):
    drawn = []

    def recorded(records, title, best_epoch=None):
        drawn.append((title, best_epoch))
        return learning_curves(records, title, best_epoch)

    monkeypatch.setattr(training.run_log, "learning_curves", recorded)
    run_classifier(tmp_path, tiny_checkpoint[0], "--epochs", "2", "--dataset", "sst")
    best_epoch = json.loads((tmp_path / "runs/sst/settings.json").read_text())["result"]["best_epoch"]
    assert drawn[-1] == (f"sentiment-sst: {tmp_path / 'runs/sst'}", best_epoch)
    assert (tmp_path / "runs/sst/curves.png").is_file()
