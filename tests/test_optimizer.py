"""Our AdamW against the course definition and torch.optim.AdamW."""
import io
import math

import pytest
import torch

from optimizer import AdamW

SHAPES = [(7,), (5, 3), (4, 3, 2), ()]
BETAS = (0.9, 0.999)
# The fused kernel decays in another way on CUDA (see optimizer.py): the definition tests run there too.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA GPU"))]


def make_params(seed: int = 0, std: float = 1.0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen) * std).to(dtype) for s in SHAPES]


def make_grads(gen: torch.Generator, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]


def two_groups(params, lrs, wds) -> list[dict]:
    # first two params in one group, the rest in another
    return [
        dict(params=params[:2], lr=lrs[0], weight_decay=wds[0]),
        dict(params=params[2:], lr=lrs[1], weight_decay=wds[1]),
    ]


def leaves(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone().requires_grad_() for t in tensors]


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def reference_step(p, g, state, lr, eps, wd, betas=BETAS, correct_bias=True):
    """The definition, one parameter at a time, with in-place ops in the definition's order, like the
    original HF/CS224N loop (mul_().add_(), addcmul_, addcdiv_, add_(p, alpha))."""
    beta1, beta2 = betas
    state["t"] += 1
    t, m, v = state["t"], state["m"], state["v"]
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) if correct_bias else lr
    p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
    p.add_(p, alpha=-lr * wd)


