"""The shared training toolkit: optimizer groups, schedules, checkpoints, strategies."""
from argparse import Namespace

import pytest
import torch

from config import GPT2Config
from models.gpt2 import GPT2Model
from training import (choose_device, freeze_for_strategy, gradual_unfreezing, layer_of, load_checkpoint,
                      lr_multiplier, parameter_groups, save_checkpoint)


def tiny_gpt2() -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                max_position_embeddings=64))


def strategy(**flags) -> Namespace:
    return Namespace(**{"lora": False, "train_top_layers": 0, "lora_rank": 2, "lora_alpha": 4.0,
                        "lora_dropout": 0.0, "lora_targets": "query,value", "dora": False, **flags})


def test_weight_decay_spares_biases_and_layer_norms_and_lrs_decay_by_layer():
    model = tiny_gpt2()
    groups = parameter_groups(model, lr=1.0, weight_decay=0.1, num_layers=3, layer_lr_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            assert group["weight_decay"] == (0.1 if param.ndim >= 2 else 0.0), name
            assert group["lr"] == 0.5 ** (3 + 1 - layer_of(name, 3)), name
    assert layer_of("word_embedding.weight", 3) == 0 and layer_of("layers.2.key.bias", 3) == 3
    assert layer_of("final_layer_norm.weight", 3) == 4 and layer_of("gpt.layers.0.value.weight", 3) == 1


def test_schedules_warm_up_then_decay():
    assert [lr_multiplier("linear", s, 10, 2) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_multiplier("cosine", 6, 10, 2) == pytest.approx(0.5)
    assert lr_multiplier("constant", 7, 10, 0) == 1.0
    # ULMFiT's slanted triangle: lr/32 at the start, the peak at the cut, back to lr/32 at the end.
    assert [lr_multiplier("slanted_triangular", s, 100, 10) for s in (0, 10, 100)] == [1 / 32, 1.0, 1 / 32]


def test_top_layers_and_last_linear_layer_freeze_the_rest():
    model = tiny_gpt2()
    freeze_for_strategy(model, strategy(train_top_layers=1), train_gpt=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("layers.2.", "final_layer_norm.")) for n in trainable)
    freeze_for_strategy(model, strategy(), train_gpt=False)
    assert not any(p.requires_grad for p in model.parameters())


def test_gradual_unfreezing_adds_one_layer_per_epoch():
    model = tiny_gpt2()
    unfreeze = gradual_unfreezing(model, num_layers=3)
    trained = []
    for epoch in range(5):
        unfreeze(epoch)
        trained.append({layer_of(n, 3) for n, p in model.named_parameters() if p.requires_grad})
    assert trained == [{4}, {3, 4}, {2, 3, 4}, {1, 2, 3, 4}, {0, 1, 2, 3, 4}]


def test_checkpoints_are_atomic_and_refuse_another_model_size(tmp_path):
    path = tmp_path / "run" / "last.pt"
    identity = {"task": "sentiment-sst", "model": GPT2Config().to_dict()}
    save_checkpoint(path, {"identity": identity, "model": tiny_gpt2().state_dict()})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert load_checkpoint(path, identity, torch.device("cpu"))["identity"] == identity
    medium = {"task": "sentiment-sst", "model": GPT2Config.from_preset("gpt2-medium").to_dict()}
    with pytest.raises(ValueError, match="belongs to another run setup.*model: checkpoint has"):
        load_checkpoint(path, medium, torch.device("cpu"))
    with pytest.raises(ValueError, match="task: checkpoint has 'sentiment-sst', this run 'paraphrase'"):
        load_checkpoint(path, {**identity, "task": "paraphrase"}, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_use_gpu_without_cuda_says_so():
    with pytest.raises(SystemExit, match="sees no CUDA GPU"):
        choose_device(use_gpu=True)
    with pytest.raises(SystemExit, match="--precision bf16 is for GPUs"):
        choose_device(use_gpu=False, precision="bf16")
