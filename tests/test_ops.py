"""Numerical tests of every op in peftcore.functional.

Forward results are compared with NumPy float64 references written here (evaluated on the
same float32 inputs, upcast), backward results with central finite differences, in
float64, of the float64 reference (of sum(out * R) for a random R, or of the loss itself).

Tolerances (float32 engine vs float64 truth), each checked as |got - ref| <= atol + rtol·|ref|:
  * elementwise forward (relu, add, dropout, embedding): exact or rtol 1e-6
  * transcendental elementwise (tanh, gelu both forms, softmax):  rtol 1e-5, atol 1e-6
  * reductions / GEMMs (linear, layer_norm, attention, losses):    rtol 1e-4, atol 1e-5
  * gradients vs finite differences:                               rtol 1e-4, atol 2e-5
Finite differences use step 1e-6 in float64 (error ~1e-9, far below the tolerances).
Thread determinism: results with 1 and 2 threads must agree to rtol 1e-6, atol 1e-7
(the engine splits work so that they are bitwise equal; the tolerance only allows BLIS
to differ in the last bit).
"""
import math
import zlib

import numpy as np
import pytest

import peftcore
import peftcore.functional as F

FLT_MAX = float(np.finfo(np.float32).max)

TOL_ELEM = dict(rtol=1e-5, atol=1e-6)
TOL_RED = dict(rtol=1e-4, atol=1e-5)
TOL_GRAD = dict(rtol=1e-4, atol=2e-5)
TOL_THREADS = dict(rtol=1e-6, atol=1e-7)
FD_EPS = 1e-6


