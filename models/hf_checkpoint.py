"""Hugging Face GPT-2 checkpoints: find them (hub name or local directory), read their files, refusing damaged
or foreign ones in one line, and map their tensors to ours."""
import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from config import GPT2Config
from flags import UserError

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# Old checkpoints store the causal mask as a buffer, and the LM head is tied to the token embedding.
IGNORED = re.compile(r"(^lm_head\.weight$)|(\.attn\.(masked_)?bias$)")
# A GPT2ForSequenceClassification checkpoint's head (export.py writes them): a head of its own, not GPT-2's.
CLASSIFIER_HEAD = "score.weight"
HUB_ID = re.compile(r"^[\w-][\w.-]*(/[\w.-]+)?$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
AGAIN = "download or copy it again"
PROBLEMS_SHOWN = 3  # how many tensor problems an error message lists
# What torch.load raises on a truncated or corrupted file (found by cutting and flipping bytes of checkpoints).
# A file that cannot be opened at all raises before, and keeps its own OSError.
TORCH_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, IndexError, KeyError)


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """The local directory holding `config.json` and the weights, downloading from the hub if needed."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json; expected a Hugging Face GPT-2 checkpoint directory "
                            "(config.json with model.safetensors or pytorch_model.bin)")
        return path
    if not HUB_ID.match(str(name_or_path)):
        raise UserError(f"checkpoint directory {path} does not exist")
    return download_from_hub(str(name_or_path))


def download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors*"]))
        if not any(directory.glob("model.safetensors*")):
            directory = Path(snapshot_download(repo_id, allow_patterns=["config.json", "pytorch_model.bin"]))
    except LocalEntryNotFoundError as error:  # offline (HF_HUB_OFFLINE, or no network) and not in the cache
        raise UserError(
            f"could not download {repo_id!r} from the Hugging Face hub, and it is not in the cache "
            f"{constants.HF_HUB_CACHE} ({error.__class__.__name__}); where there is network access, run "
            f"`hf download {repo_id} config.json model.safetensors --local-dir DIR`, then pass that directory "
            "instead: --model_path DIR, or GPT2Model.from_pretrained(DIR)") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id!r} is neither a local directory nor a model on the Hugging Face hub; the GPT-2 "
                        f"checkpoints are {', '.join(HUB_NAMES)}") from None
    return directory


# -----------------------------------------------------------------------------
# reading files, refusing damaged ones

def first_sentence(error: BaseException) -> str:
    """A parser's complaint, short: its first sentence (torch's weights-only refusal states its reason last)."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.split(". ")[0].rstrip(".") or error.__class__.__name__


def damaged(path: Path, error: BaseException, advice: str = AGAIN) -> UserError:
    return UserError(f"{path} cannot be read (the file is damaged or incomplete: {first_sentence(error)}): {advice}")


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint or tokenizer; one that does not parse is refused naming where it breaks."""
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}, line {error.lineno}, column {error.colno}: not JSON ({error.msg}); the file is "
                        f"damaged or incomplete: {AGAIN}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not JSON ({error}); the file is damaged or incomplete: {AGAIN}") from None


def load_torch_file(path: Path, device: torch.device | str, advice: str = AGAIN) -> Any:
    """`torch.load` of tensors and plain containers only (`weights_only`), refusing a damaged file."""
    with open(path, "rb") as file:
        try:
            return torch.load(file, map_location=device, weights_only=True)
        except torch.OutOfMemoryError:  # a RuntimeError, but the device's fault, not the file's
            raise
        except TORCH_LOAD_ERRORS as error:
            raise damaged(path, error, advice) from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as error:
        raise damaged(path, error) from None


# -----------------------------------------------------------------------------
# config.json and the weights

def read_config(directory: Path) -> dict[str, Any]:
    """The JSON object in `directory`/config.json."""
    path = directory / "config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a JSON {type(config).__name__}, not the object of a Hugging Face config: "
                        f"{AGAIN}")
    return config


def load_config(directory: Path, **overrides: Any) -> GPT2Config:
    """Our config from `directory`/config.json, refusing other models and settings our GPT-2 lacks."""
    return GPT2Config.from_hf_dict(read_config(directory), source=str(directory / "config.json"), **overrides)


def weights_file(directory: Path) -> Path:
    """The file holding the weights: model.safetensors, its shard index, or pytorch_model.bin."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"{directory} has config.json but no weights (model.safetensors or pytorch_model.bin): "
                    "download or copy the checkpoint again")


