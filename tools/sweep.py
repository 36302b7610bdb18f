"""Sweeps: many runs of one task script from a spec file, each in a run directory of its own, resumable;
or an Optuna search over ranges of flag values. `experiments.py sweep` is the command.

A spec is a TOML file:

    script = "classifier.py"            # or paraphrase_detection.py, sonnet_generation.py
    seeds = [1, 2, 3]                   # every setting is run once per seed (a search: the first seed)

    [flags]                             # given to every run; true is the switch, false leaves it out
    "fine-tune-mode" = "full-model"
    dataset = "cfimdb"
    epochs = 3

    [grid]                              # every combination of these values, times the seeds
    lr = [1e-5, 3e-5]
    lora = [false, true]

or, instead of [grid], a search:

    [search]
    trials = 20                         # trials that ended (completed, or pruned) before the search stops
    [search.space]
    lr = { low = 1e-5, high = 1e-3, log = true }
    lora_rank = { low = 4, high = 16, step = 4 }   # integer bounds: integer values
    batch_size = { choices = [8, 16] }

Keys are the scripts' flags without their dashes. The sweep sets --seed, --run_dir, --resume and the output
paths itself, so a spec may not. Paths in a spec are relative to the project root, where every run starts.
Everything is checked before the first run starts, each run's flags by the script's own checks.

A grid run lives in DIR/<its values and seed> (e.g. `lr=3e-05,lora=true,seed=2`), a trial in DIR/trial-<N>;
each keeps its output files and the log of its command (sweep.log) there. Runs go one after another; with
several GPUs and `use_gpu = true`, one on each GPU at a time. Every run is started with --resume: an
interrupted one continues from its last checkpoint, a finished one (its settings.json holds a result) is
skipped. Ctrl-C or SIGTERM stops the runs under way cleanly (they save their last checkpoint), and so does a
failed run; the same command continues the sweep. DIR/sweep.json records the script and base flags the sweep
was started with, and a spec that changes them is refused there (seeds and grid values may be added). At
the end the comparison of the runs is printed and saved as DIR/comparison.md, comparison.csv, dev_curves.png.

A search keeps its Optuna study in DIR/study.db: a TPE sampler, and median pruning on each epoch's dev metric
(accuracy; chrF for sonnets) from the sixth trial on and the second epoch on; a pruned run is stopped and its
checkpoints deleted. A trial is scored by its run's best dev metric. A trial that a stopped sweep left
unfinished is marked failed in the study and queued again with the same values and run directory, so that
its run continues where it stopped (or, if it had finished, is only scored). A trial whose run failed stops
the sweep as a failed grid run does, but is not run again: the search goes on with new trials.
"""
from pathlib import Path

from tqdm import tqdm

from course.files import write_atomically
from flags import UserError
from tools.compare import compare, markdown_table, plot_dev_curves, write_csv
from tools.launch import Launcher, finish_runs, gpus_for, runs_stopped_on_exit
from tools.search import run_study
from tools.sweep_plan import check_search_space, grid_runs, result_text, sweep_directory
from tools.sweep_spec import Spec


def run_sweep(spec: Spec, directory: Path) -> None:
    """Run the spec's grid (or search) in `directory`, then print and save the comparison of its runs."""
    directory = directory.absolute()
    if spec.search:
        run_search(spec, directory)
    else:
        run_grid(spec, directory)


def run_grid(spec: Spec, directory: Path) -> None:
    """Every run of the grid not finished yet, one after another (or one per GPU); the first failure stops the
    sweep, naming the run and its log."""
    runs = grid_runs(spec, directory)  # every run checked before any starts
    with sweep_directory(spec, directory) as lock_fd:
        pending = [run for run in runs if not run.finished]
        for run in runs:
            if run not in pending:
                print(f"{run.name}: finished, skipped")
        launcher = Launcher(spec.script, lock_fd)
        bar = tqdm(total=len(runs), initial=len(runs) - len(pending), desc=f"sweep {spec.path.stem}", unit="run")
        with bar, runs_stopped_on_exit(launcher):
            for run in finish_runs(pending, launcher, gpus_for(pending)):
                tqdm.write(f"{run.name}: " + ", ".join((f"{d.name} " if len(run.run_dirs) > 1 else "") + result_text(d)
                                                       for d in run.run_dirs))
                bar.update()
        show_sweep_comparison([run_dir for run in runs for run_dir in run.run_dirs], directory)


def run_search(spec: Spec, directory: Path) -> None:
    """The spec's Optuna search (tools/search.py), its space checked by the script before the first trial;
    then the comparison of its completed trials."""
    check_search_space(spec, directory)
    with sweep_directory(spec, directory) as lock_fd:
        show_sweep_comparison(run_study(spec, directory, Launcher(spec.script, lock_fd)), directory)


def show_comparison(run_dirs: list[Path], markdown_file: Path | None = None, csv_file: Path | None = None,
                    plot_file: Path | None = None) -> None:
    """Print the comparison table of the finished runs among `run_dirs`; write it to `markdown_file` and
    `csv_file`, and draw the dev curves into `plot_file`, where given."""
    groups = compare(run_dirs)
    if not groups:
        raise UserError(f"none of the {len(run_dirs)} runs has finished: nothing to compare yet")
    table_text = markdown_table(groups)
    print(table_text, end="")
    if markdown_file:
        write_atomically(markdown_file, table_text)
    if csv_file:
        write_csv(groups, csv_file)
    if plot_file:
        plot_dev_curves(groups, plot_file)


def show_sweep_comparison(run_dirs: list[Path], directory: Path) -> None:
    """The comparison at a sweep's end: printed, and saved as comparison.md, comparison.csv and dev_curves.png."""
    show_comparison(run_dirs, directory / "comparison.md", directory / "comparison.csv", directory / "dev_curves.png")
