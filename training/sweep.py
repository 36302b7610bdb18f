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
import argparse
import contextlib
import difflib
import fcntl
import io
import itertools
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from tqdm import tqdm

from config import UserError, shown
from training.compare import compare, markdown_table, plot_dev_curves, script_module, write_csv
from training.course_files import write_atomically
from training.run_dir import SETTINGS_FILE, read_record, result_of
from training.run_log import read_records
from training.settings import ScriptSettings

ROOT = Path(__file__).resolve().parent.parent  # where the task scripts are, and every run starts
SPEC_KEYS = ("script", "flags", "seeds", "grid", "search")
SEARCH_KEYS = ("trials", "space")
SWEEP_FILE, STUDY_FILE, LOCK_FILE, LOG_FILE = "sweep.json", "study.db", ".sweep.lock", "sweep.log"
POLL_SECONDS = 2.0  # how often a search reads a running trial's metrics.jsonl
ADVICE = "mend it, or delete that run directory so that the sweep starts the run again"
SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]{1,40}")  # values shown as they are in a run's directory name

Scalar = str | int | float | bool


@dataclass(frozen=True)
class TaskScript:
    """What a sweep needs to know of a task script: the dev metric that picks its best epoch, and its output
    paths (flag -> file or folder name), which the sweep points into each run's directory."""
    file: str
    metric: str
    outputs: dict[str, str]
    by_dataset: bool = False  # classifier.py: each dataset's run is a subfolder of --run_dir

    @property
    def module(self) -> ModuleType:
        return script_module(self.file)

    @property
    def run_flags(self) -> set[str]:
        """The fields of the script's run settings (--run_dir, --resume, ...): the sweep's to set."""
        run = next(group.type for group in fields(self.module.Settings) if group.name == "run")
        return {spec.name for spec in fields(run)}


SCRIPTS = {script.file: script for script in (
    TaskScript("classifier.py", "accuracy", {"predictions_dir": "predictions"}, by_dataset=True),
    TaskScript("paraphrase_detection.py", "accuracy",
               {"para_dev_out": "para-dev-output.csv", "para_test_out": "para-test-output.csv"}),
    TaskScript("sonnet_generation.py", "chrf",
               {"sonnet_dev_out": "generated_sonnets_dev.txt", "sonnet_out": "generated_sonnets.txt"}),
)}
SET_BY_SWEEP = {  # flag -> why a spec may not give it
    "seed": "the sweep gives each run its seed from seeds = [...]",
    "run_dir": "each run's directory is DIR/<its name>",
    "resume": "every run starts with --resume, which continues an interrupted run",
    "overwrite": "finished runs are kept and skipped; give the sweep another --dir to start again",
    "help": "it is not a setting",
}


class SweepStopped(Exception):
    """The sweep ended before its last run: a run failed, or a signal stopped it. `status` is the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# -----------------------------------------------------------------------------
# the spec

@dataclass(frozen=True)
class Search:
    """An Optuna search: how many trials, and the distribution of each flag."""
    trials: int
    space: dict[str, BaseDistribution]


@dataclass(frozen=True)
class Spec:
    """A checked spec file. `grid` is empty for a search, and for a sweep over the seeds alone."""
    path: Path
    script: TaskScript
    flags: dict[str, Scalar]
    seeds: tuple[int, ...]
    grid: dict[str, tuple[Scalar, ...]]
    search: Search | None

    def identity(self) -> dict[str, Any]:
        """What the runs of a sweep directory must share to be compared: sweep.json."""
        identity = {"script": self.script.file, "flags": self.flags, "search": self.search is not None}
        if self.search:
            identity["seed"] = self.seeds[0]
        return identity


def load_spec(path: Path) -> Spec:
    """The spec in the TOML file `path`, refused in one line naming the file and the key unless every key is
    known, every flag is one of its script's, and every value has the right type."""
    data = read_toml(path)
    unknown = [key for key in data if key not in SPEC_KEYS]
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; a spec has {', '.join(SPEC_KEYS)}")
    if data.get("script") not in SCRIPTS:
        given = f"script {data['script']!r} is" if "script" in data else "no script:"
        raise UserError(f"{path}: {given} not one of {', '.join(SCRIPTS)}")
    script = SCRIPTS[data["script"]]
    options = script_flags(script)

    def action(section: str, name: str) -> argparse.Action:
        return flag_action(path, f"{section}.{name}", name, options, script)

    flags = {name: checked_value(path, f"flags.{name}", value, action("flags", name))
             for name, value in table(path, "flags", data.get("flags", {})).items()}
    grid = {name: checked_values(path, f"grid.{name}", values, action("grid", name))
            for name, values in table(path, "grid", data.get("grid", {})).items()}
    search = None
    if "search" in data:
        if "grid" in data:
            raise UserError(f"{path}: give [grid] or [search], not both")
        search = checked_search(path, table(path, "search", data["search"]), options, script)
    spec = Spec(path, script, flags, checked_seeds(path, data.get("seeds")), grid, search)
    refuse_repeated_flags(spec, options)
    return spec


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: {'a directory, not a spec file' if path.is_dir() else 'no such spec file'}")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not TOML: {error}") from None


