"""Hugging Face GPT-2 checkpoints: find them (hub name or local directory) and map their tensors to ours."""
import json
import re
from pathlib import Path
from typing import Any

import torch

from config import GPT2Config

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# Old checkpoints store the causal mask as a buffer, and the LM head is tied to the token embedding.
IGNORED = re.compile(r"(^lm_head\.weight$)|(\.attn\.(masked_)?bias$)")
HUB_ID = re.compile(r"^[\w-][\w.-]*(/[\w.-]+)?$")


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """The local directory holding `config.json` and the weights, downloading from the hub if needed."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face GPT-2 checkpoint "
                                    "directory (config.json with model.safetensors or pytorch_model.bin)")
        return path
    if not HUB_ID.match(str(name_or_path)):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    return download_from_hub(str(name_or_path))


def download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors*"]))
        if not any(directory.glob("model.safetensors*")):
            directory = Path(snapshot_download(repo_id, allow_patterns=["config.json", "pytorch_model.bin"]))
    except LocalEntryNotFoundError as error:
        raise OSError(
            f"could not download {repo_id!r} from the Hugging Face hub, and it is not in the local cache "
            f"({error.__class__.__name__}). Without network access, download a checkpoint elsewhere "
            f"(e.g. `hf download {repo_id} config.json model.safetensors --local-dir DIR`) "
            "and pass that directory instead: --model_path DIR, or GPT2Model.from_pretrained(DIR)."
        ) from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a model on the Hugging Face "
                                f"hub; the GPT-2 checkpoints are {', '.join(HUB_NAMES)}") from error
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    with open(directory / "config.json") as f:
        return json.load(f)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (directory / "model.safetensors").is_file():
        return load_file(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return {name: t for shard in shards for name, t in load_file(directory / shard).items()}
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} has config.json but no model.safetensors or pytorch_model.bin")


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
    """Raise one error listing every missing, unexpected and mis-shaped tensor."""
    shapes = expected_shapes(config)
    problems = [f"missing: {name} {shape}" for name, shape in shapes.items() if name not in hf]
    problems += [f"unexpected: {name} {tuple(t.shape)}" for name, t in hf.items() if name not in shapes]
    problems += [f"wrong shape: {name} is {tuple(t.shape)}, expected {shapes[name]}"
                 for name, t in hf.items() if name in shapes and tuple(t.shape) != shapes[name]]
    if problems:
        size = f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}"
        raise ValueError(f"{source} does not match the GPT-2 its config.json describes ({size}):\n  "
                         + "\n  ".join(problems))


def to_our_names(hf: dict[str, torch.Tensor], config: GPT2Config, source: str) -> dict[str, torch.Tensor]:
    """Map Hugging Face GPT-2 tensors to `GPT2Model`'s state dict, as float32."""
    hf = {name.removeprefix("transformer."): t for name, t in hf.items() if not IGNORED.search(name)}
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
