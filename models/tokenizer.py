"""The one way every script gets GPT-2's tokenizer."""
from pathlib import Path

from transformers import GPT2Tokenizer, PreTrainedTokenizerBase

# `bash setup.sh` copies the BPE files here from ../shared/gpt2-tokenizer when they are present.
PROJECT_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "gpt2-tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def has_tokenizer_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in TOKENIZER_FILES)


def download_from_hub() -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        paths = [Path(hf_hub_download("gpt2", name)) for name in TOKENIZER_FILES]
    except LocalEntryNotFoundError as error:
        raise OSError(f"no GPT-2 tokenizer found: {PROJECT_TOKENIZER} lacks {' and '.join(TOKENIZER_FILES)} "
                      "(bash setup.sh copies them from ../shared/gpt2-tokenizer) and the Hugging Face hub "
                      "could not be reached; pass a directory holding vocab.json and merges.txt") from error
    return paths[0].parent


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """GPT-2's byte-level BPE tokenizer, padding with end-of-text (id 50256). Reads `path` when given,
    else the project's data/gpt2-tokenizer, else the `gpt2` tokenizer from the Hugging Face hub."""
    if path is not None:
        source = Path(path).expanduser()
        if not has_tokenizer_files(source):
            raise FileNotFoundError(f"tokenizer directory {source} must hold {' and '.join(TOKENIZER_FILES)}")
    elif has_tokenizer_files(PROJECT_TOKENIZER):
        source = PROJECT_TOKENIZER
    else:
        source = download_from_hub()
    tokenizer = GPT2Tokenizer.from_pretrained(str(source))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
