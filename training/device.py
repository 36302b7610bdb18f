"""Where tensors live and in which precision: the device (joining the torchrun process group), autocast."""
import contextlib
import os
import sys

import torch
import torch.distributed as dist

from flags import UserError
from training.distributed import is_main

# auto: bf16 autocast on a GPU that has it, else fp32; tf32: fp32 with TF32 matmuls; fp32: exact float32.
PRECISIONS = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "tf32": None, "fp32": None}


def choose_device(use_gpu: bool, precision: str = "fp32", deterministic: bool = False) -> torch.device:
    """The device to train on, with deterministic kernels if asked. Under torchrun this also joins the
    process group (NCCL on GPU, gloo on CPU): each process takes the GPU of its LOCAL_RANK, and only rank 0
    prints."""
    if deterministic:
        use_deterministic_kernels()
    if use_gpu and not torch.cuda.is_available():
        raise UserError(f"--use_gpu: PyTorch {torch.__version__} sees no CUDA GPU on this machine; "
                        "run without --use_gpu to train on the CPU")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpu else torch.device("cpu")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bfloat16 support; use --precision fp16")
    if use_gpu:  # float32 matmuls left outside autocast (or all of them, with tf32) run on tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision in ("auto", "tf32")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if use_gpu:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_gpu else "gloo", device_id=device if use_gpu else None)
        if not is_main():
            sys.stdout = open(os.devnull, "w")
    return device


def use_deterministic_kernels() -> None:
    """PyTorch's deterministic kernels, so that a run repeats bit for bit on the same machine and versions. An
    operation that has none warns, naming itself, rather than ending the run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS repeats itself only with a fixed workspace
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch on `device`. To a GPU through pinned memory: a copy from pageable memory waits for the
    GPU to finish its queue first, where a pinned one is queued behind it and the host runs on."""
    if device.type != "cuda":
        return {key: value.to(device) for key, value in batch.items()}
    return {key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()}