def table(path: Path, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{path}: {key} must be a table ([{key}] or {key} = {{ ... }}), not {value!r}")
    return value


def script_flags(script: TaskScript) -> dict[str, argparse.Action]:
    """The script's flags by name without dashes, read from its own parser (argparse keeps its options in
    `_actions` only)."""
    return {option.removeprefix("--"): action for action in script.module.build_parser()._actions
            for option in action.option_strings if option.startswith("--")}


def flag_action(path: Path, key: str, name: str, options: dict[str, argparse.Action],
                script: TaskScript) -> argparse.Action:
    """The script's flag `name`, refused if it has none or the sweep sets it itself."""
    action = options.get(name)
    if action is None:
        close = difflib.get_close_matches(name, options, n=1)
        raise UserError(f"{path}: {key}: {script.file} has no flag --{name}"
                        + (f" (did you mean {close[0]}?)" if close else ""))
    if action.dest in SET_BY_SWEEP or action.dest in script.outputs or action.dest in script.run_flags:
        why = SET_BY_SWEEP.get(action.dest) or ("each run writes it into its own directory" if action.dest in
                                                script.outputs else "a sweep's runs train, each in its own directory")
        raise UserError(f"{path}: {key}: a spec may not give --{name}: {why}")
    return action


def checked_value(path: Path, key: str, value: Any, action: argparse.Action) -> Scalar:
    """A flag's value: true or false for a switch, a string or number for any other flag."""
    name = action.option_strings[0]
    if action.nargs == 0 and not isinstance(value, bool):
        raise UserError(f"{path}: {key}: {name} is a switch: give true or false, not {value!r}")
    if action.nargs != 0 and (isinstance(value, bool) or not isinstance(value, str | int | float)):
        raise UserError(f"{path}: {key}: {name} takes a string or a number, not {value!r}")
    return value


def checked_values(path: Path, key: str, values: Any, action: argparse.Action) -> tuple[Scalar, ...]:
    """A grid's values of one flag: a non-empty list, no value twice."""
    if not (isinstance(values, list) and values):
        raise UserError(f"{path}: {key}: give a non-empty list of values, not {values!r}")
    checked = tuple(checked_value(path, key, value, action) for value in values)
    texts = [value_text(value) for value in checked]
    repeated = next((text for text in texts if texts.count(text) > 1), None)
    if repeated is not None:
        raise UserError(f"{path}: {key}: lists {repeated} twice")
    return checked


def checked_seeds(path: Path, seeds: Any) -> tuple[int, ...]:
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"{path}: seeds must be a non-empty list of whole numbers (seeds = [1, 2, 3]), not {seeds!r}")
    if len(set(seeds)) < len(seeds):
        raise UserError(f"{path}: seeds lists a seed twice: {seeds}")
    return tuple(seeds)


