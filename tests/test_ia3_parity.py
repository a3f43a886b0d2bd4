"""(IA)³ against HF PEFT on the same random BERT and RoBERTa (no dropout): logits, every
trainable gradient, a 20-step AdamW run, adapter files both ways, merged inference and the
trainable-parameter line.

(IA)³ scales a target linear layer's output rows by a learned vector l of shape (out, 1),
bias included (y = l ⊙ (W x + b)), or, for a feed-forward module, its input columns by l of
shape (1, in) (y = W (l ⊙ x) + b). Merging folds l into W (and b, for a non-feed-forward
target). With SEQ_CLS the classification head trains beside the vectors (modules_to_save).
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import safetensors.numpy

import peftcore
from helpers import one_thread  # noqa: F401  (a fixture)
from parity import (MODEL_TYPES, assert_frozen_without_grad, batch, check_logits, close,
                    compare_grads, grads_with_equal_loss, hf_load, hf_logits, hf_models,
                    pc_load, pc_logits, seeded_values, set_hf, set_pc, train_hf, train_pc)  # noqa: F401  (hf_models: a fixture)
from peftcore import PeftModel, get_peft_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    # HF PEFT's defaults for BERT / RoBERTa: key, value and both output.dense layers, the
    # latter feed-forward (attention.output.dense matches "output.dense" too)
    "default": dict(task_type="SEQ_CLS"),
    # intermediate.dense scaled on its output side, only layer 1's FFN output feed-forward,
    # layer 0's query excluded
    "custom": dict(task_type="SEQ_CLS",
                   target_modules=["query", "value", "intermediate.dense", "layer.1.output.dense"],
                   feedforward_modules=["layer.1.output.dense"],
                   exclude_modules=["layer.0.attention.self.query"]),
    # regular expressions (re.fullmatch): both output.dense layers targeted, only the FFN's
    # feed-forward
    "regex": dict(task_type="SEQ_CLS",
                  target_modules=r".*\.(key|attention\.output\.dense|output\.dense)",
                  feedforward_modules=r".*layer\.\d\.output\.dense"),
}
CASES = [(m, c) for m in MODEL_TYPES for c in CONFIGS]
ids_of = lambda case: f"{case[0]}-{case[1]}"  # noqa: E731

# saved fields whose value legitimately differs: HF writes its version, the auto class and
# the torch model's name_or_path
_UNCOMPARED = {"peft_version", "auto_mapping", "base_model_name_or_path"}


def _pair(hf_models, model_type, config_name):
    import peft
    kw = CONFIGS[config_name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(hf_load(hf_models, model_type),
                                     peft.IA3Config(**copy.deepcopy(kw)))
    ours = get_peft_model(pc_load(hf_models, model_type), peftcore.IA3Config(**copy.deepcopy(kw)))
    return theirs, ours


def _ia3_values(theirs, center=1.0, std=0.4):
    """Seeded random (IA)³ vectors (around 1, so the model stays sensible) for every ia3_l
    parameter of the HF model, keyed by name."""
    values = {n: seeded_values(n, tuple(p.shape), center, std)
              for n, p in theirs.named_parameters() if ".ia3_l." in n}
    assert values
    return values


def _randomized_pair(hf_models, model_type, config_name):
    theirs, ours = _pair(hf_models, model_type, config_name)
    values = _ia3_values(theirs)
    set_hf(theirs, values)
    set_pc(ours, values)
    return theirs, ours, values


def _trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------ model structure

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_same_trainable_parameters_and_print_line(hf_models, case, capsys):
    theirs, ours = _pair(hf_models, *case)
    assert _trainable(ours) == _trainable(theirs)
    assert any(".ia3_l.default" in n for n in _trainable(ours))
    shapes = {n: tuple(p.shape) for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        assert tuple(p.shape) == shapes[name], name
    # HF's init: vectors of ones, so the adapted model is the bare model
    for name, p in ours.named_parameters():
        if ".ia3_l." in name:
            assert np.all(np.asarray(p) == 1.0), name
    b = batch()
    close(pc_logits(ours, b), hf_logits(theirs, b), 1e-4, "initial logits")
    capsys.readouterr()
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    ours.print_trainable_parameters()
    assert capsys.readouterr().out == expected
    assert expected.startswith("trainable params: ")
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


# ------------------------------------------------------------------ forward and gradients

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_logits_with_random_vectors(hf_models, case):
    theirs, ours, _ = _randomized_pair(hf_models, *case)
    b = batch(seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = hf_logits(hf_load(hf_models, case[0]), b)
    # under no_grad too: the inference path (folded last-layer keys/values if allowed); the
    # vectors matter (not a comparison of two bare models)
    check_logits(theirs, ours, b, bare)


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_gradients_of_vectors_and_head(hf_models, case):
    theirs, ours, _ = _randomized_pair(hf_models, *case)
    g_t, g_o = grads_with_equal_loss(theirs, ours, batch(seed=5))
    skipped = compare_grads(g_o, g_t, rtol=1e-3, floor=1e-6)
    assert not skipped  # random vectors: every gradient is significant here
    assert any(".ia3_l." in n for n in g_t) and any("modules_to_save" in n for n in g_t)
    assert_frozen_without_grad(ours)  # frozen parameters get no gradient buffer


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_adamw_run_matches_torch(hf_models, case):
    theirs, ours = _pair(hf_models, *case)  # HF's init: ones, the head as loaded
    losses_t = train_hf(theirs, steps=20)
    losses_o = train_pc(ours, steps=20)
    np.testing.assert_allclose(losses_o, losses_t, rtol=0, atol=1e-4)
    assert losses_t[-1] < losses_t[0] - 0.05  # the run learns something
    b = batch(seed=99)
    close(pc_logits(ours, b), hf_logits(theirs, b), 1e-3, "logits after training")


# ------------------------------------------------------------------ files

def _compare_folders(ours, theirs):
    hc = json.loads((theirs / "adapter_config.json").read_text())
    oc = json.loads((ours / "adapter_config.json").read_text())
    assert set(oc) == set(hc)
    for key in set(hc) - _UNCOMPARED:
        if key in ("target_modules", "feedforward_modules", "exclude_modules") \
                and isinstance(hc[key], list):
            assert sorted(oc[key]) == sorted(hc[key]), key  # HF writes a set's order
        elif key == "modules_to_save" and hc[key] is not None:
            assert set(oc[key]) == set(hc[key]), key
        else:
            assert oc[key] == hc[key], key
    assert oc["peft_type"] == "IA3" and oc["inference_mode"] is True
    ht = safetensors.numpy.load_file(theirs / "adapter_model.safetensors")
    ot = safetensors.numpy.load_file(ours / "adapter_model.safetensors")
    assert sorted(ot) == sorted(ht)
    assert any(k.endswith(".ia3_l") for k in ht)
    for key in ht:
        assert ot[key].shape == ht[key].shape and ot[key].dtype == ht[key].dtype, key


def _randomize_head(theirs, ours):
    """Give the trained head (modules_to_save) new values on both sides, so the files must
    carry it."""
    values = {n: seeded_values(n, tuple(p.shape)) for n, p in theirs.named_parameters()
              if ".modules_to_save.default." in n}
    assert values
    set_hf(theirs, values)
    set_pc(ours, values)


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_saved_files_match_hf(hf_models, case, tmp_path):
    theirs, ours, _ = _randomized_pair(hf_models, *case)
    theirs.save_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "pc")
    _compare_folders(tmp_path / "pc", tmp_path / "hf")
    # the same tensors under the same keys
    ht = safetensors.numpy.load_file(tmp_path / "hf" / "adapter_model.safetensors")
    ot = safetensors.numpy.load_file(tmp_path / "pc" / "adapter_model.safetensors")
    for key in ht:
        np.testing.assert_array_equal(ot[key], ht[key], err_msg=key)


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_peftcore_adapter_loads_in_hf_peft(hf_models, case, tmp_path):
    import peft
    theirs, ours, _ = _randomized_pair(hf_models, *case)
    _randomize_head(theirs, ours)
    b = batch(seed=7)
    expected = pc_logits(ours, b)
    ours.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(hf_load(hf_models, case[0]), str(tmp_path)).eval()
    close(hf_logits(loaded, b), expected, 1e-4, "HF PEFT loading peftcore's adapter")
    hf_params = {n: p.detach().numpy() for n, p in loaded.named_parameters()}
    for name, p in ours.named_parameters():
        if ".ia3_l." in name or ".modules_to_save." in name:
            np.testing.assert_array_equal(hf_params[name], p, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_hf_peft_adapter_loads_in_peftcore(hf_models, case, tmp_path):
    theirs, ours, _ = _randomized_pair(hf_models, *case)
    _randomize_head(theirs, ours)
    b = batch(seed=8)
    expected = hf_logits(theirs, b)
    theirs.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(pc_load(hf_models, case[0]), tmp_path)
    close(pc_logits(loaded, b), expected, 1e-4, "peftcore loading HF PEFT's adapter")
    assert loaded.get_nb_trainable_parameters()[0] == 0  # inference mode by default
    peft_type = loaded.peft_config["default"].peft_type
    assert getattr(peft_type, "value", peft_type) == "IA3"
    trainable = PeftModel.from_pretrained(pc_load(hf_models, case[0]), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    close(pc_logits(trainable, b), expected, 1e-4, "loaded trainable")


# ------------------------------------------------------------------ merging

def _hf_merged_weights(theirs):
    """HF PEFT's weights after merge_adapter(), under the names of the unloaded model.

    (peft 0.21.2's merge_and_unload fails on RoBERTa with SEQ_CLS: unloading the head's
    ModulesToSaveWrapper asks the RobertaClassificationHead for a `weight`; merging in place
    is the same arithmetic.)"""
    theirs.merge_adapter()
    out = {}
    for name, p in theirs.named_parameters():
        if ".ia3_l." in name or ".original_module." in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[name.replace(".modules_to_save.default.", ".")] = p.detach().numpy()
    return out


@pytest.mark.filterwarnings("ignore:All adapters are already merged")
@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_merge_and_unload_keeps_logits(hf_models, case):
    theirs, ours, _ = _randomized_pair(hf_models, *case)
    _randomize_head(theirs, ours)
    b = batch(seed=11)
    unmerged_t, unmerged_o = hf_logits(theirs, b), pc_logits(ours, b)
    close(unmerged_o, unmerged_t, 1e-4, "unmerged")
    theirs_w = _hf_merged_weights(theirs)
    close(hf_logits(theirs, b), unmerged_t, 1e-4, "HF merged vs unmerged")
    if case[0] == "bert":  # HF's merge_and_unload works there
        close(hf_logits(theirs.merge_and_unload().eval(), b), unmerged_t, 1e-4, "HF unloaded")
    merged_o = ours.merge_and_unload().eval()
    assert not any(".ia3_l" in n for n, _ in merged_o.named_parameters())
    close(pc_logits(merged_o, b), unmerged_o, 1e-4, "peftcore merged vs unmerged")
    with peftcore.no_grad():
        close(pc_logits(merged_o, b), unmerged_o, 1e-4, "peftcore merged, no_grad")
    # the merged weights themselves are HF's (the head: the trained copy, unwrapped)
    ours_w = dict(merged_o.named_parameters())
    assert sorted(ours_w) == sorted(theirs_w)
    for name, w in theirs_w.items():
        close(ours_w[name], w, 1e-6, name)


@pytest.mark.filterwarnings("ignore:Unmerge result can be inaccurate")
@pytest.mark.filterwarnings("ignore:All adapters are already merged")
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_merge_then_unmerge_restores_the_adapter(hf_models, model_type):
    """Unmerging divides by the vectors again, as HF does (so its rounding is HF's)."""
    theirs, ours, _ = _randomized_pair(hf_models, model_type, "custom")
    b = batch(seed=12)
    before = pc_logits(ours, b)
    base_before = {n: np.array(p) for n, p in ours.named_parameters() if ".base_layer." in n}
    assert base_before
    ours.merge_adapter()
    theirs.merge_adapter()
    close(pc_logits(ours, b), before, 1e-4, "merged in place")
    ours.unmerge_adapter()
    theirs.unmerge_adapter()
    close(pc_logits(ours, b), before, 1e-4, "unmerged again")
    close(pc_logits(ours, b), hf_logits(theirs, b), 1e-4, "unmerged, against HF")
    hf_weights = {n: p.detach().numpy() for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        if name in base_before:
            close(p, base_before[name], 1e-4, name)
            close(p, hf_weights[name], 1e-6, name)
