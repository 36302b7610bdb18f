"""The training loop the three scripts share: epochs of optimizer steps, dev evaluation after each, the best
epoch kept, and the faults a long run meets (a signal, a non-finite loss, running out of GPU memory).

A run's state lives on one `Trainer`, as in minGPT: the model, its optimizer, schedule and gradient scaler,
where the run stands (`Progress`) and its log. One epoch is `Trainer.train_epoch`; one optimizer step is
`Trainer.train_step`, the course's few lines with the machinery around them named once each."""
import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
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
from training.run_log import EPOCH_LOSS, RunLog, read_records, training_speed
from training.settings import TrainSettings
from training.signals import Interrupted, StopSignals
from training.tensorboard_log import tensorboard_sink

LossFunction = Callable[[Batch], torch.Tensor]
# A dev loss (mean cross-entropy, in nats) above this means the model has blown up: no model that learned
# anything scores it (a uniform guess among GPT-2's 50,257 tokens scores 10.8, among 5 classes 1.6).
EXPLODED_LOSS = 100.0
EXPLODED_GROWTH = 10  # so does a dev loss this many times the first epoch's


class NonFiniteLoss(RuntimeError):
    pass


@dataclass(frozen=True)
class Task:
    """What a task script hands the loop: how to train on a batch and how to judge an epoch."""
    loss: LossFunction  # a batch's mean loss, the model in training mode
    evaluate: Callable[[], dict[str, Any]]  # the dev metrics after an epoch
    metric: str = "accuracy"  # the dev metric that picks the best epoch: higher is better
    on_epoch_start: Callable[[int], None] | None = None  # e.g. ULMFiT's gradual unfreezing


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
                           batches: EpochBatches, task: Task) -> RunLog:
    """Train `model` as `train` says, then load the best dev epoch's weights into it, record what the run
    achieved in its settings.json, and fold any LoRA adapters into the weights. Returns the run's log."""
    trainer = Trainer(model, run, train, precision, num_layers, task, len(batches))
    try:
        trainer.fit(batches)
    except NonFiniteLoss as error:
        raise SystemExit(f"{error}; stopping. {non_finite_advice(run, train, trainer.log.records)}") from None
    except Interrupted as interrupt:
        raise SystemExit(128 + interrupt.signum) from None  # the shell's code for death by that signal
    except torch.OutOfMemoryError:
        raise SystemExit(out_of_memory_advice(run, train, precision)) from None
    barrier()  # the main process has written best.pt
    best = load_checkpoint(run.best_checkpoint, trainer.identity, run.device)
    model.load_state_dict(best["model"])
    print(f"best dev epoch {best['epoch']}: {task.metric} {best['metrics'][task.metric]:.4f}")
    run.finish(RunResult(best_epoch=best["epoch"], metric=task.metric,
                         best_metrics={name: value for name, value in best["metrics"].items()
                                       if isinstance(value, float)},  # the numbers, which curves.png plots too
                         epochs_trained=trainer.progress.epoch, wall_seconds=trainer.progress.wall_seconds,
                         tokens_per_second=training_speed(trainer.log.records)))
    merge_lora(model)  # the adapters folded into the weights: plain GPT-2 speed at inference
    return trainer.log


def non_finite_advice(run: Run, train: TrainSettings, records: list[dict[str, Any]]) -> str:
    """How to go on after a non-finite loss: from last.pt at a lower rate, unless no epoch has finished (then
    --resume starts again) or the model last.pt holds has blown up (`blown_up`: resuming from it would diverge
    again, so the run starts again with --overwrite)."""
    gentler = f"--lr {train.lr / 10:g}" + ("" if train.clip_norm else " --clip_norm 1.0")
    if not run.last_checkpoint.is_file():
        return f"No epoch has finished, so nothing was saved: start again more gently, e.g. add --resume {gentler}"
    exploded = blown_up(records)
    if exploded:
        return (f"{run.last_checkpoint} holds a model that had already blown up ({exploded}): resuming from it would "
                f"diverge again, so start again more gently, e.g. {'drop --resume and ' if run.resume else ''}add "
                f"--overwrite {gentler}")
    return f"{run.last_checkpoint} holds the last good state: continue from it more gently, e.g. add --resume {gentler}"


