"""The shared training toolkit: optimizer groups, schedules, checkpoints, strategies."""
import pytest
import torch

from config import GPT2Config
from flags import UserError
from models.gpt2 import GPT2Model
from modules.lora import LoRALinear
from training.checkpoints import checkpoint_identity, load_checkpoint, save_checkpoint
from training.device import choose_device
from training.model_setup import apply_strategy, gradual_unfreezing
from training.optimization import (layer_of, lr_multiplier, make_optimizer, make_scheduler, parameter_groups,
                                   set_hyperparameters)
from tests import conftest
from training.settings import StrategySettings


def tiny_gpt2() -> GPT2Model:
    return conftest.tiny_gpt2(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=64)


def strategy(**flags) -> StrategySettings:
    return StrategySettings(**{"lora_rank": 2, "lora_alpha": 4.0, "lora_dropout": 0.0, **flags})


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
    apply_strategy(model, strategy(train_top_layers=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("layers.2.", "final_layer_norm.")) for n in trainable)
    apply_strategy(model, strategy(), train_gpt=False)
    assert not any(p.requires_grad for p in model.parameters())


def test_lora_and_prefix_train_only_their_own_parameters():
    model = tiny_gpt2()
    apply_strategy(model, strategy(lora=True, lora_targets="query,interm_dense"))
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 6
    assert {n.rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    model = tiny_gpt2()
    apply_strategy(model, strategy(prefix_length=2))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prefix.keys", "prefix.values"}


def test_gradual_unfreezing_adds_one_layer_per_epoch():
    model = tiny_gpt2()
    unfreeze = gradual_unfreezing(model, num_layers=3)
    trained = []
    for epoch in range(5):
        unfreeze(epoch)
        trained.append({layer_of(n, 3) for n, p in model.named_parameters() if p.requires_grad})
    assert trained == [{4}, {3, 4}, {2, 3, 4}, {1, 2, 3, 4}, {0, 1, 2, 3, 4}]


def test_gradual_unfreezing_with_lora_unfreezes_only_adapters_top_down():
    model = tiny_gpt2()
    apply_strategy(model, strategy(lora=True, ulmfit=True))
    model.final_layer_norm.requires_grad_(True)  # stands in for a task head: above every layer
    unfreeze = gradual_unfreezing(model, num_layers=3)
    trained = []
    for epoch in range(4):
        unfreeze(epoch)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert all("lora_" in n or n.startswith("final_layer_norm.") for n in names)
        trained.append({layer_of(n, 3) for n in names})
    assert trained == [{4}, {3, 4}, {2, 3, 4}, {1, 2, 3, 4}]


def test_gradual_unfreezing_without_a_head_starts_with_the_top_layer():
    """A cloze decision with LoRA trains nothing above the layers: the first epoch trains the top layer."""
    model = tiny_gpt2()
    apply_strategy(model, strategy(lora=True, ulmfit=True))
    unfreeze = gradual_unfreezing(model, num_layers=3)
    trained = []
    for epoch in range(3):
        unfreeze(epoch)
        trained.append({layer_of(n, 3) for n, p in model.named_parameters() if p.requires_grad})
    assert trained == [{3}, {2, 3}, {1, 2, 3}]


def test_checkpoints_are_atomic_and_refuse_another_task_size_or_adapter(tmp_path):
    path = tmp_path / "run" / "last.pt"
    model = tiny_gpt2()
    identity = checkpoint_identity("sentiment-sst", model)
    save_checkpoint(path, {"identity": identity, "model": model.state_dict()})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert load_checkpoint(path, identity, torch.device("cpu"))["identity"] == identity
    with pytest.raises(UserError, match="is a checkpoint of task 'sentiment-sst', not 'paraphrase'"):
        load_checkpoint(path, checkpoint_identity("paraphrase", model), torch.device("cpu"))
    wider = GPT2Model(GPT2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                                 max_position_embeddings=64))
    with pytest.raises(UserError, match="holds another model .* tensors differ from this run's at final_layer_norm"):
        load_checkpoint(path, checkpoint_identity("sentiment-sst", wider), torch.device("cpu"))
    apply_strategy(model, strategy(lora=True))
    with pytest.raises(UserError, match="tensors differ from this run's at layers.0.self_attention.query.base"):
        load_checkpoint(path, checkpoint_identity("sentiment-sst", model), torch.device("cpu"))


def test_new_hyperparameters_replace_a_restored_optimizers_and_continue_its_schedule():
    model = tiny_gpt2()
    optimizer = make_optimizer(model, lr=1.0, weight_decay=0.1, num_layers=3, layer_lr_decay=0.5)
    scheduler = make_scheduler(optimizer, "linear", total_steps=10, warmup_steps=0)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = optimizer.state_dict(), scheduler.state_dict()
    fresh = make_optimizer(model, lr=0.1, weight_decay=0.0, num_layers=3, layer_lr_decay=0.5)
    fresh_schedule = make_scheduler(fresh, "linear", total_steps=20, warmup_steps=0)
    base_lrs, decays = list(fresh_schedule.base_lrs), [group["weight_decay"] for group in fresh.param_groups]
    fresh.load_state_dict(state[0])
    fresh_schedule.load_state_dict(state[1])
    set_hyperparameters(fresh, fresh_schedule, base_lrs, decays)
    top = fresh.param_groups[-1]
    assert (top["lr"], top["weight_decay"]) == (pytest.approx(0.1 * (1 - 4 / 20)), 0.0)
    fresh_schedule.step()
    assert fresh_schedule.get_last_lr()[-1] == pytest.approx(0.1 * (1 - 5 / 20))
    assert all(fresh.state[p]["step"] == 4 for p in model.parameters())  # the moments survive


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_use_gpu_without_cuda_says_so():
    with pytest.raises(UserError, match="--use_gpu: PyTorch .* sees no CUDA GPU"):
        choose_device(use_gpu=True)
