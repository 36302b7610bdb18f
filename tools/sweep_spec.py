"""Checking a sweep's spec file (its format: tools/sweep.py): every key known, every flag one of its task
script's and not one the sweep sets itself, every value of the right type, and each flag given once. A
refusal is one line naming the file and the key."""
import argparse
import difflib
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from flags import UserError
from tools.compare import script_module

SPEC_KEYS = ("script", "flags", "seeds", "grid", "search")
SEARCH_KEYS = ("trials", "space")

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


def value_text(value: Scalar) -> str:
    """A flag value as a command line and a run's name give it (floats exactly: 3e-05, 0.001)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
