"""What a finished run records of itself (settings.json's "result"), and the comparison of runs grouped by
their settings across seeds, on real runs of classifier.py with a tiny random checkpoint."""
import csv
import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import classifier
from flags import UserError
from tools import compare

LRS, SEEDS = ("0.0001", "0.001"), (1, 2)  # the order of their run directories


def train_cfimdb(checkpoint: Path, run_dir: Path, *flags: str) -> Path:
    """A two-epoch run on 16 CFIMDB reviews in `run_dir`; its run directory."""
    classifier.main(["--model_path", str(checkpoint), "--dataset", "cfimdb", "--train_limit", "16", "--epochs", "2",
                     "--batch_size", "8", "--run_dir", str(run_dir), "--predictions_dir",
                     str(run_dir / "predictions"), *flags])
    return run_dir / "cfimdb"


def record(run: Path) -> dict:
    return json.loads((run / "settings.json").read_text())


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    """Two learning rates by two seeds, each run writing its predictions to a folder of its own."""
    root = tmp_path_factory.mktemp("sweep")
    for lr in LRS:
        for seed in SEEDS:
            train_cfimdb(tiny_checkpoint[0], root / f"lr{lr}-seed{seed}", "--lr", lr, "--seed", str(seed))
    return root


def copy_run(run: Path, to: Path) -> Path:
    """A run's record and log, without its checkpoints: all a comparison reads."""
    to.mkdir(parents=True)
    for name in ("settings.json", "metrics.jsonl"):
        shutil.copy(run / name, to / name)
    return to


def test_a_finished_run_records_its_best_epoch_metrics_speed_and_time(sweep):
    run = sweep / "lr0.001-seed1/cfimdb"
    result = record(run)["result"]
    dev = [r for r in log(run) if r["split"] == "dev"]
    epochs = [r for r in log(run) if r["split"] == "epoch"]
    best = max(dev, key=lambda r: r["accuracy"])  # the first of equal scores, as training keeps it
    assert result["best_epoch"] == best["epoch"] == torch.load(run / "best.pt", weights_only=True)["epoch"]
    assert result["metric"] == "accuracy" and result["epochs_trained"] == 2
    assert result["best_metrics"] == {k: best[k] for k in ("accuracy", "macro_f1", "loss")}
    seconds = sum(r["seconds"] for r in epochs)
    assert result["tokens_per_second"] == pytest.approx(sum(r["tokens_per_second"] * r["seconds"] for r in epochs)
                                                        / seconds)
    assert result["wall_seconds"] > seconds  # training, and dev evaluation too
    assert result["wall_seconds"] == torch.load(run / "last.pt", weights_only=True)["progress"]["wall_seconds"]


def test_real_runs_group_by_settings_across_seeds_with_numpy_mean_and_std(sweep):
    groups = compare.compare(compare.find_runs([sweep]))
    assert [group.settings for group in groups] == [{"--lr": 0.0001}, {"--lr": 0.001}]
    for group, lr in zip(groups, LRS):
        runs = [sweep / f"lr{lr}-seed{seed}/cfimdb" for seed in SEEDS]
        assert group.task == "sentiment-cfimdb" and group.runs == runs and group.seeds == list(SEEDS)
        results = [record(run)["result"] for run in runs]
        assert list(group.metrics) == ["accuracy", "macro_f1", "loss"]  # the one that picked the epoch first
        for metric, (mean, std) in group.metrics.items():
            values = [result["best_metrics"][metric] for result in results]
            assert (mean, std) == (np.mean(values), np.std(values, ddof=1))
        assert group.best_epochs == [result["best_epoch"] for result in results]
        assert group.wall_seconds == np.mean([result["wall_seconds"] for result in results])
        assert group.tokens_per_second == np.mean([result["tokens_per_second"] for result in results])
        assert group.curves["accuracy"] == [[r["accuracy"] for r in log(run) if r["split"] == "dev"] for run in runs]


def test_runs_that_differ_only_in_free_settings_share_a_group(sweep):
    group = compare.compare(compare.find_runs([sweep / "lr0.001-seed1", sweep / "lr0.001-seed2"]))
    assert len(group) == 1 and group[0].settings == {}  # one group: nothing differs between groups
    outputs = {record(run)["settings"]["task"]["predictions_dir"] for run in group[0].runs}
    assert len(outputs) == 2  # --predictions_dir differed, and decides nothing a run learns