def blown_up(records: list[dict[str, Any]]) -> str | None:
    """What shows that the model of the last finished epoch (the one last.pt holds) has blown up: its dev loss
    is not finite, above `EXPLODED_LOSS`, or more than `EXPLODED_GROWTH` times the first epoch's; None when it
    has not, or when the task's dev metrics hold no loss."""
    dev = [record for record in records if record["split"] == "dev" and "loss" in record]
    if not dev:
        return None
    first, last = dev[0]["loss"], dev[-1]["loss"]
    if not math.isfinite(last) or last > EXPLODED_LOSS:
        return f"its dev loss after epoch {dev[-1]['epoch']} is {last:g}"
    if last > EXPLODED_GROWTH * first:
        return (f"its dev loss after epoch {dev[-1]['epoch']}, {last:g}, is more than {EXPLODED_GROWTH} times epoch "
                f"{dev[0]['epoch']}'s, {first:g}")
    return None


def out_of_memory_advice(run: Run, train: TrainSettings, precision: str) -> str:
    smaller = f"--batch_size {max(train.batch_size // 2, 1)} --grad_accum {2 * train.grad_accum}"
    return (f"out of GPU memory while training. Add --resume --activation_checkpointing to go on from "
            f"{run.last_checkpoint} (or from the start, without it) storing fewer activations; or start again "
            f"with smaller batches: --overwrite {smaller} keeps the effective batch"
            + ("; --precision bf16 halves the activations too" if autocast_dtype(run.device, precision) is None
               else ""))


class LossesSinceRead:
    """The training losses since they were last read, summed on the device, so that a step needs no
    host-device synchronisation; `read` checks them, and whether any process was asked to stop, in one."""

    def __init__(self, device: torch.device, step: int):
        self.device = device
        self.epoch_total, self.epoch_weights = 0.0, 0.0  # every read since it was made (one epoch), on the host
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
        self.epoch_total, self.epoch_weights = self.epoch_total + total, self.epoch_weights + weights
        self.reset(step)
        return value, stops > 0

    def epoch_mean(self) -> float:
        """The mean training loss of the epoch's steps read so far (after a mid-epoch resume: since it)."""
        return self.epoch_total / max(self.epoch_weights, 1e-12)


