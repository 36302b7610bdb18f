"""What the task scripts share: seeding, device and precision, optimizer groups, schedulers, checkpoints,
the training loop, evaluation batches, and each run's metrics log and learning curves."""
import argparse
import contextlib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from config import PRESETS, GPT2Config
from models import hf_checkpoint
from models.gpt2 import GPT2Model
from models.tokenizer import has_tokenizer_files, load_tokenizer
from modules.lora import LORA_TARGETS, apply_lora
from optimizer import AdamW

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SCHEDULERS = ("constant", "linear", "cosine", "slanted_triangular")


class NonFiniteLoss(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def choose_device(use_gpu: bool, precision: str = "fp32") -> torch.device:
    if use_gpu and not torch.cuda.is_available():
        raise SystemExit(f"--use_gpu was given but PyTorch {torch.__version__} sees no CUDA GPU on this machine; "
                         "run without --use_gpu to train on the CPU")
    device = torch.device("cuda" if use_gpu else "cpu")
    if precision != "fp32" and device.type != "cuda":
        raise SystemExit(f"--precision {precision} is for GPUs; use --use_gpu or --precision fp32")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise SystemExit("this GPU has no bfloat16 support; use --precision fp16")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def layer_of(name: str, num_layers: int) -> int:
    """Depth of a parameter for per-layer learning rates: 0 for the embeddings, i + 1 for GPT-2 layer i,
    num_layers + 1 for everything above (final LayerNorm, task heads)."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return 0 if re.search(r"(?:^|\.)(word|position)_embedding\.", name) else num_layers + 1


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, num_layers: int,
                     layer_lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters. Weight decay applies to matrices only (biases and
    LayerNorm gains are exempt); each layer's learning rate is lr * layer_lr_decay^(layers above it)."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth, decays = layer_of(name, num_layers), param.ndim >= 2
        group = groups.setdefault((depth, decays), {
            "params": [], "lr": lr * layer_lr_decay ** (num_layers + 1 - depth),
            "weight_decay": weight_decay if decays else 0.0})
        group["params"].append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, num_layers: int,
                   layer_lr_decay: float = 1.0) -> AdamW:
    return AdamW(parameter_groups(model, lr, weight_decay, num_layers, layer_lr_decay), lr=lr)


def lr_multiplier(kind: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The schedule's factor on each group's learning rate at optimizer step `step` (0-based)."""
    total_steps = max(total_steps, 1)
    if kind == "slanted_triangular":  # ULMFiT: a short linear rise, a long linear fall, from lr/32 to lr
        cut = max(warmup_steps, 1)
        rise = step / cut if step < cut else 1 - (step - cut) / max(total_steps - cut, 1)
        return (1 + max(rise, 0.0) * 31) / 32
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    if kind == "linear":
        return max(0.0, 1 - progress)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                   warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(kind, step, total_steps, warmup_steps))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename it, so a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path, identity: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A checkpoint's state, refusing one saved by another task or model size."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=True)
    mismatched = {key: (state.get("identity", {}).get(key), value) for key, value in identity.items()
                  if state.get("identity", {}).get(key) != value}
    if mismatched:
        details = "; ".join(f"{key}: checkpoint has {saved!r}, this run {current!r}"
                            for key, (saved, current) in mismatched.items())
        raise ValueError(f"{path} belongs to another run setup ({details})")
    return state


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class RunLog:
    """A run's metrics, one JSON object a line in `metrics.jsonl`, and its learning curves in `curves.png`."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path, self.picture = run_dir / "metrics.jsonl", run_dir / "curves.png"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            # Lines logged after the checkpoint we resume from will be logged again.
            with open(self.path) as f:
                self.records = [r for r in map(json.loads, f) if r.get("step", 0) <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in self.records)

    def log(self, **record: Any) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r["split"] == "train"]
        dev = [r for r in self.records if r["split"] == "dev"]
        metrics = sorted({k for r in dev for k, v in r.items() if isinstance(v, float)})
        # One panel per dev metric: their scales differ (accuracy near 1, perplexity in the hundreds).
        figure, axes = plt.subplots(1, 1 + len(metrics), figsize=(4 * (1 + len(metrics)), 3.5), squeeze=False)
        axes[0][0].plot([r["step"] for r in train], [r["loss"] for r in train])
        axes[0][0].set(xlabel="optimizer step", title="training loss")
        for axis, key in zip(axes[0][1:], metrics):
            axis.plot([r["epoch"] for r in dev if key in r], [r[key] for r in dev if key in r], marker="o")
            axis.set(xlabel="epoch", title=f"dev {key}")
        figure.tight_layout()
        figure.savefig(self.picture)
        plt.close(figure)


@dataclass
class TrainSettings:
    epochs: int
    grad_accum: int = 1
    clip_norm: float = 0.0  # 0: no clipping
    precision: str = "fp32"
    early_stopping: int = 0  # epochs without a better dev metric before stopping; 0: never
    metric: str = "accuracy"  # the dev metric that picks the best epoch (higher is better)
    log_every: int = 10
    keep_best: int = 1  # with k > 1, the k best epochs are also kept as epoch{N}.pt


@dataclass
class Run:
    """Where a run keeps its checkpoints and log, and what a checkpoint must match to be resumed."""
    run_dir: Path
    identity: dict[str, Any]
    device: torch.device
    resume: bool = False

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"


@dataclass
class Progress:
    epoch: int = 0
    batches_done: int = 0  # in the current epoch
    step: int = 0  # optimizer steps so far
    best: float = -math.inf
    bad_epochs: int = 0
    top: list[list[float]] = field(default_factory=list)  # [dev metric, epoch] of the epochs kept


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
        settings: TrainSettings, run: Run, train_batches: Callable[[int], list[dict[str, torch.Tensor]]],
        loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], evaluate: Callable[[], dict[str, Any]],
        on_epoch_start: Callable[[int], None] | None = None) -> RunLog:
    """Train for `settings.epochs`, evaluating on dev after each epoch. Keeps `best.pt` (the model at the
    best dev epoch) and `last.pt` (everything needed to resume, written after each epoch and on Ctrl-C)."""
    scaler = torch.amp.GradScaler(run.device.type, enabled=settings.precision == "fp16")
    progress, boundary_rng = Progress(), rng_state()

    def snapshot() -> dict[str, Any]:
        return {"identity": run.identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": boundary_rng,
                "progress": vars(progress).copy()}

    if run.resume:
        state = load_checkpoint(run.last, run.identity, run.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress, boundary_rng = Progress(**state["progress"]), state["rng"]
        set_rng_state(boundary_rng)
        print(f"resuming {run.last} at epoch {progress.epoch}, batch {progress.batches_done}")
    log = RunLog(run.run_dir, resume_step=progress.step if run.resume else None)

    try:
        while progress.epoch < settings.epochs:
            if settings.early_stopping and progress.bad_epochs >= settings.early_stopping:
                print(f"early stopping: no better dev {settings.metric} for {progress.bad_epochs} epochs")
                break
            train_epoch(model, optimizer, scheduler, scaler, settings, run, train_batches, loss_fn,
                        on_epoch_start, progress, log, boundary_rng)
            boundary_rng = rng_state()
            metrics = evaluate()
            log.log(split="dev", epoch=progress.epoch, step=progress.step, **metrics)
            print(f"epoch {progress.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                         if isinstance(v, float)))
            if metrics[settings.metric] > progress.best:
                progress.best, progress.bad_epochs = metrics[settings.metric], 0
                save_checkpoint(run.best, {"identity": run.identity, "model": model.state_dict(),
                                           "epoch": progress.epoch, "metrics": metrics})
            else:
                progress.bad_epochs += 1
            if settings.keep_best > 1:
                keep_top_epochs(run, progress, metrics[settings.metric], model, settings.keep_best)
            progress.epoch, progress.batches_done = progress.epoch + 1, 0
            save_checkpoint(run.last, snapshot())
            log.plot()
    except KeyboardInterrupt:
        save_checkpoint(run.last, snapshot())
        log.plot()
        print(f"\ninterrupted: saved {run.last}; continue with --resume")
        raise
    return log


def keep_top_epochs(run: Run, progress: Progress, score: float, model: nn.Module, keep: int) -> None:
    """Save this epoch's model as epoch{N}.pt if it is among the `keep` best so far; drop the one it displaces."""
    progress.top = sorted(progress.top + [[score, progress.epoch]], reverse=True)
    if [score, progress.epoch] in progress.top[:keep]:
        save_checkpoint(run.run_dir / f"epoch{progress.epoch}.pt",
                        {"identity": run.identity, "model": model.state_dict(), "epoch": progress.epoch})
    for _, dropped in progress.top[keep:]:
        (run.run_dir / f"epoch{int(dropped)}.pt").unlink(missing_ok=True)
    del progress.top[keep:]


