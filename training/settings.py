"""The flags. A script's settings are a `ScriptSettings` subclass: groups of typed dataclasses, each field
declared with `config.setting` and checked in its group's `__post_init__`. `settings_parser` builds the
command line from those fields, and `settings_from_flags` builds the dataclasses back from the parsed flags,
which checks every value: a bad flag stops the script at start-up, before any data or model is loaded, in
one line. Below the scripts, code receives these dataclasses, never the parsed flags.
"""
import argparse
import os
import string
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn, Union, get_args, get_origin

from config import ADJUSTABLE, FREE, PRESETS, UserError, flag_of, require, require_range, setting
from models import hf_checkpoint
from modules.lora import LORA_TARGETS
from training.device import PRECISIONS
from training.optimization import SCHEDULERS


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


# -----------------------------------------------------------------------------
# the settings every task script has

@dataclass(frozen=True)
class ModelSettings:
    """Which GPT-2 to start from, and how it runs."""
    model_size: str = setting("gpt2", "published GPT-2 to load from the Hugging Face hub (or the shape with "
                                      "--init random)", choices=tuple(PRESETS))
    model_path: Path | None = setting(None, "local Hugging Face GPT-2 checkpoint directory (config.json + "
                                            "model.safetensors); replaces --model_size", on_resume=FREE,
                                      changes_results=True)
    init: str = setting("pretrained", "random: GPT-2's initialisation, no pre-training",
                        choices=("pretrained", "random"))
    keep_layers: int = setting(0, "keep only the bottom K GPT-2 layers (and the final LayerNorm), as in GPT-1's "
                                  "analysis of layers transferred; 0 keeps them all")
    use_gpu: bool = setting(False, "run on the GPU (under torchrun, each process on its own)", on_resume=FREE)
    precision: str = setting("auto", "auto: bf16 autocast on a GPU that supports it, else fp32; fp16 autocast (with "
                                     "a gradient scaler); tf32: float32 with TF32 matmuls on GPU; fp32: exact "
                                     "float32", choices=tuple(PRECISIONS))
    deterministic: bool = setting(False, "PyTorch's deterministic kernels: a run repeats bit for bit on the same "
                                         "machine (slower on a GPU)", on_resume=FREE)
    compile: bool = setting(False, "torch.compile each GPT-2 layer", on_resume=FREE)
    activation_checkpointing: bool = setting(False, "recompute layer activations in the backward pass to save "
                                                    "memory (for gpt2-large and gpt2-xl)", on_resume=FREE)

    def __post_init__(self) -> None:
        require(self, "model_path", self.model_path is None or (self.model_path / "config.json").is_file(),
                "not a directory holding config.json (a Hugging Face GPT-2 checkpoint); for a checkpoint on "
                "the hub, use --model_size")
        require(self, "precision", self.precision in ("auto", "fp32") or self.use_gpu,
                "is for GPUs: add --use_gpu, or use --precision fp32")
        layers = self.checkpoint_layers
        require_range(self, "keep_layers", 0, layers, note=f"the model has {layers} layers; 0 keeps them all")

    @property
    def checkpoint_layers(self) -> int:
        """GPT-2 layers of the checkpoint or preset, read without loading it."""
        if self.model_path is not None:  # refuses a damaged or foreign config.json at start-up
            return hf_checkpoint.load_config(self.model_path).num_hidden_layers
        return PRESETS[self.model_size]["num_hidden_layers"]

    @property
    def num_layers(self) -> int:
        """GPT-2 layers of the model these settings build."""
        return self.keep_layers or self.checkpoint_layers


@dataclass(frozen=True)
class TrainSettings:
    """How training runs: epochs, optimizer, schedule, batches and seed."""
    epochs: int = setting(10, "passes over the training data; 0: no training (zero-shot)", on_resume=ADJUSTABLE)
    lr: float | None = setting(1e-5, "peak learning rate", on_resume=ADJUSTABLE)
    batch_size: int | None = setting(8, "training examples per batch")
    grad_accum: int = setting(1, "batches per optimizer step")
    weight_decay: float = setting(0.0, "decoupled weight decay on weight matrices; biases and LayerNorms are "
                                       "exempt", on_resume=ADJUSTABLE)
    scheduler: str = setting("constant", "learning-rate schedule", choices=SCHEDULERS)
    warmup_ratio: float = setting(0.0, "share of optimizer steps spent warming up")
    layer_lr_decay: float = setting(1.0, "each layer's learning rate is the one above it times this")
    clip_norm: float = setting(0.0, "gradient norm clipping; 0 is off", on_resume=ADJUSTABLE)
    early_stopping: int = setting(0, "stop after this many epochs without a better dev score; 0 is off",
                                  on_resume=ADJUSTABLE)
    keep_best: int = setting(1, "besides best.pt, keep the k best epochs' models as epoch{N}.pt",
                             on_resume=ADJUSTABLE)
    train_limit: int = setting(0, "train on a seeded sample of N training examples; 0: all")
    seed: int = setting(11711, "seeds the data order, initialisation, dropout and sampling")
    log_every: int = setting(10, "optimizer steps between training-loss lines in metrics.jsonl", on_resume=FREE)

    def __post_init__(self) -> None:
        require_range(self, "epochs", 0)
        require_range(self, "lr", 0, low_open=True)
        for name in ("batch_size", "grad_accum", "keep_best", "log_every"):
            require_range(self, name, 1)
        require_range(self, "weight_decay", 0)
        require_range(self, "warmup_ratio", 0, 1)
        require_range(self, "layer_lr_decay", 0, 1, low_open=True)
        require_range(self, "clip_norm", 0, note="0 turns clipping off")
        require_range(self, "early_stopping", 0, note="0 turns early stopping off")
        require_range(self, "train_limit", 0, note="0 trains on every example")
        require_range(self, "seed", 0, 2**32 - 1)