def rng_for(*key):
    """A generator seeded by the test's parameters (stable across runs and processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def close(got, ref, rtol, atol, what=""):
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    np.testing.assert_allclose(f64(got), f64(ref), rtol=rtol, atol=atol, err_msg=what)


def fd_grad(loss, x, eps=FD_EPS):
    """Central differences of the scalar loss(x) (float64) with respect to every element."""
    x = f64(x).copy()
    g = np.zeros_like(x)
    xf, gf = x.reshape(-1), g.reshape(-1)
    for i in range(xf.size):
        old = xf[i]
        xf[i] = old + eps
        plus = loss(x)
        xf[i] = old - eps
        minus = loss(x)
        xf[i] = old
        gf[i] = (plus - minus) / (2 * eps)
    return g


def fd_elementwise(fn, x, dy, eps=FD_EPS):
    """Central differences of an elementwise fn: its Jacobian is diagonal, so one
    vectorised step gives every partial derivative; times dy = grad of sum(fn(x)·dy)."""
    x = f64(x)
    return (fn(x + eps) - fn(x - eps)) / (2 * eps) * f64(dy)


@pytest.fixture
def restore_threads():
    before = peftcore.get_num_threads()
    yield
    peftcore.set_num_threads(before)


def with_threads(n, fn):
    peftcore.set_num_threads(n)
    return fn()


# ------------------------------------------------------------------ references (float64)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def ref_linear(x, w, b=None):
    y = f64(x) @ f64(w).T
    return y if b is None else y + f64(b)


def ref_layer_norm(x, w, b, eps=1e-5):
    x = f64(x)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * f64(w) + f64(b)


def ref_gelu(x):
    x = f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def ref_gelu_tanh(x):
    x = f64(x)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def ref_softmax(x):
    x = f64(x)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_attention(q, k, v, H, mask=None, keep=None, p=0.0):
    """transformers' eager attention: scores + (1 - mask)·finfo(float32).min, softmax,
    dropout (keep: (B,H,Tq,Tk) 0/1 mask, scaled 1/(1-p)), times V. q (B,Tq,C), k and v
    (B,Tk,C). Returns (out, probs)."""
    q, k, v = f64(q), f64(k), f64(v)
    B, T, C = q.shape
    D = C // H

    def heads(a):
        return a.reshape(B, a.shape[1], H, D).transpose(0, 2, 1, 3)

    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(D)
    if mask is not None:
        s = s + np.where(f64(mask)[:, None, None, :] != 0, 0.0, -FLT_MAX)
    probs = ref_softmax(s)
    pd = probs if keep is None else probs * f64(keep) / (1.0 - p)
    out = (pd @ heads(v)).transpose(0, 2, 1, 3).reshape(B, T, C)
    return out, probs


def ref_cross_entropy(logits, target, ignore_index=-100):
    x = f64(logits)
    t = np.asarray(target)
    keep = t != ignore_index
    if not keep.any():
        return float("nan")
    x, t = x[keep], t[keep]
    mx = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - mx).sum(-1)) + mx[:, 0]
    return float(np.mean(lse - x[np.arange(len(t)), t]))


def ref_mse(x, t):
    return float(np.mean((f64(x) - f64(t)) ** 2))


# ------------------------------------------------------------------ linear

LINEAR_SHAPES = [((1, 1), 1), ((3, 5), 7), ((7, 13, 17), 5), ((1, 1, 4), 3), ((2, 33), 65)]


@pytest.mark.parametrize("xshape,out", LINEAR_SHAPES)
@pytest.mark.parametrize("use_bias", [False, True])
def test_linear_forward(xshape, out, use_bias):
    rng = rng_for("linear", xshape, out, use_bias)
    x, w, b = randn(rng, *xshape), randn(rng, out, xshape[-1]), randn(rng, out)
    y = F.linear(x, w, b if use_bias else None)
    assert y.dtype == np.float32
    close(y, ref_linear(x, w, b if use_bias else None), **TOL_RED)


@pytest.mark.parametrize("xshape,out", LINEAR_SHAPES[:4])
def test_linear_backward_fd(xshape, out):
    rng = rng_for("linear_bwd", xshape, out)
    x, w, b = randn(rng, *xshape), randn(rng, out, xshape[-1]), randn(rng, out)
    R = randn(rng, *xshape[:-1], out)
    dx, dw, db = F.linear_backward(R, x, w, weight_grad=True, bias_grad=True)
    close(dx, fd_grad(lambda a: np.sum(ref_linear(a, w, b) * R), x), **TOL_GRAD, what="dx")
    close(dw, fd_grad(lambda a: np.sum(ref_linear(x, a, b) * R), w), **TOL_GRAD, what="dw")
    close(db, fd_grad(lambda a: np.sum(ref_linear(x, w, a) * R), b), **TOL_GRAD, what="db")


def test_linear_backward_grads_only_when_asked():
    rng = rng_for("linear_none")
    x, w, dy = randn(rng, 3, 5), randn(rng, 4, 5), randn(rng, 3, 4)
    dx, dw, db = F.linear_backward(dy, x, w)
    assert dw is None and db is None
    close(dx, f64(dy) @ f64(w), **TOL_RED)
    dx2, dw2, db2 = F.linear_backward(dy, x, w, weight_grad=True)
    assert dw2 is not None and db2 is None
    close(dw2, f64(dy).T @ f64(x), **TOL_RED)
    dx3, dw3, db3 = F.linear_backward(dy, x, w, bias_grad=True)
    assert dw3 is None and db3 is not None
    close(db3, f64(dy).sum(0), **TOL_RED)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dx, dx3)


def test_linear_accepts_tensor_and_noncontiguous_input():
    rng = rng_for("linear_tensor")
    x, w = randn(rng, 4, 10), randn(rng, 3, 5)
    xs = x[:, ::2]  # non-contiguous: the glue copies it
    close(F.linear(xs, w), ref_linear(xs, w), **TOL_RED)
    xc = np.ascontiguousarray(xs)
    np.testing.assert_array_equal(F.linear(peftcore.Tensor(xc), peftcore.Tensor(w)),
                                  F.linear(xc, w))


# ------------------------------------------------------------------ embedding

@pytest.mark.parametrize("idtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape,V,C", [((1,), 1, 1), ((5,), 7, 3), ((2, 3), 11, 13),
                                           ((1, 1), 4, 17)])
def test_embedding_forward(idtype, ids_shape, V, C):
    rng = rng_for("emb", ids_shape, V, C)
    w = randn(rng, V, C)
    ids = rng.integers(0, V, size=ids_shape).astype(idtype)
    y = F.embedding(ids, w)
    assert y.shape == ids_shape + (C,)
    np.testing.assert_array_equal(y, w[ids])


@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_embedding_backward_repeated_ids(idtype):
    rng = rng_for("emb_bwd")
    V, C = 6, 13
    ids = np.array([[0, 3, 3, 5], [3, 0, 1, 3]], dtype=idtype)
    w = randn(rng, V, C)
    R = randn(rng, 2, 4, C)
    dw = F.embedding_backward(R, ids, V)
    ref = np.zeros((V, C))
    np.add.at(ref, ids.reshape(-1), f64(R).reshape(-1, C))
    close(dw, ref, **TOL_RED)
    assert np.all(dw[[2, 4]] == 0)
    # the same against finite differences of sum(embedding(w)·R)
    close(dw, fd_grad(lambda a: np.sum(a[ids] * R), w), **TOL_GRAD)


# ------------------------------------------------------------------ layer norm

LN_SHAPES = [(1, 1), (3, 5), (7, 13, 17), (1, 1, 8), (2, 96)]


@pytest.mark.parametrize("shape", LN_SHAPES)
def test_layer_norm_forward(shape):
    rng = rng_for("ln", shape)
    C = shape[-1]
    x = randn(rng, *shape, scale=3.0) + 1.5
    w, b = randn(rng, C), randn(rng, C)
    y, mean, rstd = F.layer_norm(x, C, w, b, eps=1e-5, return_stats=True)
    close(y, ref_layer_norm(x, w, b, 1e-5), **TOL_RED)
    xr = f64(x).reshape(-1, C)
    close(mean, xr.mean(-1), **TOL_RED)
    close(rstd, 1 / np.sqrt(xr.var(-1) + 1e-5), **TOL_RED)
    np.testing.assert_array_equal(F.layer_norm(x, (C,), w, b), y)


def test_layer_norm_eps_and_constant_rows():
    x = np.full((2, 6), 3.25, np.float32)
    w, b = np.ones(6, np.float32), np.arange(6, dtype=np.float32)
    close(F.layer_norm(x, 6, w, b, eps=1e-3), ref_layer_norm(x, w, b, 1e-3), **TOL_RED)
    rng = rng_for("ln_eps")
    x = randn(rng, 4, 5)
    close(F.layer_norm(x, 5, w[:5], b[:5], eps=0.5), ref_layer_norm(x, w[:5], b[:5], 0.5),
          **TOL_RED)


@pytest.mark.parametrize("shape", LN_SHAPES[:4])
@pytest.mark.parametrize("pass_stats", [False, True])
def test_layer_norm_backward_fd(shape, pass_stats):
    rng = rng_for("ln_bwd", shape)
    C = shape[-1]
    x = randn(rng, *shape, scale=2.0) + 0.5
    w, b = randn(rng, C), randn(rng, C)
    R = randn(rng, *shape)
    if pass_stats:
        _, mean, rstd = F.layer_norm(x, C, w, b, return_stats=True)
        dx, dw, db = F.layer_norm_backward(R, x, w, mean=mean, rstd=rstd)
    else:
        dx, dw, db = F.layer_norm_backward(R, x, w)
    tol = dict(rtol=1e-4, atol=1e-4) if C == 1 else TOL_GRAD  # C = 1: dx is ~0, FD noise
    close(dx, fd_grad(lambda a: np.sum(ref_layer_norm(a, w, b) * R), x), **tol, what="dx")
    close(dw, fd_grad(lambda a: np.sum(ref_layer_norm(x, a, b) * R), w), **TOL_GRAD, what="dw")
    close(db, fd_grad(lambda a: np.sum(ref_layer_norm(x, w, a) * R), b), **TOL_GRAD, what="db")


# ------------------------------------------------------------------ activations

ELEM_SHAPES = [(1,), (1, 1), (3, 5), (7, 13, 17)]


def _act_input(rng, shape):
    x = randn(rng, *shape, scale=2.5)
    x[np.abs(x) < 1e-2] = 0.5  # keep finite differences away from relu's kink
    return x


@pytest.mark.parametrize("shape", ELEM_SHAPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(shape, approximate):
    rng = rng_for("gelu", shape, approximate)
    x, dy = _act_input(rng, shape), randn(rng, *shape)
    ref = ref_gelu if approximate == "none" else ref_gelu_tanh
    close(F.gelu(x, approximate=approximate), ref(x), **TOL_ELEM)
    close(F.gelu_backward(dy, x, approximate=approximate), fd_elementwise(ref, x, dy),
          **TOL_GRAD)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_does_not_depend_on_position(approximate):
    """Whole 16-float vectors, the tail of an array and a lone element compute an element
    the same way: every element of a 4133-float array (chunks of 4096 on two threads, a
    tail of 5) equals GELU of that element alone, bit for bit, forward and backward."""
    rng = rng_for("gelu_position", approximate)
    x, dy = randn(rng, 4133, scale=3.0), randn(rng, 4133)
    y, dx = F.gelu(x, approximate=approximate), F.gelu_backward(dy, x, approximate=approximate)
    for i in list(range(0, 40)) + list(range(4080, 4133)):
        assert F.gelu(x[i:i + 1], approximate=approximate)[0] == y[i], i
        assert F.gelu_backward(dy[i:i + 1], x[i:i + 1], approximate=approximate)[0] == dx[i], i


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_wide_range(approximate):
    x = np.linspace(-12, 12, 4801, dtype=np.float32)
    ref = ref_gelu if approximate == "none" else ref_gelu_tanh
    close(F.gelu(x, approximate=approximate), ref(x), **TOL_ELEM)
    dy = np.ones_like(x)
    close(F.gelu_backward(dy, x, approximate=approximate), fd_elementwise(ref, x, dy),
          **TOL_GRAD)


@pytest.mark.parametrize("shape", ELEM_SHAPES)
def test_tanh(shape):
    rng = rng_for("tanh", shape)
    x, dy = _act_input(rng, shape), randn(rng, *shape)
    y = F.tanh(x)
    close(y, np.tanh(f64(x)), **TOL_ELEM)
    close(F.tanh_backward(dy, y), fd_elementwise(np.tanh, x, dy), **TOL_GRAD)


def test_tanh_wide_range():
    x = np.concatenate([np.linspace(-20, 20, 4001), np.geomspace(1e-8, 0.5, 200),
                        -np.geomspace(1e-8, 0.5, 200)]).astype(np.float32)
    close(F.tanh(x), np.tanh(f64(x)), **TOL_ELEM)


@pytest.mark.parametrize("shape", ELEM_SHAPES)
def test_relu(shape):
    rng = rng_for("relu", shape)
    x, dy = _act_input(rng, shape), randn(rng, *shape)
    np.testing.assert_array_equal(F.relu(x), np.maximum(x, 0))
    close(F.relu_backward(dy, x), fd_elementwise(lambda a: np.maximum(a, 0), x, dy),
          **TOL_GRAD)


# ------------------------------------------------------------------ softmax

@pytest.mark.parametrize("shape", [(1,), (1, 1), (3, 5), (7, 13, 17), (2, 300)])
def test_softmax(shape):
    rng = rng_for("softmax", shape)
    x = randn(rng, *shape, scale=3.0)
    y = F.softmax(x)
    close(y, ref_softmax(x), **TOL_ELEM)
    close(y.sum(-1), np.ones(shape[:-1]), **TOL_ELEM)
    if x.size <= 1000:
        R = randn(rng, *shape)
        close(F.softmax_backward(R, y), fd_grad(lambda a: np.sum(ref_softmax(a) * R), x),
              **TOL_GRAD)


def test_softmax_large_and_dim_argument():
    x = np.array([[1000.0, 999.0, -1000.0], [-50.0, -50.0, -50.0]], np.float32)
    close(F.softmax(x), ref_softmax(x), **TOL_ELEM)
    close(F.softmax(x, dim=1), ref_softmax(x), **TOL_ELEM)
    with pytest.raises(ValueError):
        F.softmax(x, dim=0)


# ------------------------------------------------------------------ add

@pytest.mark.parametrize("shape", ELEM_SHAPES)
def test_add(shape):
    rng = rng_for("add", shape)
    a, b, dy = randn(rng, *shape), randn(rng, *shape), randn(rng, *shape)
    np.testing.assert_array_equal(F.add(a, b), a + b)
    da, db = F.add_backward(dy)
    np.testing.assert_array_equal(da, dy)
    np.testing.assert_array_equal(db, dy)
    da[...] = 0  # the two gradients are independent arrays
    np.testing.assert_array_equal(db, dy)


# ------------------------------------------------------------------ dropout

def test_dropout_same_seed_same_mask_different_seed_different():
    x = np.ones(5000, np.float32)
    a = F.dropout(x, 0.3, seed=7)
    np.testing.assert_array_equal(a, F.dropout(x, 0.3, seed=7))
    b = F.dropout(x, 0.3, seed=8)
    assert not np.array_equal(a != 0, b != 0)
    assert np.mean((a != 0) != (b != 0)) > 0.3  # independent masks disagree ~42% here


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate_and_scaling(p):
    n = 200_000
    rng = rng_for("dropout", p)
    x = randn(rng, n)
    x[x == 0] = 1.0
    y = F.dropout(x, p, seed=12345)
    kept = y != 0
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 6 * sigma
    close(y[kept], f64(x[kept]) / (1 - p), rtol=1e-6, atol=0)


def test_dropout_mask_depends_on_index_only():
    x = np.ones(1000, np.float32)
    full = F.dropout(x, 0.5, seed=3)
    np.testing.assert_array_equal(F.dropout(x[:123], 0.5, seed=3), full[:123])
    np.testing.assert_array_equal(F.dropout(x.reshape(10, 100), 0.5, seed=3).ravel(), full)


def _splitmix_keep(seed, n, p):
    """The documented mask: element i kept iff the top 24 bits of splitmix64's finaliser
    over seed + golden-ratio·(i+1), as a float in [0, 1), are >= p (float32 arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * \
            np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1 / 16777216)
    return u >= np.float32(p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.25, 1 / 3, 0.9, 2.0 ** -24, 3 * 2.0 ** -25,
                               np.nextafter(np.float32(0.5), np.float32(1)), 1 - 2.0 ** -24])
