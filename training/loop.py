"""The training loop the three scripts share: epochs of optimizer steps, dev evaluation after each, the best
epoch kept, and the faults a long run meets (a signal, a non-finite loss, running out of GPU memory)."""
import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from datasets import EpochBatches
from modules.lora import merge_lora
from training.checkpoints import checkpoint_identity, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.device import autocast, autocast_dtype, to_device
from training.distributed import (Batch, all_reduce_sum, barrier, batches_for_this_process, gather_objects, is_main,
                                  rank, world_size)
from training.optimization import make_optimizer, make_scheduler, set_hyperparameters
from training.run_dir import Run, RunResult
from training.run_log import RunLog, read_records, training_speed
from training.settings import TrainSettings
from training.signals import Interrupted, StopSignals

LossFunction = Callable[[Batch], torch.Tensor]


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Progress:
    epoch: int = 0
    batches_done: int = 0  # of this process's share of the current epoch
    step: int = 0  # optimizer steps so far
    best_score: float = -math.inf  # the best epoch's dev metric
    bad_epochs: int = 0
    top: list[list[float]] = field(default_factory=list)  # [dev metric, epoch] of the epochs kept
    world_size: int = 1  # processes that shared the epoch
    wall_seconds: float = 0.0  # training and dev evaluation so far, over every session of the run


class LossModule(nn.Module):
    """A loss closure as a module, so that DistributedDataParallel's forward, which arms its gradient
    averaging, runs it."""

    def __init__(self, model: nn.Module, loss_fn: LossFunction):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.loss_fn(batch)