def checked_search(path: Path, search: dict[str, Any], options: dict[str, argparse.Action],
                   script: TaskScript) -> Search:
    unknown = [key for key in search if key not in SEARCH_KEYS]
    if unknown:
        raise UserError(f"{path}: unknown key search.{unknown[0]}; [search] has {', '.join(SEARCH_KEYS)}")
    trials = search.get("trials")
    if not (isinstance(trials, int) and not isinstance(trials, bool) and trials > 0):
        raise UserError(f"{path}: search.trials must be a whole number above 0, not {trials!r}")
    space = table(path, "search.space", search.get("space", {}))
    if not space:
        raise UserError(f"{path}: search.space names no flag: give [search.space] with a range or choices per flag")
    return Search(trials, {name: distribution(path, f"search.space.{name}", entry,
                                              flag_action(path, f"search.space.{name}", name, options, script))
                           for name, entry in space.items()})


def distribution(path: Path, key: str, entry: Any, action: argparse.Action) -> BaseDistribution:
    """The values a search draws for one flag: `{ choices = [...] }`, or `{ low, high }` with `log = true` or a
    `step`; integer bounds (and step) draw integers."""
    shape = "{ low = ..., high = ... } (with log = true, or a step), or { choices = [...] }"
    if not isinstance(entry, dict):
        raise UserError(f"{path}: {key}: give {shape}, not {entry!r}")
    if "choices" in entry:
        if len(entry) > 1:
            others = ", ".join(name for name in entry if name != "choices")
            raise UserError(f"{path}: {key}: choices take no other key ({others})")
        return CategoricalDistribution(checked_values(path, key, entry["choices"], action))
    unknown = [name for name in entry if name not in ("low", "high", "log", "step")]
    if unknown or not {"low", "high"} <= entry.keys():
        raise UserError(f"{path}: {key}: give {shape}" + (f"; {unknown[0]!r} is not one of them" if unknown else ""))
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    numbers = [value for value in (low, high, step) if value is not None]
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in numbers):
        raise UserError(f"{path}: {key}: low, high and step are numbers, not {entry!r}")
    if action.nargs == 0:
        raise UserError(f"{path}: {key}: {action.option_strings[0]} is a switch: give {{ choices = [false, true] }}")
    if not isinstance(log, bool):
        raise UserError(f"{path}: {key}: log is true or false, not {log!r}")
    if not low < high:
        raise UserError(f"{path}: {key}: low {low} must be below high {high}")
    if log and (step is not None or low <= 0):
        raise UserError(f"{path}: {key}: log = true needs low above 0 and no step")
    if step is not None and step <= 0:
        raise UserError(f"{path}: {key}: step must be above 0, not {step}")
    if all(isinstance(value, int) for value in numbers):
        if (high - low) % (step or 1):
            raise UserError(f"{path}: {key}: high - low ({high - low}) must be a multiple of step {step}")
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def refuse_repeated_flags(spec: Spec, options: dict[str, argparse.Action]) -> None:
    """A flag (under any of its names) is given in one place only: flags, grid or search.space."""
    given: dict[str, str] = {}
    space = spec.search.space if spec.search else {}
    for section, names in (("flags", spec.flags), ("grid", spec.grid), ("search.space", space)):
        for name in names:
            key, dest = f"{section}.{name}", options[name].dest
            if dest in given:
                raise UserError(f"{spec.path}: {key} sets the flag that {given[dest]} sets already: give it once")
            given[dest] = key


# -----------------------------------------------------------------------------
# runs: names, command lines, and the script's checks of them

@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its name, the script's flags, and where it lives (`directory`, given as --run_dir;
    `run_dirs`: where the script keeps the run, one per dataset for classifier.py)."""
    name: str
    directory: Path
    argv: tuple[str, ...]
    run_dirs: tuple[Path, ...]
    use_gpu: bool

    @property
    def log_file(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def finished(self) -> bool:
        return all(run_finished(run_dir) for run_dir in self.run_dirs)


def run_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` finished: its settings.json holds a result (until a resume, which is not)."""
    return (run_dir / SETTINGS_FILE).is_file() and result_of(read_record(run_dir, ADVICE)) is not None


