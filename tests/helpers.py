"""Helpers shared by the test files: random tiny models, finite differences, CPU flags."""
from pathlib import Path

import numpy as np
import pytest

import peftcore


@pytest.fixture
def one_thread():
    """Tiny models run single-threaded (multi-threaded BLIS on tiny matrices stalls on a
    busy machine); the previous thread count is restored."""
    old = peftcore.get_num_threads()
    peftcore.set_num_threads(1)
    yield
    peftcore.set_num_threads(old)


def randomize_parameters(model, seed=0):
    """Give every weight, bias and LayerNorm affine a random value so each one matters."""
    rng = np.random.default_rng(100 + seed)
    for name, p in model.named_parameters():
        if "LayerNorm.weight" in name:
            p[...] = 1 + 0.2 * rng.standard_normal(p.shape)
        else:
            p[...] = 0.3 * rng.standard_normal(p.shape)
    return model.eval()


def check_entries_by_finite_differences(p, g, entries, loss_fn, eps, rtol, atol, name=""):
    """Central differences of loss_fn over p[idx] for idx in entries must match g[idx]."""
    for idx in entries:
        old = float(p[idx])
        p[idx] = old + eps
        up = loss_fn()
        p[idx] = old - eps
        down = loss_fn()
        p[idx] = old
        fd = (up - down) / (2 * eps)
        assert abs(fd - g[idx]) <= rtol * abs(g[idx]) + atol, (name, idx, fd, g[idx])


# Modules transformers and HF PEFT hold that peftcore's module tree leaves out: the engine
# applies dropout and activations itself, and peftcore's LoRA has no embedding or DoRA parts.
UNMODELLED_MODULES = ("dropout", "intermediate_act_fn", "activation", "lora_embedding_A",
                      "lora_embedding_B", "lora_magnitude_vector")


def torch_repr_as_peftcore(text: str) -> str:
    """torch's repr of a transformers / HF PEFT model without the one-line entries of
    UNMODELLED_MODULES: what peftcore's repr of the same model must print."""
    kept = []
    for line in text.splitlines():
        name = line.strip().partition(")")[0].lstrip("(")
        if line.strip().startswith("(") and name in UNMODELLED_MODULES:
            assert line.endswith(")"), f"not a one-line entry: {line!r}"
            continue
        kept.append(line)
    return "\n".join(kept)


def cpu_flags():
    """The CPU's feature flags as /proc/cpuinfo spells them (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
