"""--tensorboard: a run's metrics.jsonl numbers as TensorBoard event files in RUN_DIR/tensorboard/, read back with
TensorBoard's own reader; a resumed run's events are cut where its metrics.jsonl is, only the main process writes
them, --overwrite deletes them, and the flag is checked at start-up."""
import importlib.util
import json
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import classifier
import paraphrase_detection
import sonnet_generation
from training import tensorboard_log
from training.run_dir import run_files
from training.run_log import RunLog, read_records
from training.tensorboard_log import tensorboard_sink

SCRIPTS = (classifier, paraphrase_detection, sonnet_generation)


def events(run_directory: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each scalar in the run's event files, as TensorBoard reads them."""
    reader = EventAccumulator(str(run_directory / tensorboard_log.FOLDER))
    reader.Reload()
    return {tag: [(event.step, event.value) for event in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def logged_numbers(run_directory: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each number in metrics.jsonl, by split/name."""
    numbers: dict[str, list[tuple[int, float]]] = {}
    for record in read_records(run_directory / "metrics.jsonl"):
        for name, value in record.items():
            if name not in ("split", "epoch", "step") and type(value) in (int, float):
                numbers.setdefault(f"{record['split']}/{name}", []).append((record["step"], value))
    return numbers


def assert_events_equal_metrics(run_directory: Path) -> None:
    expected, found = logged_numbers(run_directory), events(run_directory)
    assert found.keys() == expected.keys()
    for tag, points in expected.items():  # event values are float32
        assert [step for step, _ in found[tag]] == [step for step, _ in points], tag
        assert [value for _, value in found[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag


def epoch_records(epoch: int, first_step: int, scale: float) -> list[dict]:
    """What the loop logs in an epoch of two logged steps: training lines, the epoch's speed, its dev metrics."""
    steps = [first_step, first_step + 1]
    return ([{"split": "train", "epoch": epoch, "step": step, "loss": scale / step, "lr": 1e-4} for step in steps]
            + [{"split": "epoch", "epoch": epoch, "step": steps[-1], "seconds": 2.5, "tokens_per_second": 900 * scale},
               {"split": "dev", "epoch": epoch, "step": steps[-1], "accuracy": 0.4 * scale, "loss": 1.5,
                "predictions": [0, 1]}])


def session(run_directory: Path, records: list[dict], kept: list[dict], tensorboard: bool = True) -> None:
    """One session of a run as the loop makes it: the log opened with the records it keeps, then `records`."""
    sink = tensorboard_sink(run_directory, tensorboard, kept)
    log = RunLog(run_directory / "metrics.jsonl", run_directory / "curves.png", kept, sink)
    for record in records:
        log.log(**record)


def next_second() -> None:
    """Event files are named by the second they start in, and read in name order: a session's comes after the
    last one's."""
    time.sleep(1.01 - time.time() % 1)


def test_the_events_hold_every_number_of_metrics_jsonl_at_its_step(tmp_path):
    session(tmp_path, epoch_records(0, 1, 1.0) + [{"split": "resume", "epoch": 1, "step": 2, "changed": {}}], [])
    assert {"train/loss", "train/lr", "epoch/seconds", "epoch/tokens_per_second", "dev/accuracy",
            "dev/loss"} == events(tmp_path).keys()  # not the dev predictions, nor the resume line's changes
    assert_events_equal_metrics(tmp_path)


def test_a_resumed_run_purges_the_events_past_the_records_it_keeps(tmp_path):
    session(tmp_path, epoch_records(0, 1, 1.0) + epoch_records(1, 3, 1.0), [])
    next_second()
    # resumed from the checkpoint at step 2: steps 3 and 4 are trained again, to other numbers
    session(tmp_path, epoch_records(1, 3, 2.0), read_records(tmp_path / "metrics.jsonl", up_to_step=2))
    assert events(tmp_path)["dev/accuracy"] == [(2, pytest.approx(0.4)), (4, pytest.approx(0.8))]
    assert_events_equal_metrics(tmp_path)


def test_a_run_that_turns_tensorboard_on_when_it_resumes_gets_its_kept_records_first(tmp_path):
    session(tmp_path, epoch_records(0, 1, 1.0), [], tensorboard=False)
    assert not tensorboard_log.event_files(tmp_path)
    session(tmp_path, epoch_records(1, 3, 1.0), read_records(tmp_path / "metrics.jsonl"))
    assert events(tmp_path)["train/loss"][0] == (1, 1.0)
    assert_events_equal_metrics(tmp_path)


def test_only_the_main_process_writes_events(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_log, "is_main", lambda: False)
    assert tensorboard_sink(tmp_path, True, []) is None
    assert not (tmp_path / tensorboard_log.FOLDER).exists()


def test_event_files_are_files_of_the_run_which_overwrite_deletes(tmp_path):
    session(tmp_path, epoch_records(0, 1, 1.0), [])
    assert tensorboard_log.event_files(tmp_path) and set(tensorboard_log.event_files(tmp_path)) <= set(
        run_files(tmp_path))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.__name__)
def test_the_flag_is_refused_where_nothing_trains_or_tensorboard_is_missing(script, tmp_path, monkeypatch, capsys):
    assert script.get_settings(["--tensorboard"]).run.tensorboard
    refusals = {("--tensorboard", "--epochs", "0"): "--tensorboard: logs training, and --epochs 0 trains nothing"}
    if script is not sonnet_generation:
        refusals[("--tensorboard", "--ensemble", str(tmp_path))] = "--tensorboard: not with --ensemble"
    for argv, message in refusals.items():
        with pytest.raises(SystemExit):
            script.main(list(argv))
        assert message in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "tensorboard" else find_spec(name))
    with pytest.raises(SystemExit):
        script.main(["--tensorboard"])
    assert "--tensorboard: needs the tensorboard package" in capsys.readouterr().err


def test_a_script_run_with_tensorboard_writes_its_metrics_as_events_and_a_resume_appends(course_rows, tmp_path,
                                                                                        long_context_checkpoint):
    flags = ["--model_path", str(long_context_checkpoint), "--dataset", "sst", "--data_dir", str(course_rows),
             "--train_limit", "16", "--batch_size", "4", "--log_every", "1", "--run_dir", str(tmp_path / "runs"),
             "--predictions_dir", str(tmp_path / "predictions")]
    classifier.main([*flags, "--epochs", "1"])  # without the flag: FREE on resume
    next_second()
    classifier.main([*flags, "--epochs", "2", "--resume", "--tensorboard"])
    run = tmp_path / "runs/sst"
    found = events(run)
    assert [step for step, _ in found["train/loss"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [step for step, _ in found["dev/accuracy"]] == [4, 8]
    assert_events_equal_metrics(run)
    assert json.loads((run / "settings.json").read_text())["result"]["epochs_trained"] == 2
