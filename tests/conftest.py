"""Shared fixtures: Hugging Face GPT-2 checkpoints with random weights, saved to temporary directories."""
import os
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

TINY = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)


@pytest.fixture(scope="session", autouse=True)
def tokenised_dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The test run's own cache of tokenised datasets (shared by the scripts the tests start), so tests
    neither read nor fill the user's."""
    os.environ["GPT2_FINETUNE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def save_hf_gpt2(directory: Path, seed: int = 0, **sizes: int) -> GPT2LMHeadModel:
    """A randomly initialised reference GPT-2, saved as a checkpoint directory; returned in eval mode."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(HFConfig(**sizes, attn_implementation="eager"))
    model.save_pretrained(directory)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT2LMHeadModel]:
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    return directory, save_hf_gpt2(directory, **TINY)


@pytest.fixture(scope="session")
def gpt2_124m_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT2LMHeadModel]:
    directory = tmp_path_factory.mktemp("gpt2-124m")
    return directory, save_hf_gpt2(directory)
