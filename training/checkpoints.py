"""Checkpoints: written atomically, loaded with `weights_only=True`, refused when they belong to another
task or model, or damaged; and the random-number state a resumed run must continue from."""
import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flags import UserError, errors_name
from models.hf_checkpoint import load_torch_file
from training.distributed import is_main

REDO = "restore it, or start the run again with --overwrite"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def checkpoint_identity(task: str, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be loaded into `model`: the task, and the name and shape of every
    tensor (so another model size, adapter, prefix or head is refused before its weights are)."""
    return {"task": task, "tensors": {name: list(t.shape) for name, t in model.state_dict().items()}}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename it, so a crash never leaves a half-written checkpoint.
    Only the main process writes. A failure is an `OSError` naming `path`."""
    if not is_main():
        return
    temporary = path.with_name(path.name + ".tmp")
    try:
        with errors_name(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, temporary)
            os.replace(temporary, path)
    except RuntimeError as error:  # how torch.save reports a file it could not write, naming none
        raise OSError(errno.EIO, f"not written ({' '.join(str(error).split())})", str(path)) from error


def load_checkpoint(path: Path, identity: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A checkpoint's state, refusing a damaged file, a file this project did not write, and a checkpoint
    saved for another task or model."""
    state = load_torch_file(path, device, REDO)
    if not (isinstance(state, dict) and isinstance(state.get("identity"), dict) and "model" in state):
        raise UserError(f"{path} is not a checkpoint written by this project (a dictionary with its identity and "
                        f"model): {REDO}")
    saved = state["identity"]
    if saved.get("task") != identity["task"]:
        raise UserError(f"{path} is a checkpoint of task {saved.get('task')!r}, not {identity['task']!r}")
    if saved.get("tensors") != identity["tensors"]:
        ours, theirs = identity["tensors"], saved.get("tensors", {})
        differ = sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))
        raise UserError(f"{path} holds another model (another size, adapter, prefix or head): its tensors differ "
                        f"from this run's at {', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}")
    return state


def rng_state() -> dict[str, Any]:
    numpy = np.random.get_state(legacy=False)  # its key as a tensor: weights_only loading refuses NumPy arrays
    numpy["state"]["key"] = torch.from_numpy(numpy["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # this process's GPU only: touching the others would allocate on them
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    if "numpy" in state:  # checkpoints written before NumPy was seeded lack it
        numpy = state["numpy"]
        np.random.set_state({**numpy, "state": {**numpy["state"], "key": numpy["state"]["key"].numpy().astype(np.uint32)}})
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
