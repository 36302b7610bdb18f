"""GPT-2's configuration and the four published sizes."""
from dataclasses import asdict, dataclass, replace
from typing import Any

from flags import UserError

END_OF_TEXT_ID = 50256
YES_ID, NO_ID = 8505, 3919  # GPT-2's tokens "yes" and "no": the course's paraphrase answers

PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),  # 124M
    "gpt2-medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),  # 355M
    "gpt2-large": dict(hidden_size=1280, num_hidden_layers=36, num_attention_heads=20),  # 774M
    "gpt2-xl": dict(hidden_size=1600, num_hidden_layers=48, num_attention_heads=25),  # 1.5B
}

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 0  # 0 means GPT-2's 4 * hidden_size
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int = END_OF_TEXT_ID
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.intermediate_size == 0:
            self.intermediate_size = 4 * self.hidden_size
        self.validate()

    def validate(self) -> None:
        sizes = dict(vocab_size=self.vocab_size, max_position_embeddings=self.max_position_embeddings,
                     hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                     num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size)
        for name, value in sizes.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}: every head needs the same width")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise ValueError("layer_norm_eps and initializer_range must be positive")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPT2Config":
        if name not in PRESETS:
            raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config.json", **overrides: Any) -> "GPT2Config":
        """Our config from a Hugging Face GPT-2 `config.json` (read from `source`, which refusals name), refusing
        other models and settings our model does not implement. `overrides` may set dropout or the attention."""
        again = "download or copy it again"
        if hf.get("model_type", "gpt2") != "gpt2":
            raise UserError(f"{source}: model_type is {hf['model_type']!r}; this project loads GPT-2 checkpoints "
                            "only (model_type 'gpt2'): pass a GPT-2 checkpoint instead")
        sizes = ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")
        for key in sizes:
            value = hf.get(key)
            if not (isinstance(value, int) and value > 0):
                problem = "is missing" if key not in hf else f"is {value!r}, not a positive integer"
                raise UserError(f"{source}: {key} {problem}; a GPT-2 config.json gives {', '.join(sizes)}: {again}")
        unsupported = {
            "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
            "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
            "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
            "reorder_and_upcast_attn": (hf.get("reorder_and_upcast_attn", False), (False,)),
            "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
        }
        for key, (value, allowed) in unsupported.items():
            if value not in allowed:
                raise UserError(f"{source} has {key}={value!r}; this GPT-2 implements only {allowed}: use a "
                                "checkpoint whose config.json has one of those")
        fields = dict(
            vocab_size=hf["vocab_size"],
            max_position_embeddings=hf["n_positions"],
            hidden_size=hf["n_embd"],
            num_hidden_layers=hf["n_layer"],
            num_attention_heads=hf["n_head"],
            intermediate_size=hf.get("n_inner") or 0,
            hidden_dropout_prob=hf.get("resid_pdrop", 0.1),
            attention_probs_dropout_prob=hf.get("attn_pdrop", 0.1),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            initializer_range=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("eos_token_id", END_OF_TEXT_ID),
        )
        try:
            config = cls(**fields)
        except (TypeError, ValueError) as error:  # values no GPT-2 has (a TypeError: a string where a number goes)
            raise UserError(f"{source}: {error}; no GPT-2 can be built from it: {again}") from None
        return replace(config, **overrides)  # outside the try: a bad override is the caller's, not the file's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
