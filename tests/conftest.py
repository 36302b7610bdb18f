"""Shared fixtures: small GPT-2s with random weights, as Hugging Face checkpoint directories (transformers' model
beside them as the reference) and as our own model."""
import os
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from config import GPT2Config
from models.gpt2 import GPT2Model

TINY = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)
# Narrower than TINY, with a context long enough for whole sonnets: what the task scripts' end-to-end runs train.
LONG_CONTEXT = dict(n_embd=32, n_layer=2, n_head=2, n_positions=256)
OUR_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)  # TINY


@pytest.fixture(scope="session", autouse=True)
def tokenised_dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The test run's own cache of tokenised datasets (shared by the scripts the tests start), so tests
    neither read nor fill the user's."""
    os.environ["GPT2_FINETUNE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def random_hf_gpt2(seed: int = 0, **sizes: int | float) -> GPT2LMHeadModel:
    """transformers' GPT-2 (eager attention), randomly initialised from `seed`; returned in eval mode."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(HFConfig(**sizes, attn_implementation="eager")).eval()


def save_hf_gpt2(directory: Path, seed: int = 0, **sizes: int | float) -> GPT2LMHeadModel:
    """A randomly initialised reference GPT-2, saved as a checkpoint directory; returned in eval mode."""
    model = random_hf_gpt2(seed, **sizes)
    model.save_pretrained(directory)
    return model


def tiny_config(**overrides) -> GPT2Config:
    return GPT2Config(**{**OUR_TINY, **overrides})


def tiny_gpt2(**overrides) -> GPT2Model:
    """Our GPT-2 at TINY's sizes, randomly initialised from seed 0, in training mode as built."""
    torch.manual_seed(0)
    return GPT2Model(tiny_config(**overrides))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT2LMHeadModel]:
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    return directory, save_hf_gpt2(directory, **TINY)


@pytest.fixture(scope="session")
def long_context_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("long-context-gpt2")
    save_hf_gpt2(directory, **LONG_CONTEXT)
    return directory


@pytest.fixture(scope="session")
def gpt2_124m_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT2LMHeadModel]:
    directory = tmp_path_factory.mktemp("gpt2-124m")
    return directory, save_hf_gpt2(directory)
