"""What the task scripts share: seeding, device and precision, optimizer groups, schedulers, checkpoints,
the training loop, evaluation batches, and each run's metrics log and learning curves."""
import argparse
import contextlib
import json
import math
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `last.pt` holds the state to resume from."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def choose_device(use_gpu: bool, precision: str = "fp32") -> torch.device:
    """The device to train on. Under torchrun this also joins the process group (NCCL on GPU, gloo on
    CPU): each process takes the GPU of its LOCAL_RANK, and only rank 0 prints."""
    if use_gpu and not torch.cuda.is_available():
        raise SystemExit(f"--use_gpu was given but PyTorch {torch.__version__} sees no CUDA GPU on this machine; "
                         "run without --use_gpu to train on the CPU")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpu else torch.device("cpu")
    if precision != "fp32" and device.type != "cuda":
        raise SystemExit(f"--precision {precision} is for GPUs; use --use_gpu or --precision fp32")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise SystemExit("this GPU has no bfloat16 support; use --precision fp16")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if use_gpu:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_gpu else "gloo", device_id=device if use_gpu else None)
        if not is_main():
            sys.stdout = open(os.devnull, "w")
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes logs, checkpoints and predictions (rank 0, or the only process)."""
    return rank() == 0


def gather_objects(local: Any) -> list[Any]:
    """Every process's `local`, in rank order, on every process."""
    if world_size() == 1:
        return [local]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(values)
    return values


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def share(items: list[Any]) -> list[Any]:
    """This process's part of an evaluation under torchrun: every world_size-th item from its rank."""
    return items[rank()::world_size()]


def write_on_main(write: Callable[..., None], path: Path, *contents: Any) -> None:
    """`write(path, *contents)` in the main process only; every process returns once the file is there."""
    if is_main():
        write(path, *contents)
        print(f"wrote {path}")
    barrier()


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
    """Write to a temporary file and rename it, so a crash never leaves a half-written checkpoint.
    Only the main process writes."""
    if not is_main():
        return
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
    if torch.cuda.is_available():  # this process's GPU only: touching the others would allocate on them
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class RunLog:
    """A run's metrics, one JSON object a line in `metrics.jsonl`, and its learning curves in `curves.png`.
    Every process keeps the records; only the main process writes the files."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path, self.picture = run_dir / "metrics.jsonl", run_dir / "curves.png"
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            # Lines logged after the checkpoint we resume from will be logged again.
            with open(self.path) as f:
                self.records = [r for r in map(json.loads, f) if r.get("step", 0) <= resume_step]
        barrier()  # every process has read the old log before the main one rewrites it
        if is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in self.records)

    def log(self, **record: Any) -> None:
        self.records.append(record)
        if is_main():
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        if not is_main():
            return
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
    batches_done: int = 0  # of this process's share of the current epoch
    step: int = 0  # optimizer steps so far
    best: float = -math.inf
    bad_epochs: int = 0
    top: list[list[float]] = field(default_factory=list)  # [dev metric, epoch] of the epochs kept
    world_size: int = 1  # processes that shared the epoch


class StopSignals:
    """While active, the first SIGINT or SIGTERM asks training to stop after the current optimizer step,
    where every process holds a consistent state to save; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        if is_main():
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this optimizer step "
                  "(Ctrl-C again to quit without it)", file=sys.stderr)

    def agreed(self, device: torch.device) -> bool:
        """Whether any process received a signal; every process must ask at the same point."""
        return all_reduce_sum(torch.tensor([float(self.received is not None)], device=device)).item() > 0


