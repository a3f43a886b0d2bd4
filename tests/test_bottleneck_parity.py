"""Bottleneck adapters against AdapterHub `adapters` 1.3 on the same random BERT and RoBERTa
(no dropout): logits, every trainable gradient, a 20-step AdamW run, and files both ways.

AdapterHub: `adapters.init(model)`, `model.add_adapter(name, config=SeqBnConfig(...))`,
`model.train_adapter(name)` (trains the adapter and the model's own classifier);
peftcore: `get_peft_model(model, SeqBnConfig(task_type="SEQ_CLS", ...))` (the classifier
trains as modules_to_save). Parameters of the same adapter have the same names after
peftcore's `base_model.model.` (the classifier's copy is `classifier.modules_to_save.<name>`).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import peftcore
from helpers import one_thread  # noqa: F401  (a fixture)
from parity import (MODEL_TYPES, batch, check_logits, close, grads_with_equal_loss, hf_load,
                    hf_logits, pc_load, pc_logits, save_random_models, seeded_values, train_hf,
                    train_pc)
from peftcore import PeftModel, get_peft_model

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = "base_model.model."

# (class name, kwargs): both placements, five non-linearities, every data-flow option
CONFIGS = {
    "pfeiffer-relu": ("SeqBnConfig", dict(reduction_factor=4)),
    "houlsby-swish": ("DoubleSeqBnConfig", dict(reduction_factor=4)),
    "pfeiffer-gelu-postadd": ("SeqBnConfig", dict(reduction_factor=2, non_linearity="gelu",
                                                  residual_before_ln="post_add", leave_out=[0])),
    "houlsby-tanh-all": ("DoubleSeqBnConfig", dict(reduction_factor=8, non_linearity="tanh",
                                                   ln_before=True, ln_after=True,
                                                   use_gating=True, scaling="channel",
                                                   adapter_residual_before_ln=True)),
    "bn-gelu_new-noln": ("BnConfig", dict(mh_adapter=True, output_adapter=False,
                                          reduction_factor=4, non_linearity="gelu_new",
                                          original_ln_before=True, residual_before_ln=False,
                                          scaling="learned", ln_after=True)),
    "pfeiffer-leakyrelu-scaled": ("SeqBnConfig", dict(reduction_factor=4,
                                                      non_linearity="leakyrelu", scaling=0.5)),
}
CASES = [(m, c) for m in MODEL_TYPES for c in CONFIGS]
ids_of = lambda case: f"{case[0]}-{case[1]}"  # noqa: E731


# ------------------------------------------------------------------ the two models

@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """{model_type: folder} of random models whose every weight matters, saved by
    transformers so both libraries load the same weights."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("adapters")
    return {k: folder for k, (_, folder) in save_random_models(tmp_path_factory).items()}


def _hf_bare(hf_models, model_type):
    import adapters
    model = hf_load(hf_models, model_type)
    adapters.init(model)
    return model


