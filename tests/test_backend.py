"""Runtime and Tensor tests: BLIS kernel choice, threads, and memory sharing with NumPy."""
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import peftcore
from helpers import cpu_flags
from peftcore import Tensor

REPO = Path(__file__).resolve().parents[1]




def _run_backend_info(env_updates):
    """backend_info() of a fresh interpreter with env_updates (None value = unset)."""
    env = dict(os.environ)
    for k, v in env_updates.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    code = "import json, peftcore; print(json.dumps(peftcore.backend_info()))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loaded_blis():
    """The libblis the extension loaded (read from this process's memory map)."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "libblis" in os.path.basename(path) and os.path.isfile(path):
                return path
    return None


def _blis_arch_id(name):
    """BLIS_ARCH_TYPE takes the numeric arch id; map a name to it as the runtime does, with
    bli_arch_string(id). 'generic' is the last x86/arm id, so the scan stops in bounds."""
    path = _loaded_blis()
    if path is None:
        pytest.skip("cannot locate the loaded libblis")
    lib = ctypes.CDLL(path)
    lib.bli_arch_string.restype = ctypes.c_char_p
    lib.bli_arch_string.argtypes = [ctypes.c_int]
    for i in range(64):
        s = lib.bli_arch_string(i)
        if s is None:
            break
        if s.decode() == name:
            return i
        if s.decode() == "generic":
            break
    pytest.skip(f"BLIS arch {name!r} not known to this BLIS")


# ------------------------------------------------------------------ backend_info

def test_backend_info_keys_and_types():
    info = peftcore.backend_info()
    expected = {"blis_arch": str, "blis_version": str, "num_threads": int, "simd": str,
                "blis_arch_from_env": bool}
    for key, typ in expected.items():
        assert key in info, key
        assert isinstance(info[key], typ), (key, type(info[key]))
    assert info["blis_arch"]
    assert info["blis_version"][0].isdigit()
    assert info["num_threads"] == peftcore.get_num_threads() >= 1


def test_simd_matches_cpuinfo():
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags")
    simd = set(peftcore.backend_info()["simd"].split())
    for f in ("avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"):
        assert (f in simd) == (f in flags), f
    assert ("sse4.2" in simd) == ("sse4_2" in flags)


def test_blis_arch_not_generic_on_simd_cpu():
    flags = cpu_flags()
    if not ({"avx512f", "avx2"} & flags):
        pytest.skip("CPU has neither avx512f nor avx2")
    info = _run_backend_info({"BLIS_ARCH_TYPE": None, "PEFTCORE_ISA": None})
    assert info["blis_arch_from_env"] is False
    assert info["blis_arch"] != "generic"
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags:
        assert info["blis_arch"] == "skx"


def test_user_blis_arch_type_is_honoured():
    generic = _blis_arch_id("generic")
    info = _run_backend_info({"BLIS_ARCH_TYPE": str(generic)})
    assert info["blis_arch"] == "generic"
    assert info["blis_arch_from_env"] is True
    if "avx2" in cpu_flags():
        haswell = _blis_arch_id("haswell")
        info = _run_backend_info({"BLIS_ARCH_TYPE": str(haswell)})
        assert info["blis_arch"] == "haswell" and info["blis_arch_from_env"] is True


PACKED = "peftcore packing + BLIS micro-kernel"
PACKED_BOTH = "peftcore packing of both operands + BLIS micro-kernel"
# (instruction set, BLIS kernel set) where peftcore's packing is the default: where it
# measured faster than BLIS's own GEMM (bench/gemm.py --paths; csrc/ops/gemm_packed.c)
PACKED_BY_DEFAULT = {("avx512", "skx"), ("avx2", "haswell"), ("avx2", "zen3")}


def test_gemm_packing_default_per_isa():
    """peftcore packs GEMM operands itself for BLIS's micro-kernel where that is faster;
    elsewhere (and with PEFTCORE_GEMM=blis) BLIS does whole products; PEFTCORE_GEMM=packed
    forces peftcore's packing on any kernel set."""
    for isa in peftcore.backend_info()["isa_available"].split():
        info = _run_backend_info({"BLIS_ARCH_TYPE": None, "PEFTCORE_GEMM": None,
                                  "PEFTCORE_ISA": isa})
        want = PACKED if (info["isa"], info["blis_arch"]) in PACKED_BY_DEFAULT else "BLIS"
        assert info["gemm"] == want, info
    assert _run_backend_info({"PEFTCORE_GEMM": "blis"})["gemm"] == "BLIS"
    assert _run_backend_info({"PEFTCORE_GEMM": "packed"})["gemm"] == PACKED
    assert _run_backend_info({"BLIS_ARCH_TYPE": "generic", "PEFTCORE_GEMM": None,
                              "PEFTCORE_ISA": None})["gemm"] == "BLIS"


