"""Comparing finished runs. Runs of one task whose settings differ only in the seed, or in settings that do not
change a run's results (output paths, speed switches, ...: `flags.setting`'s `changes_results`), form a
group; each group's best dev metrics are the mean and standard deviation over its seeds, which are distinct: of
two runs of one group with the same seed (a run and its copy, or two search trials that drew the same values)
one is left out, with a warning. The comparison is a Markdown table, a CSV file and a picture of the dev
curves, the groups in order of their settings (numbers by value); `python experiments.py compare` shows it.
"""
import csv
import importlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from course.files import write_atomically
from flags import UserError, flag_of, require_writable, setting, shown
from training.run_dir import SETTINGS_FILE, RunResult, jsonable, read_record, result_of
from training.run_log import read_records, save_figure
from training.settings import ScriptSettings

ADVICE = "mend it, or leave that run out of the comparison"
SCRIPTS = ("classifier.py", "paraphrase_detection.py", "sonnet_generation.py")  # the scripts that write runs
SEED = ("train", "seed")  # (settings group, field): what varies within a group


@dataclass
class Group:
    """Finished runs of `task` under the same settings but the seed. `metrics` holds, for each dev metric of
    the best epoch, the mean over the runs and the sample standard deviation (n - 1 in the denominator; 0.0
    for a single run)."""
    task: str
    settings: dict[str, Any]  # flag -> value, for the flags whose values differ between the task's groups
    runs: list[Path]
    seeds: list[int]  # of `runs`, in their order
    metrics: dict[str, tuple[float, float]]  # dev metric -> (mean, std); the one that picked the best epoch first
    best_epochs: list[int]
    wall_seconds: float  # mean over the runs
    tokens_per_second: float  # mean over the runs
    metric: str  # the dev metric that picked each run's best epoch
    curves: dict[str, list[list[float]]]  # dev metric -> each run's (in `runs` order) value after each epoch


@dataclass
class FinishedRun:
    """What a comparison needs of one finished run."""
    directory: Path
    task: str
    seed: int
    settings: dict[str, Any]  # flag -> value, for every setting that may change what the run learns
    result: RunResult
    curves: dict[str, list[float]]  # dev metric -> its value after each epoch


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """The run directories (those holding settings.json) that `paths` name: each path is one, or a folder
    searched for them at any depth. A path that holds none is refused, so a mistyped path cannot quietly
    leave runs out of a comparison."""
    found: set[Path] = set()
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: {'not a directory' if path.exists() else 'no such directory'}; give run "
                            "directories, or folders that hold them")
        held = {record.parent for record in path.rglob(SETTINGS_FILE) if record.is_file()}
        if not held:
            raise UserError(f"{path} holds no run: no {SETTINGS_FILE} in it or in any folder below it")
        found |= held
    return sorted(found)


def compare(run_dirs: Sequence[Path]) -> list[Group]:
    """The groups of the finished runs among `run_dirs`, by task, then by the values of the settings that differ
    between them (`value_order`), then by their first run's directory. An unfinished run (one still training, stopped, or resumed and not yet finished) is left out with a
    warning: a sweep in progress can be compared as it goes."""
    finished = []
    for directory in run_dirs:
        run = read_run(directory)
        if run is None:
            warnings.warn(f"{directory} has not finished (its {SETTINGS_FILE} holds no result): left out")
        else:
            finished.append(run)
    by_settings: dict[tuple[str, str], list[FinishedRun]] = {}
    for run in finished:
        by_settings.setdefault((run.task, json.dumps(run.settings, sort_keys=True)), []).append(run)
    members = [distinct_seeds(runs) for runs in by_settings.values()]
    groups = [group_of(runs, differing_settings(runs[0], [other[0] for other in members])) for runs in members]
    return sorted(groups, key=lambda group: (group.task, [value_order(value) for value in group.settings.values()],
                                             min(group.runs)))


def distinct_seeds(runs: list[FinishedRun]) -> list[FinishedRun]:
    """The runs of one group, one per seed: the first by directory of each seed; each other is left out with a
    warning naming both, since a run and its copy would count twice in the mean and shrink the spread."""
    first: dict[int, FinishedRun] = {}
    for run in sorted(runs, key=lambda run: run.directory):
        if run.seed in first:
            warnings.warn(f"{run.directory} is a run of the same settings and the same seed {run.seed} as "
                          f"{first[run.seed].directory} (a copy of it?): left out, as a group's mean and spread are "
                          "over distinct seeds")
        else:
            first[run.seed] = run
    return list(first.values())


