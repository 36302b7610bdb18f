"""What a task script says when it ends: each run's directory and logs, its best epoch and that epoch's dev
metrics, every prediction file written, and the commands to run next (grading the dev predictions, then
handing in), printed as they run from where the script ran."""
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course.hand_in import MODES, graded_files
from training.distributed import is_main
from training.run_dir import Run, result_of
from training.run_log import RunLog

ROOT = Path(__file__).resolve().parent.parent  # where the project's scripts are
PREDICTIONS_DIR, DATA_DIR = Path("predictions"), Path("data")  # prepare_submit.py's defaults


@dataclass(frozen=True)
class Outcome:
    """What one run of a task script left: the run and its log (None with --epochs 0), and each prediction file
    written with the input file it answers."""
    name: str  # the dataset or task, as the summary heads it
    run: Run | None
    log: RunLog | None
    answered: dict[Path, Path]  # prediction file -> the input file whose ids or prompts it answers
    grading: tuple[str | Path, ...]  # evaluation.py's arguments that grade the dev predictions


def finish(outcomes: list[Outcome]) -> None:
    """Redraw each run's curves.png with its task and best epoch, then print the summary (on the main process)."""
    for outcome in outcomes:
        result = result_of(outcome.run.record) if outcome.run is not None and outcome.log is not None else None
        if result is not None:
            outcome.log.plot(f"{outcome.run.task}: {outcome.run.directory}", result.best_epoch)
    if is_main():
        print("\n".join(summary_lines(outcomes)))


def summary_lines(outcomes: list[Outcome]) -> list[str]:
    """Each outcome's run and files, then the commands to run next."""
    lines = ["", "summary:"]
    for outcome in outcomes:
        lines += [f"  {outcome.name}:", *(f"    {line}" for line in run_lines(outcome)),
                  "    predictions " + ", ".join(map(str, outcome.answered))]
    lines += ["next:", *(f"  {command('evaluation.py', *outcome.grading)}" for outcome in outcomes)]
    answered = {path: source for outcome in outcomes for path, source in outcome.answered.items()}
    hand_in = hand_in_flags(answered)
    if hand_in is None:
        lines.append("  (not prepare_submit.py: it hands in files named as the course names them, all in one folder, "
                     "and these are not; see README.md, Handing in)")
    else:
        lines.append(f"  {command('prepare_submit.py', *hand_in)}    # once every task has written its files")
    return lines


def run_lines(outcome: Outcome) -> list[str]:
    """Where the run is, and what its best epoch scored on dev."""
    run = outcome.run
    if run is None:
        return ["--epochs 0: nothing trained, so no run directory; the model as loaded wrote the predictions"]
    lines = [f"run directory {run.directory}: its log {run.log_file}, its curves {run.curves_file}"]
    result = result_of(run.record)
    if result is not None:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in result.best_metrics.items())
        lines.append(f"best epoch {result.best_epoch} of {result.epochs_trained} trained: dev {scores}"
                     + labels_of(best_record(outcome.log, result.best_epoch)))
    return lines


def best_record(log: RunLog | None, epoch: int) -> dict[str, Any]:
    """The dev record of `epoch` in the run's log (the last, should a resume have logged it twice)."""
    records = [r for r in (log.records if log else []) if r["split"] == "dev" and r["epoch"] == epoch]
    return records[-1] if records else {}


def labels_of(record: dict[str, Any]) -> str:
    """The words a dev record holds beside its numbers (how sonnets were decoded), as a note after them."""
    words = [f"{name}: {value}" for name, value in record.items() if name != "split" and isinstance(value, str)]
    return f" ({'; '.join(words)}, when that epoch was scored)" if words else ""


def hand_in_flags(answered: dict[Path, Path]) -> list[str] | None:
    """prepare_submit.py's flags that find these prediction files and their inputs; None unless they bear the
    course's names, all in one folder, and their inputs too."""
    folders, data = {path.parent for path in answered}, {source.parent for source in answered.values()}
    if len(folders) != 1 or len(data) != 1:
        return None
    (folder,), (data_dir,) = folders, data
    inputs = {graded.name: graded.input_name for graded in graded_files(folder, MODES)}
    if any(inputs.get(path.name) != source.name for path, source in answered.items()):
        return None
    return ((["--predictions_dir", str(folder)] if folder != PREDICTIONS_DIR else [])
            + (["--data_dir", str(data_dir)] if data_dir != DATA_DIR else []))


def command(script: str, *arguments: str | Path) -> str:
    """A command line that runs the project's `script` from the current folder, with this interpreter."""
    return shlex.join([python(), os.path.relpath(ROOT / script), *map(str, arguments)])


def python() -> str:
    """This interpreter as the user can type it: `python` when that finds it (a virtual environment's python is
    not the one its link points to, so paths are compared as they are), else its path."""
    executable = Path(sys.executable).absolute()
    found = shutil.which("python")
    if found and Path(found).absolute() == executable:
        return "python"
    return os.path.relpath(executable) if executable.is_relative_to(Path.cwd()) else str(executable)