def value_text(value: Scalar) -> str:
    """A flag value as a command line and a run's name give it (floats exactly: 3e-05, 0.001)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def flag_argv(name: str, value: Scalar) -> list[str]:
    """`--name=value` (so a value that starts with a dash stays a value); a switch alone, or nothing if false."""
    if isinstance(value, bool):
        return [f"--{name}"] if value else []
    return [f"--{name}={value_text(value)}"]


def grid_runs(spec: Spec, directory: Path) -> list[PlannedRun]:
    """Every combination of the grid's values times the seeds, each run's flags checked by the script."""
    runs = []
    choices = [list(enumerate(values, start=1)) for values in spec.grid.values()]
    for combination in itertools.product(*choices):
        chosen = dict(zip(spec.grid, combination))  # flag -> (position in its list, value)
        parts = [f"{flag}={text}" if SAFE_NAME.fullmatch(text := value_text(value)) else f"{flag}=#{position}"
                 for flag, (position, value) in chosen.items()]
        values = {flag: value for flag, (_, value) in chosen.items()}
        for seed in spec.seeds:
            name = ",".join([*parts, f"seed={seed}"])
            runs.append(planned_run(spec, directory / name, values, seed))
    return runs


def planned_run(spec: Spec, directory: Path, values: dict[str, Scalar], seed: int,
                label: str | None = None) -> PlannedRun:
    """The run of the base flags with `values` and `seed` in `directory`, refused at once when the script
    refuses its flags, naming the spec file and the run (or `label`)."""
    outputs = [f"--{flag}={directory / name}" for flag, name in spec.script.outputs.items()]
    argv = (*itertools.chain.from_iterable(flag_argv(name, value) for name, value in {**spec.flags, **values}.items()),
            f"--seed={seed}", f"--run_dir={directory}", "--resume", *outputs)
    settings = script_settings(spec, label or f"run {directory.name}", list(argv))
    run_dirs = [directory / dataset for dataset in settings.task.datasets] if spec.script.by_dataset else [directory]
    return PlannedRun(directory.name, directory, argv, tuple(run_dirs), settings.model.use_gpu)


def script_settings(spec: Spec, label: str, argv: list[str]) -> ScriptSettings:
    """The script's settings from `argv`, checked by the script itself as it would at its start-up (in the
    project root, where it will run); its refusal names the spec file and `label`, the run."""
    script, refused = spec.script, f"{spec.path}: {label}: refused by {spec.script.file}"
    module, errors = script.module, io.StringIO()
    with contextlib.chdir(ROOT):
        try:
            with contextlib.redirect_stderr(errors):  # the parser's one-line refusal
                flags = module.build_parser().parse_args(argv)
        except SystemExit:
            message = errors.getvalue().strip().removeprefix(f"{script.file}: error: ")
            raise UserError(f"{refused}: {message}") from None
        if flags.epochs == 0:
            raise UserError(f"{spec.path}: {label}: epochs 0 trains nothing, so it leaves no run to compare")
        try:
            return module.get_settings(argv)
        except UserError as error:
            raise UserError(f"{refused}: {error}") from None


def check_search_space(spec: Spec, directory: Path) -> None:
    """Each flag of the search at its extremes (each end of a range, each choice), the others at their first,
    through the script's checks; and one run per trial, since a trial is scored by one dev metric."""
    space = spec.search.space
    firsts = {name: extremes(dist)[0] for name, dist in space.items()}
    for name, dist in space.items():
        for value in extremes(dist):
            run = planned_run(spec, directory / "trial-0", {**firsts, name: value}, spec.seeds[0],
                              f"search.space.{name} at {value_text(value)}")
            if len(run.run_dirs) > 1:
                raise UserError(f"{spec.path}: a trial is scored by one dev metric, but {spec.script.file} trains "
                                f"{len(run.run_dirs)} runs each time ({', '.join(d.name for d in run.run_dirs)}): "
                                f"give one dataset, e.g. dataset = \"{run.run_dirs[0].name}\"")


def extremes(dist: BaseDistribution) -> tuple[Scalar, ...]:
    if isinstance(dist, CategoricalDistribution):
        return tuple(dist.choices)
    return dist.low, dist.high


# -----------------------------------------------------------------------------
# the sweep directory and the processes of the runs