def test_the_table_the_csv_and_the_picture_show_every_group(sweep, tmp_path):
    groups = compare.compare(compare.find_runs([sweep]))
    compare.write_csv(groups, tmp_path / "out/table.csv")
    compare.plot_dev_curves(groups, tmp_path / "out/dev.png")
    lines = compare.markdown_table(groups).splitlines()
    assert lines[0] == "| task | --lr | accuracy | macro_f1 | loss | seeds | best epoch | wall time (s) | tokens/s |"
    mean, std = groups[0].metrics["accuracy"]
    assert lines[2].startswith(f"| sentiment-cfimdb | 0.0001 | {mean:.4f} ± {std:.4f} | ")
    assert lines[2].endswith(f" | 2 | {', '.join(map(str, groups[0].best_epochs))} | {groups[0].wall_seconds:.1f} | "
                             f"{groups[0].tokens_per_second:.0f} |")
    assert len(lines) == 4

    with open(tmp_path / "out/table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["--lr"] for row in rows] == ["0.0001", "0.001"]
    for row, group in zip(rows, groups):
        assert (float(row["accuracy_mean"]), float(row["accuracy_std"])) == group.metrics["accuracy"]
        assert row["seeds"] == "1 2" and row["n_seeds"] == "2" and float(row["wall_seconds"]) == group.wall_seconds
    assert (tmp_path / "out/dev.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_run_adds_its_wall_time_to_the_recorded_one(tmp_path, tiny_checkpoint):
    run = train_cfimdb(tiny_checkpoint[0], tmp_path / "run", "--epochs", "1")
    first = record(run)["result"]
    assert first["epochs_trained"] == 1
    train_cfimdb(tiny_checkpoint[0], tmp_path / "run", "--resume")
    second = record(run)["result"]
    epoch_1 = next(r for r in log(run) if r["split"] == "epoch" and r["epoch"] == 1)
    assert second["epochs_trained"] == 2 and second["wall_seconds"] > first["wall_seconds"] + epoch_1["seconds"]
    assert len(record(run)["resumed"]) == 1


def test_an_unfinished_run_is_left_out_with_a_warning(monkeypatch, tmp_path, tiny_checkpoint):
    finished = train_cfimdb(tiny_checkpoint[0], tmp_path / "finished")
    resumed = train_cfimdb(tiny_checkpoint[0], tmp_path / "resumed", "--epochs", "1")
    cross_entropy = F.cross_entropy

    def sigterm(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(classifier.F, "cross_entropy", sigterm)
    with pytest.raises(SystemExit):  # trains again, and is stopped: no longer finished
        train_cfimdb(tiny_checkpoint[0], tmp_path / "resumed", "--resume")
    assert "result" not in record(resumed)
    with pytest.warns(UserWarning, match=f"{resumed} has not finished .*: left out"):
        groups = compare.compare(compare.find_runs([tmp_path]))
    assert [group.runs for group in groups] == [[finished]]


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:60], r"settings.json, line \d+: not JSON \(.*\); mend it, or leave that run out"),
    (lambda text: text.replace('"tokens_per_second"', '"tokens_per_sec"', 1),
     r"settings.json: its result is not an object of exactly best_epoch, metric, .*; mend it"),
    (lambda text: text.replace('"epochs_trained": 2', '"epochs_trained": "2"', 1),
     r'settings.json: its result holds epochs_trained "2", not a whole number from 0; mend it'),
])
def test_a_damaged_settings_json_is_refused_in_one_line(sweep, tmp_path, damage, message):
    run = copy_run(sweep / "lr0.001-seed1/cfimdb", tmp_path / "run")
    (run / "settings.json").write_text(damage((run / "settings.json").read_text()))
    with pytest.raises(UserError) as refused:  # which a command ends with as `prog: error: {message}`, status 2
        compare.compare(compare.find_runs([tmp_path]))
    assert "\n" not in str(refused.value) and str(refused.value).startswith(str(run / "settings.json"))
    assert re.search(message, str(refused.value)), refused.value


def test_a_log_without_the_epochs_the_result_names_is_refused(sweep, tmp_path):
    run = copy_run(sweep / "lr0.001-seed1/cfimdb", tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(line for line in lines if '"split": "dev", "epoch": 1' not in line))
    with pytest.raises(UserError, match=r"metrics.jsonl: its dev records are of epochs \[0\], but its "
                                                r"settings.json says epochs 0 to 1 were trained"):
        compare.compare([run])


def test_a_path_without_runs_is_refused_naming_it(tmp_path):
    (tmp_path / "empty/sub").mkdir(parents=True)
    with pytest.raises(UserError, match=f"^{tmp_path / 'empty'} holds no run: no settings.json in it"):
        compare.find_runs([tmp_path / "empty"])
    with pytest.raises(UserError, match="no such directory"):
        compare.find_runs([tmp_path / "missing"])


def test_settings_that_change_results_split_groups_even_when_resume_may_change_them(tmp_path):
    """Decoding and the checkpoint may change on --resume, yet change a run's scores; output paths do not."""
    def learned(decoding: dict, task: dict, model: dict) -> dict:
        record = {"command": ["sonnet_generation.py"], "data": {},
                  "settings": {"decoding": decoding, "task": task, "model": model}}
        return compare.learning_settings(tmp_path, record)

    base = learned({"temperature": 1.2}, {"sonnet_out": "a.txt"}, {})
    assert learned({"temperature": 1.2}, {"sonnet_out": "b.txt"}, {"use_gpu": True}) == base
    assert learned({"temperature": 0.7}, {"sonnet_out": "a.txt"}, {})["--temperature"] == 0.7 != base["--temperature"]
    assert learned({}, {"decoding": "beam"}, {})["--decoding"] == "beam"
    assert learned({}, {}, {"model_path": "other"})["--model_path"] == "other"
