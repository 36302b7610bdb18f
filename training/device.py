"""Where tensors live and in which precision: the device (joining the torchrun process group), autocast."""
import contextlib
import os
import sys

import torch
import torch.distributed as dist

from config import UserError
from training.distributed import is_main

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_device(use_gpu: bool, precision: str = "fp32") -> torch.device:
    """The device to train on. Under torchrun this also joins the process group (NCCL on GPU, gloo on
    CPU): each process takes the GPU of its LOCAL_RANK, and only rank 0 prints."""
    if use_gpu and not torch.cuda.is_available():
        raise UserError(f"--use_gpu: PyTorch {torch.__version__} sees no CUDA GPU on this machine; "
                        "run without --use_gpu to train on the CPU")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpu else torch.device("cpu")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bfloat16 support; use --precision fp16")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if use_gpu:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_gpu else "gloo", device_id=device if use_gpu else None)
        if not is_main():
            sys.stdout = open(os.devnull, "w")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
