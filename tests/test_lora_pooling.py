"""LoRA and DoRA adapters on our GPT-2, and the poolers that feed a classification head."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.gpt2 import GPT2Model
from modules.lora import LORA_TARGETS, DoRALinear, LoRALinear, apply_lora, merge_lora
from modules.pooling import POOLING, Pooler
from tests.conftest import tiny_gpt2


def right_padded_batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 50257, (len(lengths), max(lengths)), generator=generator)
    attention_mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return input_ids, attention_mask


def language_model_loss(model: GPT2Model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    logits = model.hidden_state_to_token(model(input_ids, attention_mask)["last_hidden_state"])
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())


def train_lora(model: GPT2Model, steps: int, lr: float = 1e-2) -> None:
    """A few AdamW steps on next-token loss. The optimizer is handed every parameter on purpose:
    freezing, not the caller's parameter list, must keep the base weights fixed."""
    input_ids, attention_mask = right_padded_batch([12, 7])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        language_model_loss(model, input_ids, attention_mask).backward()
        optimizer.step()
    model.eval()


def outputs(model: GPT2Model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(*right_padded_batch([10, 4, 7], seed=3))


def lora_parameter_names(model: nn.Module) -> set[str]:
    adapter = ("lora_A", "lora_B", "lora_magnitude")
    return {name for name, _ in model.named_parameters() if name.endswith(adapter)}


def test_freshly_wrapped_model_gives_identical_outputs():
    model = tiny_gpt2().eval()
    before = outputs(model)
    apply_lora(model, LORA_TARGETS)
    after = outputs(model)
    for key in before:
        assert torch.equal(before[key], after[key])


def test_apply_lora_wraps_named_layers_and_leaves_only_lora_trainable():
    model = tiny_gpt2().eval()
    replaced = apply_lora(model, ["query", "value", "out_dense"], rank=4)
    assert replaced == [f"layers.{i}.{name}" for i in range(2)
                        for name in ("self_attention.query", "self_attention.value", "feed_forward.out_dense")]
    assert all(isinstance(model.get_submodule(name), LoRALinear) for name in replaced)
    assert isinstance(model.layers[0].self_attention.key, nn.Linear)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == lora_parameter_names(model)
    assert len(trainable) == 2 * len(replaced)
    assert model.layers[0].self_attention.query.lora_A.shape == (4, 64)
    assert model.layers[0].feed_forward.out_dense.lora_B.shape == (64, 4)


def test_freshly_dora_wrapped_model_gives_the_same_outputs():
    model = tiny_gpt2().eval()
    before = outputs(model)
    apply_lora(model, LORA_TARGETS, dora=True)
    after = outputs(model)
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0)


def test_apply_dora_leaves_only_factors_and_magnitudes_trainable():
    model = tiny_gpt2().eval()
    replaced = apply_lora(model, ["query", "interm_dense"], rank=4, dora=True)
    assert all(isinstance(model.get_submodule(name), DoRALinear) for name in replaced)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == lora_parameter_names(model)
    assert len(trainable) == 3 * len(replaced)
    interm_dense = model.layers[0].feed_forward.interm_dense
    assert interm_dense.lora_magnitude.shape == (256,)
    torch.testing.assert_close(interm_dense.lora_magnitude, interm_dense.base.weight.norm(dim=1))


def test_apply_lora_rejects_unknown_targets_and_bad_rank():
    with pytest.raises(ValueError, match="query, key, value, dense, interm_dense, out_dense"):
        apply_lora(tiny_gpt2(), ["query", "c_attn"])
    with pytest.raises(ValueError, match="non-empty"):
        apply_lora(tiny_gpt2(), [])
    with pytest.raises(ValueError, match="rank"):
        apply_lora(tiny_gpt2(), ["query"], rank=0)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_training_changes_only_lora_parameters(dora):
    model = tiny_gpt2().eval()
    apply_lora(model, LORA_TARGETS, rank=4, dora=dora)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    train_lora(model, steps=3)
    lora = lora_parameter_names(model)
    for name, param in model.named_parameters():
        if name in lora:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert param.grad is None and torch.equal(param, before[name]), f"base weight {name} changed"


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merged_model_matches_unmerged_and_has_no_adapters_left(dora):
    model = tiny_gpt2().eval()
    original = outputs(model)
    apply_lora(model, LORA_TARGETS, rank=4, dora=dora)
    train_lora(model, steps=5)
    unmerged = outputs(model)
    assert not torch.allclose(unmerged["last_token"], original["last_token"], atol=1e-3)
    merge_lora(model)
    merged = outputs(model)
    for key in unmerged:
        torch.testing.assert_close(merged[key], unmerged[key], atol=1e-5, rtol=0)
    assert not any(isinstance(module, LoRALinear) for module in model.modules())
    assert model.state_dict().keys() == tiny_gpt2().state_dict().keys()


