"""A run directory: the files a run keeps, refusing to start over a run by accident, the run record
(`settings.json`: what the run was, and once it has finished, what it achieved), and what `--resume` may change.

Starting where a run already is needs `--resume` (continue it) or `--overwrite` (delete its files and start
again). `--resume` compares the settings with the recorded ones: a setting that decides the training
trajectory (data, batch size, seed, strategy, ...) must be the same; an adjustable one (learning rate,
clipping, epochs, ...) applies from the resume point on and is logged; the rest (output paths, decoding,
speed switches) are free.

One run at a time owns a run directory: its lock file (`run.lock`) names the process that holds it.
"""
import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from course.files import write_atomically
from flags import (ADJUSTABLE, FIXED, Paths, UserError, at_command_end, errors_name, flag_of,
                   require_separate_paths, shown, sigterm_ends_command)
from training import tensorboard_log
from training.distributed import barrier, is_main, main_only
from training.run_log import is_count, is_number
from training.settings import ScriptSettings

SETTINGS_FILE = "settings.json"
BEST_CHECKPOINT = "best.pt"  # the weights of the best dev epoch, which write the predictions
LOCK_FILE = "run.lock"
RUN_FILE_NAMES = (SETTINGS_FILE, "metrics.jsonl", "curves.png", "last.pt", BEST_CHECKPOINT)
# the --keep_best epochs, a checkpoint being written, and --tensorboard's event files
RUN_FILE_GLOBS = ("epoch*.pt", "*.pt.tmp", f"{tensorboard_log.FOLDER}/{tensorboard_log.EVENT_FILES}")
# Every file a run keeps in its directory, as glob patterns: no output of the command may take one's place.
RUN_FILE_PATTERNS = (*RUN_FILE_NAMES, *RUN_FILE_GLOBS, LOCK_FILE)
LIBRARIES = ("torch", "transformers", "numpy", "safetensors", "sacrebleu", "scikit-learn")
RESUME_ADVICE = "the run cannot be resumed: start it again with --overwrite, or pick another --run_dir"
# Settings that moved to another group since runs recorded them: (group, field) -> the group it is in now.
MOVED_SETTINGS = {("task", "eval_batch_size"): "train"}


def run_files(directory: Path) -> list[Path]:
    """The files of a run in `directory`: what `--overwrite` deletes, and nothing else (not the lock, which the
    run that overwrites holds)."""
    found = [directory / name for name in RUN_FILE_NAMES if (directory / name).is_file()]
    return found + [path for pattern in RUN_FILE_GLOBS for path in sorted(directory.glob(pattern))]


def require_separate_run_paths(settings: ScriptSettings, inputs: dict[str, Paths], outputs: dict[str, Paths],
                               run_dirs: tuple[Path, ...]) -> None:
    """The path rules of `flags.require_separate_paths` for a task script: its task's `inputs` and `outputs` by
    flag, --model_path's folder (read), and `run_dirs`, where it trains (none when it trains nothing)."""
    require_separate_paths({**inputs, "--model_path": settings.model.model_path}, outputs, {"--run_dir": run_dirs},
                           RUN_FILE_PATTERNS)


@dataclass(frozen=True)
class RunResult:
    """What a finished run achieved: the "result" of its settings.json. Epochs count from 0, as in
    metrics.jsonl; `epochs_trained` is below --epochs after early stopping."""
    best_epoch: int
    metric: str  # the dev metric that picked the best epoch
    best_metrics: dict[str, float]  # the best epoch's dev metrics
    epochs_trained: int
    wall_seconds: float  # training and dev evaluation, summed over the run's sessions
    tokens_per_second: float  # training tokens, over the epochs logged in metrics.jsonl


def result_of(record: dict[str, Any]) -> RunResult | None:
    """What the run of a record (`read_record`, which checks its result) achieved; None if it has not finished."""
    return RunResult(**record["result"]) if "result" in record else None