@contextlib.contextmanager
def sweep_directory(spec: Spec, directory: Path) -> Iterator[int]:
    """`directory`, made if need be and locked for this sweep: yields the lock's file descriptor, which every
    run inherits, so that the lock outlives a killed sweep until its runs have ended too. Refused when
    another sweep holds it, or when it holds a sweep of other base settings (sweep.json)."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--dir {directory}: is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / LOCK_FILE, "w")
    except OSError as error:
        raise UserError(f"--dir {directory}: cannot be written ({error.strerror})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--dir {directory}: another sweep is running there (or a run it started is still "
                            "ending); wait for it, or give this sweep another --dir") from None
        check_identity(spec, directory)
        yield lock.fileno()


def check_identity(spec: Spec, directory: Path) -> None:
    """The first sweep in `directory` records its script and base flags in sweep.json; a later one must match
    them, or its runs would be compared with runs of other settings. (Seeds and grid values may be added.)"""
    path, identity = directory / SWEEP_FILE, json.loads(json.dumps(spec.identity()))
    if not path.is_file():
        write_atomically(path, json.dumps(identity, indent=2) + "\n")
        return
    try:
        recorded = json.loads(path.read_bytes())
    except ValueError as error:
        raise UserError(f"{path}: not JSON ({error}); delete it if {directory} is to hold this sweep") from None
    if not (isinstance(recorded, dict) and isinstance(recorded.get("flags"), dict)):
        raise UserError(f"{path}: not what a sweep writes; delete it if {directory} is to hold this sweep")
    before, now = flat_identity(recorded), flat_identity(identity)
    differing = [f"{key} {json.dumps(before.get(key, 'not given'))}, now {json.dumps(now.get(key, 'not given'))}"
                 for key in dict.fromkeys([*before, *now]) if before.get(key) != now.get(key)]
    if differing:
        raise UserError(f"{directory} holds a sweep of other settings than {spec.path} ({'; '.join(differing)}): its "
                        "runs would not compare with this spec's; give this spec another --dir")


def flat_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """sweep.json's keys, each flag as flags.NAME, so that a refusal names the flags that differ."""
    flags = {f"flags.{name}": value for name, value in identity["flags"].items()}
    return {key: value for key, value in identity.items() if key != "flags"} | flags