def assert_equal_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The fused kernel computes the definition's maths in another order, and float32 rounding over 1,000
    steps is chaotic: results drift by a few ulp (here up to 3.6e-7, 1.5 ulp of the largest |p| ~ 2.6).
    1e-6 bounds that; the float64 test below checks the maths itself to 1e-12."""
    assert (actual.detach() - expected).abs().max().item() <= 1e-6


def new_state(p: torch.Tensor) -> dict:
    return dict(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_reference_definition_over_1000_steps(contiguous, device):
    lrs, wds, eps = (1e-2, 3e-3), (0.1, 0.01), 1e-6
    init = make_params()
    if not contiguous:  # e.g. a transposed weight
        init[1] = init[1].t().contiguous().t()
    ours = leaves([p.to(device) for p in init])
    opt = AdamW(two_groups(ours, lrs, wds), betas=BETAS, eps=eps)
    ref = [p.clone() for p in init]
    ref_states = [new_state(p) for p in ref]
    group_of = [0, 0, 1, 1]

    gen = torch.Generator().manual_seed(1)
    for _ in range(1000):
        grads = make_grads(gen)
        set_grads(ours, [g.to(device) for g in grads])
        opt.step()
        for i, (p, g) in enumerate(zip(ref, grads)):
            reference_step(p, g, ref_states[i], lrs[group_of[i]], eps, wds[group_of[i]])

    for p, r in zip(ours, ref):
        assert_equal_up_to_rounding(p.cpu(), r)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_plain_arithmetic_definition_in_float64(device):
    # Independent of op order: the definition written with Python operators, in float64.
    lrs, wds, eps = (1e-2, 3e-3), (0.1, 0.01), 1e-6
    beta1, beta2 = BETAS
    init = make_params(dtype=torch.float64)
    ours = leaves([p.to(device) for p in init])
    opt = AdamW(two_groups(ours, lrs, wds), betas=BETAS, eps=eps)
    ref = [p.clone() for p in init]
    m = [torch.zeros_like(p) for p in init]
    v = [torch.zeros_like(p) for p in init]

    gen = torch.Generator().manual_seed(1)
    for t in range(1, 1001):
        grads = make_grads(gen, torch.float64)
        set_grads(ours, [g.to(device) for g in grads])
        opt.step()
        for i, g in enumerate(grads):
            lr, wd = lrs[i // 2], wds[i // 2]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            ref[i] = ref[i] - step_size * m[i] / (torch.sqrt(v[i]) + eps)
            ref[i] = ref[i] - lr * wd * ref[i]

    for p, r in zip(ours, ref):
        assert (p.detach().cpu() - r).abs().max().item() <= 1e-12


def test_close_to_torch_adamw():
    # GPT-2-like setup: N(0, 0.02) init, lr ~1e-3, decay on one group only, eps=1e-8.
    # The two differ only by (a) torch decaying p before the Adam update, we after:
    # (p - u)(1 - lr*wd) vs p(1 - lr*wd) - u, a gap of lr*wd*|u| <= lr^2*wd*|m_hat/sqrt(v_hat)|
    # per step, so <= T*lr^2*wd = 1e-5 over T = 1000 steps with |m_hat/sqrt(v_hat)| <~ 1
    # (and far less with random-sign gradients); (b) torch rounding 1 - lr*wd to float32,
    # <= 3e-8*|p| per step, ~3e-6 in total for |p| <~ 0.1; (c) eps placement (sqrt(v_hat) + eps vs
    # sqrt(v) + eps), a relative change <~ 3e-7 in each update for |g| ~ 1. Sum < 2e-5.
    lrs, wds, eps = (1e-3, 5e-4), (0.01, 0.0), 1e-8
    init = make_params(std=0.02)
    ours, theirs = leaves(init), leaves(init)
    opt = AdamW(two_groups(ours, lrs, wds), betas=BETAS, eps=eps)
    torch_opt = torch.optim.AdamW(two_groups(theirs, lrs, wds), betas=BETAS, eps=eps, foreach=True)

    gen = torch.Generator().manual_seed(1)
    for _ in range(1000):
        grads = make_grads(gen)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        torch_opt.step()

    for p, q in zip(ours, theirs):
        assert (p - q).abs().max().item() <= 2e-5


def test_state_dict_round_trip_continues_identically():
    lrs, wds = (1e-2, 3e-3), (0.1, 0.01)
    n, m = 7, 5
    gen = torch.Generator().manual_seed(1)
    all_grads = [make_grads(gen) for _ in range(n + m)]

    straight = leaves(make_params())
    straight_opt = AdamW(two_groups(straight, lrs, wds))
    for grads in all_grads:
        set_grads(straight, grads)
        straight_opt.step()

    first = leaves(make_params())
    first_opt = AdamW(two_groups(first, lrs, wds))
    for grads in all_grads[:n]:
        set_grads(first, grads)
        first_opt.step()
    buf = io.BytesIO()
    torch.save(first_opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed = leaves([p.detach() for p in first])
    # built with default hyper-parameters on purpose: the group values must come from the state dict
    resumed_opt = AdamW(two_groups(resumed, (1.0, 1.0), (0.0, 0.0)))
    resumed_opt.load_state_dict(saved)
    for grads in all_grads[n:]:
        set_grads(resumed, grads)
        resumed_opt.step()

    for p, q in zip(resumed, straight):
        assert torch.equal(p, q)
    for p, q in zip(resumed, straight):
        s, t = resumed_opt.state[p], straight_opt.state[q]
        assert int(s["step"]) == int(t["step"]) == n + m
        assert torch.equal(s["exp_avg"], t["exp_avg"])
        assert torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])


def test_params_with_different_step_counts_in_one_group_match_reference():
    # p0 gets 3 steps alone first, so the group then holds params at different step counts
    lr, wd, eps = 1e-2, 0.1, 1e-6
    init = make_params()[:2]
    ours = leaves(init)
    opt = AdamW(ours, lr=lr, weight_decay=wd, eps=eps)
    ref = [p.clone() for p in init]
    ref_states = [new_state(p) for p in ref]

    gen = torch.Generator().manual_seed(1)
    for step in range(10):
        grads = make_grads(gen)[:2]
        active = [0] if step < 3 else [0, 1]
        for i, p in enumerate(ours):
            p.grad = grads[i].clone() if i in active else None
        opt.step()
        for i in active:
            reference_step(ref[i], grads[i], ref_states[i], lr, eps, wd)

    assert opt.state[ours[0]]["step"] == 10 and opt.state[ours[1]]["step"] == 7
    for p, r in zip(ours, ref):
        assert_equal_up_to_rounding(p, r)


def test_groups_that_agree_share_one_fused_call_per_step(monkeypatch):
    calls = []
    fused = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda params, *args, **kwargs: calls.append(len(params))
                        or fused(params, *args, **kwargs))
    params = leaves(make_params())
    AdamW(two_groups(params, (1e-3, 1e-3), (0.1, 0.1))).step()  # e.g. one group per layer, same settings
    set_grads(params, make_grads(torch.Generator().manual_seed(0)))
    opt = AdamW(two_groups(params, (1e-3, 1e-3), (0.1, 0.1)))
    opt.step()
    assert calls == [4]
    opt.param_groups[1]["lr"] = 5e-4
    opt.step()
    assert calls == [4, 2, 2]


def test_correct_bias_false_uses_plain_lr():
    lr, eps = 1e-2, 1e-6
    beta1, beta2 = BETAS
    p0 = torch.tensor([0.5, -1.0, 2.0])
    g = torch.tensor([0.3, -2.0, 1e-3])

    p = p0.clone().requires_grad_()
    p.grad = g.clone()
    AdamW([p], lr=lr, betas=BETAS, eps=eps, correct_bias=False).step()

    m, v = (1 - beta1) * g.double(), (1 - beta2) * g.double() ** 2
    expected = p0.double() - lr * m / (v.sqrt() + eps)
    torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-6)
    # the bias-corrected first step would be ~lr * sign(g); the uncorrected one is ~3.16x that
    assert not torch.allclose(p.detach(), p0 - lr * g.sign(), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1e-3), "learning rate"),
        (dict(eps=-1e-8), "epsilon"),
        (dict(betas=(-0.1, 0.999)), "beta"),
        (dict(betas=(1.0, 0.999)), "beta"),
        (dict(betas=(0.9, 1.0)), "beta"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(kwargs, match):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        AdamW([p], **kwargs)
    # per-group overrides are validated as well
    with pytest.raises(ValueError, match=match):
        AdamW([dict(params=[p], **kwargs)])


def test_sparse_gradient_raises_runtime_error():
    p = torch.zeros(4, 2, requires_grad=True)
    p.grad = torch.ones(4, 2).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients.*SparseAdam"):
        AdamW([p]).step()


def test_params_without_grad_are_left_untouched():
    with_grad, without_grad = leaves([torch.ones(3), torch.ones(3)])
    with_grad.grad = torch.ones(3)
    opt = AdamW([with_grad, without_grad], lr=1e-2, weight_decay=0.1)
    opt.step()
    assert torch.equal(without_grad, torch.ones(3))
    assert without_grad not in opt.state
    assert not torch.equal(with_grad, torch.ones(3))


def test_step_evaluates_closure_with_grad_enabled_and_returns_its_loss():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = AdamW([p], lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    assert torch.all(p.abs() < torch.tensor([1.0, 2.0]))
