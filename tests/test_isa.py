"""Runtime dispatch: one build holds the kernels of every instruction set (baseline SSE2,
AVX2 + FMA, AVX-512) and picks one at import; PEFTCORE_ISA forces a set, and
PEFTCORE_DISABLE_CPU_FEATURES hides CPU features so the paths of other CPUs (an AVX2-only
Zen 3, an SSE-only machine) run, and are refused, here as they would be there."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import peftcore
from helpers import cpu_flags

REPO = Path(__file__).resolve().parents[1]
SETS = ("baseline", "avx2", "avx512")
SET_FEATURES = {"baseline": set(), "avx2": {"avx", "avx2", "fma"},
                "avx512": {"avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"}}
X86 = os.uname().machine in ("x86_64", "amd64")

# a small model's logits and an op's result under one set, as JSON
PROBE = r"""
import json, sys, warnings
import numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import peftcore
from peftcore import AutoModelForSequenceClassification, functional as F
cfg = dict(model_type="bert", vocab_size=50, hidden_size=48, num_hidden_layers=2,
           num_attention_heads=3, intermediate_size=96, max_position_embeddings=40, num_labels=3)
model = AutoModelForSequenceClassification.from_config(cfg, seed=1).eval()
rng = np.random.default_rng(0)
ids = rng.integers(0, 50, size=(3, 37))
mask = np.ones_like(ids); mask[1, 20:] = 0
logits = model(ids, attention_mask=mask).logits
x = rng.standard_normal((67, 45)).astype(np.float32)
gelu = np.asarray(F.gelu(x))
print(json.dumps({"info": peftcore.backend_info(), "warnings": [str(w.message) for w in caught],
                  "logits": logits.tolist(), "gelu": gelu.tolist(), "x": x.tolist()}))
"""


def _probe(**env_updates):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PEFTCORE_ISA", "PEFTCORE_DISABLE_CPU_FEATURES", "BLIS_ARCH_TYPE")}
    env.update({k: v for k, v in env_updates.items() if v is not None})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _runnable_sets():
    return peftcore.backend_info()["isa_available"].split()


def _best_for(flags):
    # /proc/cpuinfo spells fma "fma" and the AVX-512 subsets as GCC does
    best = "baseline"
    for name in ("avx2", "avx512"):
        if X86 and SET_FEATURES[name] <= flags:
            best = name
    return best


@pytest.fixture(scope="module")
def default_run():
    return _probe()


def test_default_set_is_the_best_the_cpu_runs(default_run):
    info = default_run["info"]
    assert info["isa"] == _best_for(cpu_flags())
    assert info["isa_available"].split() == [s for s in SETS if s in info["isa_available"].split()]
    assert info["isa"] == info["isa_available"].split()[-1]
    assert info["isa_note"] == "" and default_run["warnings"] == []


@pytest.mark.parametrize("isa", SETS)
def test_each_set_the_cpu_runs_computes_the_same_model(isa, default_run):
    """Forced by PEFTCORE_ISA, every set runs; BLIS's kernel set follows it; the logits and
    GELU agree with the default set's to rounding, and GELU with its exact formula."""
    if isa not in _runnable_sets():
        pytest.skip(f"this CPU does not run {isa}")
    run = _probe(PEFTCORE_ISA=isa)
    info = run["info"]
    assert info["isa"] == isa and info["isa_note"] == "" and run["warnings"] == []
    if X86:
        expected_blis = {"avx512": {"skx"}, "avx2": {"haswell", "zen3"},
                         "baseline": {"penryn", "generic"}}[isa]
        assert info["blis_arch"] in expected_blis, info
    np.testing.assert_allclose(run["logits"], default_run["logits"], rtol=2e-5, atol=2e-6)
    x = np.asarray(run["x"], dtype=np.float64)
    from math import erf
    exact = x * 0.5 * (1 + np.vectorize(erf)(x / np.sqrt(2)))
    np.testing.assert_allclose(run["gelu"], exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["avx1024", "AVX2 ", "sse", "0"])
