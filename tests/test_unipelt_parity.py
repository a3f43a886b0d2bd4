"""UniPELT (AdapterHub's ConfigUnion of gated prefix tuning, bottleneck adapter and LoRA)
against `adapters` 1.3.0 on transformers 4.57, random BERT and RoBERTa: the same trainable
parameters, logits, every gradient (gates included), the gates themselves, a 20-step AdamW
run, and files both ways. The `adapters` config is built from peftcore's own
adapterhub_dict(), so the two libraries' configs are checked to mean the same too."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import peftcore
from peftcore import PeftModel, get_peft_model
from peftcore.tuners.bottleneck import DoubleSeqBnConfig
from peftcore.tuners.unipelt import ConfigUnion, LoRAConfig, PrefixTuningConfig, UniPELTConfig
from parity import ADAMW, hf_models  # noqa: F401
from parity import batch as _batch
from parity import close as _close
from parity import hf_logits as _hf_logits
from parity import pc_load as _pc_bare
from parity import pc_logits as _pc_logits
from parity import seeded_values as _seeded
from test_bottleneck_parity import PREFIX, _hf_bare, _hf_loading

CONFIGS = {
    "unipelt": lambda: UniPELTConfig(task_type="SEQ_CLS"),
    "AP": lambda: UniPELTConfig(lora=False, task_type="SEQ_CLS"),
    "prefix-flat-2gates": lambda: ConfigUnion(configs=[PrefixTuningConfig(
        flat=True, prefix_length=5, use_gating=True, shared_gating=False)], task_type="SEQ_CLS"),
    "prefix-mlp": lambda: ConfigUnion(configs=[PrefixTuningConfig(prefix_length=6,
                                                                  bottleneck_size=16)],
                                      task_type="SEQ_CLS"),
    "lora-gated-qkv-ffn": lambda: ConfigUnion(configs=[LoRAConfig(
        r=4, alpha=8, use_gating=True, attn_matrices=["q", "k", "v"], intermediate_lora=True,
        output_lora=True)], task_type="SEQ_CLS"),
    "mixed-leave-out": lambda: ConfigUnion(configs=[
        PrefixTuningConfig(prefix_length=4, leave_out=[0], use_gating=True, non_linearity="relu",
                           bottleneck_size=24),
        DoubleSeqBnConfig(reduction_factor=8),
        LoRAConfig(r=2, alpha=4, leave_out=[1])], task_type="SEQ_CLS"),
}
CASES = [("bert", c) for c in CONFIGS] + [("roberta", "unipelt"), ("roberta", "prefix-flat-2gates")]
ids_of = lambda case: f"{case[0]}-{case[1]}"  # noqa: E731


def _adapters_config(config):
    import adapters
    return adapters.AdapterConfig.load(copy.deepcopy(config.adapterhub_dict()))


def _pair(hf_models, model_type, config_name, name="default"):
    config = CONFIGS[config_name]()
    theirs = _hf_bare(hf_models, model_type)
    theirs.add_adapter(name, config=_adapters_config(config))
    theirs.train_adapter(name)
    theirs.eval()
    ours = get_peft_model(_pc_bare(hf_models, model_type), config, adapter_name=name)
    return theirs, ours


def _our_name(their_name: str, adapter="default") -> str:
    if ".prefix_tuning.pool." in their_name:   # AdapterHub lists its pool under layer 0 first
        base = their_name.split(".", 1)[0]
        return f"{PREFIX}{base}.prefix_tuning.{their_name.split('.prefix_tuning.pool.', 1)[1]}"
    if any(f".{c}.{adapter}." in their_name for c in ("loras", "adapters", "prefix_gates",
                                                       "prefix_tunings")):
        return PREFIX + their_name
    head, _, last = their_name.rpartition(".")   # the classifier's trained copy
    return f"{PREFIX}{head.replace('classifier', f'classifier.modules_to_save.{adapter}', 1)}.{last}"


def _randomize(theirs, ours, adapter="default"):
    import torch
    ours_params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if not p.requires_grad:
                continue
            # the prefix MLP (512 wide) smaller: with 0.3 its rows are large, a 20-step run
            # turns chaotic and torch's own float32 and float64 runs part by 1e-3
            std = 1.0 if name.endswith("wte.weight") else 0.05 if "control_trans" in name else 0.3
            value = _seeded(name, tuple(p.shape), std=std)
            p.copy_(torch.from_numpy(value))
            ours_params[_our_name(name, adapter)][...] = value


# ------------------------------------------------------------------ structure and config

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_same_trainable_parameters(hf_models, case):
    theirs, ours = _pair(hf_models, *case)
    want = {_our_name(n): tuple(p.shape) for n, p in theirs.named_parameters() if p.requires_grad}
    got = {n: tuple(p.shape) for n, p in ours.named_parameters() if p.requires_grad}
    assert got == want
    assert ours.get_nb_trainable_parameters()[0] == sum(
        p.numel() for p in theirs.parameters() if p.requires_grad)


def test_unipelt_defaults_are_adapters():
    import adapters
    assert UniPELTConfig().adapterhub_dict() == adapters.UniPELTConfig().to_dict()
    ap = UniPELTConfig(lora=False).adapterhub_dict()
    assert [c.get("architecture") for c in ap["configs"]] == ["prefix_tuning", None]
    assert all(c["use_gating"] for c in ap["configs"])


# ------------------------------------------------------------------ forward, gradients, gates

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_logits(hf_models, case):
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    b = _batch(seed=3)
    want = _hf_logits(theirs, b)
    _close(_pc_logits(ours, b), want, 1e-4, "logits")
    with peftcore.no_grad():
        _close(_pc_logits(ours, b), want, 1e-4, "logits under no_grad")
    bare = _hf_logits(_hf_bare(hf_models, case[0]), b)
    assert np.abs(want - bare).max() > 1e-2   # the adapter matters


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_gradients(hf_models, case):
    import torch
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    ids, mask, labels = _batch(seed=5)
    theirs.zero_grad(set_to_none=True)
    out = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 labels=torch.tensor(labels))
    out.loss.backward()
    ours.zero_grad(set_to_none=True)
    loss = float(ours(ids, attention_mask=mask, labels=labels).loss)
    ours.backward()
    assert abs(loss - float(out.loss.detach())) <= 1e-4 * max(1.0, abs(float(out.loss.detach())))
    ours_params = dict(ours.named_parameters())
    checked = 0
    for name, p in theirs.named_parameters():
        if not p.requires_grad:
            continue
        ref = p.grad.numpy().astype(np.float64)
        got = np.asarray(ours_params[_our_name(name)].grad, np.float64)
        norm = np.linalg.norm(ref)
        assert norm > 0, name
        assert np.linalg.norm(got - ref) <= 1e-3 * norm, \
            f"{name}: |error| {np.linalg.norm(got - ref):.3g} vs |grad| {norm:.3g}"
        checked += 1
    assert checked == len([p for p in ours.parameters() if p.requires_grad])


_LOCATION = {"lora_query": ("selfattn_lora", "q"), "lora_key": ("selfattn_lora", "k"),
             "lora_value": ("selfattn_lora", "v"), "lora_intermediate": ("intermediate_lora", None),
             "lora_output": ("output_lora", None), "prefix": ("self_prefix", None),
             "adapter_output": ("output_adapter", None), "adapter_attention": ("mh_adapter", None)}


@pytest.mark.parametrize("case", [c for c in CASES if c[1] != "prefix-mlp"], ids=ids_of)
def test_gate_values_match_adapters(hf_models, case):
    """get_gate_values: the engine's gates, as `adapters` reports them
    (output_adapter_gating_scores=True)."""
    import torch
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    ids, mask, _ = _batch(seed=11)
    out = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 output_adapter_gating_scores=True)
    # `adapters` also lists an ungated bottleneck adapter there, with its (B, T, C) output
    # in place of a gate: only gates are compared
    want = {layer: {loc: v for loc, v in locs.items() if np.ndim(v) <= 2}
            for layer, locs in out.adapter_gating_scores["default"].items()}
    want = {layer: locs for layer, locs in want.items() if locs}
    got = ours.get_gate_values(ids, attention_mask=mask)
    lora = CONFIGS[case[1]]().component("lora")
    order = [m for m in "qkv" if lora is not None and m in lora.attn_matrices]
    assert sorted(got) == sorted(want)
    for layer, subs in got.items():
        assert {_LOCATION[s][0] for s in subs} == set(want[layer]), layer
        for sub, values in subs.items():
            location, matrix = _LOCATION[sub]
            ref = np.asarray(want[layer][location])
            if matrix is not None:
                ref = ref.reshape(len(ids), -1)[:, order.index(matrix)]
            assert values.shape == ref.shape, (layer, sub)
            np.testing.assert_allclose(values, ref, rtol=1e-4, atol=1e-5, err_msg=f"{layer} {sub}")
            assert ((values > 0) & (values < 1)).all()


@pytest.mark.parametrize("case", [("bert", "unipelt"), ("roberta", "unipelt"),
                                  ("bert", "mixed-leave-out"), ("bert", "prefix-mlp")],
                         ids=ids_of)
def test_adamw_run(hf_models, case):
    import torch
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    opt_t = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], **ADAMW)
    opt_o = peftcore.optim.AdamW([p for p in ours.parameters() if p.requires_grad], **ADAMW)
    theirs.train()
    ours.train()
    losses_t, losses_o = [], []
    for step in range(20):
        ids, mask, labels = _batch(seed=step % 2)
        out = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     labels=torch.tensor(labels))
        out.loss.backward()
        opt_t.step()
        opt_t.zero_grad(set_to_none=True)
        losses_t.append(float(out.loss.detach()))
        losses_o.append(float(ours(ids, attention_mask=mask, labels=labels).loss))
        ours.backward()
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)
    theirs.eval()
    ours.eval()
    np.testing.assert_allclose(losses_o, losses_t, rtol=0, atol=1e-4)
    assert losses_t[-1] < losses_t[0] - 0.05
    b = _batch(seed=99)
    _close(_pc_logits(ours, b), _hf_logits(theirs, b), 1e-3, "logits after training")


# ------------------------------------------------------------------ files both ways

@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("case", [("bert", "unipelt"), ("roberta", "unipelt"),
                                  ("bert", "prefix-flat-2gates"), ("bert", "mixed-leave-out"),
                                  ("bert", "lora-gated-qkv-ffn")], ids=ids_of)
def test_adapterhub_files_load_in_peftcore(hf_models, case, safetensors, tmp_path):
    theirs, ours = _pair(hf_models, *case, name="task")
    _randomize(theirs, ours, adapter="task")
    b = _batch(seed=7)
    want = _hf_logits(theirs, b)
    if safetensors and CONFIGS[case[1]]().component("prefix_tuning") is not None:
        pytest.skip("adapters 1.3 cannot save prefix tuning as safetensors (its pool's "
                    "tensors are shared)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_adapter(str(tmp_path), "task", use_safetensors=safetensors)
    loaded = PeftModel.from_pretrained(_pc_bare(hf_models, case[0]), tmp_path, adapter_name="task")
    assert isinstance(loaded.peft_config["task"], ConfigUnion)
    _close(_pc_logits(loaded, b), want, 1e-4, "peftcore loading AdapterHub's adapter")
    assert loaded.get_nb_trainable_parameters()[0] == 0
    again = PeftModel.from_pretrained(_pc_bare(hf_models, case[0]), tmp_path, is_trainable=True)
    assert again.get_nb_trainable_parameters() == ours.get_nb_trainable_parameters()


@pytest.mark.parametrize("case", [("bert", "unipelt"), ("roberta", "unipelt"),
                                  ("bert", "prefix-flat-2gates"), ("bert", "mixed-leave-out"),
                                  ("bert", "lora-gated-qkv-ffn")], ids=ids_of)
def test_peftcore_files_load_in_adapterhub(hf_models, case, tmp_path):
    theirs, ours = _pair(hf_models, *case)
    _randomize(theirs, ours)
    b = _batch(seed=8)
    want = _pc_logits(ours, b)
    ours.save_pretrained(tmp_path)
    model = _hf_loading(hf_models, case[0], tmp_path)
    _close(_hf_logits(model, b), want, 1e-4, "AdapterHub loading peftcore's adapter")
    # and back: peftcore reads its own files to the same logits
    back = PeftModel.from_pretrained(_pc_bare(hf_models, case[0]), tmp_path)
    _close(_pc_logits(back, b), want, 1e-6, "peftcore reading its own files")


def test_config_files_agree(hf_models, tmp_path):
    """peftcore's adapter_config.json holds AdapterHub's, plus PEFT's fields."""
    import json
    theirs, ours = _pair(hf_models, "bert", "unipelt")
    theirs.save_adapter(str(tmp_path / "hub"), "default")
    ours.save_pretrained(tmp_path / "pc")
    hub = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    pc = json.loads((tmp_path / "pc" / "adapter_config.json").read_text())
    assert pc["config"] == hub["config"]
    assert pc["config"]["architecture"] == "union"
    for key in ("hidden_size", "model_class", "model_type", "name"):
        assert pc[key] == hub[key], key
    assert set(pc) - set(hub) == {"peft_type", "task_type", "modules_to_save", "inference_mode",
                                  "base_model_name_or_path", "revision"}