class Trainer:
    """One run's training: the model and the task's loss and evaluation, the optimizer, schedule and gradient
    scaler, and what changes as it trains (`progress`, the log, the random state at the last step's end).
    Under torchrun every process holds one; the main one writes the files."""

    def __init__(self, model: nn.Module, run: Run, train: TrainSettings, precision: str, num_layers: int,
                 task: Task, batches_per_epoch: int):
        self.model, self.run, self.train, self.precision, self.task = model, run, train, precision, task
        self.device = run.device
        self.optimizer = make_optimizer(model, train.lr, train.weight_decay, num_layers, train.layer_lr_decay)
        steps = train.epochs * -(-batches_per_epoch // (train.grad_accum * world_size()))
        self.scheduler = make_scheduler(self.optimizer, train.scheduler, steps, int(train.warmup_ratio * steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.identity = checkpoint_identity(run.task, model)
        self.progress = Progress(world_size=world_size())
        self.forward_loss: nn.Module | LossFunction = task.loss  # DDP's wrapper of it under torchrun
        self.log: RunLog | None = None
        self.unread = LossesSinceRead(self.device, 0)  # made anew each epoch
        self.peak_memory = 0.0  # GPU memory, the epoch's peak so far
        self.boundary_rng: dict[str, Any] = {}  # the random state the next optimizer step starts from
        self.session_started, self.seconds_before = time.time(), 0.0

    def fit(self, batches: EpochBatches) -> None:
        """Train for `train.epochs`, evaluating on dev after each epoch. Keeps `best.pt` (the model at the best
        dev epoch) and `last.pt` (everything needed to resume, written after each epoch and when SIGINT or
        SIGTERM stops the run)."""
        if rank():  # dropout differs between processes; rank 0 draws what a single process would
            torch.manual_seed(torch.initial_seed() + rank())
        self.boundary_rng = rng_state()
        # Everything a resume might refuse is read before run.open() writes anything.
        resumed = self.run.resume and self.run.last_checkpoint.is_file()
        if resumed:
            self.resume()
            if self.run.best_checkpoint.is_file():  # read when training ends: a damaged one is refused now
                load_checkpoint(self.run.best_checkpoint, self.identity, torch.device("cpu"))
        self.session_started, self.seconds_before = time.time(), self.progress.wall_seconds
        records = read_records(self.run.log_file, self.progress.step) if resumed else []
        self.run.open()  # its barrier: every process has read the old log before the main one rewrites it
        self.log = RunLog(self.run.log_file, self.run.curves_file, records,
                          tensorboard_sink(self.run.directory, self.run.tensorboard, records))
        if self.run.changes:
            print("from here on: " + ", ".join(f"{flag} {before} -> {now}"
                                               for flag, (before, now) in self.run.changes.items()))
            self.log.log(split="resume", epoch=self.progress.epoch, step=self.progress.step, changed=self.run.changes)
        with StopSignals() as signals, self.saved_when_interrupted():
            while self.progress.epoch < self.train.epochs:
                if signals.agreed(self.device):
                    raise Interrupted(signals.received or signal.SIGTERM)
                if self.train.early_stopping and self.progress.bad_epochs >= self.train.early_stopping:
                    print(f"early stopping: no better dev {self.task.metric} for {self.progress.bad_epochs} epochs")
                    break
                self.train_epoch(batches, signals)
                self.boundary_rng = rng_state()
                self.end_epoch(self.task.evaluate())
                save_checkpoint(self.run.last_checkpoint, self.snapshot())
                self.log.plot()

    def resume(self) -> None:
        """Continue from last.pt: the weights, optimizer, schedule, scaler, progress and random state; the
        learning rates and decay of the settings, where --resume changed them."""
        base_lrs = list(self.scheduler.base_lrs)
        decays = [group["weight_decay"] for group in self.optimizer.param_groups]
        state = load_checkpoint(self.run.last_checkpoint, self.identity, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.run.changes:  # the checkpoint holds the old learning rates and decay: the new settings win
            set_hyperparameters(self.optimizer, self.scheduler, base_lrs, decays)
        self.progress = Progress(**state["progress"])
        if self.progress.batches_done and self.progress.world_size != world_size():
            raise SystemExit(f"{self.run.last_checkpoint} stopped mid-epoch with {self.progress.world_size} "
                             f"processes; resume it with the same number (this run has {world_size()})")
        self.progress.world_size = world_size()
        self.boundary_rng = state["rng"][rank() % len(state["rng"])]
        set_rng_state(self.boundary_rng)
        print(f"resuming {self.run.last_checkpoint} at epoch {self.progress.epoch}, batch {self.progress.batches_done}")

    @contextlib.contextmanager
    def saved_when_interrupted(self) -> Iterator[None]:
        """A signal's stop saves last.pt as of the last finished optimizer step, and says how to go on."""
        try:
            yield
        except Interrupted as interrupt:
            save_checkpoint(self.run.last_checkpoint, self.snapshot())
            self.log.plot()
            if is_main():
                print(f"\nstopped by {interrupt}: saved {self.run.last_checkpoint}; continue with --resume",
                      file=sys.stderr)
            raise

    def snapshot(self) -> dict[str, Any]:
        """Everything --resume needs, as of the last finished optimizer step."""
        # the wall time goes into the checkpoint, so a resumed run adds its sessions' time to it
        self.progress.wall_seconds = self.seconds_before + time.time() - self.session_started
        return {"identity": self.identity, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": gather_objects(self.boundary_rng), "progress": vars(self.progress).copy()}

    def train_epoch(self, batches: EpochBatches, signals: StopSignals) -> None:
        """One epoch from `progress.batches_done` on, an optimizer step per `--grad_accum` batches."""
        progress, model = self.progress, self.model
        model.train()
        if self.task.on_epoch_start:
            self.task.on_epoch_start(progress.epoch)
        if world_size() > 1:  # built each epoch: gradual unfreezing changes which parameters train
            self.forward_loss = DistributedDataParallel(
                LossModule(model, self.task.loss), device_ids=[self.device] if self.device.type == "cuda" else None)
        weighted = batches_for_this_process(batches(progress.epoch))
        started, tokens, self.peak_memory = time.time(), 0, 0.0
        # The weighted loss sum since the last read stays on the device: reading it back waits for the GPU, so
        # it is read only every --log_every steps, at the epoch's end and when a signal asks to stop.
        self.unread = LossesSinceRead(self.device, progress.step)
        bar = tqdm(weighted, initial=progress.batches_done, desc=f"train epoch {progress.epoch}", leave=False,
                   disable=not is_main())
        accumulate = self.train.grad_accum
        for start in range(progress.batches_done, len(weighted), accumulate):
            micro_batches = weighted[start:start + accumulate]
            # counted on the host, where the batches still are
            tokens += sum(int(batch["attention_mask"].sum()) * int(weight) for batch, weight in micro_batches)
            self.train_step(micro_batches)
            progress.step, progress.batches_done = progress.step + 1, start + len(micro_batches)
            self.boundary_rng.update(rng_state())
            bar.update(progress.batches_done - bar.n)
            self.read_loss_when_due(signals, bar, last=progress.batches_done == len(weighted))
        bar.close()
        self.log_epoch(time.time() - started, tokens)

    def train_step(self, micro_batches: list[tuple[Batch, float]]) -> None:
        """One optimizer step, as the course writes it: the loss's backward pass, clipping, the optimizer's and
        the schedule's steps, zeroed gradients. Around it: gradient accumulation over `micro_batches` (each
        weighted by its share of a batch), DDP's gradient sync only after the last, the fp16 scaler, and the
        loss summed on the device to be read later."""
        for index, (batch, weight) in enumerate(micro_batches):
            with self.gradient_sync(last=index == len(micro_batches) - 1):
                with autocast(self.device, self.precision):
                    loss = self.forward_loss(to_device(batch, self.device))
                self.unread.add(loss, weight)
                self.scaler.scale(loss * weight / self.train.grad_accum).backward()
        if self.train.clip_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.train.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Under torchrun, processes average gradients only in the backward pass of a step's last batch."""
        return self.forward_loss.no_sync() if world_size() > 1 and not last else contextlib.nullcontext()

    def read_loss_when_due(self, signals: StopSignals, bar: tqdm, last: bool) -> None:
        """Every --log_every steps, at the epoch's end, and when a signal asks one process to stop: read the
        losses since the last read (which waits for the device), log them, and stop if asked."""
        progress = self.progress
        logs = progress.step % self.train.log_every == 0
        # one process may stop at once; several must agree first, which they do at the same steps
        asked = signals.received is not None and world_size() == 1
        if not (logs or asked or last):
            return
        value, stop = self.unread.read(signals, progress.epoch, progress.step)
        if logs:
            record = {"loss": value, "lr": self.scheduler.get_last_lr()[0]}
            if self.device.type == "cuda":  # the peak since the last line, then start a new count
                record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                torch.cuda.reset_peak_memory_stats(self.device)
                self.peak_memory = max(self.peak_memory, record["peak_memory_gb"])
            self.log.log(split="train", epoch=progress.epoch, step=progress.step, **record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "lr"})
        if stop:
            raise Interrupted(signals.received or signal.SIGTERM)

    def log_epoch(self, seconds: float, tokens: int) -> None:
        """The epoch's time, training tokens per second over every process, its mean training loss, and peak GPU
        memory."""
        if world_size() > 1:
            tokens = int(all_reduce_sum(torch.tensor([tokens], device=self.device)).item())
        record = {"split": "epoch", "epoch": self.progress.epoch, "step": self.progress.step, "seconds": seconds,
                  "tokens_per_second": tokens / max(seconds, 1e-9), EPOCH_LOSS: self.unread.epoch_mean()}
        if self.device.type == "cuda":
            record["peak_memory_gb"] = max(self.peak_memory, torch.cuda.max_memory_allocated(self.device) / 2**30)
        self.log.log(**record)

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        """Log the dev metrics, save `best.pt` and the top epochs, and count epochs without improvement."""
        progress, score = self.progress, metrics[self.task.metric]
        self.log.log(split="dev", epoch=progress.epoch, step=progress.step, **metrics)
        print(f"epoch {progress.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                      if isinstance(v, float)))
        if score > progress.best_score:
            progress.best_score, progress.bad_epochs = score, 0
            save_checkpoint(self.run.best_checkpoint, {"identity": self.identity, "model": self.model.state_dict(),
                                                       "epoch": progress.epoch, "metrics": metrics})
        else:
            progress.bad_epochs += 1
        if self.train.keep_best > 1:
            self.keep_top_epochs(score)
        progress.epoch, progress.batches_done = progress.epoch + 1, 0

    def keep_top_epochs(self, score: float) -> None:
        """Save this epoch's model as epoch{N}.pt if it is among the --keep_best best so far; drop the one it
        displaces."""
        progress, keep = self.progress, self.train.keep_best
        progress.top = sorted(progress.top + [[score, progress.epoch]], reverse=True)
        if [score, progress.epoch] in progress.top[:keep]:
            save_checkpoint(self.run.epoch_checkpoint(progress.epoch),
                            {"identity": self.identity, "model": self.model.state_dict(), "epoch": progress.epoch})
        if is_main():
            for _, dropped in progress.top[keep:]:
                self.run.epoch_checkpoint(int(dropped)).unlink(missing_ok=True)
        del progress.top[keep:]