def test_dropout_mask_is_the_documented_function_bit_for_bit(p):
    """The kernels compare the hash's top 24 bits with ceil(p·2^24) in integers; that must be
    the float comparison exactly, also at p on and between multiples of 2^-24."""
    n, seed = 300_000, 2024
    kept = F.dropout(np.ones(n, np.float32), float(np.float32(p)), seed=seed) != 0
    np.testing.assert_array_equal(kept, _splitmix_keep(seed, n, np.float32(p)))


@pytest.mark.parametrize("shape", [(1,), (3, 5), (7, 13, 17)])
def test_dropout_backward_uses_the_same_mask(shape):
    rng = rng_for("dropout_bwd", shape)
    x, dy = randn(rng, *shape), randn(rng, *shape)
    p, seed = 0.4, 99
    y = F.dropout(x, p, seed=seed)
    dx = F.dropout_backward(dy, p, seed=seed)
    kept = F.dropout(np.ones(shape, np.float32), p, seed=seed) != 0
    np.testing.assert_array_equal(y != 0, kept & (x != 0))
    close(dx, np.where(kept, f64(dy) / (1 - p), 0.0), rtol=1e-6, atol=0)
    # finite differences of the forward with that seed (the forward is linear in x)
    R = randn(rng, *shape)
    close(F.dropout_backward(R, p, seed=seed),
          fd_elementwise(lambda a: np.where(kept, a / (1 - p), 0.0), x, R), **TOL_GRAD)


