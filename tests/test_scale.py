"""Scale: torchrun with two gloo processes against one process, activation checkpointing, torch.compile, and the
benchmark that compares our model's speed with transformers'."""
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.gpt2 import GPT2Model
from tests.conftest import LONG_CONTEXT, save_hf_gpt2

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
# Per script: its flags, the flags naming its prediction files under a directory, and where in
# --run_dir its checkpoints and log go.
SCRIPTS = {
    "classifier.py": (["--dataset", "sst", "--train_limit", "70", "--fine-tune-mode", "full-model",
                       "--head_dropout", "0"],
                      lambda out: ["--predictions_dir", str(out)], "sst"),
    "paraphrase_detection.py": (["--train_limit", "70", "--head", "last"],
                                lambda out: ["--para_dev_out", str(out / "para-dev-output.csv"),
                                             "--para_test_out", str(out / "para-test-output.csv")], ""),
    "sonnet_generation.py": (["--train_limit", "19", "--decoding", "greedy", "--max_new_tokens", "24",
                              "--keep_best", "1"],
                             lambda out: ["--sonnet_dev_out", str(out / "generated_sonnets_dev.txt"),
                                          "--sonnet_out", str(out / "generated_sonnets.txt")], ""),
}


def script_flags(script: str, checkpoint: Path, out: Path, *flags: str) -> list[str]:
    """The flags of a run of `script` writing under `out`."""
    flags_of_script, outputs, _ = SCRIPTS[script]
    return ["--model_path", str(checkpoint), "--epochs", "2", "--batch_size", "8", "--lr", "1e-3",
            "--run_dir", str(out / "run"), *flags_of_script, *outputs(out / "predictions"), *flags]


def run_dir(script: str, out: Path) -> Path:
    return out / "run" / SCRIPTS[script][2]


def run_script(launcher: list[str], script: str, checkpoint: Path, out: Path, *flags: str) -> Path:
    """Run `script` writing under `out`; returns its run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run([*launcher, script, *script_flags(script, checkpoint, out, *flags)],
                              capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return run_dir(script, out)


def run_here(script: str, checkpoint: Path, out: Path, *flags: str) -> Path:
    """Run `script` in this process (a start-up of Python and torch fewer), on one thread as each of torchrun's
    processes runs; returns its run directory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        importlib.import_module(script.removesuffix(".py")).main(script_flags(script, checkpoint, out, *flags))
    finally:
        torch.set_num_threads(threads)
    return run_dir(script, out)


