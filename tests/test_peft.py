"""Our LoRA and DoRA against PEFT's on the same weights: outputs (with and without dropout), gradients and
merged weights."""
import copy

import peft
import pytest
import torch
from torch import nn

from modules.lora import LoRALinear, apply_lora, merge_lora

RANK, ALPHA, TARGETS = 2, 6.0, ["query", "value"]


class Net(nn.Module):
    """Two linear layers named as our GPT-2 names its attention projections."""

    def __init__(self):
        super().__init__()
        self.query, self.value = nn.Linear(8, 6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(torch.tanh(self.query(x)))


def adapted_pair(dora: bool, dropout: float) -> tuple[nn.Module, nn.Module]:
    """(ours, PEFT's) wrapping copies of one network, their adapters holding the same trained-looking values:
    B and DoRA's magnitudes moved away from their initial values, so that every term counts."""
    torch.manual_seed(0)
    net = Net()
    ours = copy.deepcopy(net)
    apply_lora(ours, TARGETS, rank=RANK, alpha=ALPHA, dropout=dropout, dora=dora)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=TARGETS, use_dora=dora)
    theirs = peft.get_peft_model(copy.deepcopy(net), config)
    with torch.no_grad():
        for name in TARGETS:
            mine, layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
            nn.init.normal_(mine.lora_B)
            layer.lora_A["default"].weight.copy_(mine.lora_A)
            layer.lora_B["default"].weight.copy_(mine.lora_B)
            if dora:
                mine.lora_magnitude.mul_(torch.rand_like(mine.lora_magnitude) + 0.5)
                layer.lora_magnitude_vector["default"].weight.copy_(mine.lora_magnitude)
    return ours, theirs


def adapter_grads(ours: nn.Module, theirs: nn.Module, dora: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = []
    for name in TARGETS:
        mine, layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
        pairs += [(mine.lora_A.grad, layer.lora_A["default"].weight.grad),
                  (mine.lora_B.grad, layer.lora_B["default"].weight.grad)]
        if dora:
            pairs.append((mine.lora_magnitude.grad, layer.lora_magnitude_vector["default"].weight.grad))
    return pairs


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_outputs_and_gradients_equal_peft_in_training(dora, dropout):
    ours, theirs = adapted_pair(dora, dropout)
    ours.train(), theirs.train()
    x = torch.randn(5, 8)
    torch.manual_seed(1)  # one dropout mask per layer, drawn in the same order by both
    mine = ours(x)
    torch.manual_seed(1)
    expected = theirs(x)
    torch.testing.assert_close(mine, expected, rtol=1e-6, atol=1e-6)
    mine.square().sum().backward()
    expected.square().sum().backward()
    for grad, reference in adapter_grads(ours, theirs, dora):
        torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_eval_outputs_and_merged_weights_equal_peft(dora):
    ours, theirs = adapted_pair(dora, dropout=0.5)
    ours.eval(), theirs.eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
        merge_lora(ours)
        merged = theirs.merge_and_unload()
        assert not any(isinstance(module, LoRALinear) for module in ours.modules())
        for name in TARGETS:
            torch.testing.assert_close(ours.get_submodule(name).weight, merged.get_submodule(name).weight,
                                       rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours(x), merged(x), rtol=1e-6, atol=1e-6)
