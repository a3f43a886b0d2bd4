"""A LoRA fine-tune step, save and load on the AddressSanitizer + UBSan build of peftcore._C
(.ci/run builds it with PEFTCORE_SANITIZE=1 and runs this with libasan preloaded, once per
instruction set). Any sanitizer report aborts the process, failing CI."""
import sys
import tempfile

import numpy as np

import peftcore
from peftcore import AutoModelForSequenceClassification, LoraConfig, PeftModel, get_peft_model

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


if __name__ == "__main__":
    sys.exit(main())