def dev_records(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["split"] == "dev"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("no-dropout")  # dropout draws differ between one and two processes
    save_hf_gpt2(directory, **LONG_CONTEXT, **NO_DROPOUT)
    return directory


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_two_gloo_processes_match_one_process_accumulating_two_batches(tmp_path, checkpoint, script):
    # In batches of 8, 70 examples (9 batches) and 19 sonnets (3) leave the second process one batch short: it
    # repeats one at weight 0.
    run_two = run_script(TORCHRUN, script, checkpoint, tmp_path / "two")
    run_one = run_here(script, checkpoint, tmp_path / "one", "--grad_accum", "2")

    two, one = dev_records(run_two), dev_records(run_one)
    assert len(two) == len(one) == 2
    for a, b in zip(two, one):
        assert a.keys() == b.keys()
        assert all(a[k] == (pytest.approx(b[k], rel=1e-5) if isinstance(b[k], float) else b[k]) for k in a)
    written = sorted(p.name for p in (tmp_path / "one/predictions").iterdir())
    assert len(written) == 2 and sorted(p.name for p in (tmp_path / "two/predictions").iterdir()) == written
    for name in written:
        assert (tmp_path / "two/predictions" / name).read_bytes() == (tmp_path / "one/predictions" / name).read_bytes()
    weights_two = torch.load(run_two / "best.pt", weights_only=True)["model"]
    weights_one = torch.load(run_one / "best.pt", weights_only=True)["model"]
    assert all(torch.allclose(weights_two[k], weights_one[k], atol=1e-6) for k in weights_one)


def test_sigterm_to_torchrun_mid_epoch_then_resume_ends_bit_identical(tmp_path, checkpoint):
    # Head dropout on: each process's random state must come back too.
    flags = ("--train_limit", "800", "--head_dropout", "0.3")
    run_script(TORCHRUN, "classifier.py", checkpoint, tmp_path / "whole", *flags)

    split = tmp_path / "split"
    command = [*TORCHRUN, "classifier.py", *script_flags("classifier.py", checkpoint, split, *flags)]
    launched = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = split / "run/sst/metrics.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and '"split": "train", "epoch": 1' in log.read_text()):  # well into epoch 1
        assert launched.poll() is None and time.time() < deadline
        time.sleep(0.05)
    launched.send_signal(signal.SIGTERM)
    assert launched.wait(timeout=120) != 0
    saved = torch.load(split / "run/sst/last.pt", weights_only=True)["progress"]
    assert saved["epoch"] == 1 and 0 < saved["batches_done"] < 50  # 50 batches a process per epoch

    run_script(TORCHRUN, "classifier.py", checkpoint, split, *flags, "--resume")
    whole = torch.load(tmp_path / "whole/run/sst/last.pt", weights_only=True)["model"]
    resumed = torch.load(split / "run/sst/last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    for name in ("full-model-sst-dev-out.csv", "full-model-sst-test-out.csv"):
        assert (split / "predictions" / name).read_bytes() == (tmp_path / "whole/predictions" / name).read_bytes()


def loss_and_grads(model: GPT2Model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks for both runs
    hidden = model(ids, torch.ones_like(ids))["last_hidden_state"]
    loss = torch.nn.functional.cross_entropy(model.hidden_state_to_token(hidden[:, :-1]).flatten(0, 1),
                                             ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_checkpoint):
    model = GPT2Model.from_pretrained(tiny_checkpoint[0]).train()  # dropout on: recomputation must redraw alike
    ids = torch.randint(0, 50257, (2, 24))
    loss, grads = loss_and_grads(model, ids)
    model.activation_checkpointing = True
    checkpointed_loss, checkpointed_grads = loss_and_grads(model, ids)
    assert torch.equal(loss, checkpointed_loss)
    assert all(torch.allclose(grads[k], checkpointed_grads[k], atol=1e-7) for k in grads)


# Inductor compiles each layer to C++: tens of seconds on a CPU. test_compile.py shows every graph whole and equal to
# eager with dynamo's own backends, in a second.
@pytest.mark.slow
def test_compiled_layers_match_eager_and_leave_the_state_dict_alone(tiny_checkpoint):
    model = GPT2Model.from_pretrained(tiny_checkpoint[0]).eval()
    ids, mask = torch.randint(0, 50257, (2, 16)), torch.tensor([[1] * 16, [0] * 4 + [1] * 12])
    with torch.no_grad():
        eager = model(ids, mask)["last_hidden_state"]
        keys = list(model.state_dict())
        model.compile_layers()
        compiled = model(ids, mask)["last_hidden_state"]
    assert torch.allclose(eager, compiled, atol=1e-5)
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("flags", [(), pytest.param(("--compile",), marks=pytest.mark.slow)],
                         ids=["eager", "compiled"])  # compiled: inductor, as above
def test_benchmark_runs_both_models_on_the_same_weights(tiny_checkpoint, flags):
    finished = subprocess.run(
        [sys.executable, "benchmark.py", "--model_path", str(tiny_checkpoint[0]), "--device", "cpu", *flags,
         "--batch_size", "2", "--seq_len", "16", "--warmup", "1", "--iters", "1", "--gen_batch", "2",
         "--prompt_len", "8", "--new_tokens", "8", "--gen_iters", "1", "--adam_iters", "1", "--para_batches", "2",
         "--para_iters", "1"],
        capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    check = next(line for line in finished.stdout.splitlines() if line.startswith("same-weights check"))
    assert check.split("ours ")[1].split(",")[0] == check.split("transformers ")[1]
    assert "greedy tokens of ours (cache) and transformers identical: yes" in finished.stdout
    assert "train tokens/s: ours / transformers" in finished.stdout
    assert "decode tokens/s: cache / memory-bound limit" in finished.stdout