class LossModule(nn.Module):
    """A loss closure as a module, so that DistributedDataParallel's forward, which arms its gradient
    averaging, runs it."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(batch)


def shard(batches: list[Any]) -> list[tuple[Any, float]]:
    """This process's batches with their loss weights: every world_size-th batch, starting at its rank.
    Processes short of a batch at the end repeat one with weight 0, so all take the same number of steps,
    and N processes with gradient accumulation g train exactly as one process with N * g."""
    per_process = -(-len(batches) // world_size())
    return [(batches[i], 1.0) if i < len(batches) else (batches[i % len(batches)], 0.0)
            for i in range(rank(), per_process * world_size(), world_size())]


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
        settings: TrainSettings, run: Run, train_batches: Callable[[int], list[dict[str, torch.Tensor]]],
        loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], evaluate: Callable[[], dict[str, Any]],
        on_epoch_start: Callable[[int], None] | None = None) -> RunLog:
    """Train for `settings.epochs`, evaluating on dev after each epoch. Keeps `best.pt` (the model at the
    best dev epoch) and `last.pt` (everything needed to resume, written after each epoch and when SIGINT
    or SIGTERM stops the run). Under torchrun every process runs this; the main one writes the files."""
    scaler = torch.amp.GradScaler(run.device.type, enabled=settings.precision == "fp16")
    progress = Progress(world_size=world_size())
    if rank():  # dropout differs between processes; rank 0 draws what a single process would
        torch.manual_seed(torch.initial_seed() + rank())
    boundary_rng = rng_state()

    def snapshot() -> dict[str, Any]:
        return {"identity": run.identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": gather_objects(boundary_rng), "progress": vars(progress).copy()}

    if run.resume:
        state = load_checkpoint(run.last, run.identity, run.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        if progress.batches_done and progress.world_size != world_size():
            raise SystemExit(f"{run.last} stopped mid-epoch with {progress.world_size} processes; resume it "
                             f"with the same number (this run has {world_size()})")
        progress.world_size = world_size()
        boundary_rng = state["rng"][rank() % len(state["rng"])]
        set_rng_state(boundary_rng)
        print(f"resuming {run.last} at epoch {progress.epoch}, batch {progress.batches_done}")
    log = RunLog(run.run_dir, resume_step=progress.step if run.resume else None)

    with StopSignals() as signals:
        try:
            while progress.epoch < settings.epochs:
                if signals.agreed(run.device):
                    raise Interrupted(signals.received or signal.SIGTERM)
                if settings.early_stopping and progress.bad_epochs >= settings.early_stopping:
                    print(f"early stopping: no better dev {settings.metric} for {progress.bad_epochs} epochs")
                    break
                train_epoch(model, optimizer, scheduler, scaler, settings, run, train_batches, loss_fn,
                            on_epoch_start, progress, log, boundary_rng, signals)
                boundary_rng = rng_state()
                end_epoch(model, settings, run, progress, log, evaluate())
                save_checkpoint(run.last, snapshot())
                log.plot()
        except Interrupted as interrupt:
            save_checkpoint(run.last, snapshot())
            log.plot()
            if is_main():
                print(f"\nstopped by {interrupt}: saved {run.last}; continue with --resume", file=sys.stderr)
            raise
    return log


def end_epoch(model: nn.Module, settings: TrainSettings, run: Run, progress: Progress, log: RunLog,
              metrics: dict[str, Any]) -> None:
    """Log the dev metrics, save `best.pt` and the top epochs, and count epochs without improvement."""
    log.log(split="dev", epoch=progress.epoch, step=progress.step, **metrics)
    print(f"epoch {progress.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    if metrics[settings.metric] > progress.best:
        progress.best, progress.bad_epochs = metrics[settings.metric], 0
        save_checkpoint(run.best, {"identity": run.identity, "model": model.state_dict(),
                                   "epoch": progress.epoch, "metrics": metrics})
    else:
        progress.bad_epochs += 1
    if settings.keep_best > 1:
        keep_top_epochs(run, progress, metrics[settings.metric], model, settings.keep_best)
    progress.epoch, progress.batches_done = progress.epoch + 1, 0


def keep_top_epochs(run: Run, progress: Progress, score: float, model: nn.Module, keep: int) -> None:
    """Save this epoch's model as epoch{N}.pt if it is among the `keep` best so far; drop the one it displaces."""
    progress.top = sorted(progress.top + [[score, progress.epoch]], reverse=True)
    if [score, progress.epoch] in progress.top[:keep]:
        save_checkpoint(run.run_dir / f"epoch{progress.epoch}.pt",
                        {"identity": run.identity, "model": model.state_dict(), "epoch": progress.epoch})
    if is_main():
        for _, dropped in progress.top[keep:]:
            (run.run_dir / f"epoch{int(dropped)}.pt").unlink(missing_ok=True)
    del progress.top[keep:]