def test_dropout_off():
    x = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(F.dropout(x, 0.0, seed=1), x)
    np.testing.assert_array_equal(F.dropout(x, 0.7, training=False), x)
    np.testing.assert_array_equal(F.dropout_backward(x, 0.7, training=False), x)
    assert F.dropout(x, 0.0) is not x


def test_dropout_same_with_1_and_2_threads(restore_threads):
    x = np.ones(300_000, np.float32)  # large enough for the parallel path
    a = with_threads(1, lambda: F.dropout(x, 0.25, seed=2024))
    b = with_threads(2, lambda: F.dropout(x, 0.25, seed=2024))
    np.testing.assert_array_equal(a, b)
    da = with_threads(1, lambda: F.dropout_backward(x, 0.25, seed=2024))
    db = with_threads(2, lambda: F.dropout_backward(x, 0.25, seed=2024))
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(a, da)


# ------------------------------------------------------------------ attention

ATTN_CASES = [  # B, T, H, D
    (1, 1, 1, 1),
    (1, 1, 3, 2),
    (2, 5, 1, 4),
    (2, 5, 3, 2),
    (3, 7, 3, 5),
    (2, 37, 2, 16),  # register-tiled pair products: partial row and column tiles
    (1, 20, 1, 32),
]


def _mask(rng, B, T, kind):
    if kind is None:
        return None
    m = np.ones((B, T), np.int64)
    if kind == "padding":  # right padding of random length, at least one real token
        for b in range(B):
            m[b, rng.integers(1, T + 1):] = 0
    elif kind == "all_masked_row":  # batch 0 is all padding: uniform attention
        m[0] = 0
    return m