def test_gemm_path_switch():
    """_C._set_gemm_path switches who computes products (benchmarks) and returns the path
    it replaced; backend_info says which runs; every path gives the product."""
    from peftcore import _C

    default = _C._set_gemm_path("blis")
    try:
        assert peftcore.backend_info()["gemm"] == "BLIS"
        assert _C._set_gemm_path("blis-sup") == "blis"
        assert peftcore.backend_info()["gemm"] == "BLIS (small-matrix path on)"
        with pytest.raises(ValueError, match="expected 'packed' or 'packed-a'"):
            _C._set_gemm_path("fast")
        # packing op(A) too is a path of its own only where "packed" reads it in place
        # (BLIS's AVX2 kernel sets)
        in_place = (peftcore.backend_info()["isa"], peftcore.backend_info()["blis_arch"]) in {
            ("avx2", "haswell"), ("avx2", "zen3")}
        if in_place:
            assert _C._set_gemm_path("packed-a") == "blis-sup"
            assert peftcore.backend_info()["gemm"] == PACKED_BOTH
        else:
            with pytest.raises(ValueError):
                _C._set_gemm_path("packed-a")
        rng = np.random.default_rng(1)
        a = rng.standard_normal((37, 19), dtype=np.float32)
        b = rng.standard_normal((23, 19), dtype=np.float32)
        for path in ("blis", "blis-sup") + (("packed-a",) if in_place else ()) + ("packed",):
            _C._set_gemm_path(path)
            c = np.ones((37, 23), np.float32)
            _C._gemm(a, b, c, False, True, 2.0, 1.0)
            np.testing.assert_allclose(c, 2.0 * a @ b.T + 1.0, rtol=1e-5, atol=1e-5,
                                       err_msg=path)
        assert peftcore.backend_info()["gemm"] == PACKED
        with pytest.raises(TypeError, match="c must be a 2-D C-contiguous writable float32"):
            _C._gemm(a, b, np.ones((37, 23)), False, True, 1.0, 0.0)
        with pytest.raises(ValueError, match="do not chain"):
            _C._gemm(a, b, np.ones((37, 23), np.float32), False, False, 1.0, 0.0)
    finally:
        _C._set_gemm_path(default)


_GEMM_PROBE = """
import json, numpy as np, peftcore
cfg = dict(model_type="bert", vocab_size=120, hidden_size=96, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=400, max_position_embeddings=64, num_labels=3)
m = peftcore.AutoModelForSequenceClassification.from_config(cfg, seed=3)
m.eval()
rng = np.random.default_rng(0)
ids = rng.integers(0, 120, size=(5, 37))
out = m(ids, labels=np.array([0, 1, 2, 1, 0]))
m.backward()
grads = {n: p.grad.tolist() for n, p in m.named_parameters() if "layer.0" in n or "classifier" in n}
print(json.dumps({"gemm": peftcore.backend_info()["gemm"], "logits": out.logits.tolist(),
                  "grads": grads}))
"""


def test_packed_gemm_matches_blis_in_a_model():
    """A forward and backward whose GEMMs have edges on every block (37-token sequences,
    widths 96 / 400) give the same logits and gradients, to float rounding, whoever packs."""
    results = {}
    for choice in ("packed", "packed-a", "blis"):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("PEFTCORE_GEMM", None)
        if choice:
            env["PEFTCORE_GEMM"] = choice
        proc = subprocess.run([sys.executable, "-c", _GEMM_PROBE], env=env, capture_output=True,
                              text=True, timeout=120, cwd=str(REPO))
        assert proc.returncode == 0, proc.stderr
        results[choice] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, blis = results["packed"], results["blis"]
    assert blis["gemm"] == "BLIS" and ours["gemm"] == PACKED
    # where op(A) is read in place, packing it too must give the same bits
    both = results["packed-a"]
    if both["gemm"] == PACKED_BOTH:
        assert both["logits"] == ours["logits"] and both["grads"] == ours["grads"]
    else:
        assert both["gemm"] == PACKED
    np.testing.assert_allclose(ours["logits"], blis["logits"], rtol=1e-5, atol=1e-6)
    assert ours["grads"].keys() == blis["grads"].keys() and len(ours["grads"]) > 10
    # the scale of all gradients: the key bias's is zero in exact arithmetic (the softmax
    # ignores it), rounding noise either way
    scale = max(np.abs(np.asarray(g)).max() for g in blis["grads"].values())
    for name in ours["grads"]:
        a, b = np.asarray(ours["grads"][name]), np.asarray(blis["grads"][name])
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale, err_msg=name)