@pytest.mark.parametrize("wrapper", [LoRALinear, DoRALinear])
def test_adapter_parameters_follow_base_layer_dtype_and_device(wrapper):
    wrapped = wrapper(nn.Linear(8, 4, dtype=torch.bfloat16), rank=2, alpha=4, dropout=0.0)
    assert all(param.dtype == torch.bfloat16 for param in wrapped.parameters(recurse=False))
    on_meta = wrapper(nn.Linear(8, 4, device="meta"), rank=2, alpha=4, dropout=0.0)
    assert all(param.is_meta for param in on_meta.parameters(recurse=False))


def test_merged_linear_computes_base_plus_scaled_update():
    torch.manual_seed(0)
    wrapped = LoRALinear(nn.Linear(8, 4), rank=2, alpha=6, dropout=0.5).eval()
    nn.init.normal_(wrapped.lora_B)
    x = torch.randn(3, 8)
    expected = wrapped.base(x) + x @ wrapped.lora_A.T @ wrapped.lora_B.T * 3.0
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), expected)
        torch.testing.assert_close(wrapped.merged()(x), expected)


def trained_looking_dora(dropout: float) -> DoRALinear:
    """A DoRA layer whose B and magnitude have moved away from their initial values."""
    torch.manual_seed(0)
    wrapped = DoRALinear(nn.Linear(8, 4), rank=2, alpha=6, dropout=dropout)
    nn.init.normal_(wrapped.lora_B)
    with torch.no_grad():
        wrapped.lora_magnitude.mul_(torch.rand(4) + 0.5)
    return wrapped


def updated_weight(wrapped: DoRALinear) -> torch.Tensor:
    """`V = W0 + scale * B A`, written out from the definition."""
    return wrapped.base.weight + wrapped.scale * wrapped.lora_B @ wrapped.lora_A


def test_dora_linear_computes_magnitude_times_unit_rows_and_merges_to_them():
    wrapped = trained_looking_dora(dropout=0.5).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        updated = updated_weight(wrapped)
        weight = wrapped.lora_magnitude[:, None] * updated / updated.norm(dim=1, keepdim=True)
        expected = x @ weight.T + wrapped.base.bias
        merged = wrapped.merged()
        torch.testing.assert_close(wrapped(x), expected)
        torch.testing.assert_close(merged(x), expected)
    torch.testing.assert_close(merged.weight.norm(dim=1), wrapped.lora_magnitude.detach())


def test_dora_with_everything_dropped_is_the_base_layer():
    """As in PEFT, dropout applies to the magnitude's correction as well as to the low-rank path."""
    wrapped = trained_looking_dora(dropout=1.0).train()
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), wrapped.base(x))


def test_dora_treats_the_norm_as_a_constant_in_backprop():
    wrapped = trained_looking_dora(dropout=0.0)
    x = torch.randn(3, 8)
    wrapped(x).sum().backward()
    with torch.no_grad():
        # d sum(y) / dB with ||V|| held fixed: y = m / ||V|| * (W0 x + scale * B A x) + bias.
        rescale = wrapped.lora_magnitude / updated_weight(wrapped).norm(dim=1)
        expected = wrapped.scale * rescale[:, None] * (x @ wrapped.lora_A.T).sum(0)[None]
    torch.testing.assert_close(wrapped.lora_B.grad, expected)


def test_dora_merged_weight_rows_have_the_learned_magnitudes():
    model = tiny_gpt2().eval()
    replaced = apply_lora(model, LORA_TARGETS, rank=4, dora=True)
    train_lora(model, steps=3)
    magnitudes = {name: model.get_submodule(name).lora_magnitude.detach().clone() for name in replaced}
    merge_lora(model)
    for name, magnitude in magnitudes.items():
        torch.testing.assert_close(model.get_submodule(name).weight.norm(dim=1), magnitude)


# Pooling

