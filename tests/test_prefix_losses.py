"""Prefix-tuning and the language-model losses."""
import torch

from models.decoding import greedy_decode
from models.gpt2 import GPT2Model
from modules.losses import language_model_loss, unlikelihood_loss
from modules.prefix import add_prefix
from optimizer import AdamW
from tests.conftest import tiny_gpt2


def tiny_model() -> GPT2Model:
    return tiny_gpt2(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def lm_loss(model: GPT2Model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model.hidden_state_to_token(model(input_ids, mask)["last_hidden_state"])
    return language_model_loss(logits, input_ids, mask)


def test_prefix_tuning_trains_only_the_prefix_and_changes_the_output():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    input_ids = torch.randint(0, 50257, (3, 9))
    with torch.no_grad():
        plain = model(input_ids)["last_hidden_state"]
    add_prefix(model, length=4)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prefix.keys", "prefix.values"}
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    mask = torch.ones_like(input_ids)
    losses = []
    for _ in range(5):
        loss = lm_loss(model, input_ids, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if not k.startswith("prefix."))
    with torch.no_grad():
        assert not torch.allclose(model(input_ids)["last_hidden_state"], plain)


def test_prefix_decoding_with_cache_equals_recomputation():
    model = tiny_model()
    add_prefix(model, length=3)
    prompts = torch.randint(0, 50257, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert torch.equal(greedy_decode(model, prompts, 10, mask), greedy_decode(model, prompts, 10, mask, use_cache=False))


def test_more_padding_leaves_the_language_model_loss_unchanged():
    model = tiny_model().eval()
    input_ids = torch.randint(0, 50257, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    padded_ids = torch.cat([input_ids, torch.full((2, 5), 50256)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(lm_loss(model, padded_ids, padded_mask), lm_loss(model, input_ids, mask))


def test_unlikelihood_penalises_exactly_the_earlier_distinct_tokens():
    # Vocabulary of 4; the row is tokens 1, 2, 1, 3 with uniform predictions (p = 1/4 everywhere).
    logits = torch.zeros(1, 4, 4)
    input_ids = torch.tensor([[1, 2, 1, 3]])
    mask = torch.ones_like(input_ids)
    # Step 0 (target 2): candidate {1}. Step 1 (target 1): {2} (1 is the target). Step 2 (target 3): {1, 2}.
    expected = -4 * torch.log1p(torch.tensor(-0.25)) / 3
    torch.testing.assert_close(unlikelihood_loss(logits, input_ids, mask), expected)
    mask[0, 3] = 0  # the last token becomes padding: step 2 is no longer scored
    torch.testing.assert_close(unlikelihood_loss(logits, input_ids, mask), -2 * torch.log1p(torch.tensor(-0.25)) / 2)
