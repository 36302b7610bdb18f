"""Ensembles: finished runs of one task, each rebuilt from its own settings record (`settings.json`) and its
best checkpoint, whose class probabilities are averaged.

Each run keeps its own model, strategy and task settings (head, pooling, prompt, LoRA, ...), so a LoRA run
and a full-model run ensemble together. What the ensemble's command decides for every run is how it runs
(device, precision) and which files it reads and writes: the runs score the command's dev and test files.
"""
import json
from collections.abc import Collection
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_args

import torch
from torch import nn

from course.files import write_atomically
from flags import UserError, require, setting
from modules.lora import merge_lora
from training.checkpoints import checkpoint_identity, load_checkpoint
from training.distributed import is_main
from training.run_dir import BEST_CHECKPOINT, SETTINGS_FILE, read_record
from training.settings import RunSettings, ScriptSettings

# The model settings an ensemble's command decides for every run, whatever the run trained with: how it runs.
RUNTIME_SETTINGS = ("use_gpu", "precision", "deterministic", "compile", "activation_checkpointing")

S = TypeVar("S", bound=ScriptSettings)


@dataclass(frozen=True)
class RunOrEnsembleSettings(RunSettings):
    """Where the run keeps its checkpoints, log and settings, and what to do with a run already there; or,
    instead of training, the finished runs to ensemble."""
    ensemble: tuple[Path, ...] | None = setting(None, "instead of training: average the class probabilities of "
                                                      "the best checkpoints of these finished runs of this task "
                                                      "(run directories), and write their predictions")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ensemble:
            return
        for name in ("run_dir", "resume", "overwrite", "tensorboard"):
            require(self, name, not getattr(self, name),
                    "not with --ensemble, which trains nothing: each --ensemble directory is a finished run")
        for directory in self.ensemble:
            problem = run_directory_problem(directory)
            if problem:
                raise UserError(f"--ensemble {directory}: {problem}")
        if len({directory.resolve() for directory in self.ensemble}) < len(self.ensemble):
            raise UserError(f"--ensemble {' '.join(map(str, self.ensemble))}: a run is given twice; each counts once")


def run_directory_problem(directory: Path) -> str | None:
    """Why `directory` is not a finished run to ensemble, or None when it is one."""
    if not directory.is_dir():
        return "no such directory" if not directory.exists() else "not a directory"
    for name in (SETTINGS_FILE, BEST_CHECKPOINT):
        if not (directory / name).is_file():
            return (f"holds no {name}, so it is not a run that finished an epoch (a run directory holds "
                    f"{SETTINGS_FILE} and {BEST_CHECKPOINT}; continue an unfinished run with --resume)")
    return None


def refuse_member_flags(settings: ScriptSettings, allowed: dict[str, Collection[str]]) -> None:
    """With --ensemble nothing trains and each run's settings.json decides its model: refuse a flag that would
    decide them (one away from its default), rather than ignore it. `allowed` names, by settings group, the
    fields the ensemble's command does decide."""
    for group in fields(settings):
        if group.name == "run":
            continue
        values = getattr(settings, group.name)
        for spec in fields(values):
            value = getattr(values, spec.name)
            given = value is not None and value != spec.default  # None: a default the script fills in
            require(values, spec.name, not given or spec.name in allowed.get(group.name, ()),
                    "not with --ensemble: each run's settings.json decides its model, and nothing trains")


@dataclass(frozen=True)
class Member:
    """A finished run in an ensemble: its directory, task, settings record, and the settings it trained with."""
    directory: Path
    task: str
    record: dict[str, Any]
    settings: ScriptSettings

    @property
    def best_checkpoint(self) -> Path:
        return self.directory / BEST_CHECKPOINT


def read_members(cls: type[S], command: S, tasks: Collection[str],
                 from_command: dict[str, Collection[str]]) -> list[Member]:
    """The --ensemble runs of `command`, each with its settings rebuilt as `cls`; refused at start-up, before
    any data or model is loaded, naming the run, unless all are runs of one task, one of `tasks`."""
    members: list[Member] = []
    for directory in command.run.ensemble:
        record = read_record(directory, advice="leave the run out of --ensemble, or train it again")
        task = record["task"]
        if task not in tasks:
            raise UserError(f"--ensemble {directory}: a run of {task}, not of {' or '.join(tasks)}")
        if members and task != members[0].task:
            raise UserError(f"--ensemble {directory}: a run of {task}, but {members[0].directory} is a run of "
                            f"{members[0].task}: an ensemble's runs share one task")
        given = {group: {name: getattr(getattr(command, group), name) for name in names}
                 for group, names in from_command.items()}
        try:
            settings = member_settings(cls, record["settings"], given)
        except UserError as error:
            raise UserError(f"--ensemble {directory}: {error}") from None
        members.append(Member(directory, task, record, settings))
    return members


