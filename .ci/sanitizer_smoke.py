"""A LoRA fine-tune step, save and load, and every adapter site of the engine (linear input
and output chains, gated LoRA, block junctions with every bottleneck switch, prefix rows,
prompt rows) forward and backward, in train mode and split among workers, on the
AddressSanitizer + UBSan build of peftcore._C (.ci/run builds it with PEFTCORE_SANITIZE=1 and
runs this with libasan preloaded, once per instruction set). Any sanitizer report aborts the
process, failing CI."""
import sys
import tempfile

import numpy as np

import peftcore
from peftcore import AutoModelForSequenceClassification, LoraConfig, PeftModel, get_peft_model
from peftcore import _C
from peftcore.models.parameter import Parameter

CFG = dict(model_type="bert", vocab_size=60, hidden_size=40, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=72, max_position_embeddings=48, num_labels=3)


def main():
    peftcore.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 60, (5, 19))
    mask = np.ones_like(ids)
    mask[-1, 11:] = 0
    labels = rng.integers(0, 3, 5)
    model = get_peft_model(AutoModelForSequenceClassification.from_config(CFG, seed=1),
                           LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1,
                                      target_modules=["query", "value", "dense"]))
    optimizer = peftcore.optim.AdamW([p for _, p in model.named_parameters() if p.requires_grad],
                                     lr=1e-2)
    model.train()
    losses = []
    for _ in range(3):
        out = model(ids, attention_mask=mask, labels=labels)
        losses.append(float(out.loss))
        model.backward()
        peftcore.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with peftcore.no_grad():
        want = model(ids, attention_mask=mask).logits
        states = model(ids, attention_mask=mask, output_hidden_states=True)  # workers' rows
    np.testing.assert_allclose(states.logits, want, rtol=1e-5, atol=1e-6)
    assert len(states.hidden_states) == CFG["num_hidden_layers"] + 1
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        base = AutoModelForSequenceClassification.from_config(CFG, seed=1)
        loaded = PeftModel.from_pretrained(base, folder).eval()
        with peftcore.no_grad():
            got = loaded(ids, attention_mask=mask).logits
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    merged = loaded.merge_and_unload().eval()
    np.testing.assert_allclose(merged(ids, attention_mask=mask).logits, want, rtol=1e-4,
                               atol=1e-5)
    assert all(np.isfinite(losses)), losses
    print(f"sanitizer smoke ({peftcore.backend_info()['isa']}, {peftcore._C.__file__}): 3 LoRA "
          f"steps, losses {', '.join(f'{x:.4f}' for x in losses)}; save, load and merge agree")


def _param(rng, shape, around=0.0):
    p = Parameter(_C.Tensor.zeros(shape))
    p[...] = around + 0.3 * rng.standard_normal(shape)
    p.requires_grad = True
    return p


def adapter_sites():
    """Every site at once on a bare model, three train steps' forward and backward, then a
    no-grad eval split between two workers; the gradients must be finite."""
    rng = np.random.default_rng(1)
    model = AutoModelForSequenceClassification.from_config(
        dict(CFG, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1), seed=2)
    for p in model.parameters():
        p.requires_grad = False
    C, I, keep = CFG["hidden_size"], CFG["intermediate_size"], []
    for name, lin in model.named_modules():
        if name.endswith(("query", "intermediate.dense")):
            tensors = [_param(rng, (4, lin.in_features)), _param(rng, (lin.out_features, 4)),
                       _param(rng, (1, lin.in_features)), _param(rng, (1,))]
            ia3 = _param(rng, (lin.out_features,), 1.0)
            keep += tensors + [ia3]
            model._engine.set_adapters(lin.index, [
                ("ia3", "out", (ia3.tensor,), 1.0, 0.0),
                ("lora", "out", tuple(t.tensor for t in tensors), 1.0, 0.1)])
        elif name.endswith(("key", "output.dense")):
            ia3 = _param(rng, (lin.in_features,), 1.0)
            keep.append(ia3)
            model._engine.set_adapters(lin.index, [("ia3", "in", (ia3.tensor,), 1.0, 0.0)])
    for layer in range(CFG["num_hidden_layers"]):
        for block in ("attention", "ffn"):
            t = {"down_weight": (6, C), "down_bias": (6,), "up_weight": (C, 6), "up_bias": (C,),
                 "norm_before_weight": (C,), "norm_before_bias": (C,), "norm_after_weight": (C,),
                 "norm_after_bias": (C,), "gate_weight": (1, C), "gate_bias": (1,),
                 "scaling": (C,)}
            t = {k: _param(rng, shape) for k, shape in t.items()}
            keep += list(t.values())
            model._engine.set_block_adapters(layer, block, [(
                "bottleneck", {k: p.tensor for k, p in t.items()},
                {"non_linearity": "gelu_new", "residual_before_ln": "post_add", "dropout": 0.1})])
        k, v = _param(rng, (3 + layer, C)), _param(rng, (3 + layer, C))
        keep += [k, v]
        model._engine.set_block_adapters(layer, "kv", [("prefix", {"key": k.tensor, "value": v.tensor}, {})])
    prompt = _param(rng, (2, C))
    keep.append(prompt)
    model._engine.set_block_adapters(-1, "embeddings", [("prompt", {"prompt": prompt.tensor}, {})])
    ids = rng.integers(2, 60, (5, 13))
    mask = np.ones_like(ids)
    mask[-1, 9:] = 0
    labels = rng.integers(0, 3, 5)
    model.train()
    for _ in range(3):
        model(ids, attention_mask=mask, labels=labels)
        model.backward()
    assert all(np.isfinite(p.grad).all() for p in keep)
    model.eval()
    peftcore.set_num_threads(2)
    with peftcore.no_grad():
        logits = model(ids, attention_mask=mask).logits
    assert np.isfinite(logits).all()
    print(f"sanitizer smoke ({peftcore.backend_info()['isa']}): every adapter site, 3 train "
          f"steps and a split eval")


if __name__ == "__main__":
    main()
    adapter_sites()