def train_epoch(model, optimizer, scheduler, scaler, settings, run, train_batches, loss_fn, on_epoch_start,
                progress: Progress, log: RunLog, boundary_rng: dict[str, Any], signals: StopSignals) -> None:
    """One epoch from `progress.batches_done` on. `boundary_rng` is updated in place after each optimizer
    step, so an interruption saves the random state that the next batch will start from."""
    model.train()
    if on_epoch_start:
        on_epoch_start(progress.epoch)
    step_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor] = loss_fn
    if world_size() > 1:  # built each epoch: gradual unfreezing changes which parameters train
        step_loss = DistributedDataParallel(LossModule(model, loss_fn),
                                            device_ids=[run.device] if run.device.type == "cuda" else None)
    batches = shard(train_batches(progress.epoch))
    started, tokens, losses, stop, peak = time.time(), 0, [], False, 0.0
    bar = tqdm(batches, initial=progress.batches_done, desc=f"train epoch {progress.epoch}", leave=False,
               disable=not is_main())
    for index, (batch, weight) in enumerate(batches):
        if index < progress.batches_done:
            continue
        ends_step = (index + 1) % settings.grad_accum == 0 or index + 1 == len(batches)
        tokens += int(batch["attention_mask"].sum()) * int(weight)
        no_sync = step_loss.no_sync() if world_size() > 1 and not ends_step else contextlib.nullcontext()
        with no_sync:
            with autocast(run.device, settings.precision):
                loss = step_loss(to_device(batch, run.device))
            # One all-reduce per batch: the loss over all processes (a NaN anywhere stops every one) and
            # whether any process has been asked to stop.
            flags = torch.tensor([weight, float(signals.received is not None)], device=run.device)
            stats = all_reduce_sum(torch.cat([loss.detach().float().reshape(1) * weight, flags]))
            loss_sum, weights, stops = stats.tolist()
            value = loss_sum / weights
            if not math.isfinite(value):
                raise NonFiniteLoss(f"the training loss is {value} at epoch {progress.epoch}, batch {index} "
                                    f"(optimizer step {progress.step}); stopping. {run.last} holds the last good "
                                    "state: lower --lr or set --clip_norm, then continue with --resume")
            scaler.scale(loss * weight / settings.grad_accum).backward()
        losses.append(value)
        stop = stop or stops > 0
        if not ends_step:
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
            record = {"loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0]}
            if run.device.type == "cuda":  # the peak since the last line, then start a new count
                record["peak_memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
                torch.cuda.reset_peak_memory_stats(run.device)
                peak = max(peak, record["peak_memory_gb"])
            log.log(split="train", epoch=progress.epoch, step=progress.step, **record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "lr"})
            losses = []
        if stop:
            raise Interrupted(signals.received or signal.SIGTERM)
    bar.close()
    elapsed = time.time() - started
    tokens = int(all_reduce_sum(torch.tensor([tokens], device=run.device)).item())
    record = {"split": "epoch", "epoch": progress.epoch, "step": progress.step, "seconds": elapsed,
              "tokens_per_second": tokens / max(elapsed, 1e-9)}
    if run.device.type == "cuda":
        record["peak_memory_gb"] = max(peak, torch.cuda.max_memory_allocated(run.device) / 2**30)
    log.log(**record)


def train_and_restore_best(model: nn.Module, args: argparse.Namespace, lr: float, num_layers: int, run: Run,
                           train_batches: Callable[[int], list[dict[str, torch.Tensor]]], batches_per_epoch: int,
                           loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                           evaluate: Callable[[], dict[str, Any]], metric: str = "accuracy",
                           on_epoch_start: Callable[[int], None] | None = None) -> tuple[dict[str, Any], RunLog]:
    """Build the optimizer and schedule the flags ask for, train, and load the best dev epoch's weights.
    Returns the best checkpoint's state and the run's log."""
    optimizer = make_optimizer(model, lr, args.weight_decay, num_layers, args.layer_lr_decay)
    steps = args.epochs * -(-batches_per_epoch // (args.grad_accum * world_size()))
    scheduler = make_scheduler(optimizer, args.scheduler, steps, int(args.warmup_ratio * steps))
    settings = TrainSettings(args.epochs, args.grad_accum, args.clip_norm, args.precision, args.early_stopping,
                             metric, keep_best=args.keep_best)
    try:
        log = fit(model, optimizer, scheduler, settings, run, train_batches, loss_fn, evaluate, on_epoch_start)
    except NonFiniteLoss as error:
        raise SystemExit(str(error)) from None
    except Interrupted as interrupt:
        raise SystemExit(128 + interrupt.signum) from None  # the shell's code for death by that signal
    except torch.OutOfMemoryError:
        raise SystemExit(out_of_memory_advice(args, run)) from None
    barrier()  # the main process has written best.pt
    best = load_checkpoint(run.best, run.identity, run.device)
    model.load_state_dict(best["model"])
    print(f"best dev epoch {best['epoch']}: {metric} {best['metrics'][metric]:.4f}")
    return best, log


def out_of_memory_advice(args: argparse.Namespace, run: Run) -> str:
    smaller = (f"--batch_size {max(args.batch_size // 2, 1)} --grad_accum {2 * args.grad_accum}" if args.batch_size
               else f"half the default --batch_size with --grad_accum {2 * args.grad_accum}")
    return (f"out of GPU memory while training. Try {smaller}: the same effective batch in smaller pieces. "
            "--precision bf16 and --activation_checkpointing save memory too. "
            f"{run.last} holds the last finished epoch: add --resume to continue from it")


@torch.no_grad()
def predict(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device, precision: str,
            score: Callable[[dict[str, torch.Tensor]], torch.Tensor], size: int, desc: str) -> torch.Tensor:
    """`score(batch)` for every example, in dataset order (the batches may be sorted by length). Under
    torchrun each process scores its share of the batches and every process gets all the scores."""
    model.eval()
    scored = []
    for batch in tqdm(share(batches), desc=desc, leave=False, disable=not is_main()):
        with autocast(device, precision):
            scored.append((batch["indices"], score(to_device(batch, device)).float().cpu()))
    scored = [pair for shard_scores in gather_objects(scored) for pair in shard_scores]
    outputs = torch.empty((size, *scored[0][1].shape[1:]))
    for indices, scores in scored:
        outputs[indices] = scores
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
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="autocast dtype on GPU: bf16 where supported, else fp16 (with a gradient scaler)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each GPT-2 layer")
    parser.add_argument("--activation_checkpointing", action="store_true",
                        help="recompute layer activations in the backward pass to save memory "
                             "(for gpt2-large and gpt2-xl)")
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
    """The GPT-2 the flags ask for: pre-trained from a local directory or the hub, or randomly initialised;
    compiled and with activation checkpointing if asked."""
    if args.init == "random":
        if args.model_path:
            config = GPT2Config.from_hf_dict(hf_checkpoint.read_config(hf_checkpoint.resolve_checkpoint(args.model_path)))
        else:
            config = GPT2Config.from_preset(args.model_size)
        model = GPT2Model(config)
    else:
        model = GPT2Model.from_pretrained(args.model_path or args.model_size)
    model.activation_checkpointing = args.activation_checkpointing
    if args.compile:
        model.compile_layers()
    return model


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