def value_order(value: Any) -> tuple[int, Any]:
    """How groups sort by a setting's value: numbers by value (1e-05 before 0.0001), then switches (off before
    on), then text, then anything else by its JSON."""
    if isinstance(value, bool):
        return 1, value
    if isinstance(value, (int, float)):
        return 0, value
    return (2, value) if isinstance(value, str) else (3, json.dumps(value))


def read_run(directory: Path) -> FinishedRun | None:
    """A run's record and dev curves, or None if it has not finished."""
    record = read_record(directory, ADVICE)
    result = result_of(record)
    if result is None:
        return None
    seed = record["settings"].get(SEED[0], {}).get(SEED[1])
    if not isinstance(seed, int):
        raise UserError(f"{directory / SETTINGS_FILE}: its settings hold no whole-number seed ({'.'.join(SEED)}); "
                        f"{ADVICE}")
    return FinishedRun(directory, record["task"], seed, learning_settings(directory, record), result,
                       dev_curves(directory, result))


def script_module(file: str) -> ModuleType:
    """The task script `file`, one of SCRIPTS, as a module: its settings dataclasses and its parser."""
    return importlib.import_module(file.removesuffix(".py"))


def script_settings(directory: Path, record: dict[str, Any]) -> type[ScriptSettings]:
    """The settings dataclass of the script that wrote the run: the first word of its recorded command."""
    command = record.get("command")
    script = command[0] if isinstance(command, list) and command else None
    if script not in SCRIPTS:
        raise UserError(f"{directory / SETTINGS_FILE}: its command does not start with one of the task scripts "
                        f"({', '.join(SCRIPTS)}); {ADVICE}")
    return script_module(script).Settings


