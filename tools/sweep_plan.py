"""Planning a sweep's runs: each run's name, directory and command line, checked by its task script before
any run starts; whether a run has finished; and the sweep directory, locked for one sweep at a time and
holding the base settings its runs share (sweep.json)."""
import contextlib
import fcntl
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution

from course.files import write_atomically
from flags import UserError
from tools.sweep_spec import Scalar, Spec, value_text
from training.run_dir import SETTINGS_FILE, read_record, result_of
from training.settings import ScriptSettings

ROOT = Path(__file__).resolve().parent.parent  # where the task scripts are, and every run starts
SWEEP_FILE, LOCK_FILE, LOG_FILE = "sweep.json", ".sweep.lock", "sweep.log"
ADVICE = "mend it, or delete that run directory so that the sweep starts the run again"
SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]{1,40}")  # values shown as they are in a run's directory name


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


def result_text(run_dir: Path) -> str:
    """A finished run's best dev score, as a sweep reports it."""
    result = result_of(read_record(run_dir, ADVICE))
    return f"{result.metric} {result.best_metrics[result.metric]:.4f} (best epoch {result.best_epoch})"


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
# the sweep directory

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
