"""Tokenised datasets kept on disk, so that the next run on the same examples, tokenizer and prompt skips
tokenising (about 40 s for the course's Quora training set on two CPU cores).

An entry is named by a SHA-256 over everything that decides its tokens: the examples themselves (after
any `--train_limit` sample), the tokenizer's vocabulary and merges, the template, the length limit and how
the examples are turned into tokens. A changed file, prompt or tokenizer is a new entry, never a stale one.
The cache lives in $GPT2_FINETUNE_CACHE, else ~/.cache/gpt2-finetune; deleting it is always safe.
"""
import dataclasses
import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from datasets import TokenizedDataset
from models.hf_checkpoint import TORCH_LOAD_ERRORS

FORMAT = 1  # bump when what an entry holds, or how tokens are made, changes
ENTRY_KEYS = {"ids", "tokens", "mirror", "labels", "warnings"}


def cache_dir() -> Path:
    root = os.environ.get("GPT2_FINETUNE_CACHE") or Path.home() / ".cache" / "gpt2-finetune"
    return Path(root) / "tokenized"


def fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Changes exactly when the tokenizer would produce other tokens: its whole serialised form (vocabulary,
    merges, pre-tokenisation)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def entry_name(tokenize: Callable[..., TokenizedDataset], examples: list[Any], tokenizer: PreTrainedTokenizerBase,
               options: tuple[Any, ...]) -> str:
    digest = hashlib.sha256(f"{FORMAT}|{tokenize.__name__}|{options!r}|{fingerprint(tokenizer)}|".encode())
    for example in examples:
        digest.update(repr(dataclasses.astuple(example)).encode())
    return digest.hexdigest()


def flat(rows: list[list[int]] | None) -> dict[str, torch.Tensor] | None:
    if rows is None:
        return None
    return {"tokens": torch.tensor([token for row in rows for token in row], dtype=torch.int32),
            "lengths": torch.tensor([len(row) for row in rows], dtype=torch.int64)}


def unflat(stored: dict[str, torch.Tensor] | None) -> list[list[int]] | None:
    if stored is None:
        return None
    return [chunk.tolist() for chunk in torch.split(stored["tokens"], stored["lengths"].tolist())]


def cached_tokens(tokenize: Callable[..., TokenizedDataset], examples: list[Any],
                  tokenizer: PreTrainedTokenizerBase, *options: Any) -> TokenizedDataset:
    """`tokenize(examples, tokenizer, *options)`, or what it returned before for the same examples, tokenizer
    and options. The warnings it gave (sentences cut to fit) are given again when the entry is reused."""
    path = cache_dir() / f"{entry_name(tokenize, examples, tokenizer, options)}.pt"
    stored = read_entry(path)
    if stored is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = tokenize(examples, tokenizer, *options)
        stored = {"ids": data.ids, "tokens": flat(data.tokens), "mirror": flat(data.mirror), "labels": data.labels,
                  "warnings": [str(warning.message) for warning in caught]}
        write_entry(path, stored)
    for message in stored["warnings"]:
        warnings.warn(message, stacklevel=2)
    return TokenizedDataset(stored["ids"], unflat(stored["tokens"]), stored["labels"], unflat(stored["mirror"]))


def read_entry(path: Path) -> dict[str, Any] | None:
    """An entry, or None when there is none or it is damaged (then it is built again and replaced)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, weights_only=True)
    except TORCH_LOAD_ERRORS:  # a damaged cache file only costs the time to tokenise again
        return None
    return stored if isinstance(stored, dict) and stored.keys() == ENTRY_KEYS else None


def write_entry(path: Path, stored: dict[str, Any]) -> None:
    """Atomically; and not at all where the cache cannot be written, since it only saves time."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(stored, temporary)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