def result_problem(result: Any) -> str | None:
    """What keeps `result` from being a `RunResult` as `Run.finish` writes it; None if nothing does."""
    names = [spec.name for spec in fields(RunResult)]
    if not (isinstance(result, dict) and sorted(result) == sorted(names)):
        return f"is not an object of exactly {', '.join(names)}"
    wanted = {
        "best_epoch": (is_count, "a whole number from 0"),
        "metric": (lambda value: isinstance(value, str), "a string"),
        "best_metrics": (lambda value: isinstance(value, dict) and all(map(is_number, value.values())),
                         "an object of numbers"),
        "epochs_trained": (is_count, "a whole number from 0"),
        "wall_seconds": (is_number, "a number"),
        "tokens_per_second": (is_number, "a number"),
    }
    for name, (ok, kind) in wanted.items():
        if not ok(result[name]):
            return f"holds {name} {json.dumps(result[name])}, not {kind}"
    if result["metric"] not in result["best_metrics"]:
        return f"has no {result['metric']} (its metric) among its best_metrics"
    if result["best_epoch"] >= result["epochs_trained"]:
        return f"holds best_epoch {result['best_epoch']} of only {result['epochs_trained']} epochs trained"
    return None


@dataclass
class Run:
    """Where a run keeps its files, and how it starts: afresh, or resumed under the recorded settings with
    the adjustable `changes` (flag: [recorded, now])."""
    directory: Path
    task: str
    device: torch.device
    record: dict[str, Any]
    resume: bool = False
    overwrite: bool = False
    changes: dict[str, list[Any]] = field(default_factory=dict)
    tensorboard: bool = False  # --tensorboard: the log's records as TensorBoard events too

    last_checkpoint: Path = field(init=False)
    best_checkpoint: Path = field(init=False)
    log_file: Path = field(init=False)  # metrics.jsonl
    curves_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.last_checkpoint, self.best_checkpoint = self.directory / "last.pt", self.directory / BEST_CHECKPOINT
        self.log_file, self.curves_file = self.directory / "metrics.jsonl", self.directory / "curves.png"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.directory / f"epoch{epoch}.pt"

    def open(self) -> None:
        """When training starts: delete an overwritten run's files, write settings.json. Only the main
        process writes; every process returns once it has."""
        if is_main():
            if self.overwrite:
                for path in run_files(self.directory):
                    path.unlink()
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.record["resumed"][-1] if self.resume else self.record)["environment"] = environment(self.device)
            self.write_record()
        barrier()

    def finish(self, result: RunResult) -> None:
        """When training has ended and the best epoch is restored: record what the run achieved, which marks it
        finished (a resumed run is unfinished again until it gets here). Only the main process writes."""
        self.record["result"] = asdict(result)
        if is_main():
            self.write_record()

    def write_record(self) -> None:
        """Atomically: a run stopped while writing keeps its previous record whole."""
        with errors_name(self.directory / SETTINGS_FILE):
            write_atomically(self.directory / SETTINGS_FILE, json.dumps(self.record, indent=2) + "\n")


