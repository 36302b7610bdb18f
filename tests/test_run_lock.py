"""One run at a time in a run directory: a run holds its directory's lock from start-up until its command ends,
however it ends; a second run there is refused naming the owner, and a lock whose process is gone is taken
over with a warning. Under torchrun rank 0 holds the lock, and a refusal prints once."""
import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch.nn.functional as F

import classifier
import flags
from flags import UserError, user_errors_end_in_one_line
from models.gpt2 import GPT2Model
from tests.test_paths import base_flags, file_hashes, refusal, small_sst
from training import distributed
from training.run_dir import LOCK_FILE, lock_owner, take_lock

HOST = socket.gethostname()


def small_run(tmp_path: Path, checkpoint: Path) -> list[str]:
    """A classifier run of one epoch on a few SST rows, its run directory tmp_path/run/sst."""
    return base_flags("classifier", checkpoint, tmp_path) + ["--data_dir", str(small_sst(tmp_path / "data"))]


def write_lock(directory: Path, pid: int, host: str = HOST) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "since": "2025-01-02T03:04:05+00:00"}))
    return directory / LOCK_FILE


# Another process: holds the run directory it is given until its standard input closes.
HOLDER = """
import sys
from pathlib import Path
from flags import user_errors_end_in_one_line
from training.run_dir import take_lock
with user_errors_end_in_one_line("holder"):
    take_lock(Path(sys.argv[1]))
    print("held", flush=True)
    sys.stdin.read()
"""


def dead_pid() -> int:
    """The id of a process that has ended."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built in a run directory another run holds")

    monkeypatch.setattr(GPT2Model, "__init__", refuse)


@pytest.mark.parametrize("added", [[], ["--resume"], ["--overwrite"]])
@pytest.mark.parametrize("host", [HOST, "another-host"])
def test_a_run_directory_another_live_run_holds_is_refused_naming_it_and_left_as_it_was(
        capsys, tmp_path, tiny_checkpoint, no_model, added, host):
    run_dir = tmp_path / "run/sst"
    owner = os.getppid()  # alive: the process that started the tests
    lock = write_lock(run_dir, owner, host)
    for name in ("settings.json", "last.pt", "best.pt", "metrics.jsonl"):  # a run that --overwrite would delete
        (run_dir / name).write_text(name)
    argv = small_run(tmp_path, tiny_checkpoint[0]) + added
    before = file_hashes(tmp_path)
    assert refusal(capsys, "classifier", argv) == (
        f"classifier.py: error: {run_dir} is in use by another run: process {owner} on {host} (since "
        f"2025-01-02T03:04:05+00:00) holds {lock}; wait for it to end, or pick another --run_dir")
    assert file_hashes(tmp_path) == before


def test_a_second_process_is_refused_until_the_first_ends_then_it_runs(capsys, tmp_path, tiny_checkpoint):
    run_dir = tmp_path / "run/sst"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=flags.PROJECT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        argv = small_run(tmp_path, tiny_checkpoint[0])
        message = refusal(capsys, "classifier", argv)
        assert f"{run_dir} is in use by another run: process {holder.pid} on {HOST} (since " in message
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and not (run_dir / LOCK_FILE).exists()  # released as its command ended

    classifier.main(argv)  # once it has ended, as the refusal advised
    assert (tmp_path / "predictions/full-model-sst-test-out.csv").is_file()


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_warning(capsys, tmp_path, tiny_checkpoint):
    pid = dead_pid()
    lock = write_lock(tmp_path / "run/sst", pid)
    classifier.main(small_run(tmp_path, tiny_checkpoint[0]))
    warning = f"classifier.py: warning: {lock}: process {pid} on {HOST} (since 2025-01-02T03:04:05+00:00) no longer " \
              "runs; taking the run directory over"
    assert warning in capsys.readouterr().err.splitlines()
    assert (tmp_path / "run/sst/best.pt").is_file() and not lock.exists()


def test_a_lock_that_names_no_owner_is_refused_and_deleting_it_as_advised_frees_the_directory(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_text("")
    with pytest.raises(UserError) as refused:
        take_lock(tmp_path)
    assert str(refused.value) == (f"{lock} names no owner (''): another run may be starting there; if none is, "
                                  f"delete {lock}")
    lock.unlink()
    take_lock(tmp_path)  # outside a command: released at exit
    assert lock_owner(lock).is_this_process()


@pytest.mark.parametrize("ending, added, code", [
    ("finished", [], None),
    ("failed", ["--lr", "1e30"], "the training loss is nan"),  # diverges at once
    ("interrupted in training", [], 128 + signal.SIGTERM),
    ("interrupted writing predictions", [], 128 + signal.SIGTERM),
])
def test_the_lock_is_held_while_the_run_goes_on_and_gone_after_it_ends(monkeypatch, tmp_path, tiny_checkpoint,
                                                                        ending, added, code):
    lock, owners = tmp_path / "run/sst" / LOCK_FILE, []

    def noting_the_owner(original, interrupt):
        calls = []

        def call(*args, **kwargs):
            owners.append(lock_owner(lock))
            calls.append(1)
            if ending == interrupt and len(calls) == 1:  # in the first batch, or as the first file is written
                signal.raise_signal(signal.SIGTERM)
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(classifier.F, "cross_entropy", noting_the_owner(F.cross_entropy, "interrupted in training"))
    monkeypatch.setattr(classifier, "write_predictions",
                        noting_the_owner(classifier.write_predictions, "interrupted writing predictions"))
    argv = small_run(tmp_path, tiny_checkpoint[0]) + added
    if code is None:
        classifier.main(argv)
    else:
        with pytest.raises(SystemExit) as stopped:
            classifier.main(argv)
        assert str(code) in str(stopped.value.code)
    assert owners and all(owner.is_this_process() for owner in owners)
    assert not lock.exists() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_only_rank_0_takes_the_lock_and_its_refusal_stops_every_process(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    distributed.main_only(lambda: take_lock(tmp_path))
    assert not (tmp_path / LOCK_FILE).exists()
    monkeypatch.setattr(distributed, "gather_objects", lambda local: ["held by another run", local])
    with pytest.raises(UserError, match="^held by another run$"):
        distributed.main_only(lambda: take_lock(tmp_path))


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_under_torchrun_a_refusal_prints_once_and_every_process_exits_with_2(monkeypatch, capsys, rank, printed):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(flags, "OTHER_RANKS_WAIT", 0)
    with pytest.raises(SystemExit) as stopped:
        classifier.main(["--lr", "0"])
    assert stopped.value.code == 2
    expected = "classifier.py: error: --lr 0: must be greater than 0\n" if printed else ""
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_under_torchrun_a_warning_prints_once(monkeypatch, capsys, rank, printed):
    monkeypatch.setenv("RANK", rank)
    with user_errors_end_in_one_line("prog"):
        warnings.warn("a warning")
    assert capsys.readouterr().err == ("prog: warning: a warning\n" if printed else "")
