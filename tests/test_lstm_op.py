"""peftcore.functional.lstm / lstm_backward (csrc/ops/lstm.c): against a NumPy LSTM written
from the equations, against torch.nn.LSTM (both directions), by finite differences, and
bad input."""
from __future__ import annotations

import numpy as np
import pytest

from peftcore import functional as F


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(x, w_ih, w_hh, b_ih, b_hh, reverse=False):
    """torch's LSTM equations in float64, one direction, zero initial state."""
    B, T, _ = x.shape
    H = w_hh.shape[1]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    out = np.zeros((B, T, H))
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        g = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, gg, o = _sig(g[:, :H]), _sig(g[:, H:2 * H]), np.tanh(g[:, 2 * H:3 * H]), _sig(g[:, 3 * H:])
        c = f * c + i * gg
        h = o * np.tanh(c)
        out[:, t] = h
    return out


def _weights(rng, I=5, H=3):
    return [rng.uniform(-0.6, 0.6, s).astype(np.float32)
            for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]


@pytest.mark.parametrize("reverse", [False, True])
def test_forward_matches_numpy(reverse):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    w = _weights(rng)
    got = F.lstm(x, *w, reverse=reverse)
    want = numpy_lstm(x.astype(np.float64), *[a.astype(np.float64) for a in w], reverse=reverse)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # no biases is zero biases
    np.testing.assert_allclose(F.lstm(x, w[0], w[1], reverse=reverse),
                               F.lstm(x, w[0], w[1], 0 * w[2], 0 * w[3], reverse=reverse),
                               rtol=0, atol=0)


@pytest.mark.parametrize("reverse", [False, True])
def test_backward_by_finite_differences(reverse):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 5)).astype(np.float32)
    w = _weights(rng)
    dh = rng.standard_normal((2, 5, 3))
    h, state = F.lstm(x, *w, reverse=reverse, return_state=True)
    dx, dwi, dwh, db = F.lstm_backward(dh.astype(np.float32), x, h, state, w[0], w[1],
                                       reverse=reverse)
    x64, w64 = x.astype(np.float64), [a.astype(np.float64) for a in w]

    def loss(xx, ww):
        return float((numpy_lstm(xx, *ww, reverse=reverse) * dh).sum())

    eps = 1e-6
    for (grad, which) in ((dx, "x"), (dwi, 0), (dwh, 1), (db, 2), (db, 3)):
        for _ in range(4):
            idx = tuple(int(rng.integers(s)) for s in grad.shape)
            if which == "x":
                a, b = x64.copy(), x64.copy()
                a[idx] += eps
                b[idx] -= eps
                num = (loss(a, w64) - loss(b, w64)) / (2 * eps)
            else:
                wa, wb = [v.copy() for v in w64], [v.copy() for v in w64]
                wa[which][idx] += eps
                wb[which][idx] -= eps
                num = (loss(x64, wa) - loss(x64, wb)) / (2 * eps)
            assert abs(grad[idx] - num) <= 1e-4 + 1e-3 * abs(num), (which, idx, grad[idx], num)


def test_matches_torch_bidirectional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 3, num_layers=1, bidirectional=True, batch_first=True)
    x = torch.tensor(rng.standard_normal((2, 4, 5)).astype(np.float32), requires_grad=True)
    out = lstm(x)[0]
    dout = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(torch.tensor(dout))
    xs = x.detach().numpy()
    p = {n: v.detach().numpy() for n, v in lstm.named_parameters()}
    grads = {n: v.grad.numpy() for n, v in lstm.named_parameters()}
    dx_total = 0
    for part, (suffix, reverse) in enumerate((("", False), ("_reverse", True))):
        w = [p[f"{n}_l0{suffix}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, state = F.lstm(xs, *w, reverse=reverse, return_state=True)
        np.testing.assert_allclose(h, out.detach().numpy()[:, :, 3 * part:3 * part + 3],
                                   rtol=1e-5, atol=1e-6)
        dx, dwi, dwh, db = F.lstm_backward(np.ascontiguousarray(dout[:, :, 3 * part:3 * part + 3]),
                                           xs, h, state, w[0], w[1], reverse=reverse)
        np.testing.assert_allclose(dwi, grads[f"weight_ih_l0{suffix}"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(dwh, grads[f"weight_hh_l0{suffix}"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(db, grads[f"bias_hh_l0{suffix}"], rtol=1e-4, atol=1e-6)
        dx_total = dx_total + dx
    np.testing.assert_allclose(dx_total, x.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_input_raises():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    w = _weights(rng)
    with pytest.raises(ValueError, match="weight_ih"):
        F.lstm(x[..., :4], *w)
    with pytest.raises(ValueError, match="input must be"):
        F.lstm(x[0], *w)
    with pytest.raises(ValueError, match="bias_ih"):
        F.lstm(x, w[0], w[1], w[2][:-1], w[3])
    with pytest.raises(ValueError, match="weight_hh must be"):
        F.lstm(x, w[0], w[1][:, :2], w[2], w[3])
    with pytest.raises(TypeError, match="float32"):
        F.lstm(x.astype(np.int64), *w)
    h, state = F.lstm(x, *w, return_state=True)
    with pytest.raises(ValueError, match="grad_output has shape"):
        F.lstm_backward(h[:, :3], x, h, state, w[0], w[1])
    with pytest.raises(ValueError, match="gates has shape"):
        F.lstm_backward(h, x, h, (state[0][:, :2], state[1]), w[0], w[1])