@dataclass(frozen=True)
class StrategySettings:
    """Which weights train: all of GPT-2 (the default), or one of the strategies below."""
    train_top_layers: int = setting(0, "train only the top k GPT-2 layers (and the final LayerNorm and head)")
    lora: bool = setting(False, "train LoRA adapters on a frozen GPT-2")
    lora_rank: int = setting(8, "rank of the LoRA update")
    lora_alpha: float = setting(16.0, "the LoRA update is scaled by alpha / rank")
    lora_dropout: float = setting(0.05, "dropout on the LoRA adapters' input")
    dora: bool = setting(False, "with --lora: weight-decomposed LoRA (DoRA)")
    lora_targets: str = setting("query,value", f"comma-separated, from {','.join(LORA_TARGETS)}")
    prefix_length: int = setting(0, "prefix-tuning: train this many key/value positions per layer, GPT-2 frozen")
    ulmfit: bool = setting(False, "ULMFiT: gradual unfreezing, discriminative learning rates (/2.6 per layer) "
                                  "and a slanted triangular schedule; with --lora, of the adapters")

    def __post_init__(self) -> None:
        require_range(self, "train_top_layers", 0, note="0 trains every layer")
        require_range(self, "lora_rank", 1)
        require_range(self, "lora_alpha", 0, low_open=True)
        require_range(self, "lora_dropout", 0, 1, high_open=True)
        require_range(self, "prefix_length", 0, note="0 turns prefix-tuning off")
        targets = self.lora_targets.split(",")
        require(self, "lora_targets", set(targets) <= set(LORA_TARGETS) and len(set(targets)) == len(targets),
                f"must be distinct names from {', '.join(LORA_TARGETS)}, separated by commas")
        require(self, "dora", not self.dora or self.lora, "only with --lora")
        # ULMFiT unfreezes what another strategy trains: all of GPT-2, or with --lora its adapters.
        chosen = [name for name in ("train_top_layers", "lora", "prefix_length") if getattr(self, name)]
        chosen += ["ulmfit"] if self.ulmfit and not self.lora else []
        if len(chosen) > 1:
            require(self, chosen[1], False, f"cannot be combined with --{chosen[0]}: choose one strategy")


@dataclass(frozen=True)
class RunSettings:
    """Where the run keeps its checkpoints, log and settings, and what to do with a run already there."""
    run_dir: Path | None = setting(None, "the run's directory (default: under runs/)", on_resume=FREE)
    resume: bool = setting(False, "continue the run in --run_dir from its last checkpoint", on_resume=FREE)
    overwrite: bool = setting(False, "start again in a --run_dir that holds a run, deleting that run's files",
                              on_resume=FREE)

    def __post_init__(self) -> None:
        require(self, "overwrite", not (self.resume and self.overwrite),
                "cannot be combined with --resume: continue the run, or start it again")
        require_writable(self, "run_dir", directory=True)


@dataclass(frozen=True)
class ScriptSettings:
    """The settings groups of every task script; each script's subclass adds its task's own groups."""
    model: ModelSettings
    train: TrainSettings
    strategy: StrategySettings
    run: RunSettings

    def __post_init__(self) -> None:
        """What no single group can check alone."""
        model, strategy, layers = self.model, self.strategy, self.model.num_layers
        require_range(strategy, "train_top_layers", 0, layers,
                      note=f"the model has {layers} layers; 0 trains every layer")
        require(strategy, "prefix_length",
                not (strategy.prefix_length and (model.compile or model.activation_checkpointing)),
                "prefix-tuning trains through the key/value cache, which --compile and --activation_checkpointing "
                "do not cover")
        require(self.run, "resume", not self.run.resume or self.train.epochs > 0,
                "continues training up to --epochs; give the run's --epochs (or more), not 0")


def settings_parser(cls: type[ScriptSettings], prog: str, description: str,
                    options: dict[str, dict[str, Any]]) -> FlagParser:
    """The command line of a script whose settings are `cls`: the task's groups first, then the shared ones.
    `options` holds, by group, what `add_flags` takes besides the group (`skip`, `defaults`, `helps`)."""
    parser = FlagParser(prog=prog, description=description, formatter_class=HelpFormatter)
    shared = {group.name for group in fields(ScriptSettings)}
    for group in sorted(fields(cls), key=lambda group: group.name in shared):
        add_flags(parser, group.type, **options.get(group.name, {}))
    return parser


def settings_from_flags(cls: type[ScriptSettings], flags: argparse.Namespace) -> Any:
    """A script's settings from its parsed flags: every group built, so every value checked."""
    return cls(**{group.name: from_flags(group.type, flags) for group in fields(cls)})