def test_unknown_set_warns_and_runs_the_best(value, default_run):
    run = _probe(PEFTCORE_ISA=value)
    best = default_run["info"]["isa"]
    assert run["info"]["isa"] == best
    note = run["info"]["isa_note"]
    assert f"PEFTCORE_ISA={value} ignored" in note and "baseline, avx2, avx512" in note, note
    assert note in run["warnings"]
    assert run["logits"] == default_run["logits"]


@pytest.mark.skipif(not X86, reason="x86-64 instruction sets")
def test_a_set_the_cpu_lacks_is_refused_naming_what_is_missing(default_run):
    """As on an AVX2-only Zen 3: AVX-512 hidden, PEFTCORE_ISA=avx512 warns, names the missing
    feature and the CPU's flags, and runs the AVX2 set; BLIS's skx kernels are refused too."""
    if "avx2" not in _runnable_sets():
        pytest.skip("this CPU does not run avx2")
    run = _probe(PEFTCORE_ISA="avx512", PEFTCORE_DISABLE_CPU_FEATURES="avx512f",
                 BLIS_ARCH_TYPE="skx")
    info = run["info"]
    assert info["isa"] == "avx2" and info["isa_available"] == "baseline avx2"
    assert "avx512f" not in info["simd"].split()
    assert re.search(r"PEFTCORE_ISA=avx512 ignored: this CPU lacks avx512f; using avx2 "
                     r"\(CPU features: .*avx2.*\)", info["isa_note"]), info["isa_note"]
    assert info["blis_arch"] in ("haswell", "zen3")
    assert "BLIS_ARCH_TYPE=skx ignored: this CPU cannot run it" in info["blis_arch_note"]
    assert len(run["warnings"]) == 2
    np.testing.assert_allclose(run["logits"], default_run["logits"], rtol=2e-5, atol=2e-6)
    # an SSE-only machine: the baseline set, BLIS's SSE kernels
    run = _probe(PEFTCORE_ISA="avx2", PEFTCORE_DISABLE_CPU_FEATURES="avx2,avx512f")
    assert run["info"]["isa"] == "baseline" and run["info"]["blis_arch"] in ("penryn", "generic")
    assert "this CPU lacks avx2" in run["info"]["isa_note"]
    np.testing.assert_allclose(run["logits"], default_run["logits"], rtol=2e-5, atol=2e-6)


def _disassembly():
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not installed")
    so = peftcore._C.__file__
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", so], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    functions, name = {}, None
    for line in out.stdout.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            name = m.group(1)
            functions[name] = []
        elif name and "\t" in line:
            functions[name].append(line)
    return functions


@pytest.mark.skipif(not X86, reason="x86-64 instruction sets")
def test_build_is_portable_each_set_uses_only_its_registers():
    """The extension runs on any x86-64 CPU: the baseline kernels and the engine compiled
    once use no AVX register (ymm/zmm), the AVX2 kernels no AVX-512 one, and only the
    AVX-512 kernels zmm registers."""
    functions = _disassembly()
    from peftcore import _C  # noqa: F401  (the symbols checked below are the kernels')
    kernels = [n for n in functions if n.endswith(("_baseline", "_avx2", "_avx512"))]
    assert any(n.startswith("pc_gelu_forward_") for n in kernels), "no per-set kernels found"
    for suffix in ("_baseline", "_avx2", "_avx512"):
        assert sum(n.endswith(suffix) for n in kernels) >= 40, suffix
    once = [n for n in functions if n.startswith("pc_") and n not in kernels
            and "@" not in n and "." not in n]
    assert "pc_runtime_init" in once and "pc_gelu_forward" in once  # dispatcher + engine
    bad = []
    for name, lines in functions.items():
        text = "\n".join(lines)
        if name.endswith("_baseline") or name in once:
            if re.search(r"%[yz]mm", text):
                bad.append(name)
        elif name.endswith("_avx2") and re.search(r"%zmm", text):
            bad.append(name)
    assert not bad, bad
    assert any(re.search(r"%zmm", "\n".join(functions[n])) for n in kernels
               if n.endswith("_avx512"))
    assert any(re.search(r"%ymm", "\n".join(functions[n])) for n in kernels
               if n.endswith("_avx2"))
