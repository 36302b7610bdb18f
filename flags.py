"""The flag framework every command shares, below everything else (it imports no torch): a setting is a
dataclass field that is also a command-line flag (`setting`); its value is checked where its dataclass is built
(`require`, `require_range`, ...) and refused as a `UserError`, which a command ends with in one line
(`user_errors_end_in_one_line`, which also runs what must be undone as a command ends: `at_command_end`);
`require_separate_paths` keeps a command's outputs off its inputs and the project's own files; `settings_parser`
builds a command line from such dataclasses and `settings_from_flags` builds them back from the parsed flags."""
import argparse
import atexit
import fnmatch
import math
import os
import signal
import string
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import field, fields
from pathlib import Path
from typing import Any, NoReturn, Union, get_args, get_origin


# What `--resume` does when a setting differs from the one a run recorded.
FIXED = "fixed"  # refuse: the setting decides the training trajectory
ADJUSTABLE = "adjustable"  # apply it from the resume point on, and log the change
FREE = "free"  # accept: it does not touch training (output paths, decoding, speed switches)


class UserError(ValueError):
    """Something a user handed in is not allowed. The scripts print the message as one line and exit with
    status 2, without a traceback: the message names the flag or file, the value, and what is allowed."""


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None,
            aliases: tuple[str, ...] = (), on_resume: str = FIXED, changes_results: bool | None = None) -> Any:
    """A dataclass field that the scripts expose as the flag `--{name}` (or `flag`, plus `aliases`).
    `changes_results`: whether runs that differ in it are compared as different settings (see
    tools/compare.py); by default those that --resume may change freely do not (paths, speed switches)."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag, "aliases": aliases,
                                            "on_resume": on_resume,
                                            "changes_results": on_resume != FREE if changes_results is None
                                            else changes_results})


def flag_of(settings: Any, name: str) -> str:
    """The command-line flag of field `name` of a settings dataclass."""
    spec = next(f for f in fields(settings) if f.name == name)
    return spec.metadata.get("flag") or f"--{name}"


def shown(value: Any) -> str:
    """A setting's value as a message shows it."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):  # a flag of several values, as typed
        return " ".join(map(shown, value))
    return repr(value) if isinstance(value, str) else str(value)


def require(settings: Any, name: str, ok: bool, allowed: str) -> None:
    """Refuse field `name` of `settings` unless `ok`: "--flag value: allowed" (a switch shows no value)."""
    if ok:
        return
    value = getattr(settings, name)
    value_text = "" if isinstance(value, bool) else f" {shown(value)}"
    raise UserError(f"{flag_of(settings, name)}{value_text}: {allowed}")


def require_range(settings: Any, name: str, low: float = -math.inf, high: float = math.inf, *,
                  low_open: bool = False, high_open: bool = False, note: str = "") -> None:
    """Refuse field `name` unless it is a finite number between `low` and `high` (each end included unless
    open). None, where a field allows it, means "the default" and is not checked."""
    value = getattr(settings, name)
    if value is None:
        return
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if low == -math.inf and high == math.inf:
        allowed = "must be a finite number"
    elif high == math.inf:
        allowed = f"must be {'greater than' if low_open else 'at least'} {shown(low)}"
    else:
        allowed = f"must be in {'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"
    require(settings, name, math.isfinite(value) and above and below, allowed + (f" ({note})" if note else ""))


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like every other refusal of a setting."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and each flag's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        shown = all(action.default is not value for value in (None, False, argparse.SUPPRESS))
        shown = shown and "default" not in action.help
        return action.help + (" (default: %(default)s)" if shown else "")