def read_shards(index: Path) -> dict[str, torch.Tensor]:
    """The tensors of every shard that a `model.safetensors.index.json` names."""
    record = read_json(index)
    weight_map = record.get("weight_map") if isinstance(record, dict) else None
    if not (isinstance(weight_map, dict) and all(isinstance(shard, str) for shard in weight_map.values())):
        raise UserError(f"{index}: not a safetensors index (a JSON object whose weight_map gives each tensor's "
                        f"file); the file is damaged or incomplete: {AGAIN}")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise UserError(f"{index.parent / shard} does not exist, but {index.name} names it as a shard of the "
                            f"weights: {AGAIN}")
    return {name: t for shard in shards for name, t in read_safetensors(index.parent / shard).items()}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `weights_file`."""
    if path.name.endswith(".index.json"):
        return read_shards(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = load_torch_file(path, "cpu")
    if not (isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())):
        raise UserError(f"{path} holds no state dict (a dictionary of named tensors): {AGAIN}")
    return state


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hugging Face GPT-2 (its Conv1D stores weights as [in, out])."""
    h, ff = config.hidden_size, config.intermediate_size
    shapes = {"wte.weight": (config.vocab_size, h), "wpe.weight": (config.max_position_embeddings, h),
              "ln_f.weight": (h,), "ln_f.bias": (h,)}
    for i in range(config.num_hidden_layers):
        p = f"h.{i}."
        shapes |= {p + "ln_1.weight": (h,), p + "ln_1.bias": (h,),
                   p + "attn.c_attn.weight": (h, 3 * h), p + "attn.c_attn.bias": (3 * h,),
                   p + "attn.c_proj.weight": (h, h), p + "attn.c_proj.bias": (h,),
                   p + "ln_2.weight": (h,), p + "ln_2.bias": (h,),
                   p + "mlp.c_fc.weight": (h, ff), p + "mlp.c_fc.bias": (ff,),
                   p + "mlp.c_proj.weight": (ff, h), p + "mlp.c_proj.bias": (h,)}
    return shapes


def check_tensors(hf: dict[str, torch.Tensor], config: GPT2Config, source: str) -> None:
    """Refuse weights with missing, unexpected or mis-shaped tensors: one line, counting them, naming the first."""
    shapes = expected_shapes(config)
    problems = [f"missing: {name} {shape}" for name, shape in shapes.items() if name not in hf]
    problems += [f"unexpected: {name} {tuple(t.shape)}" for name, t in hf.items() if name not in shapes]
    problems += [f"wrong shape: {name} is {tuple(t.shape)}, expected {shapes[name]}"
                 for name, t in hf.items() if name in shapes and tuple(t.shape) != shapes[name]]
    if problems:
        size = f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}"
        shown = "; ".join(problems[:PROBLEMS_SHOWN]) + ("; ..." if len(problems) > PROBLEMS_SHOWN else "")
        raise UserError(f"{source} does not match the GPT-2 that config.json describes ({size}), "
                        f"{len(problems)} problem(s): {shown}; the weights and config.json must come from one "
                        "checkpoint: download or copy it again")


