"""Prompt tuning, P-tuning and prefix tuning against HF PEFT 0.21.2 on transformers 4.57.x:
random BERT and RoBERTa, the same weights in both; logits 1e-4, every trainable gradient
1e-3 relative, 20 AdamW steps' losses 1e-4, and the adapter files both ways."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import peftcore
from parity import (ADAMW, MODEL_TYPES, batch, close, compare_grads, hf_load, hf_models,  # noqa: F401
                    pc_load, pc_logits, seeded_values)

P = 4
METHODS = ["prompt", "p_tuning_mlp", "p_tuning_lstm", "prefix", "prefix_projection"]


def _configs(lib, method, **extra):
    kw = dict(task_type="SEQ_CLS", num_virtual_tokens=P, **extra)
    if method == "prompt":
        return lib.PromptTuningConfig(**kw)
    if method == "p_tuning_mlp":
        return lib.PromptEncoderConfig(encoder_hidden_size=24, **kw)
    if method == "p_tuning_lstm":
        return lib.PromptEncoderConfig(encoder_reparameterization_type="LSTM",
                                       encoder_hidden_size=12, **kw)
    if method == "prefix":
        return lib.PrefixTuningConfig(**kw)
    return lib.PrefixTuningConfig(prefix_projection=True, encoder_hidden_size=24, **kw)


def hf_name(ours: str) -> str:
    """HF PEFT's name of a peftcore PeftModel parameter (the prompt encoder sits on the
    PeftModel there, and the base model directly under base_model)."""
    if ours.startswith("base_model.prompt_encoder."):
        return ours[len("base_model."):]
    assert ours.startswith("base_model.model."), ours
    return "base_model." + ours[len("base_model.model."):]


def _pair(hf_models, model_type, method, **extra):
    import peft
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(hf_load(hf_models, model_type), _configs(peft, method, **extra))
        ours = peftcore.get_peft_model(pc_load(hf_models, model_type),
                                       _configs(peftcore, method, **extra))
    theirs.eval()
    names = {hf_name(n): p for n, p in ours.named_parameters() if p.requires_grad}
    hf_params = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert sorted(names) == sorted(hf_params)
    with torch.no_grad():
        for name, p in hf_params.items():
            values = seeded_values(name, tuple(p.shape), std=0.5)
            p.copy_(torch.from_numpy(values))
            names[name][...] = values
    return ours, theirs


def hf_run(theirs, ids, mask=None, types=None, labels=None):
    """HF PEFT's forward (logits, loss). RobertaForSequenceClassification with prefix tuning
    fails in HF PEFT 0.21.2 + transformers 4.57 (its prefix forward hands the classifier
    the backbone's outputs[1], which for RoBERTa, without a pooler, is the key/value cache),
    so there the reference is the path HF means: the backbone with the prefixes and the
    mask's P ones, then RoBERTa's head on its last hidden state."""
    import torch

    t = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    config = theirs.active_peft_config
    if config.peft_type != "PREFIX_TUNING" or theirs.config.model_type != "roberta":
        out = theirs(input_ids=t(ids), attention_mask=t(mask), token_type_ids=t(types),
                     labels=t(labels))
        return out.logits, out.loss
    B = len(ids)
    if mask is not None:
        mask = np.concatenate([np.ones((B, config.num_virtual_tokens), mask.dtype), mask], 1)
    model = theirs.base_model
    hidden = model.roberta(input_ids=t(ids), attention_mask=t(mask), token_type_ids=t(types),
                           past_key_values=theirs.get_prompt(B))[0]
    logits = model.classifier(hidden)
    loss = None if labels is None else torch.nn.functional.cross_entropy(logits, t(labels))
    return logits, loss


def hf_logits(theirs, b):
    import torch

    with torch.no_grad():
        return hf_run(theirs, *b[:2])[0].numpy()


def _grads(ours, theirs, b):
    ids, mask, labels = b
    ours.zero_grad(set_to_none=True)
    loss = float(ours(ids, attention_mask=mask, labels=labels).loss)
    ours.backward()
    mine = {hf_name(n): np.array(p.grad) for n, p in ours.named_parameters() if p.requires_grad}
    theirs.zero_grad(set_to_none=True)
    _, hf_loss = hf_run(theirs, ids, mask, labels=labels)
    hf_loss.backward()
    ref = {n: p.grad.numpy().copy() for n, p in theirs.named_parameters() if p.requires_grad}
    return loss, float(hf_loss.detach()), mine, ref


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("method", METHODS)
def test_logits_grads_and_parameter_count(hf_models, model_type, method, capsys):
    ours, theirs = _pair(hf_models, model_type, method)
    b = batch()
    close(pc_logits(ours, b), hf_logits(theirs, b), 1e-4, "logits")
    loss, ref_loss, mine, ref = _grads(ours, theirs, b)
    assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
    assert compare_grads(mine, ref, rtol=1e-3) == []
    # print_trainable_parameters as HF PEFT prints it (the whole encoder while training)
    ours.print_trainable_parameters()
    theirs.print_trainable_parameters()
    mine_line, their_line = capsys.readouterr().out.strip().splitlines()
    assert mine_line == their_line
    # token_type_ids and no attention mask take HF's paths too
    import torch
    ids, _, _ = b
    types = (np.arange(ids.shape[1]) >= 3).astype(np.int64)[None].repeat(len(ids), 0)
    if model_type == "roberta":
        types = np.zeros_like(types)
    with torch.no_grad():
        want = hf_run(theirs, ids, types=types)[0].numpy()
    close(ours(ids, token_type_ids=types).logits, want, 1e-4, "no mask, token types")
    with peftcore.no_grad():   # the inference path (first token only, split among workers)
        close(pc_logits(ours, b), hf_logits(theirs, b), 1e-4, "no_grad logits")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("method", METHODS)
def test_adamw_20_steps(hf_models, model_type, method):
    import torch

    ours, theirs = _pair(hf_models, model_type, method)
    opt_pc = peftcore.optim.AdamW([p for p in ours.parameters() if p.requires_grad], **ADAMW)
    opt_hf = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], **ADAMW)
    ours.train()
    theirs.train()
    mine, ref = [], []
    for step in range(20):
        ids, mask, labels = batch(seed=step % 2)
        mine.append(float(ours(ids, attention_mask=mask, labels=labels).loss))
        ours.backward()
        opt_pc.step()
        opt_pc.zero_grad(set_to_none=True)
        loss = hf_run(theirs, ids, mask, labels=labels)[1]
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        ref.append(float(loss.detach()))
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-4)
    assert mine[-1] < mine[0]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("method", METHODS)
def test_files_both_ways(hf_models, model_type, method, tmp_path):
    import peft
    import safetensors.numpy

    ours, theirs = _pair(hf_models, model_type, method)
    b = batch(seed=3)
    want = hf_logits(theirs, b)
    # HF PEFT's files into peftcore
    theirs.save_pretrained(tmp_path / "hf")
    loaded = peftcore.PeftModel.from_pretrained(pc_load(hf_models, model_type), tmp_path / "hf")
    close(pc_logits(loaded, b), want, 1e-4, "peftcore reading HF PEFT's files")
    # peftcore's files into HF PEFT
    ours.save_pretrained(tmp_path / "pc")
    keys = safetensors.numpy.load_file(str(tmp_path / "pc" / "adapter_model.safetensors"))
    width = 2 * 2 * 32 if method.startswith("prefix") else 32
    assert keys["prompt_embeddings"].shape == (P, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_loaded = peft.PeftModel.from_pretrained(hf_load(hf_models, model_type), tmp_path / "pc")
    close(hf_logits(hf_loaded, b), pc_logits(ours, b), 1e-4, "HF PEFT reading peftcore's files")


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_save_is_exact(hf_models, method, tmp_path):
    """peftcore saves the encoder too: training resumed from the files takes the same steps
    as training that never stopped (HF PEFT cannot: it saves the encoder's output only)."""
    ours, _ = _pair(hf_models, "bert", method)

    def steps(pm, opt, seeds):
        pm.train()
        losses = []
        for s in seeds:
            ids, mask, labels = batch(seed=s)
            losses.append(float(pm(ids, attention_mask=mask, labels=labels).loss))
            pm.backward()
            opt.step()
            opt.zero_grad()
        return losses

    opt = peftcore.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    steps(ours, opt, [0, 1])
    ours.save_pretrained(tmp_path)
    resumed = peftcore.PeftModel.from_pretrained(pc_load(hf_models, "bert"), tmp_path,
                                                 is_trainable=True)
    a = dict(ours.named_parameters())
    r = dict(resumed.named_parameters())
    assert sorted(n for n in a if a[n].requires_grad) == sorted(n for n in r if r[n].requires_grad)
    for name, p in a.items():
        if p.requires_grad:
            np.testing.assert_array_equal(r[name], p, err_msg=name)
    fresh = peftcore.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    opt2 = peftcore.optim.AdamW([p for p in resumed.parameters() if p.requires_grad], lr=1e-2)
    assert steps(ours, fresh, [2, 3, 0]) == steps(resumed, opt2, [2, 3, 0])


def _vocab_folder(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
        [w for w in "the a movie was good bad great awful is this very not".split()]
    words += [f"w{i}" for i in range(40 - len(words))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true, "model_max_length": 24, "tokenizer_class": "BertTokenizer"}')
    return tmp_path


@pytest.mark.parametrize("init", ["TEXT", "SAMPLE_VOCAB", "RANDOM"])
def test_prompt_tuning_init(hf_models, init, tmp_path):
    import peft
    import torch

    kw = {}
    if init == "TEXT":
        kw = dict(prompt_tuning_init_text="this movie was very good",
                  tokenizer_name_or_path=str(_vocab_folder(tmp_path)))
    ours = peftcore.get_peft_model(pc_load(hf_models, "bert"), peftcore.PromptTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=9, prompt_tuning_init=init, **kw))
    table = np.array(ours.get_prompt(1)[0])
    words = np.asarray(pc_load(hf_models, "bert").get_input_embeddings().weight)
    if init == "TEXT":   # HF's ids: [CLS] this movie was very good [SEP], repeated to 9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peft.get_peft_model(hf_load(hf_models, "bert"), peft.PromptTuningConfig(
                task_type="SEQ_CLS", num_virtual_tokens=9, prompt_tuning_init=init, **kw))
        ref = theirs.prompt_encoder["default"].embedding.weight.detach().numpy()
        np.testing.assert_array_equal(table, ref)
    elif init == "SAMPLE_VOCAB":   # every row is a row of the vocabulary
        assert all((np.abs(words - row).max(axis=1) == 0).any() for row in table)
    else:
        assert abs(table.std() - 1) < 0.3 and not any((np.abs(words - row).max(axis=1) == 0).any()
                                                      for row in table)
    del torch