def _flag_type(annotation: Any) -> type:
    """`int` for `int` and `int | None`, and so on."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    return annotation


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
              defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None) -> None:
    """A flag for each field of the settings dataclass `cls` except `skip`, in a group titled by the first
    sentence of its docstring. `defaults` and `helps` replace a field's default and help for this script."""
    group = parser.add_argument_group(" ".join(cls.__doc__.split()).split(". ")[0].rstrip("."))
    for spec in fields(cls):
        if spec.name in skip:
            continue
        names = [spec.metadata["flag"] or f"--{spec.name}", *spec.metadata["aliases"]]
        help_text = (helps or {}).get(spec.name, spec.metadata["help"])
        kind = _flag_type(spec.type)
        if kind is bool:
            group.add_argument(*names, dest=spec.name, action="store_true", help=help_text)
        elif get_origin(kind) is tuple:  # one value or more: --flag A [B ...]
            group.add_argument(*names, dest=spec.name, type=get_args(kind)[0], nargs="+", default=spec.default,
                               help=help_text)
        else:
            group.add_argument(*names, dest=spec.name, type=kind, choices=spec.metadata["choices"],
                               default=(defaults or {}).get(spec.name, spec.default), help=help_text)


def from_flags(cls: type, flags: argparse.Namespace) -> Any:
    """The settings dataclass `cls` from parsed flags (fields without a flag keep their default), checked
    as it is built. Several values (`nargs`) become a tuple, so the settings stay immutable."""
    values = {spec.name: getattr(flags, spec.name) for spec in fields(cls) if hasattr(flags, spec.name)}
    return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})


# What each command under way must do as it ends (innermost last), e.g. release a run directory's lock.
_ENDINGS: list[ExitStack] = []
AGAIN = "free space or make the folder writable, then run the command again"
OTHER_RANKS_WAIT = 2.0  # seconds: longer than the ranks start apart, so that rank 0 prints first


