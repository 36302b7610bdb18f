"""GPT-2: token and position embeddings, a stack of pre-LayerNorm blocks, a final LayerNorm."""
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from config import GPT2Config
from flags import UserError
from models import hf_checkpoint
from modules.attention import KVCache, causal_mask
from modules.gpt2_layer import GPT2Layer
from modules.prefix import PrefixTuning


# The course's names of the sizes (its `from_pretrained(model, d, l, num_heads)`, `utils.model_size_to_params`).
COURSE_SIZES = {"d": "hidden_size", "l": "num_hidden_layers", "num_heads": "num_attention_heads"}
# Where an attention mask's pads may be (`GPT2Model.forward`); None: unknown, the mask is read to find out.
PADDING = (None, "right", "left")


def mark_lengths_dynamic(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Have torch.compile treat the batch and sequence sizes of a layer's inputs as symbols from the first
    call, instead of compiling once for the first shape and again when it changes. "maybe": sizes 0 and 1,
    which compile as constants, are allowed."""
    for dim in (0, 1):
        torch._dynamo.maybe_mark_dynamic(x, dim)
    if mask is not None:  # [B, 1, T, S]
        for dim in (0, 2, 3):
            torch._dynamo.maybe_mark_dynamic(mask, dim)


class GPT2Model(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.word_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(GPT2Layer(config) for _ in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.prefix: PrefixTuning | None = None  # set by modules.prefix.add_prefix
        # Training keeps only each layer's input and recomputes the rest in the backward pass:
        # memory for the large presets at about a third more compute.
        self.activation_checkpointing = False
        self.compiled_layers: list[nn.Module] = []  # set by compile_layers; a plain list keeps them out of state_dict
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(number of residual additions) so the
        # residual stream's variance does not grow with depth.
        residual_std = config.initializer_range / math.sqrt(2 * config.num_hidden_layers)
        for name, param in self.named_parameters():
            if name.endswith(("self_attention.dense.weight", "feed_forward.out_dense.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: list[KVCache] | None = None, padding: str | None = None) -> dict[str, torch.Tensor]:
        """`input_ids` is `[B, T]`; `attention_mask` is 1 for real tokens, 0 for padding, and with a cache
        covers the cached tokens too (`[B, cached + T]`). Returns `last_hidden_state` `[B, T, H]` and
        `last_token` `[B, H]`, the state of each row's last real token.

        `padding` tells where the mask's pads are, so that the model need not look (a look at a tensor on
        the GPU waits for the GPU): "right", no real token after a pad in any row (with a cache, over the
        cached and new tokens), as `datasets` builds its batches; the causal mask then gives the same
        outputs at every real token. "left", pads may come anywhere (before the tokens, in generation): the
        full key mask is built. None, the mask is read on the device to decide."""
        if padding not in PADDING:
            raise ValueError(f"padding must be one of {', '.join(map(repr, PADDING))}, got {padding!r}")
        batch, seq_len = input_ids.shape
        if cache is None and self.prefix is not None:  # the prefix's keys and values live in a cache
            cache = self.new_cache(seq_len)
        prefix = cache[0].prefix_length if cache else 0
        past = cache[0].length - prefix if cache else 0  # tokens already cached
        if past + seq_len > self.config.max_position_embeddings:
            raise ValueError(f"a sequence of {past + seq_len} tokens is longer than the model's context of "
                             f"{self.config.max_position_embeddings}; truncate it")
        if attention_mask is not None and attention_mask.shape != (batch, past + seq_len):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                             f"expected {(batch, past + seq_len)}")

        positions = self.position_ids(attention_mask, past, seq_len, input_ids.device)
        x = self.embedding_dropout(self.word_embedding(input_ids) + self.position_embedding(positions))
        real_keys = None if attention_mask is None else F.pad(attention_mask, (prefix, 0), value=1)
        mask = self.key_mask(real_keys, seq_len, padding)
        for i, layer in enumerate(self.layers):
            if cache:
                x = layer(x, mask, cache[i])
                continue
            run = layer
            if self.compiled_layers:
                run = self.compiled_layers[i]
                mark_lengths_dynamic(x, mask)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(run, x, mask, use_reentrant=False)
            else:
                x = run(x, mask)
        x = self.final_layer_norm(x)
        if attention_mask is None:
            last_token = x[:, -1]
        else:  # index tensors made on x's device: a CPU index would be copied over at every call
            rows = torch.arange(batch, device=x.device)
            last_token = x[rows, self.last_index(attention_mask, seq_len)]
        return {"last_hidden_state": x, "last_token": last_token}

    def keep_bottom_layers(self, count: int) -> None:
        """Drop every layer above the bottom `count`, keeping the final LayerNorm: GPT-1's analysis of how many
        pre-trained layers a task needs."""
        if not 1 <= count <= len(self.layers):
            raise ValueError(f"cannot keep {count} of {len(self.layers)} layers")
        self.layers = self.layers[:count]
        self.config = replace(self.config, num_hidden_layers=count)

    def compile_layers(self, **options: Any) -> None:
        """torch.compile the layers for passes without a cache (training, scoring); `options` go to
        torch.compile (tests pass `backend="eager"`, `fullgraph=True`). Layer by layer, one compiled graph
        serves every layer, and the batch and sequence dimensions are compiled dynamic, so batches of any
        length reuse it: one graph per mode (training, scoring) and kind of mask (none, or a key mask), and
        in training one more where frozen layers below (LoRA, frozen embeddings) give a layer an input that
        needs no gradient. Decoding with the cache stays eager, where shapes change each step."""
        self.compiled_layers = [torch.compile(layer, **options) for layer in self.layers]

    @staticmethod
    def position_ids(attention_mask: torch.Tensor | None, past: int, seq_len: int,
                     device: torch.device) -> torch.Tensor:
        # Counting real tokens gives left-padded rows (batched generation) the positions they would have alone.
        if attention_mask is None:
            return torch.arange(past, past + seq_len, device=device)[None]
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]

    @staticmethod
    def key_mask(attention_mask: torch.Tensor | None, seq_len: int, padding: str | None = None) -> torch.Tensor | None:
        """`[B, 1, T, S]` keys each query may attend to, or None when the causal mask gives the same
        outputs at every real token: no padding, or padding only after the last real token (right
        padding), which the causal mask already hides from real tokens. `padding` as in `forward`: only
        when it is None is the mask read (on its device) to find out."""
        if attention_mask is None or padding == "right":
            return None
        real = attention_mask.bool()
        num_keys = real.size(1)
        if padding is None:
            if seq_len == num_keys:
                if not (real[:, 1:] & ~real[:, :-1]).any():  # no real token after a pad
                    return None
            elif real.all():
                return None
        allowed = causal_mask(seq_len, num_keys, real.device) & real[:, None, None, :]
        # Each query always sees itself, so a pad with only pads before it gets no empty (NaN) softmax row.
        query_positions = torch.arange(num_keys - seq_len, num_keys, device=real.device)
        itself = query_positions[:, None] == torch.arange(num_keys, device=real.device)
        return allowed | itself

    @staticmethod
    def last_index(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | int:
        if attention_mask is None:
            return seq_len - 1
        real = attention_mask[:, -seq_len:].long()
        return (real * torch.arange(seq_len, device=real.device)).argmax(-1)

    def hidden_state_to_token(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits through the token embedding, which GPT-2 ties to its output layer."""
        return F.linear(hidden_state, self.word_embedding.weight)

    def token_logits(self, hidden_state: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits of only `token_ids` (e.g. label words): a few rows of the output layer, not all 50,257."""
        return F.linear(hidden_state, self.word_embedding.weight[token_ids])

    def new_cache(self, max_len: int | None = None) -> list[KVCache]:
        """Empty key/value caches for `max_len` tokens, holding the prefix when prefix-tuning."""
        max_len = max_len or self.config.max_position_embeddings
        return [KVCache(max_len, self.prefix.layer(i) if self.prefix is not None else None)
                for i in range(len(self.layers))]

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, model: str | Path | None = None,
                        d: int | None = None, l: int | None = None, num_heads: int | None = None,  # noqa: E741
                        **config_overrides: Any) -> "GPT2Model":
        """Load a Hugging Face GPT-2 checkpoint: a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a local
        directory with config.json and model.safetensors or pytorch_model.bin, "gpt2" if none is given. Sizes come
        from the checkpoint; `config_overrides` may set dropout or the attention implementation. Returned in
        evaluation mode (dropout off), as transformers returns its models; training calls `.train()`.

        The course's call, `from_pretrained(model="gpt2", d=768, l=12, num_heads=12)`, works too: `model` names
        the checkpoint, and the hidden size `d`, the layers `l` and the heads `num_heads` must be its own."""
        if name_or_path is not None and model is not None:
            raise TypeError("from_pretrained: give the checkpoint once, as `name_or_path` or as the course's `model`")
        directory = hf_checkpoint.resolve_checkpoint(model or name_or_path or "gpt2")
        config = hf_checkpoint.load_config(directory, **config_overrides)
        check_course_sizes(config, directory / "config.json", d=d, l=l, num_heads=num_heads)
        weights = hf_checkpoint.weights_file(directory)
        state = hf_checkpoint.to_our_names(hf_checkpoint.read_weights(weights), config, str(weights))
        with torch.device("meta"):  # every tensor comes from the checkpoint: skip the random init
            gpt2 = cls(config)
        gpt2.load_state_dict(state, assign=True)
        return gpt2.eval()


def check_course_sizes(config: GPT2Config, source: Path, **sizes: int | None) -> None:
    """Refuse, in one line, course sizes (`COURSE_SIZES`' names) that are given and differ from the checkpoint's."""
    wrong = [f"{name}={value}" for name, value in sizes.items()
             if value is not None and value != getattr(config, COURSE_SIZES[name])]
    if wrong:
        has = ", ".join(f"{name}={getattr(config, field)}" for name, field in COURSE_SIZES.items())
        raise UserError(f"{source} describes a GPT-2 with {has}, not {', '.join(wrong)}: the sizes come from the "
                        "checkpoint, so pass its own (utils.model_size_to_params(size)) or none")
