"""Damaged or foreign files end in one line that names the file, says what is wrong and what to do: Hugging Face
checkpoint directories, the tokenizer's BPE files, the hub when it cannot be reached, and the run's own
checkpoints; through the library and through the scripts."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

import classifier
from flags import UserError
from models.gpt2 import GPT2Model
from models.tokenizer import PROJECT_TOKENIZER, load_tokenizer
from training.checkpoints import checkpoint_identity, load_checkpoint, save_checkpoint
from training.settings import ModelSettings

AGAIN = "download or copy it again"
DAMAGED = r"cannot be read \(the file is damaged or incomplete: .+\): "


def refused(call: Callable[[], object], path: Path, problem: str) -> str:
    """The one-line UserError that `call` raises, which must name `path` and match `problem` after it."""
    with pytest.raises(UserError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    assert re.search(re.escape(str(path)) + problem, message), message
    return message


def model_copy(tiny_checkpoint: tuple[Path, object], tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(tiny_checkpoint[0], directory)
    return directory


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# -----------------------------------------------------------------------------
# config.json, through GPT2Model.from_pretrained and through the start-up check of --model_path

def edited(edit: Callable[[dict], dict]) -> Callable[[str], str]:
    return lambda text: json.dumps(edit(json.loads(text)))


CONFIG_DAMAGE = [
    (lambda text: text[:40], r", line \d+, column \d+: not JSON \(.+\); the file is damaged or incomplete: " + AGAIN),
    (lambda text: "", r", line 1, column 1: not JSON \(Expecting value\)"),
    (lambda text: "[1, 2]", r" holds a JSON list, not the object of a Hugging Face config: " + AGAIN),
    (edited(lambda c: {k: v for k, v in c.items() if k != "n_head"}),
     r": n_head is missing; a GPT-2 config.json gives n_layer, n_embd, n_head, vocab_size, n_positions: " + AGAIN),
    (edited(lambda c: {**c, "n_layer": "2"}), r": n_layer is '2', not a positive integer"),
    (edited(lambda c: {**c, "model_type": "llama"}),
     r": model_type is 'llama'; this project loads GPT-2 checkpoints only \(model_type 'gpt2'\): pass a GPT-2 "
     "checkpoint instead$"),
    (edited(lambda c: {**c, "scale_attn_by_inverse_layer_idx": True}),
     r" has scale_attn_by_inverse_layer_idx=True; this GPT-2 implements only \(False,\): use a checkpoint whose "
     r"config\.json has one of those$"),
    (edited(lambda c: {**c, "n_head": 5}),
     r": hidden_size 64 is not divisible by num_attention_heads 5.*; no GPT-2 can be built from it: " + AGAIN),
]


@pytest.mark.parametrize("damage, problem", CONFIG_DAMAGE)
@pytest.mark.parametrize("reader", ["from_pretrained", "--model_path"])
def test_a_damaged_or_foreign_config_json_is_refused_in_one_line(tiny_checkpoint, tmp_path, damage, problem,
                                                                 reader):
    directory = model_copy(tiny_checkpoint, tmp_path)
    config = directory / "config.json"
    config.write_text(damage(config.read_text()))
    if reader == "from_pretrained":
        refused(lambda: GPT2Model.from_pretrained(directory), config, problem)
    else:
        refused(lambda: ModelSettings(model_path=directory).num_layers, config, problem)


def test_a_config_json_that_is_not_utf8_is_refused(tiny_checkpoint, tmp_path):
    directory = model_copy(tiny_checkpoint, tmp_path)
    (directory / "config.json").write_bytes(b'{"n_layer": "\xff"}')
    refused(lambda: GPT2Model.from_pretrained(directory), directory / "config.json",
            r": not JSON \('utf-8' codec can't decode byte 0xff .*\); the file is damaged or incomplete")


def test_a_config_json_without_model_type_is_taken_for_gpt2(tiny_checkpoint, tmp_path):
    directory = model_copy(tiny_checkpoint, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    del config["model_type"]
    (directory / "config.json").write_text(json.dumps(config))
    assert ModelSettings(model_path=directory).num_layers == 2
    assert GPT2Model.from_pretrained(directory).config.num_hidden_layers == 2


# -----------------------------------------------------------------------------
# the weights: model.safetensors, its shards, pytorch_model.bin

@pytest.mark.parametrize("keep", [0.0, 0.001, 0.5, 0.999])
def test_a_truncated_model_safetensors_is_refused(tiny_checkpoint, tmp_path, keep):
    directory = model_copy(tiny_checkpoint, tmp_path)
    truncate(directory / "model.safetensors", keep)
    refused(lambda: GPT2Model.from_pretrained(directory), directory / "model.safetensors", " " + DAMAGED + AGAIN)


def bin_checkpoint(tiny_checkpoint: tuple[Path, object], tmp_path: Path) -> Path:
    """The tiny checkpoint with its weights in pytorch_model.bin instead."""
    directory = model_copy(tiny_checkpoint, tmp_path)
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    return directory


@pytest.mark.parametrize("damage", [
    lambda path: truncate(path, 0.5),
    lambda path: truncate(path, 0.0),
    lambda path: truncate(path, 0.001),
    lambda path: path.write_bytes(b"not a checkpoint at all\n" * 10),
])
def test_a_damaged_pytorch_model_bin_is_refused(tiny_checkpoint, tmp_path, damage):
    directory = bin_checkpoint(tiny_checkpoint, tmp_path)
    damage(directory / "pytorch_model.bin")
    refused(lambda: GPT2Model.from_pretrained(directory), directory / "pytorch_model.bin", " " + DAMAGED + AGAIN)


def test_a_pytorch_model_bin_without_a_state_dict_is_refused(tiny_checkpoint, tmp_path):
    directory = bin_checkpoint(tiny_checkpoint, tmp_path)
    torch.save([torch.zeros(3)], directory / "pytorch_model.bin")
    refused(lambda: GPT2Model.from_pretrained(directory), directory / "pytorch_model.bin",
            r" holds no state dict \(a dictionary of named tensors\): " + AGAIN)


def sharded_checkpoint(tiny_checkpoint: tuple[Path, object], tmp_path: Path) -> Path:
    """The tiny checkpoint with its weights split over two safetensors shards and an index, as large
    checkpoints come."""
    directory = model_copy(tiny_checkpoint, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    weight_map = {}
    for number, names in enumerate((list(tensors)[:5], list(tensors)[5:]), start=1):
        shard = f"model-0000{number}-of-00002.safetensors"
        save_file({name: tensors[name] for name in names}, directory / shard)
        weight_map |= dict.fromkeys(names, shard)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def test_a_sharded_checkpoint_loads_like_the_single_file(tiny_checkpoint, tmp_path):
    whole = GPT2Model.from_pretrained(tiny_checkpoint[0]).state_dict()
    sharded = GPT2Model.from_pretrained(sharded_checkpoint(tiny_checkpoint, tmp_path)).state_dict()
    assert whole.keys() == sharded.keys() and all(torch.equal(whole[name], sharded[name]) for name in whole)


@pytest.mark.parametrize("damage, file, problem", [
    (lambda d: truncate(d / "model.safetensors.index.json"), "model.safetensors.index.json",
     r", line 1, column \d+: not JSON \(.+\); the file is damaged or incomplete: " + AGAIN),
    (lambda d: (d / "model.safetensors.index.json").write_text('{"metadata": {}}'), "model.safetensors.index.json",
     r": not a safetensors index \(a JSON object whose weight_map gives each tensor's file\)"),
    (lambda d: (d / "model-00002-of-00002.safetensors").unlink(), "model-00002-of-00002.safetensors",
     r" does not exist, but model.safetensors.index.json names it as a shard of the weights: " + AGAIN),
    (lambda d: truncate(d / "model-00001-of-00002.safetensors"), "model-00001-of-00002.safetensors",
     " " + DAMAGED + AGAIN),
])
def test_a_damaged_shard_index_or_shard_is_refused(tiny_checkpoint, tmp_path, damage, file, problem):
    directory = sharded_checkpoint(tiny_checkpoint, tmp_path)
    damage(directory)
    refused(lambda: GPT2Model.from_pretrained(directory), directory / file, problem)


# -----------------------------------------------------------------------------
# the hub, and the tokenizer's files

def test_the_advised_download_command_exists_with_those_options(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as error:
        GPT2Model.from_pretrained("gpt2")
    command = shlex.split(re.search(r"`(hf download [^`]+)`", str(error.value)).group(1))
    assert command == ["hf", "download", "gpt2", "config.json", "model.safetensors", "--local-dir", "DIR"]
    hf = Path(sys.executable).parent / "hf"
    usage = subprocess.run([str(hf), *command[1:], "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: hf download [OPTIONS] REPO_ID [FILENAMES]..." in usage and "--local-dir" in usage


def tokenizer_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "tokenizer"
    shutil.copytree(PROJECT_TOKENIZER, directory)
    return directory


@pytest.mark.parametrize("damage, file, problem", [
    (lambda d: truncate(d / "vocab.json"), "vocab.json",
     r", line 1, column \d+: not JSON \(.+\); the file is damaged or incomplete: " + AGAIN),
    (lambda d: (d / "vocab.json").write_text('["a", "b"]'), "vocab.json",
     r": not a vocabulary \(a JSON object from each token to its id\): " + AGAIN),
    (lambda d: (d / "merges.txt").write_text("#version: 0.2\nĠ t\nĠ a\nh\n"), "merges.txt",
     r", line 4: 'h' is not a merge of two tokens of vocab.json; the file is damaged or incomplete: " + AGAIN),
    (lambda d: (d / "merges.txt").write_text("#version: 0.2\nĠ t\n\nĠ a\n"), "merges.txt",
     r", line 3: '' is not a merge of two tokens"),
    (lambda d: (d / "merges.txt").write_text("#version: 0.2\nĠ t\nĠ zzqq\n"), "merges.txt",
     r", line 3: 'Ġ zzqq' is not a merge of two tokens"),
    (lambda d: (d / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe t\n"), "merges.txt",
     r": not UTF-8 \(.+\); the file is damaged or incomplete: " + AGAIN),
])
def test_a_damaged_tokenizer_file_is_refused(tmp_path, damage, file, problem):
    directory = tokenizer_copy(tmp_path)
    damage(directory)
    refused(lambda: load_tokenizer(directory), directory / file, problem)


def test_merges_without_a_final_newline_or_with_crlf_line_ends_still_load(tmp_path):
    directory = tokenizer_copy(tmp_path)
    lines = (directory / "merges.txt").read_text().splitlines()
    (directory / "merges.txt").write_text("\r\n".join(lines))
    assert load_tokenizer(directory).encode(" hello there") == load_tokenizer().encode(" hello there")


# -----------------------------------------------------------------------------
# the run's own checkpoints (last.pt, best.pt)

def test_a_damaged_or_foreign_training_checkpoint_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    identity = checkpoint_identity("sentiment-sst", model)
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"identity": identity, "model": model.state_dict()})
    redo = ": restore it, or start the run again with --overwrite$"
    data = path.read_bytes()
    for keep in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:keep])
        refused(lambda: load_checkpoint(path, identity, torch.device("cpu")), path, " " + DAMAGED[:-2] + redo)
    for foreign in ([1, 2], {"model": model.state_dict()}, {"identity": "sst", "model": {}}):
        torch.save(foreign, path)
        refused(lambda: load_checkpoint(path, identity, torch.device("cpu")), path,
                r" is not a checkpoint written by this project \(a dictionary with its identity and model\)" + redo)


# -----------------------------------------------------------------------------
# through a script: one line on stderr, exit status 2

def script_refusal(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        classifier.main(argv)
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("classifier.py: error: ") and "\n" not in message and "Traceback" not in message
    return message


def classifier_flags(model: list[str], out: Path, *flags: str) -> list[str]:
    return [*model, "--dataset", "sst", "--fine-tune-mode", "full-model", "--train_limit", "16", "--batch_size", "8",
            "--lr", "1e-3", "--run_dir", str(out / "run"), "--predictions_dir", str(out / "predictions"), *flags]


def with_truncated_vocab(directory: Path) -> None:
    """The checkpoint directory gets its own tokenizer files, which the scripts prefer, and vocab.json is cut."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(PROJECT_TOKENIZER / name, directory)
    truncate(directory / "vocab.json")