def prints_messages() -> bool:
    """Whether this process prints refusals and warnings: under torchrun only rank 0 does (flags.py reads the
    rank from the environment, as it imports no torch), so a refusal shows once, not once per process."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def user_errors_end_in_one_line(prog: str) -> Iterator[None]:
    """A `UserError` raised inside ends the script with one line on stderr and exit status 2, as does an
    `OSError` naming a file (a folder that cannot be written, a full disk); a warning is one line on stderr
    too, without the source line Python would show. What `at_command_end` registers inside runs as the block
    ends, however it ends. Under torchrun every process exits alike, and only rank 0 prints."""
    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        if prints_messages():
            print(f"{prog}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            with ExitStack() as ending:
                _ENDINGS.append(ending)
                try:
                    yield
                finally:
                    _ENDINGS.pop()
        except UserError as error:
            refuse(prog, str(error))
        except OSError as error:
            if error.filename is None:  # not about a file of the user's: a fault of the code, with its traceback
                raise
            refuse(prog, f"{error.filename}: {error.strerror}; {AGAIN}")


def refuse(prog: str, message: str) -> NoReturn:
    if prints_messages():
        print(f"{prog}: error: {message}", file=sys.stderr)
    else:  # torchrun stops every process once one fails: the others wait for rank 0 to print
        time.sleep(OTHER_RANKS_WAIT)
    raise SystemExit(2) from None


def at_command_end(on_exit: Callable[[type[BaseException] | None, BaseException | None, Any], Any]) -> None:
    """Call `on_exit` when the command under way (the `user_errors_end_in_one_line` block) ends, with what
    `__exit__` receives: the exception that ends it, if any, which `on_exit` may replace by raising a
    `UserError`. Outside a command (code used from Python), at interpreter exit."""
    if _ENDINGS:
        _ENDINGS[-1].push(on_exit)
    else:
        atexit.register(on_exit, None, None, None)


def sigterm_ends_command() -> None:
    """For the rest of the command under way, SIGTERM raises SystemExit (143, the shell's code for it), as Ctrl-C
    raises KeyboardInterrupt, so that what `at_command_end` registered runs however the command is stopped. A
    handler set already (training's) keeps SIGTERM; outside a command, or off the main thread, nothing changes."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not (_ENDINGS and main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    _ENDINGS[-1].callback(signal.signal, signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def errors_name(path: Path) -> Iterator[None]:
    """An `OSError` inside names `path`, the file being written, rather than the temporary file beside it."""
    try:
        yield
    except OSError as error:
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


# -----------------------------------------------------------------------------
# checks that several scripts' settings share

def require_template(settings: Any, name: str, wanted: set[str]) -> None:
    """A prompt template names exactly the fields `wanted`, each as {field}."""
    try:
        named = {field for _, field, _, _ in string.Formatter().parse(getattr(settings, name)) if field is not None}
    except ValueError as error:
        raise UserError(f"{flag_of(settings, name)} {getattr(settings, name)!r}: not a template ({error}); write a "
                        "literal brace as {{ or }}") from None
    fields_text = " and ".join("{" + field + "}" for field in sorted(wanted))
    require(settings, name, named == wanted, f"must contain {fields_text}, and no other {{field}}")


def require_input_file(settings: Any, name: str) -> None:
    path = getattr(settings, name)
    require(settings, name, path.is_file(), "no such file (bash setup.sh copies the course data into data/)")


def require_extra_train(settings: Any) -> None:
    """Every --extra_train file (a task's extra labelled training rows) is there."""
    for path in settings.extra_train:
        if not path.is_file():
            raise UserError(f"--extra_train {path}: no such file")


def require_writable(settings: Any, name: str, directory: bool = False) -> None:
    """An output file (or `directory`) can be written: nothing of the other kind stands in its place, and the
    nearest folder that exists is writable (files are written beside their target first, then renamed)."""
    path = getattr(settings, name)
    if path is None:
        return
    if path.exists():
        require(settings, name, path.is_dir() == directory, "is a file" if directory else "is a directory")
    folder = (path if directory else path.parent).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    require(settings, name, existing.is_dir() and os.access(existing, os.W_OK),
            f"cannot be written: {existing} is {'not writable' if existing.is_dir() else 'a file'}")


# -----------------------------------------------------------------------------
# what a command may write (docs/data-files.md#what-a-command-may-write)

PROJECT = Path(__file__).resolve().parent
# The project's own folders (its code, tests and documents) and the endings of its own top-level files (code,
# documents, settings): no output goes there. Data and outputs go in data/, predictions/, runs/, or elsewhere.
PROJECT_FOLDERS = ("course", "models", "modules", "tools", "training", "tests", "docs")
SOURCE_SUFFIXES = (".py", ".md", ".sh", ".ini", ".txt", ".toml", ".cfg", ".json", ".yaml", ".yml", ".ipynb")
Paths = Path | tuple[Path, ...] | None  # what a flag names: one path, several, or none (a flag not given)


def is_project_own(path: Path) -> bool:
    """Whether `path` (resolved) is the project folder, lies in one of its own folders or a hidden one (.git,
    .venv), or is a top-level file with one of the source endings."""
    if not path.is_relative_to(PROJECT):
        return False
    parts = path.relative_to(PROJECT).parts
    return (not parts or parts[0] in PROJECT_FOLDERS or parts[0].startswith(".")
            or (len(parts) == 1 and path.suffix in SOURCE_SUFFIXES))


def named_paths(paths: dict[str, Paths]) -> list[tuple[str, Path, Path]]:
    """(flag, path as given, path resolved with links followed) for each path of each flag."""
    return [(flag, path, path.resolve()) for flag, value in paths.items() if value is not None
            for path in (value if isinstance(value, tuple) else (value,))]


def require_separate_paths(inputs: dict[str, Paths], outputs: dict[str, Paths],
                           run_dirs: dict[str, Paths] | None = None, run_files: tuple[str, ...] = ()) -> None:
    """Refuse, in one line naming both flags, a command that would write over what it reads or writes, before
    it reads anything. `inputs`: the files it reads and the folders it reads from, by flag; `outputs`: the
    files it writes; `run_dirs`: the run directories it keeps its runs in, whose own files match the glob
    patterns `run_files`. Paths compare resolved, links followed. Refused: an output or run directory that is
    the project's own (`is_project_own`), is an input or lies in one; a run directory that holds an input; two
    outputs that are one file, or one inside the other; an output that is a run directory, holds one, or takes
    the place of a run's own file (`run_file`). Other paths in a run directory are free."""
    read, written, runs = named_paths(inputs), named_paths(outputs), named_paths(run_dirs or {})
    for entries, is_run_dir in ((written, False), (runs, True)):
        for flag, path, real in entries:
            require_apart_from_inputs(flag, path, real, read, is_run_dir)
    for index, (flag, path, real) in enumerate(written):
        for other_flag, other, other_real in written[index + 1:]:
            if real.is_relative_to(other_real) or other_real.is_relative_to(real):
                where = "is also" if real == other_real else "lies in or holds"
                raise UserError(f"{flag} {path}: {where} {other_flag} {other}; each output needs a file of its own")
        for run_flag, run_dir, run_real in runs:
            inside = real != run_real and real.is_relative_to(run_real)
            owned = run_file(real.relative_to(run_real), run_files) if inside else None
            if owned or run_real.is_relative_to(real):
                what = f"its own {owned}" if owned else "where the run keeps its files"
                raise UserError(f"{flag} {path}: is a path of the run in {run_flag} {run_dir} ({what}); pick another "
                                "name or folder")


def run_file(relative: Path, patterns: tuple[str, ...]) -> str | None:
    """The glob pattern of a run's own file, or of a folder of them, whose place `relative` (a path in the run
    directory) would take; None if none."""
    for pattern in patterns:
        parts = pattern.split("/")
        if len(relative.parts) == len(parts) and fnmatch.fnmatchcase(relative.as_posix(), pattern):
            return pattern
        if len(relative.parts) < len(parts) and relative.parts == tuple(parts[:len(relative.parts)]):
            return "/".join(parts[:len(relative.parts)]) + "/"
    return None


def require_apart_from_inputs(flag: str, path: Path, real: Path, read: list[tuple[str, Path, Path]],
                              is_run_dir: bool) -> None:
    """The output `path` (`real`, resolved) of `flag` is not the project's own, not an input, not in an input
    folder, and (a run directory) holds no input."""
    if is_project_own(real):
        raise UserError(f"{flag} {path}: is part of the project itself (its code, tests, documents or settings), "
                        "which no output replaces: pick another path")
    for input_flag, given, input_real in read:
        if real.is_relative_to(input_real):
            where = "is also" if real == input_real else "lies in"
            raise UserError(f"{flag} {path}: {where} {input_flag} {given}, which this command reads; an output never "
                            "replaces an input")
        if is_run_dir and input_real.is_relative_to(real):
            raise UserError(f"{flag} {path}: holds {input_flag} {given}, which this command reads; a run directory "
                            "holds only its run's files: pick another")


def settings_parser(cls: type, prog: str, description: str, options: dict[str, dict[str, Any]],
                    last: Collection[str] = ()) -> FlagParser:
    """The command line of a command whose settings are `cls`, a dataclass of settings groups: a flag group for
    each, those named in `last` after the others. `options` holds, by group, what `add_flags` takes besides the
    group (`skip`, `defaults`, `helps`)."""
    parser = FlagParser(prog=prog, description=description, formatter_class=HelpFormatter)
    for group in sorted(fields(cls), key=lambda group: group.name in last):
        add_flags(parser, group.type, **options.get(group.name, {}))
    return parser


def settings_from_flags(cls: type, flags: argparse.Namespace) -> Any:
    """Settings of type `cls` from a command's parsed flags: every group built, so every value checked."""
    return cls(**{group.name: from_flags(group.type, flags) for group in fields(cls)})
