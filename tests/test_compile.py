"""torch.compile of the layers: each layer compiles whole (no graph break), and batches of any length reuse
one graph per mode and kind of mask. Dynamo runs with the "eager" backend or a counting one, so nothing is
compiled to C++ and the tests stay fast on a CPU."""
import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from models.gpt2 import GPT2Model, mark_lengths_dynamic
from modules.gpt2_layer import GPT2Layer
from modules.lora import LORA_TARGETS, apply_lora
from tests.conftest import tiny_config, tiny_gpt2

IMPLEMENTATIONS = ["sdpa", "eager"]
LENGTHS = [7, 11, 16, 23, 31, 40]  # six sequence lengths, as batches sorted by length would bring


class CountingBackend:
    """A torch.compile backend that runs the captured graph as it is, counting compilations and calls."""

    def __init__(self):
        self.compiles = 0
        self.calls = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiles += 1

        def run(*args):
            self.calls += 1
            return graph.forward(*args)
        return run


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def padded_batch(length: int, left: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows, the longest `length` tokens, the others shorter; right-padded unless `left`."""
    generator = torch.Generator().manual_seed(seed + length)
    lengths = torch.tensor([length, length - 3, length // 2])
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    if left:
        mask = mask.flip(-1)
    ids = torch.randint(0, 50257, (3, length), generator=generator).masked_fill(mask == 0, 50256)
    return ids, mask


def layer_inputs(length: int, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = torch.randn(3, length, 64, generator=torch.Generator().manual_seed(length))
    mask = None
    if with_mask:  # the key mask of a left-padded batch, as GPT2Model builds it
        mask = GPT2Model.key_mask(padded_batch(length, left=True)[1], length, padding="left")
    return x, mask


def assert_no_graph_break() -> None:
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_layer_compiles_whole_once_per_mode_and_kind_of_mask(implementation):
    torch.manual_seed(0)
    layer = GPT2Layer(tiny_config(attn_implementation=implementation))
    backend = CountingBackend()
    compiled = torch.compile(layer, backend=backend, fullgraph=True)  # fullgraph: a graph break raises
    compiles = {}
    for training, grad in ((True, True), (False, False)):  # training, scoring
        layer.train(training)
        for with_mask in (False, True):
            before = backend.compiles
            for length in LENGTHS:
                x, mask = layer_inputs(length, with_mask)
                mark_lengths_dynamic(x, mask)
                with torch.set_grad_enabled(grad):
                    out = compiled(x, mask)
                    if grad:
                        out.sum().backward()
                    else:
                        torch.testing.assert_close(out, layer(x, mask), atol=1e-6, rtol=0)
            compiles[training, with_mask] = backend.compiles - before
    assert compiles == {key: 1 for key in compiles}
    assert backend.calls == 4 * len(LENGTHS)
    assert_no_graph_break()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_automatic_dynamic_shapes_compile_a_layer_at_most_twice(implementation):
    """Without marking the lengths dynamic, dynamo compiles the first shape as it is and the second one with
    symbolic sizes; that second graph must hold whole too (`is_causal` is no symbolic bool)."""
    torch.manual_seed(0)
    layer = GPT2Layer(tiny_config(attn_implementation=implementation)).eval()
    backend = CountingBackend()
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    with torch.no_grad():
        for with_mask in (False, True):
            before = backend.compiles
            for length in LENGTHS:
                compiled(*layer_inputs(length, with_mask))
            assert backend.compiles - before <= 2
    assert_no_graph_break()


def train_and_score(model: GPT2Model, padding: str | None, seed: int = 0) -> tuple[list, list, dict]:
    """Training steps (train mode, with grad) over batches of six lengths, then scoring (eval, no grad);
    the losses, the scores and the gradients."""
    losses = []
    model.train()
    for length in LENGTHS:
        ids, mask = padded_batch(length, seed=seed)
        torch.manual_seed(length)  # the same dropout masks in every model
        out = model(ids, mask, padding=padding)
        loss = model.hidden_state_to_token(out["last_hidden_state"]).logsumexp(-1).mean() + out["last_token"].sum()
        loss.backward()
        losses.append(loss.detach())
    model.eval()
    with torch.no_grad():
        scores = [model(*padded_batch(length, seed=seed + 1), padding=padding)["last_token"] for length in LENGTHS]
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return losses, scores, grads


@pytest.mark.parametrize("padding", ["right", None])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_layers_serve_training_and_scoring_with_one_graph_each(padding, checkpointing):
    model = tiny_gpt2()
    eager = copy.deepcopy(model)
    model.activation_checkpointing = eager.activation_checkpointing = checkpointing
    backend = CountingBackend()
    model.compile_layers(backend=backend, fullgraph=True)
    losses, scores, grads = train_and_score(model, padding)
    # Right-padded batches need no key mask: one graph for training, one for scoring, all lengths and layers.
    assert backend.compiles == 2
    runs = 2 if checkpointing else 1  # checkpointing runs each layer again in the backward pass
    assert backend.calls == len(LENGTHS) * model.config.num_hidden_layers * (runs + 1)
    assert_no_graph_break()
    eager_losses, eager_scores, eager_grads = train_and_score(eager, padding)
    torch.testing.assert_close(losses, eager_losses, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores, eager_scores, atol=1e-5, rtol=0)
    assert grads.keys() == eager_grads.keys()
    torch.testing.assert_close(grads, eager_grads, atol=1e-5, rtol=1e-4)
    assert list(model.state_dict()) == list(eager.state_dict())  # the compiled layers save under their own names


def test_left_padded_scoring_adds_one_graph_and_matches_eager():
    model = tiny_gpt2().eval()
    backend = CountingBackend()
    model.compile_layers(backend=backend, fullgraph=True)
    with torch.no_grad():
        for length in LENGTHS:
            ids, mask = padded_batch(length, left=True)
            compiled = model(ids, mask, padding="left")["last_token"]
            model.compiled_layers, layers = [], model.compiled_layers
            torch.testing.assert_close(compiled, model(ids, mask)["last_token"], atol=1e-5, rtol=0)
            model.compiled_layers = layers
    assert backend.compiles == 1
    assert_no_graph_break()


@pytest.mark.parametrize("dora", [False, True])
def test_lora_and_dora_layers_compile_whole(dora):
    model = tiny_gpt2()
    apply_lora(model, LORA_TARGETS, rank=4, dora=dora)
    backend = CountingBackend()
    model.compile_layers(backend=backend, fullgraph=True)
    train_and_score(model, "right")
    # The embeddings are frozen, so the first layer's input needs no gradient and the others' do: training
    # takes two graphs, one for the first layer and one for the rest; scoring one.
    assert backend.compiles == 3
    assert_no_graph_break()


def test_cached_decoding_stays_eager():
    model = tiny_gpt2().eval()
    backend = CountingBackend()
    model.compile_layers(backend=backend, fullgraph=True)
    ids, mask = padded_batch(9, left=True)
    with torch.no_grad():
        cache = model.new_cache(12)
        model(ids, mask, cache)
        model(ids[:, :1], torch.cat([mask, mask[:, :1]], dim=1), cache)
    assert backend.compiles == backend.calls == 0