def train_and_restore_best(model: nn.Module, run: Run, train: TrainSettings, precision: str, num_layers: int,
                           batches: EpochBatches, loss_fn: LossFunction, evaluate: Callable[[], dict[str, Any]],
                           metric: str = "accuracy", on_epoch_start: Callable[[int], None] | None = None) -> RunLog:
    """Build the optimizer and schedule the settings ask for, train, then load the best dev epoch's weights
    into `model`, record what the run achieved in its settings.json, and fold any LoRA adapters into the
    weights. Returns the run's log."""
    optimizer = make_optimizer(model, train.lr, train.weight_decay, num_layers, train.layer_lr_decay)
    steps = train.epochs * -(-len(batches) // (train.grad_accum * world_size()))
    scheduler = make_scheduler(optimizer, train.scheduler, steps, int(train.warmup_ratio * steps))
    identity = checkpoint_identity(run.task, model)
    try:
        log, progress = fit(model, optimizer, scheduler, run, train, precision, identity, batches, loss_fn, evaluate,
                            metric, on_epoch_start)
    except NonFiniteLoss as error:
        raise SystemExit(f"{error}; stopping. {non_finite_advice(run, train)}") from None
    except Interrupted as interrupt:
        raise SystemExit(128 + interrupt.signum) from None  # the shell's code for death by that signal
    except torch.OutOfMemoryError:
        raise SystemExit(out_of_memory_advice(run, train, precision)) from None
    barrier()  # the main process has written best.pt
    best = load_checkpoint(run.best_checkpoint, identity, run.device)
    model.load_state_dict(best["model"])
    print(f"best dev epoch {best['epoch']}: {metric} {best['metrics'][metric]:.4f}")
    run.finish(RunResult(best_epoch=best["epoch"], metric=metric,
                         best_metrics={name: value for name, value in best["metrics"].items()
                                       if isinstance(value, float)},  # the numbers, which curves.png plots too
                         epochs_trained=progress.epoch, wall_seconds=progress.wall_seconds,
                         tokens_per_second=training_speed(log.records)))
    merge_lora(model)  # the adapters folded into the weights: plain GPT-2 speed at inference
    return log


def non_finite_advice(run: Run, train: TrainSettings) -> str:
    lower = f"--resume --lr {train.lr / 10:g}" + ("" if train.clip_norm else " --clip_norm 1.0")
    if run.last_checkpoint.is_file():
        return f"{run.last_checkpoint} holds the last good state: continue from it more gently, e.g. add {lower}"
    return f"No epoch has finished, so nothing was saved: start again more gently, e.g. add {lower}"


def out_of_memory_advice(run: Run, train: TrainSettings, precision: str) -> str:
    smaller = f"--batch_size {max(train.batch_size // 2, 1)} --grad_accum {2 * train.grad_accum}"
    return (f"out of GPU memory while training. Add --resume --activation_checkpointing to go on from "
            f"{run.last_checkpoint} (or from the start, without it) storing fewer activations; or start again "
            f"with smaller batches: --overwrite {smaller} keeps the effective batch"
            + ("; --precision bf16 halves the activations too" if autocast_dtype(run.device, precision) is None
               else ""))


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
        run: Run, train: TrainSettings, precision: str, identity: dict[str, Any], batches: EpochBatches,
        loss_fn: LossFunction, evaluate: Callable[[], dict[str, Any]], metric: str,
        on_epoch_start: Callable[[int], None] | None) -> tuple[RunLog, Progress]:
    """Train for `train.epochs`, evaluating on dev after each epoch. Keeps `best.pt` (the model at the best
    dev epoch) and `last.pt` (everything needed to resume, written after each epoch and when SIGINT or
    SIGTERM stops the run). Under torchrun every process runs this; the main one writes the files. Returns
    the log and the progress at the end."""
    scaler = torch.amp.GradScaler(run.device.type, enabled=precision == "fp16")
    progress = Progress(world_size=world_size())
    if rank():  # dropout differs between processes; rank 0 draws what a single process would
        torch.manual_seed(torch.initial_seed() + rank())
    boundary_rng = rng_state()

    def snapshot() -> dict[str, Any]:
        # the wall time goes into the checkpoint, so a resumed run adds its sessions' time to it
        progress.wall_seconds = seconds_before + time.time() - session_started
        return {"identity": identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": gather_objects(boundary_rng), "progress": vars(progress).copy()}

    # Everything a resume might refuse is read before run.open() writes anything.
    resumed = run.resume and run.last_checkpoint.is_file()
    if resumed:
        base_lrs, decays = list(scheduler.base_lrs), [group["weight_decay"] for group in optimizer.param_groups]
        state = load_checkpoint(run.last_checkpoint, identity, run.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if run.changes:  # the checkpoint holds the old learning rates and decay: the new settings win
            set_hyperparameters(optimizer, scheduler, base_lrs, decays)
        progress = Progress(**state["progress"])
        if progress.batches_done and progress.world_size != world_size():
            raise SystemExit(f"{run.last_checkpoint} stopped mid-epoch with {progress.world_size} processes; resume "
                             f"it with the same number (this run has {world_size()})")
        progress.world_size = world_size()
        boundary_rng = state["rng"][rank() % len(state["rng"])]
        set_rng_state(boundary_rng)
        print(f"resuming {run.last_checkpoint} at epoch {progress.epoch}, batch {progress.batches_done}")
    session_started, seconds_before = time.time(), progress.wall_seconds
    records = read_records(run.log_file, progress.step) if resumed else []
    run.open()  # its barrier: every process has read the old log before the main one rewrites it
    log = RunLog(run.log_file, run.curves_file, records)
    if run.changes:
        print("from here on: " + ", ".join(f"{flag} {before} -> {now}" for flag, (before, now) in run.changes.items()))
        log.log(split="resume", epoch=progress.epoch, step=progress.step, changed=run.changes)

    with StopSignals() as signals:
        try:
            while progress.epoch < train.epochs:
                if signals.agreed(run.device):
                    raise Interrupted(signals.received or signal.SIGTERM)
                if train.early_stopping and progress.bad_epochs >= train.early_stopping:
                    print(f"early stopping: no better dev {metric} for {progress.bad_epochs} epochs")
                    break
                train_epoch(model, optimizer, scheduler, scaler, run, train, precision, batches, loss_fn,
                            on_epoch_start, progress, log, boundary_rng, signals)
                boundary_rng = rng_state()
                end_epoch(model, run, train, identity, metric, progress, log, evaluate())
                save_checkpoint(run.last_checkpoint, snapshot())
                log.plot()
        except Interrupted as interrupt:
            save_checkpoint(run.last_checkpoint, snapshot())
            log.plot()
            if is_main():
                print(f"\nstopped by {interrupt}: saved {run.last_checkpoint}; continue with --resume", file=sys.stderr)
            raise
    return log, progress


def end_epoch(model: nn.Module, run: Run, train: TrainSettings, identity: dict[str, Any], metric: str,
              progress: Progress, log: RunLog, metrics: dict[str, Any]) -> None:
    """Log the dev metrics, save `best.pt` and the top epochs, and count epochs without improvement."""
    log.log(split="dev", epoch=progress.epoch, step=progress.step, **metrics)
    print(f"epoch {progress.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    if metrics[metric] > progress.best_score:
        progress.best_score, progress.bad_epochs = metrics[metric], 0
        save_checkpoint(run.best_checkpoint, {"identity": identity, "model": model.state_dict(),
                                              "epoch": progress.epoch, "metrics": metrics})
    else:
        progress.bad_epochs += 1
    if train.keep_best > 1:
        keep_top_epochs(run, identity, progress, metrics[metric], model, train.keep_best)
    progress.epoch, progress.batches_done = progress.epoch + 1, 0


def keep_top_epochs(run: Run, identity: dict[str, Any], progress: Progress, score: float, model: nn.Module,
                    keep: int) -> None:
    """Save this epoch's model as epoch{N}.pt if it is among the `keep` best so far; drop the one it displaces."""
    progress.top = sorted(progress.top + [[score, progress.epoch]], reverse=True)
    if [score, progress.epoch] in progress.top[:keep]:
        save_checkpoint(run.epoch_checkpoint(progress.epoch),
                        {"identity": identity, "model": model.state_dict(), "epoch": progress.epoch})
    if is_main():
        for _, dropped in progress.top[keep:]:
            run.epoch_checkpoint(int(dropped)).unlink(missing_ok=True)
    del progress.top[keep:]


class LossesSinceRead:
    """The training losses since they were last read, summed on the device, so that a step needs no
    host-device synchronisation; `read` checks them, and whether any process was asked to stop, in one."""

    def __init__(self, device: torch.device, step: int):
        self.device = device
        self.reset(step)

    def reset(self, step: int) -> None:
        self.first_step = step + 1  # the first optimizer step whose losses are unread
        self.total, self.weights = torch.zeros((), dtype=torch.float64, device=self.device), 0.0

    def add(self, loss: torch.Tensor, weight: float) -> None:
        self.total += loss.detach().double() * weight
        self.weights += weight

    def read(self, signals: StopSignals, epoch: int, step: int) -> tuple[float, bool]:
        """(mean loss over every process since the last read, whether any process was asked to stop); a
        non-finite loss stops training, naming the steps it was in."""
        flags = torch.tensor([self.weights, float(signals.received is not None)], dtype=torch.float64,
                             device=self.device)
        total, weights, stops = all_reduce_sum(torch.cat([self.total.reshape(1), flags])).tolist()
        value = total / max(weights, 1e-12)
        if not math.isfinite(value):
            steps = f"step {step}" if step == self.first_step else f"steps {self.first_step}-{step}"
            raise NonFiniteLoss(f"the training loss is {value} at epoch {epoch}, optimizer {steps} (the loss is "
                                "read every --log_every steps)")
        self.reset(step)
        return value, stops > 0


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                scaler: torch.amp.GradScaler, run: Run, train: TrainSettings, precision: str, batches: EpochBatches,
                loss_fn: LossFunction, on_epoch_start: Callable[[int], None] | None, progress: Progress, log: RunLog,
                boundary_rng: dict[str, Any], signals: StopSignals) -> None:
    """One epoch from `progress.batches_done` on. `boundary_rng` is updated in place after each optimizer
    step, so an interruption saves the random state that the next batch will start from."""
    model.train()
    if on_epoch_start:
        on_epoch_start(progress.epoch)
    step_loss: LossFunction = loss_fn
    if world_size() > 1:  # built each epoch: gradual unfreezing changes which parameters train
        step_loss = DistributedDataParallel(LossModule(model, loss_fn),
                                            device_ids=[run.device] if run.device.type == "cuda" else None)
    weighted = batches_for_this_process(batches(progress.epoch))
    started, tokens, peak = time.time(), 0, 0.0
    # The weighted loss sum since the last read stays on the device: reading it back waits for the GPU, so
    # it is read only every --log_every steps, at the epoch's end and when a signal asks to stop.
    unread = LossesSinceRead(run.device, progress.step)
    bar = tqdm(weighted, initial=progress.batches_done, desc=f"train epoch {progress.epoch}", leave=False,
               disable=not is_main())
    for index, (batch, weight) in enumerate(weighted):
        if index < progress.batches_done:
            continue
        ends_step = (index + 1) % train.grad_accum == 0 or index + 1 == len(weighted)
        tokens += int(batch["attention_mask"].sum()) * int(weight)  # on the host: the batch is still there
        no_sync = step_loss.no_sync() if world_size() > 1 and not ends_step else contextlib.nullcontext()
        with no_sync:
            with autocast(run.device, precision):
                loss = step_loss(to_device(batch, run.device))
            unread.add(loss, weight)
            scaler.scale(loss * weight / train.grad_accum).backward()
        if not ends_step:
            continue
        if train.clip_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step, progress.batches_done = progress.step + 1, index + 1
        boundary_rng.update(rng_state())
        bar.update(index + 1 - bar.n)
        logs = progress.step % train.log_every == 0
        # one process may stop at once; several must agree first, which they do at the same steps
        asked = signals.received is not None and world_size() == 1
        if not (logs or asked or index + 1 == len(weighted)):
            continue
        value, stop = unread.read(signals, progress.epoch, progress.step)
        if logs:
            record = {"loss": value, "lr": scheduler.get_last_lr()[0]}
            if run.device.type == "cuda":  # the peak since the last line, then start a new count
                record["peak_memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
                torch.cuda.reset_peak_memory_stats(run.device)
                peak = max(peak, record["peak_memory_gb"])
            log.log(split="train", epoch=progress.epoch, step=progress.step, **record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "lr"})
        if stop:
            raise Interrupted(signals.received or signal.SIGTERM)
    bar.close()
    elapsed = time.time() - started
    if world_size() > 1:
        tokens = int(all_reduce_sum(torch.tensor([tokens], device=run.device)).item())
    record = {"split": "epoch", "epoch": progress.epoch, "step": progress.step, "seconds": elapsed,
              "tokens_per_second": tokens / max(elapsed, 1e-9)}
    if run.device.type == "cuda":
        record["peak_memory_gb"] = max(peak, torch.cuda.max_memory_allocated(run.device) / 2**30)
    log.log(**record)