def test_user_blis_arch_type_by_name():
    """A kernel-set name is mapped to its id (BLIS itself would read it as 0)."""
    info = _run_backend_info({"BLIS_ARCH_TYPE": "generic"})
    assert info["blis_arch"] == "generic" and info["blis_arch_from_env"] is True, info


@pytest.mark.parametrize("value", ["99", "2"])
def test_invalid_blis_arch_type_does_not_abort(value):
    env = dict(os.environ, BLIS_ARCH_TYPE=value)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", "import peftcore; peftcore.backend_info()"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-300:]}"
    assert f"BLIS_ARCH_TYPE={value} ignored" in proc.stderr


def test_generic_arch_still_computes():
    """With the user's generic kernels the engine still gives right answers."""
    env = dict(os.environ, BLIS_ARCH_TYPE=str(_blis_arch_id("generic")))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import numpy as np, peftcore.functional as F\n"
            "r = np.random.default_rng(0)\n"
            "x = r.standard_normal((33, 70)).astype(np.float32)\n"
            "w = r.standard_normal((19, 70)).astype(np.float32)\n"
            "ref = x.astype(np.float64) @ w.T.astype(np.float64)\n"
            "print(float(np.abs(F.linear(x, w) - ref).max()))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.split()[-1]) < 1e-4


# ------------------------------------------------------------------ threads

@pytest.fixture
def restore_threads():
    before = peftcore.get_num_threads()
    yield
    peftcore.set_num_threads(before)


def test_default_threads_are_usable_cores():
    info = _run_backend_info({})
    assert info["num_threads"] == len(os.sched_getaffinity(0))


def test_set_get_num_threads(restore_threads):
    for n in (1, 2, 3, 1):
        peftcore.set_num_threads(n)
        assert peftcore.get_num_threads() == n
        assert peftcore.backend_info()["num_threads"] == n


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), ("2", TypeError),
                                     (2.5, TypeError), (None, TypeError), (True, TypeError),
                                     (10**30, (ValueError, OverflowError))])
def test_set_num_threads_bad_values(bad, exc, restore_threads):
    peftcore.set_num_threads(2)
    with pytest.raises(exc):
        peftcore.set_num_threads(bad)
    assert peftcore.get_num_threads() == 2


def test_set_num_threads_accepts_numpy_int_like_ints_only(restore_threads):
    peftcore.set_num_threads(1)
    with pytest.raises(TypeError):
        peftcore.set_num_threads(np.float64(2.0))


# ------------------------------------------------------------------ Tensor

def test_tensor_shares_memory_both_ways():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = Tensor(a)
    v = np.asarray(t)
    assert np.shares_memory(v, a)
    assert v.shape == (3, 4) and v.dtype == np.float32
    assert t.data_ptr == a.ctypes.data
    a[1, 2] = 100.0
    assert v[1, 2] == 100.0
    v[0, 0] = -5.0
    assert a[0, 0] == -5.0
    assert np.shares_memory(t.numpy(), a)
    assert t.shape == (3, 4) and t.ndim == 2 and t.size == 12 and t.dtype == "float32"
    # memoryview / buffer protocol sees the same memory
    m = memoryview(t)
    assert m.shape == (3, 4) and m.format == "f"
    assert np.frombuffer(m, dtype=np.float32)[0] == -5.0


def test_tensor_keeps_array_alive():
    t = Tensor(np.full((5,), 3.0, np.float32))
    import gc
    gc.collect()
    np.testing.assert_array_equal(np.asarray(t), np.full(5, 3.0, np.float32))
    v = np.asarray(t)
    del t
    gc.collect()
    np.testing.assert_array_equal(v, np.full(5, 3.0, np.float32))