def to_our_names(hf: dict[str, torch.Tensor], config: GPT2Config, source: str) -> dict[str, torch.Tensor]:
    """Map Hugging Face GPT-2 tensors to `GPT2Model`'s state dict, as float32. A sequence classifier's head is
    left out, with a warning: whoever builds on this GPT-2 builds a head of its own."""
    if CLASSIFIER_HEAD in hf:
        warnings.warn(f"{source}: a sequence classifier's weights: its GPT-2 is read and its head ({CLASSIFIER_HEAD}, "
                      f"{hf[CLASSIFIER_HEAD].shape[0]} classes) is not, so a head starts anew; its final LayerNorm "
                      "holds that head's bias (see docs/predict-and-export.md)")
    hf = {name.removeprefix("transformer."): t for name, t in hf.items()
          if not IGNORED.search(name) and name != CLASSIFIER_HEAD}
    check_tensors(hf, config, source)

    def linear(name: str) -> torch.Tensor:  # Conv1D [in, out] -> nn.Linear [out, in]
        return hf[name].t()

    ours = {"word_embedding.weight": hf["wte.weight"], "position_embedding.weight": hf["wpe.weight"],
            "final_layer_norm.weight": hf["ln_f.weight"], "final_layer_norm.bias": hf["ln_f.bias"]}
    for i in range(config.num_hidden_layers):
        p, q = f"h.{i}.", f"layers.{i}."
        query, key, value = linear(p + "attn.c_attn.weight").chunk(3, dim=0)
        query_bias, key_bias, value_bias = hf[p + "attn.c_attn.bias"].chunk(3)
        ours |= {
            q + "attention_layer_norm.weight": hf[p + "ln_1.weight"],
            q + "attention_layer_norm.bias": hf[p + "ln_1.bias"],
            q + "self_attention.query.weight": query, q + "self_attention.query.bias": query_bias,
            q + "self_attention.key.weight": key, q + "self_attention.key.bias": key_bias,
            q + "self_attention.value.weight": value, q + "self_attention.value.bias": value_bias,
            q + "self_attention.dense.weight": linear(p + "attn.c_proj.weight"),
            q + "self_attention.dense.bias": hf[p + "attn.c_proj.bias"],
            q + "out_layer_norm.weight": hf[p + "ln_2.weight"],
            q + "out_layer_norm.bias": hf[p + "ln_2.bias"],
            q + "feed_forward.interm_dense.weight": linear(p + "mlp.c_fc.weight"),
            q + "feed_forward.interm_dense.bias": hf[p + "mlp.c_fc.bias"],
            q + "feed_forward.out_dense.weight": linear(p + "mlp.c_proj.weight"),
            q + "feed_forward.out_dense.bias": hf[p + "mlp.c_proj.bias"],
        }
    return {name: t.float().contiguous() for name, t in ours.items()}


def to_hf_names(ours: dict[str, torch.Tensor], config: GPT2Config) -> dict[str, torch.Tensor]:
    """`GPT2Model`'s state dict under the names, and in the layout, of transformers' GPT-2 classes (the inverse
    of `to_our_names`), as float32: Conv1D weights as [in, out], the attention's three projections as one."""
    def conv1d(*names: str) -> torch.Tensor:  # nn.Linear weights [out, in], stacked, as one Conv1D [in, out]
        return torch.cat([ours[name] for name in names]).t()

    hf = {"wte.weight": ours["word_embedding.weight"], "wpe.weight": ours["position_embedding.weight"],
          "ln_f.weight": ours["final_layer_norm.weight"], "ln_f.bias": ours["final_layer_norm.bias"]}
    for i in range(config.num_hidden_layers):
        p, q = f"h.{i}.", f"layers.{i}."
        attention = [f"{q}self_attention.{name}" for name in ("query", "key", "value")]
        hf |= {
            p + "ln_1.weight": ours[q + "attention_layer_norm.weight"],
            p + "ln_1.bias": ours[q + "attention_layer_norm.bias"],
            p + "attn.c_attn.weight": conv1d(*(name + ".weight" for name in attention)),
            p + "attn.c_attn.bias": torch.cat([ours[name + ".bias"] for name in attention]),
            p + "attn.c_proj.weight": conv1d(q + "self_attention.dense.weight"),
            p + "attn.c_proj.bias": ours[q + "self_attention.dense.bias"],
            p + "ln_2.weight": ours[q + "out_layer_norm.weight"],
            p + "ln_2.bias": ours[q + "out_layer_norm.bias"],
            p + "mlp.c_fc.weight": conv1d(q + "feed_forward.interm_dense.weight"),
            p + "mlp.c_fc.bias": ours[q + "feed_forward.interm_dense.bias"],
            p + "mlp.c_proj.weight": conv1d(q + "feed_forward.out_dense.weight"),
            p + "mlp.c_proj.bias": ours[q + "feed_forward.out_dense.bias"],
        }
    return {"transformer." + name: t.float().contiguous() for name, t in hf.items()}