@pytest.mark.parametrize("damage, file, problem", [
    (lambda d: truncate(d / "config.json"), "config.json", r", line \d+, column \d+: not JSON"),
    (lambda d: truncate(d / "model.safetensors"), "model.safetensors", " " + DAMAGED + AGAIN),
    (with_truncated_vocab, "vocab.json", r", line 1, column \d+: not JSON"),
])
def test_a_script_given_a_damaged_model_directory_ends_in_one_line(capsys, tiny_checkpoint, tmp_path, damage, file,
                                                                   problem):
    directory = model_copy(tiny_checkpoint, tmp_path)
    damage(directory)
    message = script_refusal(capsys, classifier_flags(["--model_path", str(directory)], tmp_path, "--epochs", "0"))
    assert re.search(re.escape(str(directory / file)) + problem, message), message


def test_a_script_without_the_hub_or_a_cached_model_ends_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    message = script_refusal(capsys, classifier_flags(["--model_size", "gpt2-medium"], tmp_path, "--epochs", "0"))
    assert "could not download 'gpt2-medium' from the Hugging Face hub" in message
    assert "`hf download gpt2-medium config.json model.safetensors --local-dir DIR`" in message


def test_a_resume_from_a_damaged_or_foreign_last_pt_ends_in_one_line_and_changes_no_file(capsys, tiny_checkpoint,
                                                                                          tmp_path):
    flags = classifier_flags(["--model_path", str(tiny_checkpoint[0])], tmp_path, "--epochs", "1")
    classifier.main(flags)
    last = tmp_path / "run/sst/last.pt"
    for damage, problem in ((truncate, r"cannot be read \(the file is damaged or incomplete: .+\)"),
                            (lambda path: torch.save({"weights": [1.0]}, path),
                             r"is not a checkpoint written by this project \(.+\)")):
        damage(last)
        before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
        message = script_refusal(capsys, flags[:-1] + ["2", "--resume"])
        assert re.search(re.escape(str(last)) + f" {problem}: restore it, or start the run again with --overwrite$",
                         message), message
        assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
