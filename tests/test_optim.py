"""peftcore.optim against torch.optim.AdamW, transformers' linear warm-up schedule and
torch.nn.utils.clip_grad_norm_ (reference libraries are optional: importorskip)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import peftcore
from peftcore import Parameter, _C
from peftcore.optim import AdamW, LambdaLR, clip_grad_norm_, get_linear_schedule_with_warmup

SHAPES = [(5, 3), (7,), (2, 3, 4), (1,)]


def _param(values, requires_grad=True):
    p = Parameter(_C.Tensor.zeros(tuple(np.shape(values))))
    p[...] = values
    p.requires_grad = requires_grad
    return p


def _values(seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _grads(step, shapes=SHAPES):
    """Gradients that change sign and scale from step to step (exercise m and v)."""
    rng = np.random.default_rng(1000 + step)
    return [(rng.standard_normal(s) * (0.1 + step % 3)).astype(np.float32) for s in shapes]


def _torch():
    return pytest.importorskip("torch")


# ------------------------------------------------------------------ AdamW vs torch

def _run_both(steps, group_spec, hyper, frozen=(), gradless=()):
    """Run peftcore's and torch's AdamW side by side on the same values and gradients.
    group_spec: list of (param indices, group overrides). Returns (ours, theirs) arrays."""
    torch = _torch()
    values = _values(0)
    ours = [_param(v, requires_grad=i not in frozen) for i, v in enumerate(values)]
    theirs = [torch.nn.Parameter(torch.tensor(v), requires_grad=i not in frozen)
              for i, v in enumerate(values)]
    opt = AdamW([{"params": [ours[i] for i in idx], **over} for idx, over in group_spec], **hyper)
    topt = torch.optim.AdamW([{"params": [theirs[i] for i in idx if i not in frozen], **over}
                              for idx, over in group_spec], **hyper)
    for step in range(steps):
        for i, g in enumerate(_grads(step)):
            if i in gradless:
                continue
            if i not in frozen:
                theirs[i].grad = torch.tensor(g)
            ours[i].grad = g  # a frozen parameter may carry a stale grad: still skipped
        opt.step()
        topt.step()
    return opt, ours, [t.detach().numpy() for t in theirs]


@pytest.mark.parametrize("hyper", [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    dict(lr=5e-2, weight_decay=0.0),
])
def test_adamw_matches_torch(hyper):
    opt, ours, theirs = _run_both(20, [([0, 1, 2, 3], {})], hyper)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"param {i}")
        assert np.abs(a - _values(0)[i]).max() > 5e-4  # they really moved
    assert all(st["step"] == 20 for st in opt.state.values()) and len(opt.state) == 4


def test_adamw_param_groups_frozen_and_gradless_params():
    groups = [([0, 1], dict(lr=2e-2, weight_decay=0.0)),
              ([2, 3], dict(lr=5e-3, weight_decay=0.3, betas=(0.85, 0.99)))]
    opt, ours, theirs = _run_both(20, groups, dict(lr=1e-3), frozen={1}, gradless={3})
    original = _values(0)
    for i in (0, 2):
        np.testing.assert_allclose(ours[i], theirs[i], rtol=1e-6, atol=1e-6, err_msg=f"param {i}")
    np.testing.assert_array_equal(ours[1], original[1])  # requires_grad False: untouched
    np.testing.assert_array_equal(ours[3], original[3])  # never had a grad: untouched
    assert set(opt.state) == {id(ours[0].tensor), id(ours[2].tensor)}  # no state for skipped
    assert [g["lr"] for g in opt.param_groups] == [2e-2, 5e-3]
    assert opt.param_groups[1]["betas"] == (0.85, 0.99)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)  # default filled in


def test_adamw_accepts_named_parameters_and_model_parameters():
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(model_type="bert", vocab_size=20, hidden_size=8, num_hidden_layers=1,
             num_attention_heads=2, intermediate_size=16, max_position_embeddings=8))
    a = AdamW(model.named_parameters(), lr=1e-3)
    b = AdamW(model.parameters(), lr=1e-3)
    assert [id(t) for t in a.param_groups[0]["params"]] == [id(t) for t in b.param_groups[0]["params"]]
    with pytest.raises(TypeError):
        AdamW([np.zeros(3, np.float32)])


def _fresh(seed=0):
    return [_param(v) for v in _values(seed)]


def _steps(opt, params, start, stop):
    for step in range(start, stop):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        opt.step()


def test_state_dict_round_trip_continues_identically():
    hyper = dict(lr=1e-2, betas=(0.85, 0.98), weight_decay=0.05)
    whole = _fresh()
    opt = AdamW([{"params": whole[:2]}, {"params": whole[2:], "lr": 3e-3}], **hyper)
    _steps(opt, whole, 0, 20)

    first = _fresh()
    opt1 = AdamW([{"params": first[:2]}, {"params": first[2:], "lr": 3e-3}], **hyper)
    _steps(opt1, first, 0, 10)
    state = opt1.state_dict()
    assert sorted(state["state"]) == [0, 1, 2, 3]
    assert all(s["step"] == 10 for s in state["state"].values())
    assert [g["params"] for g in state["param_groups"]] == [[0, 1], [2, 3]]
    # the saved state is a copy: further steps of opt1 do not change it
    saved_m = state["state"][0]["exp_avg"].copy()
    _steps(opt1, first, 10, 11)
    np.testing.assert_array_equal(state["state"][0]["exp_avg"], saved_m)

    # a new process: new parameters holding the values at step 10, a new optimizer
    resumed = _fresh()
    replay = _fresh()
    opt_replay = AdamW([{"params": replay[:2]}, {"params": replay[2:], "lr": 3e-3}], **hyper)
    _steps(opt_replay, replay, 0, 10)
    for p, q in zip(resumed, replay):
        p[...] = q
    opt2 = AdamW([{"params": resumed[:2]}, {"params": resumed[2:], "lr": 99.0}], lr=1.0)
    opt2.load_state_dict(state)
    assert opt2.param_groups[1]["lr"] == 3e-3 and opt2.param_groups[0]["betas"] == (0.85, 0.98)
    _steps(opt2, resumed, 10, 20)
    for a, b in zip(resumed, whole):
        np.testing.assert_array_equal(a, b)


def test_load_state_dict_rejects_mismatches():
    params = _fresh()
    opt = AdamW(params, lr=1e-2)
    _steps(opt, params, 0, 2)
    state = opt.state_dict()
    with pytest.raises(ValueError):
        AdamW(_fresh()[:3], lr=1e-2).load_state_dict(state)
    other = [_param(v) for v in _values(0, [(5, 3), (7,), (2, 3, 4), (2,)])]
    with pytest.raises(ValueError, match="shape"):
        AdamW(other, lr=1e-2).load_state_dict(state)


def test_zero_grad():
    params = _fresh()
    opt = AdamW(params)
    for p, g in zip(params, _grads(0)):
        p.grad = g
    opt.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in params)
    opt.step()  # nothing to do: no grads, no state
    assert opt.state == {}
    np.testing.assert_array_equal(params[0], _values(0)[0])


@pytest.mark.parametrize("kwargs", [dict(lr=-1e-3), dict(lr=float("nan")), dict(betas=(1.0, 0.999)),
                                    dict(betas=(0.9, -0.1)), dict(eps=-1e-8),
                                    dict(weight_decay=-0.01)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_bad_hyper_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        AdamW(_fresh(), **kwargs)


def test_empty_parameter_list_raises():
    with pytest.raises(ValueError):
        AdamW([])


@pytest.mark.parametrize("make, error, match", [
    (lambda ps: AdamW(ps, betas=(0.9,)), ValueError, r"Invalid betas: \(0.9,\); expected two numbers"),
    (lambda ps: AdamW(ps, betas=0.9), ValueError, "Invalid betas: 0.9"),
    (lambda ps: AdamW(ps, lr=float("inf")), ValueError, "Invalid learning rate: inf"),
    (lambda ps: AdamW(ps, eps=float("nan")), ValueError, "Invalid epsilon value: nan"),
    (lambda ps: AdamW(ps, lr="1e-3"), ValueError, "Invalid learning rate: '1e-3'"),
    (lambda ps: AdamW([{"params": ps[:1], "lr": float("nan")}]), ValueError,
     "Invalid learning rate in param group 0: nan"),
    (lambda ps: AdamW([{"params": ps[:1]}, {"params": ps[1:], "betas": (0.9, 1.0)}]), ValueError,
     "Invalid betas in param group 1"),
    (lambda ps: AdamW([{"lr": 1e-3}]), ValueError, "param group 0 has no 'params' entry"),
    (lambda ps: AdamW([{"params": ps[:1]}, ps[1]]), TypeError, "not a mix"),
    (lambda ps: AdamW(ps + ps[:1]), ValueError, "appears more than once"),
    (lambda ps: AdamW([{"params": ps[:2]}, {"params": ps[1:]}]), ValueError,
     "appears more than once in param group 1"),
    (lambda ps: AdamW(ps[0]), TypeError, "got a single Parameter"),
], ids=["betas_one", "betas_scalar", "lr_inf", "eps_nan", "lr_str", "group_lr_nan",
        "group_betas", "group_without_params", "mixed", "duplicate", "duplicate_across_groups",
        "single_parameter"])
def test_bad_optimizer_arguments_name_the_problem(make, error, match):
    with pytest.raises(error, match=match):
        make(_fresh())


def test_a_refused_load_state_dict_changes_nothing():
    params = _fresh()
    for p, g in zip(params, _grads(0)):
        p.grad = g
    opt = AdamW(params, lr=1e-2)
    opt.step()
    good = opt.state_dict()
    before = {k: (v["step"], np.array(v["exp_avg"])) for k, v in opt.state.items()}
    lr = opt.param_groups[0]["lr"]
    bad_cases = [
        {"state": good["state"]},                                     # no param_groups
        {**good, "param_groups": [{**good["param_groups"][0], "lr": float("nan")}]},
        {**good, "state": {0: {**good["state"][0], "step": -1}}},
        {**good, "state": {0: {**good["state"][0], "exp_avg": np.zeros(1)}}},
        {**good, "state": {99: good["state"][0]}},
        [1, 2],
    ]
    for bad in bad_cases:
        with pytest.raises(ValueError):
            opt.load_state_dict(bad)
        assert opt.param_groups[0]["lr"] == lr
        assert {k: (v["step"], np.array(v["exp_avg"])) for k, v in opt.state.items()}.keys() == before.keys()
        for k, (step, m) in before.items():
            assert opt.state[k]["step"] == step
            np.testing.assert_array_equal(np.array(opt.state[k]["exp_avg"]), m)


def test_clip_grad_norm_refuses_a_negative_or_nan_max_norm():
    params = _fresh()
    for p, g in zip(params, _grads(0)):
        p.grad = g
    for bad in (-1.0, float("nan"), None):
        with pytest.raises(ValueError, match="max_norm must be a finite number >= 0"):
            clip_grad_norm_(params, bad)
    for p, g in zip(params, _grads(0)):  # untouched: no sign flip from a negative scale
        np.testing.assert_array_equal(p.grad, g)


def test_schedule_refuses_a_bad_factor_and_keeps_its_step():
    opt = AdamW(_fresh(), lr=1e-2)
    with pytest.raises(TypeError, match="lr_lambda must be a function"):
        LambdaLR(opt, 0.5)
    sched = LambdaLR(opt, lambda step: 1.0 if step < 2 else float("nan"))
    sched.step()
    with pytest.raises(ValueError, match=r"lr_lambda\(2\) returned nan"):
        sched.step()
    assert sched.last_epoch == 1 and sched.get_last_lr() == [1e-2]


# ------------------------------------------------------------------ schedule

@pytest.mark.parametrize("warmup,total", [(3, 10), (0, 7), (5, 5), (4, 0), (10, 6)])
def test_linear_schedule_matches_transformers(warmup, total):
    torch = _torch()
    transformers = pytest.importorskip("transformers")
    topt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3},
                              {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 5e-4}])
    tsched = transformers.get_linear_schedule_with_warmup(topt, warmup, total)
    p, q = _param(np.zeros(2, np.float32)), _param(np.zeros(2, np.float32))
    opt = AdamW([{"params": [p], "lr": 1e-3}, {"params": [q], "lr": 5e-4}])
    sched = get_linear_schedule_with_warmup(opt, warmup, total)
    for step in range(total + 4):
        expected = tsched.get_last_lr()
        np.testing.assert_allclose(sched.get_last_lr(), expected, rtol=1e-12, atol=0,
                                   err_msg=f"step {step}")
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [g["lr"] for g in topt.param_groups], rel=1e-12, abs=0)
        topt.step()
        tsched.step()
        sched.step()


def test_schedule_with_adamw_matches_torch_training_loop():
    torch = _torch()
    transformers = pytest.importorskip("transformers")
    values = _values(3)
    ours = [_param(v) for v in values]
    theirs = [torch.nn.Parameter(torch.tensor(v)) for v in values]
    opt, topt = AdamW(ours, lr=2e-2), torch.optim.AdamW(theirs, lr=2e-2)
    sched = get_linear_schedule_with_warmup(opt, 4, 20)
    tsched = transformers.get_linear_schedule_with_warmup(topt, 4, 20)
    for step in range(20):
        for p, t, g in zip(ours, theirs, _grads(step)):
            p.grad, t.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-6, atol=1e-6)
    state = sched.state_dict()
    again = get_linear_schedule_with_warmup(AdamW(ours, lr=2e-2), 4, 20)
    again.load_state_dict(state)
    assert again.get_last_lr() == sched.get_last_lr()


def test_schedule_rejects_negative_steps():
    opt = AdamW(_fresh())
    with pytest.raises(ValueError):
        get_linear_schedule_with_warmup(opt, -1, 10)
    with pytest.raises(ValueError):
        get_linear_schedule_with_warmup(opt, 1, -10)


# ------------------------------------------------------------------ gradient clipping

@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = _torch()
    values = _values(4)
    ours = [_param(v) for v in values]
    theirs = [torch.nn.Parameter(torch.tensor(v)) for v in values]
    for i, (p, t, g) in enumerate(zip(ours, theirs, _grads(5))):
        if i == 2:
            continue  # a parameter without grad is ignored by both
        p.grad, t.grad = g, torch.tensor(g)
    norm = peftcore.clip_grad_norm_(ours, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert isinstance(norm, float)
    assert norm == pytest.approx(float(tnorm), rel=1e-6)
    assert ours[2].grad is None
    for i, (p, t) in enumerate(zip(ours, theirs)):
        if i != 2:
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6, atol=1e-9, err_msg=str(i))
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum())
                          for i, g in enumerate(_grads(5)) if i != 2))
    assert norm == pytest.approx(total, rel=1e-6)
    after = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in ours if p.grad is not None))
    assert after == pytest.approx(min(total, max_norm), rel=1e-5)


def test_clip_grad_norm_named_parameters_and_model():
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(model_type="bert", vocab_size=20, hidden_size=8, num_hidden_layers=1,
             num_attention_heads=2, intermediate_size=16, max_position_embeddings=8))
    ids = np.array([[2, 5, 7, 3]])
    model(ids, labels=np.array([1]))
    model.backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    norm = peftcore.clip_grad_norm_(model.named_parameters(), total / 4)
    assert norm == pytest.approx(total, rel=1e-6)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, grads[n] / 4, rtol=1e-5, atol=1e-12, err_msg=n)