LENGTHS = torch.tensor([5, 2, 7])


def hidden_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, 16, generator=generator)
    attention_mask = (torch.arange(7)[None] < LENGTHS[:, None]).long()
    last_token = hidden[torch.arange(3), LENGTHS - 1]
    return hidden, attention_mask, last_token


def with_garbage_pads(hidden: torch.Tensor, attention_mask: torch.Tensor, fill: float | None) -> torch.Tensor:
    """Pad states overwritten with `fill`, or with large random vectors when `fill` is None."""
    pads = (attention_mask == 0)[..., None]
    if fill is None:
        garbage = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(9)) * 1e4
    else:
        garbage = torch.full_like(hidden, fill)
    return torch.where(pads, garbage, hidden)


@pytest.mark.parametrize("method", POOLING)
@pytest.mark.parametrize("fill", [None, float("nan"), float("inf")], ids=["large-noise", "nan", "inf"])
def test_pooling_ignores_padding_contents(method, fill):
    torch.manual_seed(0)
    pooler = Pooler(16, method)
    hidden, attention_mask, last_token = hidden_batch()
    with torch.no_grad():
        clean = pooler(hidden, attention_mask, last_token)
        noisy = pooler(with_garbage_pads(hidden, attention_mask, fill), attention_mask, last_token)
    assert torch.isfinite(noisy).all()
    torch.testing.assert_close(noisy, clean)


def test_mean_and_max_pool_over_real_tokens_only():
    hidden, attention_mask, last_token = hidden_batch()
    mean = Pooler(16, "mean")(hidden, attention_mask, last_token)
    largest = Pooler(16, "max")(hidden, attention_mask, last_token)
    for row, length in enumerate(LENGTHS):
        torch.testing.assert_close(mean[row], hidden[row, :length].mean(0))
        torch.testing.assert_close(largest[row], hidden[row, :length].amax(0))


def test_pooling_without_mask_uses_every_token():
    hidden, _, last_token = hidden_batch()
    torch.testing.assert_close(Pooler(16, "mean")(hidden, None, last_token), hidden.mean(1))


def test_last_pooling_returns_models_last_token():
    model = tiny_gpt2().eval()
    input_ids, attention_mask = right_padded_batch([9, 3])
    with torch.no_grad():
        out = model(input_ids, attention_mask)
    pooled = Pooler(64, "last")(out["last_hidden_state"], attention_mask, out["last_token"])
    assert torch.equal(pooled, out["last_token"])


def test_attention_weights_sum_to_one_over_real_tokens():
    torch.manual_seed(0)
    pooler = Pooler(16, "attention")
    hidden, attention_mask, last_token = hidden_batch()
    with torch.no_grad():
        weights = pooler.attention_weights(hidden, attention_mask)
        pooled = pooler(hidden, attention_mask, last_token)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert (weights[attention_mask == 0] == 0).all()
    assert (weights[attention_mask == 1] > 0).all()
    torch.testing.assert_close(pooled, (weights[..., None] * hidden).sum(1))


def test_attention_pooling_is_learnable():
    torch.manual_seed(0)
    pooler = Pooler(16, "attention")
    hidden, attention_mask, last_token = hidden_batch()
    pooler(hidden, attention_mask, last_token).sum().backward()
    assert pooler.score.weight.grad is not None and pooler.score.weight.grad.abs().sum() > 0


def test_mix_pooling_starts_as_an_even_mix_of_mean_and_last_token_and_learns_the_mix():
    hidden, attention_mask, last_token = hidden_batch()
    mean = Pooler(16, "mean")(hidden, attention_mask, last_token)
    pooler = Pooler(16, "mix")
    pooled = pooler(hidden, attention_mask, last_token)
    torch.testing.assert_close(pooled, 0.5 * mean + 0.5 * last_token)
    pooled.sum().backward()
    assert pooler.mix_logit.grad is not None and pooler.mix_logit.grad != 0
    with torch.no_grad():
        pooler.mix_logit.fill_(2.0)
        weight = torch.sigmoid(torch.tensor(2.0))
        pooled = pooler(hidden, attention_mask, last_token)
    torch.testing.assert_close(pooled, weight * mean + (1 - weight) * last_token)


def test_unknown_pooling_method_raises():
    with pytest.raises(ValueError, match="last, mean, max, attention, mix"):
        Pooler(16, "cls")