def plan_run(settings: ScriptSettings, directory: Path, task: str, data_files: dict[str, Path], command: list[str],
             device: torch.device) -> Run:
    """How a run of `task` in `directory` under `settings`, on `data_files` (paths by the flag that names
    them), would start; checked before any model is loaded. Refused when another run holds the directory
    (`take_lock`, which comes first: before anything is read, or deleted by --overwrite), when it would replace
    a run without --overwrite, or resume one under settings that decide another trajectory."""
    main_only(lambda: take_lock(directory))
    resume, overwrite = settings.run.resume, settings.run.overwrite
    held = run_files(directory)
    if held and not (resume or overwrite):
        raise UserError(f"{directory} already holds a run ({', '.join(path.name for path in held)}): add --resume "
                        "to continue it, or --overwrite to delete it and start again, or pick another --run_dir")
    groups = {group.name: getattr(settings, group.name) for group in fields(settings) if group.name != "run"}
    record = {"task": task, "command": command,
              "settings": {name: jsonable(asdict(values)) for name, values in groups.items()},
              "data": {flag: {"path": str(path), "sha256": sha256(path)} for flag, path in data_files.items()}}
    if not (resume and held):
        if resume:
            print(f"{directory} holds no run yet: starting a new one there")
        return Run(directory, task, device, record, overwrite=overwrite, tensorboard=settings.run.tensorboard)
    recorded = read_record(directory)
    if recorded["task"] != task:
        raise UserError(f"{directory} holds a run of {recorded['task']}, not {task}: pick another --run_dir")
    check_same_data(directory, recorded["data"], record["data"])
    changes = changed_settings(directory, recorded["settings"], groups)
    resumed = recorded.setdefault("resumed", [])
    resumed.append({"command": command, "changed": changes})
    unfinished = {key: value for key, value in recorded.items() if key != "result"}  # until it finishes again
    return Run(directory, task, device, {**unfinished, "settings": record["settings"], "resumed": resumed},
               resume=True, changes=changes, tensorboard=settings.run.tensorboard)


def read_record(directory: Path, advice: str = RESUME_ADVICE) -> dict[str, Any]:
    """The run record of a run, refused (naming the file, the line where it breaks or the section that is
    wrong, then `advice`: what the reader can do) unless it is what `plan_run` and `Run.finish` write."""
    path = directory / SETTINGS_FILE
    if not path.is_file():
        raise UserError(f"{directory} holds a run without {SETTINGS_FILE} (from an earlier version of this code), so "
                        f"its settings cannot be checked; {advice}")
    try:
        record = json.loads(path.read_bytes())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}, line {error.lineno}: not JSON ({error.msg}); {advice}") from None
    except ValueError as error:  # not UTF-8
        raise UserError(f"{path}: not JSON ({error}); {advice}") from None
    sections = {"task": str, "settings": dict, "data": dict, "resumed": list}
    if not (isinstance(record, dict) and all(isinstance(record.get(key, []), kind) for key, kind in sections.items())
            and all(isinstance(group, dict) for group in record.get("settings", {}).values())
            and all(isinstance(entry, dict) and {"path", "sha256"} <= entry.keys()
                    for entry in record.get("data", {}).values())):
        raise UserError(f"{path}: not a settings record of this code (task, settings, data); {advice}")
    problem = result_problem(record["result"]) if "result" in record else None
    if problem:
        raise UserError(f"{path}: its result {problem}; {advice}")
    settings = record.get("settings", {})
    for (group, name), now in MOVED_SETTINGS.items():
        if name in settings.get(group, {}):
            settings.setdefault(now, {})[name] = settings[group].pop(name)
    return record