@pytest.mark.parametrize("B,T,H,D", ATTN_CASES)
@pytest.mark.parametrize("mask_kind", [None, "padding", "all_masked_row"])
def test_attention_forward(B, T, H, D, mask_kind):
    rng = rng_for("attn", B, T, H, D, mask_kind)
    C = H * D
    q, k, v = randn(rng, B, T, C), randn(rng, B, T, C), randn(rng, B, T, C)
    mask = _mask(rng, B, T, mask_kind)
    out, probs = F.multi_head_attention(q, k, v, H, attention_mask=mask, return_probs=True)
    ref_out, ref_probs = ref_attention(q, k, v, H, mask)
    close(out, ref_out, **TOL_RED, what="out")
    close(probs, ref_probs, **TOL_RED, what="probs")
    np.testing.assert_array_equal(F.multi_head_attention(q, k, v, H, attention_mask=mask), out)
    if mask is not None:  # float masks mean the same
        np.testing.assert_array_equal(
            F.multi_head_attention(q, k, v, H, attention_mask=mask.astype(np.float32)), out)


@pytest.mark.parametrize("B,T,H,D", ATTN_CASES)
@pytest.mark.parametrize("mask_kind", [None, "padding"])
def test_attention_backward_fd(B, T, H, D, mask_kind):
    rng = rng_for("attn_bwd", B, T, H, D, mask_kind)
    C = H * D
    q, k, v = randn(rng, B, T, C), randn(rng, B, T, C), randn(rng, B, T, C)
    mask = _mask(rng, B, T, mask_kind)
    R = randn(rng, B, T, C)
    _, probs = F.multi_head_attention(q, k, v, H, attention_mask=mask, return_probs=True)
    dq, dk, dv = F.multi_head_attention_backward(R, probs, q, k, v, H)
    close(dq, fd_grad(lambda a: np.sum(ref_attention(a, k, v, H, mask)[0] * R), q),
          **TOL_GRAD, what="dq")
    close(dk, fd_grad(lambda a: np.sum(ref_attention(q, a, v, H, mask)[0] * R), k),
          **TOL_GRAD, what="dk")
    close(dv, fd_grad(lambda a: np.sum(ref_attention(q, k, a, H, mask)[0] * R), v),
          **TOL_GRAD, what="dv")