def _hf_loading(hf_models, model_type, folder):
    """A bare AdapterHub model that loaded the adapter in `folder` (safetensors) as
    "loaded" and made it active, in eval mode."""
    model = _hf_bare(hf_models, model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        name = model.load_adapter(str(folder), load_as="loaded", set_active=True,
                                  use_safetensors=True)
    assert name == "loaded"
    model.eval()
    return model


def _pair(hf_models, model_type, config_name, name="default"):
    import adapters
    cls, kw = CONFIGS[config_name]
    theirs = _hf_bare(hf_models, model_type)
    theirs.add_adapter(name, config=getattr(adapters, cls)(**copy.deepcopy(kw)))
    theirs.train_adapter(name)
    theirs.eval()
    ours = get_peft_model(pc_load(hf_models, model_type),
                          getattr(peftcore, cls)(task_type="SEQ_CLS", **copy.deepcopy(kw)),
                          adapter_name=name)
    return theirs, ours


def _our_name(their_name: str, adapter="default") -> str:
    if ".adapters." in their_name:
        return PREFIX + their_name
    head, _, last = their_name.rpartition(".")   # the classifier's trained copy
    return f"{PREFIX}{head.replace('classifier', f'classifier.modules_to_save.{adapter}', 1)}.{last}"


def _randomize(theirs, ours, adapter="default"):
    """The same random values for every trained parameter on both sides (LayerNorm
    weights and scalings around 1)."""
    import torch
    ours_params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if not p.requires_grad:
                continue
            center = 1.0 if name.endswith(("norm_before.weight", "norm_after.weight", "scaling")) else 0.0
            value = seeded_values(name, tuple(p.shape), center)
            p.copy_(torch.from_numpy(value))
            ours_params[_our_name(name, adapter)][...] = value


# ------------------------------------------------------------------ structure

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_same_trainable_parameters(hf_models, case):
    theirs, ours = _pair(hf_models, *case)
    want = {_our_name(n): tuple(p.shape) for n, p in theirs.named_parameters() if p.requires_grad}
    got = {n: tuple(p.shape) for n, p in ours.named_parameters() if p.requires_grad}
    assert got == want
    assert [n for n in got] == [n for n in want]   # in AdapterHub's order too


# ------------------------------------------------------------------ forward, gradients, training

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_logits(hf_models, case):
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    b = batch(seed=3)
    check_logits(theirs, ours, b, hf_logits(_hf_bare(hf_models, case[0]), b))  # adapter matters


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_gradients(hf_models, case):
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    their_grads, our_grads = grads_with_equal_loss(theirs, ours, batch(seed=5))
    assert sorted(our_grads) == sorted(_our_name(name) for name in their_grads)
    largest = max(np.linalg.norm(g) for g in their_grads.values())
    for name, g in their_grads.items():
        ref = g.astype(np.float64)
        got = np.asarray(our_grads[_our_name(name)], np.float64)
        norm = np.linalg.norm(ref)
        if norm < 1e-4 * largest:
            # a "learned" scaling right before ln_after: by the LayerNorm's scale invariance
            # its gradient is zero, and both sides return rounding noise
            assert name.endswith("scaling") and np.linalg.norm(got) < 1e-4 * largest, name
            continue
        assert np.linalg.norm(got - ref) <= 1e-3 * norm, \
            f"{name}: |error| {np.linalg.norm(got - ref):.3g} vs |grad| {norm:.3g}"


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_adamw_run(hf_models, case):
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    losses_t = train_hf(theirs, steps=20)   # 20 AdamW steps on two alternating batches
    losses_o = train_pc(ours, steps=20)
    np.testing.assert_allclose(losses_o, losses_t, rtol=0, atol=1e-4)
    assert losses_t[-1] < losses_t[0] - 0.05
    b = batch(seed=99)
    close(pc_logits(ours, b), hf_logits(theirs, b), 1e-3, "logits after training")


# ------------------------------------------------------------------ files both ways

@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_adapterhub_files_load_in_peftcore(hf_models, case, safetensors, tmp_path):
    theirs, ours = _pair(hf_models, *case, name="task")
    _randomize(theirs, ours, adapter="task")
    b = batch(seed=7)
    want = hf_logits(theirs, b)
    if safetensors and CONFIGS[case[1]][1].get("ln_before"):
        pytest.skip("adapters 1.3 cannot save ln_before adapters as safetensors (shared tensors)")
    theirs.save_adapter(str(tmp_path), "task", use_safetensors=safetensors)
    loaded = PeftModel.from_pretrained(pc_load(hf_models, case[0]), tmp_path, adapter_name="task")
    close(pc_logits(loaded, b), want, 1e-4, "peftcore loading AdapterHub's adapter")
    assert loaded.get_nb_trainable_parameters()[0] == 0
    again = PeftModel.from_pretrained(pc_load(hf_models, case[0]), tmp_path, is_trainable=True)
    assert again.get_nb_trainable_parameters() == ours.get_nb_trainable_parameters()


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_peftcore_files_load_in_adapterhub(hf_models, case, tmp_path):
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    b = batch(seed=8)
    want = pc_logits(ours, b)
    ours.save_pretrained(tmp_path)
    model = _hf_loading(hf_models, case[0], tmp_path)
    close(hf_logits(model, b), want, 1e-4, "AdapterHub loading peftcore's adapter")
    theirs_params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    for name, p in ours.named_parameters():
        if ".adapters.default." in name:
            their = name[len(PREFIX):].replace(".default.", ".loaded.")
            np.testing.assert_array_equal(theirs_params[their], p, err_msg=name)


def test_config_files_agree(hf_models, tmp_path):
    """peftcore's adapter_config.json holds AdapterHub's, plus PEFT's fields."""
    import json
    theirs, ours = _pair(hf_models, "bert", "houlsby-tanh-all")
    theirs.save_adapter(str(tmp_path / "hub"), "default")
    ours.save_pretrained(tmp_path / "pc")
    hub = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    pc = json.loads((tmp_path / "pc" / "adapter_config.json").read_text())
    assert pc["config"] == hub["config"]
    for key in ("hidden_size", "model_class", "model_type", "name"):
        assert pc[key] == hub[key], key
    assert set(pc) - set(hub) == {"peft_type", "task_type", "modules_to_save", "inference_mode",
                                  "base_model_name_or_path", "revision"}
    hub_head = json.loads((tmp_path / "hub" / "head_config.json").read_text())
    pc_head = json.loads((tmp_path / "pc" / "head_config.json").read_text())
    for key in ("config", "hidden_size", "label2id", "model_class", "model_type", "name", "num_labels"):
        assert pc_head[key] == hub_head[key], key