def check_same_data(directory: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    for flag, now in current.items():
        before = recorded.get(flag)
        if before is not None and before["sha256"] != now["sha256"]:
            raise UserError(f"{flag} {now['path']}: its contents differ from {before['path']}, which {directory} "
                            "was started with; a resumed run trains on the same data (start a new run with "
                            "--overwrite or another --run_dir)")


def changed_settings(directory: Path, recorded: dict[str, dict[str, Any]],
                     settings: dict[str, Any]) -> dict[str, list[Any]]:
    """The adjustable settings that differ from the recorded ones, as {flag: [recorded, now]}; refuses a
    fixed one that differs."""
    changes = {}
    for group, values in settings.items():
        for spec in fields(values):
            policy = spec.metadata.get("on_resume", FIXED)
            now = jsonable(getattr(values, spec.name))
            before = recorded.get(group, {}).get(spec.name, jsonable(spec.default))
            if policy not in (FIXED, ADJUSTABLE) or now == before:
                continue
            flag = flag_of(values, spec.name)
            if policy == FIXED:
                raise UserError(f"{flag} is {shown(now)} but {directory} was started with {shown(before)}, and it "
                                f"decides the training trajectory: resume with the same {flag}, or start a new run "
                                "with --overwrite or another --run_dir")
            changes[flag] = [before, now]
    return changes


def jsonable(value: Any) -> Any:
    """`value` as JSON holds it: paths as strings, tuples as lists."""
    return json.loads(json.dumps(value, default=str))


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def environment(device: torch.device) -> dict[str, Any]:
    """What ran the run: library versions, code revision, device and number of processes."""
    versions = {"python": platform.python_version()}
    for library in LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = None
    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    return {"versions": versions, "revision": code_revision(), "device": name,
            "processes": int(os.environ.get("WORLD_SIZE", 1))}


def code_revision() -> str:
    """The git commit of this code, noting uncommitted changes to tracked files."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if status.stdout.strip() else "")


# -----------------------------------------------------------------------------
# one run at a time in a run directory

# What to do about a file that cannot be written while a run holds its directory (ending with the flag to add).
RESUME_AFTER_FAILURE = ("the run directory keeps the last good state: free space or make the folder writable, then "
                        "add --resume")


@dataclass(frozen=True)
class LockOwner:
    """The process a run directory's lock names."""
    pid: int
    host: str
    since: str  # when it took the lock, in ISO 8601

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host} (since {self.since})"

    def is_this_process(self) -> bool:
        return self.pid == os.getpid() and self.host == socket.gethostname()

    def is_gone(self) -> bool:
        """Whether the owner no longer runs. Only a process of this host can be looked up; one of another
        host (a shared file system) is taken to run."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)  # signal 0: delivers nothing, only asks whether the process exists
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, as another user's
            return False
        return False


def take_lock(directory: Path) -> None:
    """Make this process the owner of `directory` (created if need be) until its command ends: create
    `run.lock` atomically, naming this process. Refused, naming the owner, while another process holds it;
    a lock whose process no longer exists on this host is taken over with a warning. When the command ends,
    however it ends, the lock is removed (with the folders created for it, if still empty); a failed file
    operation then ends it in one line advising --resume."""
    created = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    mine = LockOwner(os.getpid(), socket.gethostname(), datetime.now().astimezone().isoformat(timespec="seconds"))
    while not create_lock(path, mine):
        owner = lock_owner(path)
        if owner is None:  # released meanwhile
            continue
        if not owner.is_this_process():  # this process id's own is taken back without a word
            if not owner.is_gone():
                raise UserError(f"{directory} is in use by another run: {owner} holds {path}; wait for it to end, "
                                "or pick another --run_dir")
            warnings.warn(f"{path}: {owner} no longer runs; taking the run directory over")
        path.unlink(missing_ok=True)

    def release(kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        with contextlib.suppress(OSError):  # a folder that became unwritable keeps it: a later run takes it over
            if path.read_text(encoding="utf-8") == lock_text(mine):  # not one that a later run took over
                path.unlink()
            for folder in created:  # innermost first, while empty
                folder.rmdir()
        if isinstance(error, OSError) and error.filename is not None:
            raise UserError(f"{error.filename}: {error.strerror or error}; {RESUME_AFTER_FAILURE}") from None

    at_command_end(release)
    sigterm_ends_command()  # so that SIGTERM outside training releases the lock too


def create_lock(path: Path, owner: LockOwner) -> bool:
    """Create `path` naming `owner`, unless it exists (atomically: of two processes, one creates it)."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        f.write(lock_text(owner))
    return True


def lock_text(owner: LockOwner) -> str:
    return json.dumps(asdict(owner)) + "\n"


def lock_owner(path: Path) -> LockOwner | None:
    """The owner a lock names; None if it is gone. A lock that names none (being written by a run that is
    starting, or left empty by one that crashed) is refused: nobody can tell whether its run goes on."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        text = str(error)
    try:
        owner = LockOwner(**json.loads(text))
        if type(owner.pid) is int and owner.pid > 0 and isinstance(owner.host, str):
            return owner
    except (ValueError, TypeError):
        pass
    raise UserError(f"{path} names no owner ({text.strip()[:80]!r}): another run may be starting there; if none "
                    f"is, delete {path}")