@pytest.mark.parametrize("B,Tq,Tk,H,D", [(1, 1, 1, 1, 2), (2, 1, 5, 3, 2), (3, 2, 7, 2, 3)])
@pytest.mark.parametrize("mask_kind", [None, "padding"])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_attention_fewer_queries(B, Tq, Tk, H, D, mask_kind, p):
    """Tq < Tk (the classification layer's first-token queries): forward against NumPy with
    the kernel's own dropout mask, backward against finite differences."""
    rng = rng_for("attn_q", B, Tq, Tk, H, D, mask_kind, p)
    C, seed = H * D, 77
    q, k, v = randn(rng, B, Tq, C), randn(rng, B, Tk, C), randn(rng, B, Tk, C)
    mask = _mask(rng, B, Tk, mask_kind)
    out, probs = F.multi_head_attention(q, k, v, H, attention_mask=mask, dropout_p=p, seed=seed,
                                        return_probs=True)
    assert out.shape == (B, Tq, C) and probs.shape == (B, H, Tq, Tk)
    # the dropout mask depends on the seed and positions only; read it back with uniform
    # probabilities and V = identity per head (D = Tk), where out = dropout(P)
    eye = np.tile(np.eye(Tk, dtype=np.float32), (1, H))[None].repeat(B, 0)
    zq, zk = np.zeros((B, Tq, H * Tk), np.float32), np.zeros((B, Tk, H * Tk), np.float32)
    pd = F.multi_head_attention(zq, zk, eye, H, dropout_p=p, seed=seed)
    keep = pd.reshape(B, Tq, H, Tk).transpose(0, 2, 1, 3) != 0
    ref_out, ref_probs = ref_attention(q, k, v, H, mask, keep if p else None, p)
    close(probs, ref_probs, **TOL_RED, what="probs")
    close(out, ref_out, **TOL_RED, what="out")
    R = randn(rng, B, Tq, C)
    dq, dk, dv = F.multi_head_attention_backward(R, probs, q, k, v, H, dropout_p=p, seed=seed)
    assert dq.shape == q.shape and dk.shape == dv.shape == k.shape

    def loss(qq, kk, vv):
        return np.sum(ref_attention(qq, kk, vv, H, mask, keep if p else None, p)[0] * R)

    close(dq, fd_grad(lambda a: loss(a, k, v), q), **TOL_GRAD, what="dq")
    close(dk, fd_grad(lambda a: loss(q, a, v), k), **TOL_GRAD, what="dk")
    close(dv, fd_grad(lambda a: loss(q, k, a), v), **TOL_GRAD, what="dv")


def _attention_dropout_keep(B, T, H, p, seed):
    """The dropout mask the kernel applies to the (B,H,T,T) probabilities, read from its
    output: with D = T and V = identity per head, out[b,i,h·D+j] = dropout(P)[b,h,i,j]."""
    eye = np.tile(np.eye(T, dtype=np.float32), (1, H))[None].repeat(B, 0)  # (B,T,H·T)
    q = np.zeros((B, T, H * T), np.float32)  # uniform probabilities 1/T
    out = F.multi_head_attention(q, q, eye, H, dropout_p=p, seed=seed)
    pd = out.reshape(B, T, H, T).transpose(0, 2, 1, 3)
    keep = pd != 0
    close(pd[keep], np.full(keep.sum(), 1.0 / T / (1 - p)), rtol=1e-6, atol=0)
    return keep


