"""Launching and supervising a sweep's runs: each task script in a process of its own, one at a time on each
GPU, and every run under way stopped cleanly (it saves its last checkpoint) when a run fails or a signal
stops the sweep."""
import contextlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tools.sweep_plan import ROOT, PlannedRun
from tools.sweep_spec import TaskScript


class SweepStopped(Exception):
    """The sweep ended before its last run: a run failed, or a signal stopped it. `status` is the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def start_run(run: PlannedRun, script: TaskScript, device: str | None, lock_fd: int) -> subprocess.Popen:
    """Start the script on `run`'s flags (on GPU `device` alone, if given), its output appended to the run's
    sweep.log. In a session of its own, so that a Ctrl-C reaches the sweep only, which then stops the run
    cleanly (SIGTERM: it saves its last checkpoint)."""
    run.directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, script.file, *run.argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"} | ({"CUDA_VISIBLE_DEVICES": device} if device is not None else {})
    with open(run.log_file, "a") as log:
        prefix = "" if device is None else f"CUDA_VISIBLE_DEVICES={device} "
        log.write(f"$ {prefix}{shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=(lock_fd,))


class Launcher:
    """Starts runs and keeps the ones under way, so that a sweep that stops can stop them cleanly first."""

    def __init__(self, script: TaskScript, lock_fd: int):
        self.script, self.lock_fd = script, lock_fd
        self.running: set[subprocess.Popen] = set()
        self.guard, self.stopping = threading.Lock(), False

    def start(self, run: PlannedRun, device: str | None = None) -> subprocess.Popen:
        with self.guard:
            if self.stopping:
                raise SweepStopped(f"{run.name} was not started: the sweep is stopping", 1)
            tqdm.write(f"{run.name}: running (log: {run.log_file})")
            process = start_run(run, self.script, device, self.lock_fd)
            self.running.add(process)
            return process

    def wait(self, process: subprocess.Popen) -> int:
        status = process.wait()
        with self.guard:
            self.running.discard(process)
        return status

    def run(self, run: PlannedRun, device: str | None = None) -> int:
        """Start `run` and wait for it. After a failure no run starts: the sweep stops."""
        status = self.wait(self.start(run, device))
        if status:
            with self.guard:
                self.stopping = True
        return status

    def stop(self) -> None:
        """SIGTERM to every run under way: each saves its last checkpoint after the optimizer step under way
        and exits. A Ctrl-C while they do makes them quit at once instead, as a second Ctrl-C does a script."""
        with self.guard:
            self.stopping, running = True, list(self.running)
        for process in running:
            process.send_signal(signal.SIGTERM)
        try:
            for process in running:
                process.wait()
        except KeyboardInterrupt:
            for process in running:
                process.send_signal(signal.SIGINT)
            for process in running:
                process.wait()


class Terminated(Exception):
    """The sweep received SIGTERM."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def runs_stopped_on_exit(launcher: Launcher) -> Iterator[None]:
    """Whatever ends the sweep early (Ctrl-C, SIGTERM, a failed run) stops the runs under way cleanly first, so
    that the same command continues them. A signal ends the sweep with that signal's exit status."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except BaseException as error:
        launcher.stop()
        if isinstance(error, KeyboardInterrupt | Terminated):
            signum = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
            raise SweepStopped(f"stopped by {signum.name}: the runs under way saved their state; the same command "
                               "continues the sweep", 128 + signum) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_failed(run: PlannedRun, status: int) -> SweepStopped:
    """The one line that ends a sweep when a run fails: the run, how it ended, its last line, its log."""
    how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"failed (exit status {status})"
    last = last_line(run.log_file)
    return SweepStopped(f"error: run {run.name} {how}{': ' + last if last else ''}; its log: {run.log_file}", 1)


def last_line(path: Path) -> str:
    """The last line a log shows (after a progress bar's last carriage return), '' if none."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = [line.split("\r")[-1].strip() for line in f.read().decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def gpus_for(runs: list[PlannedRun]) -> list[str | None]:
    """The devices runs take turns on: with several GPUs and runs that use one, each GPU (one run at a time on
    each); otherwise one after another wherever the script puts them."""
    count = torch.cuda.device_count()
    if count < 2 or not runs or not all(run.use_gpu for run in runs):
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[:count] if visible else [str(index) for index in range(count)]


def finish_runs(runs: list[PlannedRun], launcher: Launcher, devices: list[str | None]) -> Iterator[PlannedRun]:
    """Run each of `runs`, one at a time on each of `devices` (None: wherever the script puts it), yielding
    each as it finishes; a failed run ends them (see `runs_stopped_on_exit` for the runs under way then)."""
    free: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    for device in devices:
        free.put(device)

    def run_on_a_free_device(run: PlannedRun) -> int:
        device = free.get()
        try:
            return launcher.run(run, device)
        finally:
            free.put(device)

    pool = ThreadPoolExecutor(max_workers=len(devices))
    try:
        futures = {pool.submit(run_on_a_free_device, run): run for run in runs}
        for future in as_completed(futures):
            run, status = futures[future], future.result()
            if status:
                raise run_failed(run, status)
            yield run
    finally:  # without waiting: the runs under way are stopped by the caller, whose exception this may be
        pool.shutdown(wait=False, cancel_futures=True)