def member_settings(cls: type[S], recorded: dict[str, dict[str, Any]], given: dict[str, dict[str, Any]]) -> S:
    """The settings a run trained with, rebuilt as `cls` from `recorded` (its settings.json's
    `dataclasses.asdict` of each group), and so checked again; refused in a line for its caller to prefix with
    the run's name. The values `given` by group and field (what a command decides for the run) replace the
    recorded ones; a field the record lacks (it predates the setting) takes its default, as `--resume` reads
    it."""
    groups = {}
    try:
        for group in fields(cls):
            if group.name == "run":  # not recorded: where the run kept its files
                groups[group.name] = group.type()
            elif group.name not in recorded:
                raise UserError(f"records no {group.name} settings")
            else:
                groups[group.name] = rebuilt_group(group.type, recorded[group.name], given.get(group.name, {}))
        return cls(**groups)
    except (UserError, TypeError) as error:  # a TypeError: a value of the wrong type in the record
        raise UserError(f"its {SETTINGS_FILE} does not rebuild the run's model with this code: {error}") from None


def rebuilt_group(cls: type, recorded: dict[str, Any], given: dict[str, Any]) -> Any:
    """The settings group `cls` from its record, with the values `given` instead of the recorded ones."""
    unknown = sorted(recorded.keys() - {spec.name for spec in fields(cls)})
    if unknown:
        raise UserError(f"{unknown[0]!r} is not a setting of this code")
    return cls(**{spec.name: given[spec.name] if spec.name in given else recorded_value(spec, recorded[spec.name])
                  for spec in fields(cls) if spec.name in given or spec.name in recorded})


def recorded_value(spec: Field, value: Any) -> Any:
    """`value` as the settings field `spec` holds it: JSON keeps paths as strings."""
    return Path(value) if value is not None and Path in (spec.type, *get_args(spec.type)) else value


def load_best(model: nn.Module, member: Member, device: torch.device) -> int:
    """Load the run's best checkpoint into `model`, built from the run's settings (refused, naming the tensors
    that differ, unless it is the model the run trained), and fold any LoRA adapters into the weights, as
    training does before it predicts. Returns the best epoch."""
    best = load_checkpoint(member.best_checkpoint, checkpoint_identity(member.task, model), device)
    model.load_state_dict(best["model"])
    merge_lora(model)
    return best["epoch"]


@dataclass
class Vote:
    """The members' class probabilities on dev and test, and their dev metrics, as they are scored one by one
    (one model in memory at a time). `metrics` are the dev metrics printed and logged."""
    metrics: tuple[str, ...]
    probabilities: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {"dev": [], "test": []})
    members: list[dict[str, Any]] = field(default_factory=list)

    def add(self, member: Member, best_epoch: int, logits: dict[str, torch.Tensor],
            dev_metrics: dict[str, float]) -> None:
        """A member's logits by split (softmaxed in float32 here) and its dev metrics."""
        for split, scores in logits.items():
            self.probabilities[split].append(scores.float().softmax(-1))
        dev = {name: dev_metrics[name] for name in self.metrics}
        self.members.append({"run": str(member.directory), "best_epoch": best_epoch, "dev": dev})
        print(f"{member.directory} (best epoch {best_epoch}): dev {metrics_text(dev)}")

    def labels(self) -> dict[str, list[int]]:
        """Each example's class of highest mean probability, by split."""
        return {split: torch.stack(scores).mean(0).argmax(-1).tolist() for split, scores in self.probabilities.items()}

    def report(self, task: str, graded: dict[str, Any], predictions: dict[str, Path], command: list[str]) -> None:
        """Print the ensemble's dev metrics (`graded`: the written dev file's grade) and log the ensemble
        beside the dev predictions (`log_file`)."""
        dev = {name: graded[name] for name in self.metrics}
        print(f"ensemble of {len(self.members)} run(s): dev {metrics_text(dev)}")
        if is_main():
            log = {"task": task, "command": command, "members": self.members, "ensemble": {"dev": dev},
                   "predictions": {split: str(path) for split, path in predictions.items()}}
            write_atomically(log_file(predictions["dev"]), json.dumps(log, indent=2) + "\n")
            print(f"wrote {log_file(predictions['dev'])}")


def metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def log_file(dev_predictions: Path) -> Path:
    """Where an ensemble's log goes: beside its dev predictions, e.g. para-dev-output.ensemble.json."""
    return dev_predictions.with_suffix(".ensemble.json")