@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 2), (2, 5, 3, 2), (1, 6, 1, 3)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_attention_dropout(B, T, H, D, use_mask):
    p, seed = 0.3, 4242
    rng = rng_for("attn_drop", B, T, H, D, use_mask)
    C = H * D
    q, k, v = randn(rng, B, T, C), randn(rng, B, T, C), randn(rng, B, T, C)
    mask = _mask(rng, B, T, "padding") if use_mask else None
    keep = _attention_dropout_keep(B, T, H, p, seed)
    out, probs = F.multi_head_attention(q, k, v, H, attention_mask=mask, dropout_p=p,
                                        seed=seed, return_probs=True)
    ref_out, ref_probs = ref_attention(q, k, v, H, mask, keep, p)
    close(probs, ref_probs, **TOL_RED, what="probs (saved before dropout)")
    close(out, ref_out, **TOL_RED, what="out")
    np.testing.assert_array_equal(
        F.multi_head_attention(q, k, v, H, attention_mask=mask, dropout_p=p, seed=seed), out)
    R = randn(rng, B, T, C)
    dq, dk, dv = F.multi_head_attention_backward(R, probs, q, k, v, H, dropout_p=p, seed=seed)

    def loss(qq, kk, vv):
        return np.sum(ref_attention(qq, kk, vv, H, mask, keep, p)[0] * R)

    close(dq, fd_grad(lambda a: loss(a, k, v), q), **TOL_GRAD, what="dq")
    close(dk, fd_grad(lambda a: loss(q, a, v), k), **TOL_GRAD, what="dk")
    close(dv, fd_grad(lambda a: loss(q, k, a), v), **TOL_GRAD, what="dv")


def test_attention_dropout_seed_changes_mask():
    B, T, H = 2, 8, 2
    a = _attention_dropout_keep(B, T, H, 0.5, 1)
    b = _attention_dropout_keep(B, T, H, 0.5, 2)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, _attention_dropout_keep(B, T, H, 0.5, 1))
    big = _attention_dropout_keep(4, 32, 4, 0.2, 5)
    assert abs(big.mean() - 0.8) < 6 * math.sqrt(0.2 * 0.8 / big.size)


# ------------------------------------------------------------------ losses

@pytest.mark.parametrize("N,C", [(1, 1), (1, 2), (3, 5), (17, 13)])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_cross_entropy(N, C, idtype):
    rng = rng_for("ce", N, C)
    x = randn(rng, N, C, scale=2.0)
    t = rng.integers(0, C, N).astype(idtype)
    loss = F.cross_entropy(x, t)
    assert isinstance(loss, float)
    close(loss, ref_cross_entropy(x, t), **TOL_RED)
    g = 0.7
    dx = F.cross_entropy_backward(x, t, grad_loss=g)
    close(dx, fd_grad(lambda a: g * ref_cross_entropy(a, t), x), **TOL_GRAD)


def test_cross_entropy_ignore_index():
    rng = rng_for("ce_ignore")
    N, C = 9, 6
    x = randn(rng, N, C)
    t = rng.integers(0, C, N)
    t[[1, 4, 5]] = -100
    close(F.cross_entropy(x, t), ref_cross_entropy(x, t), **TOL_RED)
    dx = F.cross_entropy_backward(x, t)
    assert np.all(dx[[1, 4, 5]] == 0)
    close(dx, fd_grad(lambda a: ref_cross_entropy(a, t), x), **TOL_GRAD)
    # a custom ignore_index that is also a valid class id: those rows are skipped
    t2 = rng.integers(0, C, N)
    t2[:3] = 2
    close(F.cross_entropy(x, t2, ignore_index=2), ref_cross_entropy(x, t2, 2), **TOL_RED)
    dx2 = F.cross_entropy_backward(x, t2, ignore_index=2)
    close(dx2, fd_grad(lambda a: ref_cross_entropy(a, t2, 2), x), **TOL_GRAD)
    assert np.all(dx2[t2 == 2] == 0)


def test_cross_entropy_all_ignored_is_nan():
    x = randn(rng_for("ce_nan"), 4, 3)
    t = np.full(4, -100)
    assert math.isnan(F.cross_entropy(x, t))
    dx = F.cross_entropy_backward(x, t)
    assert dx.shape == x.shape and np.all(dx == 0)
    assert math.isnan(F.cross_entropy(x, np.full(4, 7), ignore_index=7))