def learning_settings(directory: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The recorded settings that may change a run's results, by flag: all but the seed and those that do not
    (`flags.setting`'s `changes_results`), each as recorded (or its default, if the run was recorded before
    it existed); and the SHA-256 of each data file, so runs on other data are not averaged together."""
    settings = {}
    for group in fields(script_settings(directory, record)):
        recorded = record["settings"].get(group.name, {})
        for spec in fields(group.type):
            if spec.metadata.get("changes_results", True) and (group.name, spec.name) != SEED:
                settings[flag_of(group.type, spec.name)] = recorded.get(spec.name, jsonable(spec.default))
    for flag, data in record["data"].items():
        settings[flag] = f"sha256 {data['sha256'][:12]}"
    return settings


def dev_curves(directory: Path, result: RunResult) -> dict[str, list[float]]:
    """Each best-epoch dev metric after each epoch, from metrics.jsonl; refused unless it logs exactly the
    epochs the result says were trained."""
    path = directory / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{directory} has a result in {SETTINGS_FILE} but no metrics.jsonl; {ADVICE}")
    dev = [record for record in read_records(path, advice=ADVICE) if record["split"] == "dev"]
    epochs = [record["epoch"] for record in dev]
    if epochs != list(range(result.epochs_trained)):
        raise UserError(f"{path}: its dev records are of epochs {epochs}, but its {SETTINGS_FILE} says epochs 0 to "
                        f"{result.epochs_trained - 1} were trained; {ADVICE}")
    for record in dev:
        missing = [metric for metric in result.best_metrics if not isinstance(record.get(metric), float)]
        if missing:
            raise UserError(f"{path}: the dev record of epoch {record['epoch']} has no {', '.join(missing)}; "
                            f"{ADVICE}")
    return {metric: [record[metric] for record in dev] for metric in result.best_metrics}


def differing_settings(run: FinishedRun, others: list[FinishedRun]) -> dict[str, Any]:
    """The settings of `run` (flag -> value) whose values differ among the runs of its task in `others`."""
    same_task = [other.settings for other in others if other.task == run.task]
    return {flag: value for flag, value in run.settings.items()
            if any(json.dumps(settings.get(flag)) != json.dumps(value) for settings in same_task)}


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1 in the denominator; 0.0 for one value)."""
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def group_of(runs: list[FinishedRun], settings: dict[str, Any]) -> Group:
    """One group from its runs (ordered by seed, then directory)."""
    runs = sorted(runs, key=lambda run: (run.seed, run.directory))
    metric = runs[0].result.metric
    names = [metric] + [name for name in runs[0].result.best_metrics if name != metric]
    names = [name for name in names if all(name in run.result.best_metrics for run in runs)]
    return Group(task=runs[0].task, settings=settings, runs=[run.directory for run in runs],
                 seeds=[run.seed for run in runs],
                 metrics={name: mean_and_std([run.result.best_metrics[name] for run in runs]) for name in names},
                 best_epochs=[run.result.best_epoch for run in runs],
                 wall_seconds=float(np.mean([run.result.wall_seconds for run in runs])),
                 tokens_per_second=float(np.mean([run.result.tokens_per_second for run in runs])),
                 metric=metric, curves={name: [run.curves[name] for run in runs] for name in names})


# -----------------------------------------------------------------------------
# the comparison as a table, a CSV file and a picture

def columns_of(groups: list[Group]) -> tuple[list[str], list[str]]:
    """The flags that differ between any groups, and every dev metric, each in order of first appearance."""
    flags = list(dict.fromkeys(flag for group in groups for flag in group.settings))
    metrics = list(dict.fromkeys(metric for group in groups for metric in group.metrics))
    return flags, metrics


def value_text(value: Any) -> str:
    """A setting's value in a table cell: as a message shows it, strings without their quotes, switches on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value if isinstance(value, str) else shown(value)


def score_text(group: Group, metric: str) -> str:
    """A dev metric of a group in a table cell: mean ± std over its seeds; a group of one run has no spread."""
    if metric not in group.metrics:
        return ""
    mean, std = group.metrics[metric]
    return f"{mean:.4f}" if len(group.runs) == 1 else f"{mean:.4f} ± {std:.4f}"


def markdown_table(groups: list[Group]) -> str:
    """One row per group: the task, the flags that differ, each dev metric as mean ± std (`score_text`), the
    number of seeds, the best epochs, the mean wall time and training tokens per second."""
    flags, metrics = columns_of(groups)
    header = ["task", *flags, *metrics, "seeds", "best epoch", "wall time (s)", "tokens/s"]
    rows = [header, ["---"] * len(header)]
    for group in groups:
        scores = [score_text(group, m) for m in metrics]
        rows.append([group.task, *(value_text(group.settings[flag]) if flag in group.settings else ""
                                   for flag in flags),
                     *scores, str(len(group.seeds)), ", ".join(map(str, group.best_epochs)),
                     f"{group.wall_seconds:.1f}", f"{group.tokens_per_second:.0f}"])
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows) + "\n"


def write_csv(groups: list[Group], path: Path) -> None:
    """The table of `markdown_table` as CSV, with a mean and a std column per dev metric (the std empty for a
    group of one run) and the seeds, best epochs and run directories of each group (space-separated); where it
    went is printed."""
    flags, metrics = columns_of(groups)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["task", *flags, *(f"{m}_{part}" for m in metrics for part in ("mean", "std")), "n_seeds",
                     "seeds", "best_epochs", "wall_seconds", "tokens_per_second", "runs"])
    for group in groups:
        writer.writerow([group.task, *(value_text(group.settings[flag]) if flag in group.settings else ""
                                       for flag in flags),
                         *(value for m in metrics for value in csv_scores(group, m)), len(group.seeds),
                         " ".join(map(str, group.seeds)), " ".join(map(str, group.best_epochs)), group.wall_seconds,
                         group.tokens_per_second, " ".join(map(str, group.runs))])
    write_atomically(path, text.getvalue())
    print(f"the table as CSV: {path}")


def csv_scores(group: Group, metric: str) -> tuple[float | str, float | str]:
    """A dev metric's mean and std in the CSV; empty where the group lacks the metric, the std for one run."""
    if metric not in group.metrics:
        return "", ""
    mean, std = group.metrics[metric]
    return mean, (std if len(group.runs) > 1 else "")


def legend_label(group: Group, tasks: int) -> str:
    """A group's name in a legend: its differing flags, after its task when several tasks are compared."""
    parts = [group.task] if tasks > 1 or not group.settings else []
    return ", ".join(parts + [f"{flag} {value_text(value)}" for flag, value in group.settings.items()])


def plot_dev_curves(groups: list[Group], path: Path) -> None:
    """A PNG with one panel per dev metric and one line per group: the mean over its seeds after each epoch,
    in a band of ±1 standard deviation (over the seeds that trained that epoch)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    _, metrics = columns_of(groups)
    tasks = len({group.task for group in groups})
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for group in groups:
            if metric not in group.curves:
                continue
            epochs = range(max(map(len, group.curves[metric])))
            means, stds = zip(*(mean_and_std([curve[e] for curve in group.curves[metric] if e < len(curve)])
                                for e in epochs))
            low, high = np.subtract(means, stds), np.add(means, stds)
            line, = axis.plot(epochs, means, marker="o", label=legend_label(group, tasks))
            axis.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        axis.set(xlabel="epoch", title=f"dev {metric}")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    print(f"the dev curves: {path}")


# -----------------------------------------------------------------------------
# the flags of a command that compares

@dataclass(frozen=True)
class CompareSettings:
    """Where the comparison goes besides the table on the terminal."""
    csv: Path | None = setting(None, "also write the table to this CSV file")
    plot: Path | None = setting(None, "also draw the dev curves of every group into this PNG file")

    def __post_init__(self) -> None:
        require_writable(self, "csv")
        require_writable(self, "plot")

