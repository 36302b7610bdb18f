"""What `experiments.py compare` shows: groups of distinct seeds (a run's copy is left out), rows in
the order of their settings with numbers by value, switches as on/off, no spread for a group of one run, and
where the CSV and the picture went. Built from copies of one real run, each with its record edited."""
import csv
import json
import shutil
from pathlib import Path

import pytest

import classifier
import experiments
from tools import compare


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    """One finished one-epoch CFIMDB run."""
    root = tmp_path_factory.mktemp("one-run")
    classifier.main(["--model_path", str(tiny_checkpoint[0]), "--dataset", "cfimdb", "--train_limit", "16",
                     "--epochs", "1", "--batch_size", "8", "--run_dir", str(root), "--predictions_dir",
                     str(root / "predictions")])
    return root / "cfimdb"


def variant(run: Path, to: Path, accuracy: float | None = None, **settings: dict) -> Path:
    """A copy of the record and log of `run` (all a comparison reads) in `to`, its settings changed by
    `settings` ({group: {field: value}}), and its best accuracy by `accuracy`."""
    to.mkdir(parents=True)
    shutil.copy(run / "metrics.jsonl", to / "metrics.jsonl")
    record = json.loads((run / "settings.json").read_text())
    for group, values in settings.items():
        record["settings"][group].update(values)
    if accuracy is not None:
        record["result"]["best_metrics"]["accuracy"] = accuracy
    (to / "settings.json").write_text(json.dumps(record))
    return to


def test_a_run_and_its_copy_count_once_with_a_warning_naming_both(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "a")
    shutil.copytree(finished, tmp_path / "b")
    seed = json.loads((finished / "settings.json").read_text())["settings"]["train"]["seed"]
    with pytest.warns(UserWarning) as warned:
        groups = compare.compare(compare.find_runs([tmp_path]))
    assert [str(warning.message) for warning in warned] == [
        f"{tmp_path / 'b'} is a run of the same settings and the same seed {seed} as {tmp_path / 'a'} (a copy of "
        "it?): left out, as a group's mean and spread are over distinct seeds"]
    assert [(group.runs, group.seeds) for group in groups] == [([tmp_path / "a"], [seed])]
    assert compare.markdown_table(groups).splitlines()[2].split(" | ")[-4] == "1"  # seeds


def test_two_runs_of_one_seed_are_one_seed_though_their_results_differ(finished, tmp_path):
    variant(finished, tmp_path / "first", accuracy=0.5)
    variant(finished, tmp_path / "second", accuracy=0.75)
    variant(finished, tmp_path / "third", accuracy=0.75, train={"seed": 7})
    with pytest.warns(UserWarning, match="second is a run of the same settings and the same seed .* as .*first"):
        groups = compare.compare(compare.find_runs([tmp_path]))
    seed = json.loads((finished / "settings.json").read_text())["settings"]["train"]["seed"]
    assert [group.seeds for group in groups] == [sorted([seed, 7])]
    assert groups[0].metrics["accuracy"][0] == pytest.approx(0.625)  # first and third: 0.5 and 0.75


def test_rows_follow_the_settings_with_numbers_by_value(finished, tmp_path):
    for lr in ("0.001", "1e-05", "0.0001"):  # the directories sort 0.0001, 0.001, 1e-05 as text
        variant(finished, tmp_path / f"lr{lr}", train={"lr": float(lr)})
    groups = compare.compare(compare.find_runs([tmp_path]))
    assert [group.settings["--lr"] for group in groups] == [1e-05, 0.0001, 0.001]
    rows = compare.markdown_table(groups).splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == ["1e-05", "0.0001", "0.001"]


def test_switches_show_as_on_and_off(finished, tmp_path):
    variant(finished, tmp_path / "new-head", task={"cloze": False})
    variant(finished, tmp_path / "cloze", task={"cloze": True})
    groups = compare.compare(compare.find_runs([tmp_path]))
    lines = compare.markdown_table(groups).splitlines()
    assert lines[0].startswith("| task | --cloze | ")
    assert [line.split(" | ")[1] for line in lines[2:]] == ["off", "on"]
    compare.write_csv(groups, tmp_path / "table.csv")
    with open(tmp_path / "table.csv", newline="") as f:
        assert [row["--cloze"] for row in csv.DictReader(f)] == ["off", "on"]
    assert compare.legend_label(groups[1], tasks=1) == "--cloze on"


def test_a_group_of_one_run_shows_its_mean_without_a_spread(finished, tmp_path):
    variant(finished, tmp_path / "one", accuracy=0.5, train={"lr": 0.01})
    variant(finished, tmp_path / "two-1", accuracy=0.5)
    variant(finished, tmp_path / "two-2", accuracy=0.75, train={"seed": 7})
    groups = compare.compare(compare.find_runs([tmp_path]))
    cells = {len(group.runs): row.split(" | ")[2]
             for group, row in zip(groups, compare.markdown_table(groups).splitlines()[2:])}
    assert cells == {1: "0.5000", 2: "0.6250 ± 0.1768"}
    compare.write_csv(groups, tmp_path / "table.csv")
    with open(tmp_path / "table.csv", newline="") as f:
        stds = {row["n_seeds"]: row["accuracy_std"] for row in csv.DictReader(f)}
    assert stds["1"] == "" and float(stds["2"]) == pytest.approx(0.1767767)


def test_the_compare_command_says_where_it_wrote_the_csv_and_the_picture(finished, tmp_path, capsys):
    table, picture = tmp_path / "out/table.csv", tmp_path / "out/curves.png"
    experiments.main(["compare", str(finished), "--csv", str(table), "--plot", str(picture)])
    out = capsys.readouterr().out
    assert f"the table as CSV: {table}\n" in out and f"the dev curves: {picture}\n" in out
    assert table.is_file() and picture.read_bytes()[:4] == b"\x89PNG"