def test_tensor_copy_on_request():
    a = np.ones((2, 2), np.float32)
    t = Tensor(a)
    c = np.array(t, copy=True)
    assert not np.shares_memory(c, a)
    d = np.asarray(t, dtype=np.float64)
    assert d.dtype == np.float64 and np.all(d == 1)


@pytest.mark.parametrize("shape", [(0,), (3,), (2, 3), (1, 2, 3, 4)])
@pytest.mark.parametrize("dtype", ["float32", "int32", "int64"])
def test_tensor_zeros(shape, dtype):
    t = Tensor.zeros(shape, dtype=dtype)
    assert t.shape == shape and t.dtype == dtype
    v = np.asarray(t)
    assert v.dtype == np.dtype(dtype) and v.shape == shape and np.all(v == 0)
    if v.size:
        v.flat[0] = 7
        assert np.asarray(t).flat[0] == 7
    assert Tensor.zeros(list(shape)).dtype == "float32"


def test_tensor_zeros_bad():
    with pytest.raises(TypeError):
        Tensor.zeros((2,), dtype="float64")
    with pytest.raises(ValueError):
        Tensor.zeros((2, -1))
    with pytest.raises(ValueError):
        Tensor.zeros((1,) * 9)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_int_tensors(dtype):
    a = np.arange(6, dtype=dtype).reshape(2, 3)
    t = Tensor(a)
    assert t.dtype == np.dtype(dtype).name
    v = np.asarray(t)
    assert v.dtype == dtype and np.shares_memory(v, a)
    np.testing.assert_array_equal(v, a)
    with pytest.raises(TypeError):
        t.requires_grad = True
    assert t.requires_grad is False


def test_requires_grad_flag():
    t = Tensor(np.zeros(3, np.float32))
    assert t.requires_grad is False
    t.requires_grad = True
    assert t.requires_grad is True
    t.requires_grad = False
    assert t.requires_grad is False
    with pytest.raises(TypeError):
        t.requires_grad = 1
    assert "requires_grad=False" in repr(t)


def test_grad_setter_and_zero_grad():
    t = Tensor(np.zeros((2, 3), np.float32))
    assert t.grad is None
    t.zero_grad()  # no buffer yet: nothing to do
    assert t.grad is None
    g = np.arange(6, dtype=np.float32).reshape(2, 3)
    t.grad = g
    np.testing.assert_array_equal(t.grad, g)
    assert not np.shares_memory(t.grad, g)  # values were copied in
    view = t.grad
    view[0, 0] = 42.0  # .grad is a view of the gradient buffer
    assert t.grad[0, 0] == 42.0
    t.zero_grad()
    np.testing.assert_array_equal(t.grad, np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(view, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        t.grad = np.zeros((3, 2), np.float32)
    with pytest.raises(TypeError):
        t.grad = np.zeros((2, 3), np.float64)
    t.grad = None
    assert t.grad is None


def test_tensor_of_tensor_shares():
    a = np.ones(4, np.float32)
    t2 = Tensor(Tensor(a))
    assert np.shares_memory(np.asarray(t2), a)


def test_from_numpy():
    a = np.ones((2, 2), np.float32)
    t = peftcore.from_numpy(a)
    assert isinstance(t, Tensor) and np.shares_memory(np.asarray(t), a)


@pytest.mark.parametrize("dtype", [np.float64, np.bool_, np.float16, np.uint8, np.complex64])
def test_tensor_wrong_dtype(dtype):
    a = np.zeros((2, 2), dtype)
    with pytest.raises(TypeError) as e:
        Tensor(a)
    msg = str(e.value)
    assert "float32" in msg and np.dtype(dtype).name in msg


def test_tensor_non_contiguous():
    a = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError) as e:
        Tensor(a[:, ::2])
    assert "contiguous" in str(e.value)
    with pytest.raises(ValueError):
        Tensor(a.T)


def test_tensor_too_many_dims():
    a = np.zeros((1,) * 9, np.float32)
    with pytest.raises(ValueError) as e:
        Tensor(a)
    msg = str(e.value)
    assert "8" in msg and "9" in msg
    Tensor(np.zeros((1,) * 8, np.float32))  # 8 is fine


def test_tensor_not_an_array():
    with pytest.raises(TypeError) as e:
        Tensor([1.0, 2.0])
    assert "list" in str(e.value)
    with pytest.raises(TypeError):
        Tensor(None)
