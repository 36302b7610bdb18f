"""The one way every script gets GPT-2's tokenizer."""
from pathlib import Path

from transformers import GPT2Tokenizer, PreTrainedTokenizerBase

from flags import UserError
from models.hf_checkpoint import AGAIN, read_json

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
    except LocalEntryNotFoundError as error:  # offline (HF_HUB_OFFLINE, or no network) and not in the cache
        raise UserError(f"no GPT-2 tokenizer found: {PROJECT_TOKENIZER} lacks {' and '.join(TOKENIZER_FILES)}, and "
                        f"the Hugging Face hub cannot be reached ({error.__class__.__name__}); run `bash setup.sh` "
                        "(it copies them from ../shared/gpt2-tokenizer), or where there is network access, "
                        f"`hf download gpt2 {' '.join(TOKENIZER_FILES)} --local-dir {PROJECT_TOKENIZER}`") from None
    return paths[0].parent


def check_tokenizer_files(directory: Path) -> None:
    """Refuse damaged BPE files naming the file and line, before the tokenizers library fails on them with
    neither: vocab.json maps tokens to ids, and each line of merges.txt merges two tokens of it into a third."""
    vocab_path, merges_path = (directory / name for name in TOKENIZER_FILES)
    vocab = read_json(vocab_path)
    if not (isinstance(vocab, dict) and all(isinstance(i, int) and i >= 0 for i in vocab.values())):
        raise UserError(f"{vocab_path}: not a vocabulary (a JSON object from each token to its id): {AGAIN}")
    try:
        lines = merges_path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise UserError(f"{merges_path}: not UTF-8 ({error}); the file is damaged or incomplete: {AGAIN}") from None
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if line.startswith("#version") or (number == len(lines) and not line):
            continue
        tokens = line.split(" ")
        if len(tokens) != 2 or not {*tokens, "".join(tokens)} <= vocab.keys():
            raise UserError(f"{merges_path}, line {number}: {line!r} is not a merge of two tokens of vocab.json; the "
                            f"file is damaged or incomplete: {AGAIN}")


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
    check_tokenizer_files(source)
    tokenizer = GPT2Tokenizer.from_pretrained(str(source))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
