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


def fixed_masks_loss(model, ids, mask, labels, forwards):
    """loss() of a train-mode forward whose dropout masks are the same at every call (the
    model's forward count held at `forwards`)."""
    def loss():
        model._forwards = forwards
        return float(model(ids, attention_mask=mask, labels=labels).loss)
    return loss


def assert_dropout_acts(model, loss, ids, mask, labels):
    """The train-mode loss differs from the eval one: the dropout under test really ran."""
    dropped = loss()
    model.eval()
    assert abs(float(model(ids, attention_mask=mask, labels=labels).loss) - dropped) > 1e-3
    model.train()


def check_grads_by_finite_differences(params, loss, rng, eps, rtol, atol):
    """Each parameter's gradient (name -> parameter) at its largest entry and at one drawn at
    random, against central differences of loss()."""
    for key, p in params.items():
        g = p.grad.astype(np.float64)
        entries = [np.unravel_index(int(np.argmax(np.abs(g))), g.shape),
                   tuple(int(rng.integers(k)) for k in g.shape)]
        check_entries_by_finite_differences(p, g, entries, loss, eps, rtol, atol, key)


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


# ------------------------------------------------------------------ MiniLM on an SST-2 subset

SST2_MAX_LENGTH = 64


@pytest.fixture(scope="module")
def sst2_subset(minilm_dir, glue_dir):
    """(train encodings, train labels, dev encodings, dev labels): 1,920 training sentences
    drawn once, and the first 448 of the 872 dev sentences (SST2_MAX_LENGTH tokens)."""
    from peftcore.train import data
    splits = data.load_glue(glue_dir, "SST-2")
    tok = data.load_tokenizer(minilm_dir, SST2_MAX_LENGTH)
    train_a, _, train_y = splits["train"]
    order = np.random.default_rng(0).permutation(len(train_y))[:1920]
    train_enc = data.encode(tok, [train_a[i] for i in order], None, SST2_MAX_LENGTH)
    dev_a, _, dev_y = splits["validation"]
    dev_enc = data.encode(tok, dev_a[:448], None, SST2_MAX_LENGTH)
    return train_enc, train_y[order], dev_enc, dev_y[:448]


def fine_tune_minilm(minilm_dir, sst2_subset, config, lr, steps, batch_size):
    """all-MiniLM-L6-v2 (2 labels, seed 0) with the PEFT `config`, trained `steps` steps of
    `batch_size` at `lr` on the subset: (model, dev accuracy before, train result)."""
    from peftcore import get_peft_model
    from peftcore.train.trainer import TrainingArguments, evaluate, train
    train_enc, train_y, dev_enc, dev_y = sst2_subset
    peftcore.manual_seed(0)
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    model = get_peft_model(model, config)
    before = evaluate(model, dev_enc, dev_y)["accuracy"]
    result = train(model, train_enc, train_y,
                   TrainingArguments(learning_rate=lr, max_steps=steps, seed=0,
                                     per_device_train_batch_size=batch_size),
                   eval_set=(dev_enc, dev_y), progress=False)
    return model, before, result


def assert_learned(result, before, loss_drop, accuracy, gain):
    """The mean loss of the last 15 steps at least loss_drop below the first 15's; the final
    dev accuracy above `accuracy` and above the untrained model's by more than `gain`."""
    after = result.evals[-1][1]["accuracy"]
    assert np.mean(result.losses[-15:]) < np.mean(result.losses[:15]) - loss_drop, result.losses
    assert after > accuracy, (before, after)
    assert after > before + gain, (before, after)


# ------------------------------------------------------------------ tiny batches and parameters

def random_batch(B, T, seed, low, pad, vocab=40, num_labels=3):
    """(ids, mask, labels): B × T token ids drawn from [low, vocab), a mask whose last row
    ends in `pad` padding positions, and labels in [0, num_labels); seeded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, vocab, (B, T))
    mask = np.ones_like(ids)
    mask[-1, T - pad:] = 0
    return ids, mask, rng.integers(0, num_labels, B)


def engine_param(values):
    """A trainable engine Parameter holding a copy of `values`."""
    from peftcore import _C
    from peftcore.models.parameter import Parameter
    p = Parameter(_C.Tensor.zeros(np.shape(values)))
    p[...] = values
    p.requires_grad = True
    return p
