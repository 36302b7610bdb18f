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


COURSE_ROWS = 60  # of each course file in `course_rows`: the first with every SST class in dev, and quick to score
# The flags of each run in `finished_runs` besides its files; repeating them with --model_path an export and
# --epochs 0 repeats the run's predictions.
RUN_FLAGS = {
    "sentiment": ["--dataset", "sst", "--fine-tune-mode", "full-model", "--lora", "--lora_rank", "2",
                  "--prompt", "Review: {sentence} Sentiment:"],
    "paraphrase": ["--lora", "--dora", "--lora_rank", "2", "--k_shot", "2", "--symmetric"],
    "sonnets": ["--keep_layers", "1", "--max_new_tokens", "8"],
}


def paraphrase_files(data: Path, out: Path) -> list[str]:
    """The flags naming a paraphrase run's course files in `data` and its prediction files in `out`."""
    return ["--para_train", str(data / "quora-train.csv"), "--para_dev", str(data / "quora-dev.csv"),
            "--para_test", str(data / "quora-test-student.csv"), "--para_dev_out", str(out / "dev.csv"),
            "--para_test_out", str(out / "test.csv")]


def sonnet_files(out: Path) -> list[str]:
    """The flags naming a sonnet run's prediction files in `out` (its data files are the course's)."""
    return ["--sonnet_dev_out", str(out / "dev.txt"), "--sonnet_out", str(out / "test.txt")]


@pytest.fixture(scope="session")
def course_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first rows of the SST and Quora course files, under the course's file names."""
    folder = tmp_path_factory.mktemp("course-rows")
    for name in [f"ids-sst-{split}.csv" for split in ("train", "dev", "test-student")] + [
            f"quora-{split}.csv" for split in ("train", "dev", "test-student")]:
        lines = (Path("data") / name).read_text().splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:COURSE_ROWS + 1]))
    return folder


@pytest.fixture(scope="session")
def finished_runs(course_rows: Path, tmp_path_factory: pytest.TempPathFactory,
                  long_context_checkpoint: Path) -> dict[str, Path]:
    """Finished one-epoch runs of each task on a tiny GPT-2 (`RUN_FLAGS`), trained once by the scripts themselves
    for the tests that rebuild or export runs: a sentiment run of LoRA with a prompt and a linear head on the last
    token, a cloze paraphrase run of DoRA with demonstrations and both orders, and a sonnet run of the bottom
    layer. Each run's prediction files are in predictions/ beside its --run_dir."""
    import classifier  # the scripts, imported only where a test needs runs
    import paraphrase_detection
    import sonnet_generation

    root = tmp_path_factory.mktemp("finished-runs")
    common = ["--model_path", str(long_context_checkpoint), "--epochs", "1", "--lr", "1e-4", "--batch_size", "8",
              "--train_limit", "8"]
    classifier.main([*common, *RUN_FLAGS["sentiment"], "--data_dir", str(course_rows), "--run_dir",
                     str(root / "sentiment/runs"), "--predictions_dir", str(root / "sentiment/predictions")])
    paraphrase_detection.main([*common, *RUN_FLAGS["paraphrase"],
                               *paraphrase_files(course_rows, root / "paraphrase/predictions"),
                               "--run_dir", str(root / "paraphrase/runs")])
    sonnet_generation.main([*common, *RUN_FLAGS["sonnets"], *sonnet_files(root / "sonnets/predictions"),
                            "--run_dir", str(root / "sonnets/runs")])
    return {"sentiment": root / "sentiment/runs/sst", "paraphrase": root / "paraphrase/runs",
            "sonnets": root / "sonnets/runs"}