def test_cross_entropy_large_logits_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -999.0, -1001.0]], np.float32)
    t = np.array([1, 1])
    close(F.cross_entropy(x, t), ref_cross_entropy(x, t), **TOL_RED)
    assert np.all(np.isfinite(F.cross_entropy_backward(x, t)))


@pytest.mark.parametrize("shape", [(1,), (1, 1), (3, 5), (7, 13, 17)])
def test_mse(shape):
    rng = rng_for("mse", shape)
    x, t = randn(rng, *shape), randn(rng, *shape)
    loss = F.mse_loss(x, t)
    assert isinstance(loss, float)
    close(loss, ref_mse(x, t), **TOL_RED)
    g = 1.3
    close(F.mse_loss_backward(x, t, grad_loss=g), g * 2 * (f64(x) - f64(t)) / x.size,
          **TOL_GRAD)
    if x.size <= 300:
        close(F.mse_loss_backward(x, t, grad_loss=g),
              fd_grad(lambda a: g * ref_mse(a, t), x), **TOL_GRAD)


# ------------------------------------------------------------------ thread determinism

def _big_inputs():
    rng = rng_for("threads")
    return dict(
        x=randn(rng, 96, 512),          # 49k elements: above the 32k parallel threshold
        w=randn(rng, 384, 512),
        b=randn(rng, 384),
        dy=randn(rng, 96, 384),
        ids=rng.integers(0, 50, size=(128, 3)),
        emb=randn(rng, 50, 300),
        demb=randn(rng, 128, 3, 300),
        q=randn(rng, 2, 64, 96), k=randn(rng, 2, 64, 96), v=randn(rng, 2, 64, 96),
        dout=randn(rng, 2, 64, 96),
        mask=np.repeat(np.array([[1] * 50 + [0] * 14]), 2, 0),
        logits=randn(rng, 256, 200),
        target=rng.integers(0, 200, 256),
    )


def _thread_cases(d):
    def ln():
        y, m, r = F.layer_norm(d["x"], 512, d["x"][0], d["x"][1], return_stats=True)
        return (y, m, r) + F.layer_norm_backward(d["x"], d["x"], d["x"][0], mean=m, rstd=r)

    def attn():
        out, probs = F.multi_head_attention(d["q"], d["k"], d["v"], 4, d["mask"], 0.1, 7,
                                            return_probs=True)
        return (out, probs) + F.multi_head_attention_backward(d["dout"], probs, d["q"], d["k"],
                                                              d["v"], 4, 0.1, 7)

    sm = lambda: F.softmax(d["x"])  # noqa: E731
    return {
        "linear": lambda: (F.linear(d["x"], d["w"], d["b"]),)
        + F.linear_backward(d["dy"], d["x"], d["w"], True, True),
        "embedding": lambda: (F.embedding(d["ids"], d["emb"]),
                              F.embedding_backward(d["demb"], d["ids"], 50)),
        "layer_norm": ln,
        "gelu": lambda: (F.gelu(d["x"]), F.gelu_backward(d["x"], d["x"])),
        "gelu_tanh": lambda: (F.gelu(d["x"], "tanh"), F.gelu_backward(d["x"], d["x"], "tanh")),
        "tanh": lambda: (F.tanh(d["x"]), F.tanh_backward(d["x"], d["x"])),
        "relu": lambda: (F.relu(d["x"]), F.relu_backward(d["x"], d["x"])),
        "softmax": lambda: (sm(), F.softmax_backward(d["x"], sm())),
        "add": lambda: (F.add(d["x"], d["x"]),),
        "dropout": lambda: (F.dropout(d["x"], 0.2, seed=5),
                            F.dropout_backward(d["x"], 0.2, seed=5)),
        "attention": attn,
        "cross_entropy": lambda: (np.float32(F.cross_entropy(d["logits"], d["target"])),
                                  F.cross_entropy_backward(d["logits"], d["target"])),
        "mse": lambda: (np.float32(F.mse_loss(d["x"], d["x"][::-1].copy())),
                        F.mse_loss_backward(d["x"], d["x"][::-1].copy())),
    }


@pytest.mark.parametrize("op", list(_thread_cases(_big_inputs()).keys()))
def test_same_result_with_1_and_2_threads(op, restore_threads):
    fn = _thread_cases(_big_inputs())[op]
    one = with_threads(1, fn)
    two = with_threads(2, fn)
    assert peftcore.get_num_threads() == 2
    for i, (a, b) in enumerate(zip(one, two)):
        close(b, a, **TOL_THREADS, what=f"{op} output {i}")