def train_epoch(model, optimizer, scheduler, scaler, settings, run, train_batches, loss_fn, on_epoch_start,
                progress: Progress, log: RunLog, boundary_rng: dict[str, Any]) -> None:
    """One epoch from `progress.batches_done` on. `boundary_rng` is updated in place after each optimizer
    step, so an interruption saves the random state that the next batch will start from."""
    model.train()
    if on_epoch_start:
        on_epoch_start(progress.epoch)
    batches = train_batches(progress.epoch)
    started, tokens, losses = time.time(), 0, []
    bar = tqdm(batches, initial=progress.batches_done, desc=f"train epoch {progress.epoch}", leave=False)
    for index, batch in enumerate(batches):
        if index < progress.batches_done:
            continue
        tokens += int(batch["attention_mask"].sum())
        with autocast(run.device, settings.precision):
            loss = loss_fn(to_device(batch, run.device))
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the training loss is {value} at epoch {progress.epoch}, batch {index} "
                                f"(optimizer step {progress.step}); stopping. {run.last} holds the last good "
                                "state: lower --lr or set --clip_norm, then continue with --resume")
        scaler.scale(loss / settings.grad_accum).backward()
        losses.append(value)
        if (index + 1) % settings.grad_accum and index + 1 < len(batches):
            continue
        if settings.clip_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step, progress.batches_done = progress.step + 1, index + 1
        boundary_rng.update(rng_state())
        bar.update(index + 1 - bar.n)
        if progress.step % settings.log_every == 0:
            log.log(split="train", epoch=progress.epoch, step=progress.step, loss=sum(losses) / len(losses),
                    lr=scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            losses = []
    bar.close()
    elapsed = time.time() - started
    record = {"split": "epoch", "epoch": progress.epoch, "step": progress.step, "seconds": elapsed,
              "tokens_per_second": tokens / max(elapsed, 1e-9)}
    if run.device.type == "cuda":
        record["peak_memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    log.log(**record)


def train_and_restore_best(model: nn.Module, args: argparse.Namespace, lr: float, num_layers: int, run: Run,
                           train_batches: Callable[[int], list[dict[str, torch.Tensor]]], batches_per_epoch: int,
                           loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                           evaluate: Callable[[], dict[str, Any]], metric: str = "accuracy",
                           on_epoch_start: Callable[[int], None] | None = None) -> tuple[dict[str, Any], RunLog]:
    """Build the optimizer and schedule the flags ask for, train, and load the best dev epoch's weights.
    Returns the best checkpoint's state and the run's log."""
    optimizer = make_optimizer(model, lr, args.weight_decay, num_layers, args.layer_lr_decay)
    steps = args.epochs * -(-batches_per_epoch // args.grad_accum)
    scheduler = make_scheduler(optimizer, args.scheduler, steps, int(args.warmup_ratio * steps))
    settings = TrainSettings(args.epochs, args.grad_accum, args.clip_norm, args.precision, args.early_stopping,
                             metric, keep_best=args.keep_best)
    try:
        log = fit(model, optimizer, scheduler, settings, run, train_batches, loss_fn, evaluate, on_epoch_start)
    except NonFiniteLoss as error:
        raise SystemExit(str(error)) from None
    best = load_checkpoint(run.best, run.identity, run.device)
    model.load_state_dict(best["model"])
    print(f"best dev epoch {best['epoch']}: {metric} {best['metrics'][metric]:.4f}")
    return best, log


@torch.no_grad()
def predict(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device, precision: str,
            score: Callable[[dict[str, torch.Tensor]], torch.Tensor], size: int, desc: str) -> torch.Tensor:
    """`score(batch)` for every example, in dataset order (the batches may be sorted by length)."""
    model.eval()
    outputs: torch.Tensor | None = None
    for batch in tqdm(batches, desc=desc, leave=False):
        with autocast(device, precision):
            scores = score(to_device(batch, device)).float().cpu()
        if outputs is None:
            outputs = torch.empty((size, *scores.shape[1:]))
        outputs[batch["indices"]] = scores
    return outputs


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model flags every task script takes."""
    parser.add_argument("--model_size", choices=list(PRESETS), default="gpt2",
                        help="published GPT-2 to load from the Hugging Face hub (or the shape with --init random)")
    parser.add_argument("--model_path", type=Path, default=None,
                        help="local Hugging Face GPT-2 checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                        help="random: GPT-2's initialisation, no pre-training")
    parser.add_argument("--use_gpu", action="store_true")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="autocast dtype on GPU")
    parser.add_argument("--seed", type=int, default=11711)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Optimisation and fine-tuning strategy flags shared by the task scripts."""
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--weight_decay", type=float, default=0.0,
                        help="decoupled weight decay on weight matrices; biases and LayerNorms are exempt")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="constant")
    parser.add_argument("--warmup_ratio", type=float, default=0.0, help="share of optimizer steps spent warming up")
    parser.add_argument("--layer_lr_decay", type=float, default=1.0,
                        help="each layer's lr is the one above it times this (layer-wise lr decay)")
    parser.add_argument("--clip_norm", type=float, default=0.0, help="gradient norm clipping; 0 is off")
    parser.add_argument("--grad_accum", type=int, default=1, help="batches per optimizer step")
    parser.add_argument("--early_stopping", type=int, default=0,
                        help="stop after this many epochs without a better dev score; 0 is off")
    parser.add_argument("--keep_best", type=int, default=1,
                        help="besides best.pt, keep the k best epochs' models as epoch{N}.pt")
    parser.add_argument("--train_top_layers", type=int, default=0,
                        help="train only the top k GPT-2 layers (and the final LayerNorm and head)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters on a frozen GPT-2")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--lora_alpha", type=float, default=16.0)
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    parser.add_argument("--dora", action="store_true", help="with --lora: weight-decomposed LoRA (DoRA)")
    parser.add_argument("--lora_targets", default="query,value",
                        help=f"comma-separated, from {','.join(LORA_TARGETS)}")
    parser.add_argument("--run_dir", type=Path, default=None, help="checkpoints, metrics.jsonl and curves.png")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run_dir from last.pt")


def build_gpt2(args: argparse.Namespace) -> GPT2Model:
    """The GPT-2 the flags ask for: pre-trained from a local directory or the hub, or randomly initialised."""
    if args.init == "random":
        if args.model_path:
            config = GPT2Config.from_hf_dict(hf_checkpoint.read_config(hf_checkpoint.resolve_checkpoint(args.model_path)))
        else:
            config = GPT2Config.from_preset(args.model_size)
        return GPT2Model(config)
    return GPT2Model.from_pretrained(args.model_path or args.model_size)


def tokenizer_for(args: argparse.Namespace) -> PreTrainedTokenizerBase:
    """A checkpoint directory's own tokenizer files when it has them, else the project's."""
    if args.model_path and has_tokenizer_files(Path(args.model_path)):
        return load_tokenizer(args.model_path)
    return load_tokenizer()


def freeze_for_strategy(gpt: GPT2Model, args: argparse.Namespace, train_gpt: bool) -> None:
    """Decide which GPT-2 weights train: all (`train_gpt`), none, the top k layers, or LoRA adapters.
    Task heads live outside `gpt` and always train."""
    if args.lora:
        apply_lora(gpt, args.lora_targets.split(","), args.lora_rank, args.lora_alpha, args.lora_dropout, args.dora)
        return
    gpt.requires_grad_(train_gpt and not args.train_top_layers)
    if args.train_top_layers:
        if not 0 < args.train_top_layers <= len(gpt.layers):
            raise SystemExit(f"--train_top_layers must be in 1..{len(gpt.layers)}")
        for layer in gpt.layers[-args.train_top_layers:]:
            layer.requires_grad_(True)
        gpt.final_layer_norm.requires_grad_(True)


def gradual_unfreezing(model: nn.Module, num_layers: int) -> Callable[[int], None]:
    """ULMFiT: in epoch e train only the parameters at depth >= num_layers + 1 - e (the head first, then
    one more GPT-2 layer each epoch)."""
    def unfreeze(epoch: int) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(layer_of(name, num_layers) >= num_layers + 1 - epoch)
    return unfreeze


def count_parameters(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"