def start_run(run: PlannedRun, script: TaskScript, device: str | None, lock_fd: int) -> subprocess.Popen:
    """Start the script on `run`'s flags (on GPU `device` alone, if given), its output appended to the run's
    sweep.log. In a session of its own, so that a Ctrl-C reaches the sweep only, which then stops the run
    cleanly (SIGTERM: it saves its last checkpoint)."""
    run.directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, script.file, *run.argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"} | ({"CUDA_VISIBLE_DEVICES": device} if device is not None else {})
    with open(run.log_file, "a") as log:
        prefix = "" if device is None else f"CUDA_VISIBLE_DEVICES={device} "
        log.write(f"$ {prefix}{shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=(lock_fd,))


class Launcher:
    """Starts runs and keeps the ones under way, so that a sweep that stops can stop them cleanly first."""

    def __init__(self, script: TaskScript, lock_fd: int):
        self.script, self.lock_fd = script, lock_fd
        self.running: set[subprocess.Popen] = set()
        self.guard, self.stopping = threading.Lock(), False

    def start(self, run: PlannedRun, device: str | None = None) -> subprocess.Popen:
        with self.guard:
            if self.stopping:
                raise SweepStopped(f"{run.name} was not started: the sweep is stopping", 1)
            tqdm.write(f"{run.name}: running (log: {run.log_file})")
            process = start_run(run, self.script, device, self.lock_fd)
            self.running.add(process)
            return process

    def wait(self, process: subprocess.Popen) -> int:
        status = process.wait()
        with self.guard:
            self.running.discard(process)
        return status

    def run(self, run: PlannedRun, device: str | None = None) -> int:
        """Start `run` and wait for it. After a failure no run starts: the sweep stops."""
        status = self.wait(self.start(run, device))
        if status:
            with self.guard:
                self.stopping = True
        return status

    def stop(self) -> None:
        """SIGTERM to every run under way: each saves its last checkpoint after the optimizer step under way
        and exits. A Ctrl-C while they do makes them quit at once instead, as a second Ctrl-C does a script."""
        with self.guard:
            self.stopping, running = True, list(self.running)
        for process in running:
            process.send_signal(signal.SIGTERM)
        try:
            for process in running:
                process.wait()
        except KeyboardInterrupt:
            for process in running:
                process.send_signal(signal.SIGINT)
            for process in running:
                process.wait()


class Terminated(Exception):
    """The sweep received SIGTERM."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def runs_stopped_on_exit(launcher: Launcher) -> Iterator[None]:
    """Whatever ends the sweep early (Ctrl-C, SIGTERM, a failed run) stops the runs under way cleanly first, so
    that the same command continues them. A signal ends the sweep with that signal's exit status."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except BaseException as error:
        launcher.stop()
        if isinstance(error, KeyboardInterrupt | Terminated):
            signum = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
            raise SweepStopped(f"stopped by {signum.name}: the runs under way saved their state; the same command "
                               "continues the sweep", 128 + signum) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_failed(run: PlannedRun, status: int) -> SweepStopped:
    """The one line that ends a sweep when a run fails: the run, how it ended, its last line, its log."""
    how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"failed (exit status {status})"
    last = last_line(run.log_file)
    return SweepStopped(f"error: run {run.name} {how}{': ' + last if last else ''}; its log: {run.log_file}", 1)


def last_line(path: Path) -> str:
    """The last line a log shows (after a progress bar's last carriage return), '' if none."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = [line.split("\r")[-1].strip() for line in f.read().decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def result_text(run_dir: Path) -> str:
    """A finished run's best dev score, as a sweep reports it."""
    result = result_of(read_record(run_dir, ADVICE))
    return f"{result.metric} {result.best_metrics[result.metric]:.4f} (best epoch {result.best_epoch})"


def gpus_for(runs: list[PlannedRun]) -> list[str | None]:
    """The devices runs take turns on: with several GPUs and runs that use one, each GPU (one run at a time on
    each); otherwise one after another wherever the script puts them."""
    count = torch.cuda.device_count()
    if count < 2 or not runs or not all(run.use_gpu for run in runs):
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[:count] if visible else [str(index) for index in range(count)]


# -----------------------------------------------------------------------------
# running a sweep

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


def finish_runs(runs: list[PlannedRun], launcher: Launcher, devices: list[str | None]) -> Iterator[PlannedRun]:
    """Run each of `runs`, one at a time on each of `devices` (None: wherever the script puts it), yielding
    each as it finishes; a failed run ends them (see `runs_stopped_on_exit` for the runs under way then)."""
    free: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    for device in devices:
        free.put(device)

    def run_on_a_free_device(run: PlannedRun) -> int:
        device = free.get()
        try:
            return launcher.run(run, device)
        finally:
            free.put(device)

    pool = ThreadPoolExecutor(max_workers=len(devices))
    try:
        futures = {pool.submit(run_on_a_free_device, run): run for run in runs}
        for future in as_completed(futures):
            run, status = futures[future], future.result()
            if status:
                raise run_failed(run, status)
            yield run
    finally:  # without waiting: the runs under way are stopped by the caller, whose exception this may be
        pool.shutdown(wait=False, cancel_futures=True)


def run_search(spec: Spec, directory: Path) -> None:
    """Trials until the study holds `trials` that ended (completed or pruned), one at a time; then the
    comparison of the completed ones. A trial a stopped sweep left running (interrupted or killed) is marked
    failed and queued again with its values and run directory, so that its run continues from its last
    checkpoint, or is only scored if it had finished. A failed run fails its trial and stops the sweep; the
    same command goes on with new trials."""
    check_search_space(spec, directory)
    with sweep_directory(spec, directory) as lock_fd:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=spec.path.stem, storage=f"sqlite:///{directory / STUDY_FILE}",
                                    load_if_exists=True, direction="maximize",
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
        # TPE's random start would draw the same values again after a restart with the same seed
        study.sampler = optuna.samplers.TPESampler(seed=spec.seeds[0] + len(study.trials))
        requeue_stale_trials(study)
        launcher, trials = Launcher(spec.script, lock_fd), spec.search.trials
        bar = tqdm(total=trials, initial=min(ended_trials(study), trials), desc=f"search {spec.path.stem}",
                   unit="trial")
        with bar, runs_stopped_on_exit(launcher):
            while ended_trials(study) < trials:
                run_trial(spec, directory, study, launcher)
                bar.update()
        best = study.best_trial
        print(f"best: {best.user_attrs['run']}, {spec.script.metric} {best.value:.4f}: "
              + ", ".join(f"{name} {shown(value)}" for name, value in best.params.items()))
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        show_sweep_comparison([run_dir for trial in completed for run_dir in sorted(
            path.parent for path in (directory / trial.user_attrs["run"]).rglob(SETTINGS_FILE))], directory)


def ended_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def requeue_stale_trials(study: optuna.Study) -> None:
    """Trials left running by a sweep that stopped: failed, and queued again with their flags and directory."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = trial.user_attrs.get("run", f"trial-{trial.number}")
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"run": run, "continues": trial.number})
        print(f"{run}: left unfinished by an earlier sweep; it continues as a new trial")


def run_trial(spec: Spec, directory: Path, study: optuna.Study, launcher: Launcher) -> None:
    """One trial: its run, its dev metric reported after each epoch, pruned when the pruner says so (its
    checkpoints are deleted then: it will not continue), told to the study with the run's best dev metric."""
    trial = study.ask(spec.search.space)
    name = trial.user_attrs.get("run", f"trial-{trial.number}")
    trial.set_user_attr("run", name)
    try:
        run = planned_run(spec, directory / name, trial.params, spec.seeds[0])
    except UserError:  # values the script refuses together: the spec's space must change
        study.tell(trial, state=TrialState.FAIL)
        raise
    scores = DevScores(trial, run.run_dirs[0] / "metrics.jsonl", spec.script.metric)
    if not run.finished:
        process = launcher.start(run)
        pruned = pruned_while_running(process, scores)
        status = launcher.wait(process)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            for checkpoint in run.run_dirs[0].glob("*.pt"):
                checkpoint.unlink()
            tqdm.write(f"{name}: pruned after epoch {max(scores.reported)}")
            return
        if status:  # failed, not queued again: the same values would fail again, and the search goes on without
            study.tell(trial, state=TrialState.FAIL)
            raise run_failed(run, status)
    scores.report(strict=True)
    value = result_of(read_record(run.run_dirs[0], ADVICE)).best_metrics[spec.script.metric]
    study.tell(trial, value)
    tqdm.write(f"{name}: {result_text(run.run_dirs[0])}; "
               + ", ".join(f"{flag} {shown(v)}" for flag, v in trial.params.items()))


class DevScores:
    """A trial's dev metric after each epoch, reported to Optuna as its run's metrics.jsonl gains them."""

    def __init__(self, trial: optuna.Trial, log_file: Path, metric: str):
        self.trial, self.log_file, self.metric = trial, log_file, metric
        self.reported: set[int] = set()

    def report(self, strict: bool) -> bool:
        """Report the epochs not reported yet; whether there were any. While the run writes the log, a line
        may be half written: unless `strict`, it is read at the next poll instead."""
        try:
            records = read_records(self.log_file, advice=ADVICE)
        except UserError:
            if strict:
                raise
            return False
        new = [r for r in records if r["split"] == "dev" and r["epoch"] not in self.reported and self.metric in r]
        for record in new:
            self.trial.report(record[self.metric], record["epoch"])
            self.reported.add(record["epoch"])
        return bool(new)


def pruned_while_running(process: subprocess.Popen, scores: DevScores) -> bool:
    """Follow a trial's run until it ends; if the pruner stops the trial first, SIGTERM the run (it saves and
    exits) and say so."""
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            return False
        except subprocess.TimeoutExpired:
            pass
        if scores.report(strict=False) and scores.trial.should_prune():
            process.send_signal(signal.SIGTERM)
            return True


# -----------------------------------------------------------------------------
# the comparison

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
