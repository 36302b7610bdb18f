"""The settings every task script shares. A script's settings are a `ScriptSettings` subclass: groups of typed
dataclasses, each field declared with `flags.setting` and checked in its group's `__post_init__`;
`flags.settings_parser` builds the command line from those fields, and `flags.settings_from_flags` builds the
dataclasses back from the parsed flags, which checks every value: a bad flag stops the script at start-up,
before any data or model is loaded, in one line. Below the scripts, code receives these dataclasses, never the
parsed flags.
"""
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from config import PRESETS
from flags import ADJUSTABLE, FREE, require, require_range, require_writable, setting
from models import hf_checkpoint
from modules.lora import LORA_TARGETS
from training.device import PRECISIONS
from training.optimization import SCHEDULERS


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
    eval_batch_size: int | None = setting(None, "examples per batch when scoring dev and test (no gradients); "
                                                "default: 4 times the training batch", on_resume=FREE)

    def __post_init__(self) -> None:
        require_range(self, "epochs", 0)
        require_range(self, "lr", 0, low_open=True)
        for name in ("batch_size", "grad_accum", "keep_best", "log_every", "eval_batch_size"):
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
    tensorboard: bool = setting(False, "also write metrics.jsonl's numbers as TensorBoard event files, in the run "
                                       "directory's tensorboard/ (see them with: tensorboard --logdir runs)",
                                on_resume=FREE)

    def __post_init__(self) -> None:
        require(self, "overwrite", not (self.resume and self.overwrite),
                "cannot be combined with --resume: continue the run, or start it again")
        require_writable(self, "run_dir", directory=True)
        require(self, "tensorboard", not self.tensorboard or importlib.util.find_spec("tensorboard") is not None,
                "needs the tensorboard package, which requirements.txt lists and this Python lacks")


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
        require(self.run, "tensorboard", not self.run.tensorboard or self.train.epochs > 0,
                "logs training, and --epochs 0 trains nothing")

    def resolved(self, lr: float | None = None, batch_size: int | None = None) -> Self:
        """These settings with every default that a script or another setting decides filled in, once, at
        start-up: the learning rate and batch size where the flags give none (`lr`, `batch_size`: the script's
        defaults), the scoring batch (4 times the training batch), and with --ulmfit ULMFiT's discriminative
        learning rates (/2.6 per layer down, unless --layer_lr_decay is given) and slanted triangular schedule
        (warm-up 0.1 of the steps, unless --warmup_ratio is given). Below start-up no setting is None for
        "decide later"."""
        train = self.train
        train = replace(train, lr=train.lr or lr, batch_size=train.batch_size or batch_size)
        train = replace(train, eval_batch_size=train.eval_batch_size or 4 * train.batch_size)
        if self.strategy.ulmfit:
            train = replace(train, layer_lr_decay=1 / 2.6 if train.layer_lr_decay == 1.0 else train.layer_lr_decay,
                            scheduler="slanted_triangular", warmup_ratio=train.warmup_ratio or 0.1)
        return replace(self, train=train)


SHARED_GROUPS = ("model", "train", "strategy", "run")  # a script's own groups come first in its --help
