"""The flag framework every command shares, below everything else (it imports no torch): a setting is a
dataclass field that is also a command-line flag (`setting`); its value is checked where its dataclass is built
(`require`, `require_range`, ...) and refused as a `UserError`, which a command ends with in one line
(`user_errors_end_in_one_line`); `settings_parser` builds a command line from such dataclasses and
`settings_from_flags` builds them back from the parsed flags."""
import argparse
import math
import os
import string
import sys
import types
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import field, fields
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


@contextmanager
def user_errors_end_in_one_line(prog: str) -> Iterator[None]:
    """A `UserError` raised inside ends the script with one line on stderr and exit status 2; a warning is
    one line on stderr too, without the source line Python would show."""
    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            yield
        except UserError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None


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
