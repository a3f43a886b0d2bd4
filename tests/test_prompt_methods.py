"""Prompt tuning, P-tuning and prefix tuning on the tuner protocol, without torch: configs
(HF PEFT 0.21's fields and defaults), bad input (a clear error, the model unchanged), the API
(get_prompt, adapters, disable, unload, merge refused), what trains, finite-difference
gradients through the prompt encoders (dropout included) and the files.
Parity with HF PEFT itself is in test_prompt_parity.py."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import peftcore
from helpers import check_entries_by_finite_differences, one_thread, randomize_parameters, random_batch  # noqa: F401,E501
from peftcore import (PeftConfig, PeftModel, PeftType, PrefixTuningConfig, PromptEncoderConfig,
                      PromptTuningConfig, get_peft_model)

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=2,
           num_attention_heads=2, intermediate_size=32, max_position_embeddings=20,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
P = 3


def _base(seed=0, **overrides):
    model = peftcore.AutoModelForSequenceClassification.from_config({**CFG, **overrides}, seed=seed)
    return randomize_parameters(model, seed)


def _batch(B=3, T=6, seed=0):
    return random_batch(B, T, seed, low=3, pad=2)


CONFIGS = {
    "prompt": lambda **kw: PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P, **kw),
    "p_tuning_mlp": lambda **kw: PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=P,
                                                     encoder_hidden_size=8, **kw),
    "p_tuning_lstm": lambda **kw: PromptEncoderConfig(
        task_type="SEQ_CLS", num_virtual_tokens=P, encoder_hidden_size=6,
        encoder_reparameterization_type="LSTM", **kw),
    "prefix": lambda **kw: PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P, **kw),
    "prefix_projection": lambda **kw: PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=P, prefix_projection=True, encoder_hidden_size=8,
        **kw),
}


# ---------------------------------------------------------------- configs

def test_config_fields_and_defaults_as_hf_peft():
    base = dict(num_virtual_tokens=None, token_dim=None, num_transformer_submodules=None,
                num_attention_heads=None, num_layers=None, modules_to_save=None)
    common = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
              "revision", "inference_mode"}
    cases = [
        (PromptTuningConfig(num_virtual_tokens=4), PeftType.PROMPT_TUNING,
         dict(prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
              tokenizer_name_or_path=None, tokenizer_kwargs=None)),
        (PromptEncoderConfig(num_virtual_tokens=4), PeftType.P_TUNING,
         dict(encoder_reparameterization_type="MLP", encoder_hidden_size=None,
              encoder_num_layers=2, encoder_dropout=0.0)),
        (PrefixTuningConfig(num_virtual_tokens=4), PeftType.PREFIX_TUNING,
         dict(encoder_hidden_size=None, prefix_projection=False, init_weights=None)),
    ]
    for config, peft_type, own in cases:
        d = config.to_dict()
        assert config.peft_type == peft_type and config.is_prompt_learning
        assert set(d) == common | set(base) | set(own), type(config).__name__
        for key, value in {**base, "num_virtual_tokens": 4, **own}.items():
            assert d[key] == value, (type(config).__name__, key)
        assert PeftConfig.from_dict(json.loads(json.dumps(d))) == config


def test_config_filled_from_the_model_on_get_peft_model():
    pm = get_peft_model(_base(), CONFIGS["prefix_projection"]())
    c = pm.peft_config["default"]
    assert (c.token_dim, c.num_layers, c.num_attention_heads, c.num_transformer_submodules,
            c.encoder_hidden_size) == (16, 2, 2, 1, 8)
    c = get_peft_model(_base(), CONFIGS["prefix"]()).peft_config["default"]
    assert c.encoder_hidden_size == 16   # token_dim when not given, as HF PEFT
    assert c.modules_to_save == ["classifier", "score"]


@pytest.mark.parametrize("cls", [PromptTuningConfig, PromptEncoderConfig, PrefixTuningConfig])
@pytest.mark.parametrize("bad", [None, 0, -2, 2.5, "3", True])
def test_num_virtual_tokens_must_be_positive(cls, bad):
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        cls(num_virtual_tokens=bad)


def test_bad_configs_raise():
    cases = [
        (lambda: PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                                    prompt_tuning_init_text="hello"), "tokenizer_name_or_path"),
        (lambda: PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                                    tokenizer_name_or_path="x"), "prompt_tuning_init_text"),
        (lambda: PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                                    tokenizer_name_or_path="x", prompt_tuning_init_text="  "),
         "non-empty"),
        (lambda: PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="WORDS"),
         "prompt_tuning_init"),
        (lambda: PromptTuningConfig(num_virtual_tokens=2, tokenizer_kwargs={"a": 1}),
         "tokenizer_kwargs"),
        (lambda: PromptEncoderConfig(num_virtual_tokens=2, encoder_reparameterization_type="GRU"),
         "MLP"),
        (lambda: PromptEncoderConfig(num_virtual_tokens=2, encoder_dropout=1.5), "encoder_dropout"),
        (lambda: PromptEncoderConfig(num_virtual_tokens=2, encoder_hidden_size=0),
         "encoder_hidden_size"),
        (lambda: PrefixTuningConfig(num_virtual_tokens=2, init_weights="ones"), "init_weights"),
        (lambda: PrefixTuningConfig(num_virtual_tokens=2, prefix_projection="yes"),
         "prefix_projection"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()


def test_lstm_settings_on_an_mlp_encoder_warn_as_hf():
    with pytest.warns(UserWarning, match="encoder_num_layers` is ignored"):
        get_peft_model(_base(), PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=2,
                                                    encoder_num_layers=3))
    with pytest.warns(UserWarning, match="encoder_dropout"):
        get_peft_model(_base(), PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=2,
                                                    encoder_dropout=0.1))


# ---------------------------------------------------------------- bad input leaves the model unchanged

def _snapshot(model):
    return {n: np.array(p) for n, p in model.named_parameters()}, \
        {n: p.requires_grad for n, p in model.named_parameters()}


def test_bad_input_raises_and_leaves_the_model_unchanged(tmp_path):
    base = _base()
    ids, mask, _ = _batch()
    before = np.array(base(ids, attention_mask=mask).logits)
    values, flags = _snapshot(base)
    cases = [
        (PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, token_dim=12),
         "prefix tuning needs attention layers of this shape"),
        (PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, num_attention_heads=4),
         "num_attention_heads=4, but the model has 2"),
        (PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, num_layers=5),
         "num_layers=5"),
        (PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20),
         "leaves no position for the input"),
        (PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, prompt_tuning_init="TEXT",
                            prompt_tuning_init_text="hi", tokenizer_name_or_path=str(tmp_path)),
         "cannot load a tokenizer"),
    ]
    for config, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            get_peft_model(base, config)
        assert base.adapter_owner is None
        np.testing.assert_array_equal(base(ids, attention_mask=mask).logits, before)
        assert _snapshot(base)[1] == flags
    for name, value in values.items():
        np.testing.assert_array_equal(dict(base.named_parameters())[name], value)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_too_long_an_input_says_so(method):
    pm = get_peft_model(_base(), CONFIGS[method]())
    ids, mask, labels = _batch(T=18)
    with pytest.raises(ValueError, match=r"3 virtual tokens and 18 input tokens .* at most 17"):
        pm(ids, attention_mask=mask, labels=labels)
    ok = _batch(T=17)
    assert np.isfinite(pm(ok[0], attention_mask=ok[1], labels=ok[2]).loss)


def test_a_prompt_file_of_another_width_is_refused(tmp_path):
    pm = get_peft_model(_base(), CONFIGS["prompt"]())
    pm.save_pretrained(tmp_path)
    wide = _base(hidden_size=24, num_attention_heads=2)
    values, _ = _snapshot(wide)
    with pytest.raises(ValueError, match=r"token_dim=16, but the model has 24"):
        PeftModel.from_pretrained(wide, tmp_path)
    # a config without the model's sizes (filled from the model): the tensor's width decides
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(token_dim=None, num_layers=None, num_attention_heads=None)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'prompt_embeddings' has shape \(3, 16\); this model "
                                         r"needs \(3, 24\)"):
        PeftModel.from_pretrained(wide, tmp_path)
    assert wide.adapter_owner is None
    for name, value in values.items():
        np.testing.assert_array_equal(dict(wide.named_parameters())[name], value)
    pre = get_peft_model(_base(), CONFIGS["prefix"]())
    pre.save_pretrained(tmp_path / "prefix")
    path = tmp_path / "prefix" / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(num_layers=None)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"2 × 3 layers × 16"):
        PeftModel.from_pretrained(_base(num_hidden_layers=3), tmp_path / "prefix")


# ---------------------------------------------------------------- the API

@pytest.mark.parametrize("method", list(CONFIGS))
def test_get_prompt_shapes_and_the_forward_uses_it(method):
    pm = get_peft_model(_base(), CONFIGS[method]())
    prompt = pm.get_prompt(batch_size=2)
    if method.startswith("prefix"):
        assert len(prompt) == 2
        for k, v in prompt:
            assert k.shape == v.shape == (2, 2, P, 8)
    else:
        assert prompt.shape == (2, P, 16)
        np.testing.assert_array_equal(prompt[0], prompt[1])
    ids, mask, _ = _batch()
    with_prompt = np.array(pm(ids, attention_mask=mask).logits)
    with pm.disable_adapter():
        bare = np.array(pm(ids, attention_mask=mask).logits)
        assert not any(p.requires_grad for p in pm.parameters())
    np.testing.assert_array_equal(bare, np.array(_base()(ids, attention_mask=mask).logits))
    assert np.abs(with_prompt - bare).max() > 1e-4
    with pytest.raises(ValueError, match="batch_size"):
        pm.get_prompt(0)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_only_the_prompt_encoder_and_head_train(method):
    pm = get_peft_model(_base(), CONFIGS[method]())
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    assert all(n.startswith("base_model.prompt_encoder.default.") or
               ".classifier.modules_to_save.default." in n for n in trainable), trainable
    assert "base_model.prompt_encoder.default.embedding.weight" in trainable
    ids, mask, labels = _batch()
    pm.train()
    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    for name, p in pm.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and np.abs(p.grad).max() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("method", ["p_tuning_mlp", "p_tuning_lstm", "prefix_projection"])
def test_encoder_grads_by_finite_differences(method):
    """Through the frozen encoder and the prompt encoder, in train mode (with the LSTM's
    dropout between its two layers, whose mask stays fixed per forward count)."""
    extra = dict(encoder_dropout=0.3) if method == "p_tuning_lstm" else {}
    # the prompt encoder's draws from a fixed stream, whatever ran before: where an earlier
    # test's draws left it, an MLP unit sat within eps of ReLU's kink
    peftcore.manual_seed(0)
    pm = get_peft_model(_base(attention_probs_dropout_prob=0.1), CONFIGS[method](**extra))
    base = pm.get_base_model()
    encoder = pm.base_model.prompt_encoder["default"]
    rng = np.random.default_rng(5)
    ids, mask, labels = _batch(seed=2)
    pm.train()

    def loss():
        base._forwards = 11   # the same dropout masks, the LSTM's too
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    loss()
    pm.backward()
    for name, p in encoder.named_parameters():
        g = np.array(p.grad, dtype=np.float64)
        entries = [np.unravel_index(int(np.argmax(np.abs(g))), g.shape),
                   tuple(int(rng.integers(k)) for k in g.shape)]
        check_entries_by_finite_differences(p, g, entries, loss, 1e-3, 3e-2, 3e-4, name)


def test_adapters_add_switch_delete_and_mixing_refused():
    pm = get_peft_model(_base(), CONFIGS["prompt"]())
    ids, mask, _ = _batch()
    first = np.array(pm(ids, attention_mask=mask).logits)
    pm.add_adapter("other", CONFIGS["prompt"]())
    np.testing.assert_array_equal(pm(ids, attention_mask=mask).logits, first)
    pm.set_adapter("other")
    assert np.abs(pm(ids, attention_mask=mask).logits - first).max() > 1e-5
    assert not any(p.requires_grad for p in pm.base_model.prompt_encoder["default"].parameters())
    pm.set_adapter("default")
    np.testing.assert_array_equal(pm(ids, attention_mask=mask).logits, first)
    pm.delete_adapter("other")
    assert list(pm.peft_config) == ["default"]
    with pytest.raises(ValueError, match="different peft types. Found PROMPT_TUNING and PREFIX"):
        pm.add_adapter("prefix", CONFIGS["prefix"]())
    with pytest.raises(ValueError, match="different peft types. Found PROMPT_TUNING and P_TUNING"):
        pm.add_adapter("mlp", CONFIGS["p_tuning_mlp"]())
    with pytest.raises(ValueError, match="cannot merge"):
        pm.merge_and_unload()
    np.testing.assert_array_equal(pm(ids, attention_mask=mask).logits, first)
    bare = pm.unload()
    np.testing.assert_array_equal(bare(ids, attention_mask=mask).logits,
                                  _base()(ids, attention_mask=mask).logits)


def test_no_grad_and_threads_give_the_same_logits():
    pm = get_peft_model(_base(), CONFIGS["prefix_projection"]())
    ids, mask, _ = _batch(B=5)
    want = np.array(pm(ids, attention_mask=mask).logits)
    old = peftcore.get_num_threads()
    try:
        peftcore.set_num_threads(2)
        with peftcore.no_grad():
            np.testing.assert_allclose(pm(ids, attention_mask=mask).logits, want, rtol=1e-5,
                                       atol=1e-6)
    finally:
        peftcore.set_num_threads(old)


def test_position_ids_as_hf():
    ids, mask, _ = _batch()
    pm = get_peft_model(_base(), CONFIGS["prefix"]())
    offset = np.array(pm(ids, attention_mask=mask, position_ids=np.arange(6) + 1).logits)
    assert np.abs(offset - np.array(pm(ids, attention_mask=mask).logits)).max() > 1e-5
    pt = get_peft_model(_base(), CONFIGS["prompt"]())
    with pytest.warns(UserWarning, match="Ignoring position ids"):
        ignored = pt(ids, attention_mask=mask, position_ids=np.arange(6) + 1).logits
    np.testing.assert_array_equal(ignored, pt(ids, attention_mask=mask).logits)


# ---------------------------------------------------------------- files

@pytest.mark.parametrize("method", list(CONFIGS))
def test_save_load_round_trip_and_inference_mode(method, tmp_path):
    import safetensors.numpy

    pm = get_peft_model(_base(), CONFIGS[method]())
    ids, mask, _ = _batch()
    want = np.array(pm(ids, attention_mask=mask).logits)
    pm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["inference_mode"] is True and config["num_virtual_tokens"] == P
    tensors = safetensors.numpy.load_file(str(tmp_path / "adapter_model.safetensors"))
    width = 2 * 2 * 16 if method.startswith("prefix") else 16
    assert tensors["prompt_embeddings"].shape == (P, width)
    encoder_keys = sorted(k for k in tensors if k.startswith("prompt_encoder."))
    if method in ("prompt", "prefix"):
        assert encoder_keys == []
    else:
        names = {"prompt_encoder." + n for n, _ in pm.base_model.prompt_encoder["default"].named_parameters()}
        assert set(encoder_keys) == names
    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    np.testing.assert_allclose(loaded(ids, attention_mask=mask).logits, want, rtol=1e-6, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())
    if method in ("prompt", "prefix"):
        return
    # HF PEFT's files have no encoder weights: loaded for training, the virtual tokens
    # train directly (with a warning), and the forward is the same
    safetensors.numpy.save_file({k: v for k, v in tensors.items() if k not in encoder_keys},
                                str(tmp_path / "adapter_model.safetensors"))
    with pytest.warns(UserWarning, match="no prompt encoder weights"):
        hf_like = PeftModel.from_pretrained(_base(), tmp_path, is_trainable=True)
    np.testing.assert_allclose(hf_like(ids, attention_mask=mask).logits, want, rtol=1e-6, atol=1e-6)
    trainable = [n for n, p in hf_like.named_parameters() if p.requires_grad]
    assert "base_model.prompt_encoder.default.embedding.weight" in trainable
    assert not any("mlp_head" in n or "transform" in n or "lstm" in n for n in trainable)
    # half an encoder is refused
    tensors.pop(encoder_keys[0])
    safetensors.numpy.save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="part of the prompt encoder"):
        PeftModel.from_pretrained(_base(), tmp_path, is_trainable=True)


def test_lstm_dropout_follows_the_models_forward_count():
    """The encoder's dropout masks come from the model's forward count (which checkpoints
    save), so a resumed run draws the masks the uninterrupted one drew."""
    pm = get_peft_model(_base(), CONFIGS["p_tuning_lstm"](encoder_dropout=0.5))
    ids, mask, labels = _batch()
    pm.train()
    base = pm.get_base_model()

    def loss(n):
        base._forwards = n
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    assert loss(3) == loss(3) != loss(4)
    pm.eval()
    assert loss(3) == loss(4)   # no dropout in eval mode
