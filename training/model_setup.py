"""The GPT-2, tokenizer and fine-tuning strategy that the settings ask for."""
from collections.abc import Callable

from torch import nn
from transformers import PreTrainedTokenizerBase

from config import GPT2Config
from models import hf_checkpoint
from models.gpt2 import GPT2Model
from models.tokenizer import has_tokenizer_files, load_tokenizer
from modules.lora import apply_lora
from modules.prefix import add_prefix
from training.optimization import layer_of
from training.settings import ModelSettings, StrategySettings


def build_gpt2(settings: ModelSettings) -> GPT2Model:
    """The GPT-2 the settings ask for: pre-trained from a local directory or the hub, or randomly initialised;
    its bottom layers only, compiled and with activation checkpointing if asked."""
    if settings.init == "random":
        if settings.model_path:
            config = hf_checkpoint.load_config(settings.model_path)
        else:
            config = GPT2Config.from_preset(settings.model_size)
        model = GPT2Model(config)
    else:
        model = GPT2Model.from_pretrained(settings.model_path or settings.model_size)
    if settings.keep_layers:
        model.keep_bottom_layers(settings.keep_layers)
    model.activation_checkpointing = settings.activation_checkpointing
    if settings.compile:
        model.compile_layers()
    return model


def tokenizer_for(settings: ModelSettings) -> PreTrainedTokenizerBase:
    """A checkpoint directory's own tokenizer files when it has them, else the project's."""
    if settings.model_path and has_tokenizer_files(settings.model_path):
        return load_tokenizer(settings.model_path)
    return load_tokenizer()


def apply_strategy(gpt: GPT2Model, strategy: StrategySettings, train_gpt: bool = True) -> None:
    """Decide which GPT-2 weights train: all (`train_gpt`), none, the top k layers, LoRA adapters or a prefix.
    Task heads live outside `gpt` and always train."""
    if strategy.lora:
        apply_lora(gpt, strategy.lora_targets.split(","), strategy.lora_rank, strategy.lora_alpha,
                   strategy.lora_dropout, strategy.dora)
        return
    if strategy.prefix_length:
        add_prefix(gpt, strategy.prefix_length)
        return
    gpt.requires_grad_(train_gpt and not strategy.train_top_layers)
    if strategy.train_top_layers:
        for layer in gpt.layers[-strategy.train_top_layers:]:
            layer.requires_grad_(True)
        gpt.final_layer_norm.requires_grad_(True)


def gradual_unfreezing(model: nn.Module, num_layers: int) -> Callable[[int], None]:
    """ULMFiT: of the parameters that train now (all of them, or LoRA's adapters and the head), epoch e trains
    only those at the top depth and the e below it: the head first (the top layer, when a cloze decision has
    no head of its own), then one more GPT-2 layer each epoch."""
    trainable = {name: layer_of(name, num_layers) for name, param in model.named_parameters() if param.requires_grad}
    top = max(trainable.values())

    def unfreeze(epoch: int) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable and trainable[name] >= top - epoch)
    return unfreeze


def count_parameters(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"
