"""UniPELT: peftcore beside AdapterHub `adapters` on torch + transformers.

    python bench/unipelt.py [--models minilm,bert-base] [--modes apl,ap,adapter,bare]
                            [--steps N] [--warmup N] [--batch 32] [--seq 128] [--threads 2]
                            [--rounds 2] [--isa avx2] [--quick]

The models are built as in bench/lora.py (see bench/harness.py): a transformers
BertForSequenceClassification (2 labels) with torch.manual_seed(0), saved and loaded by both
frameworks; the same random batch (B × T tokens, no padding) for both.

  apl       training step of UniPELT(APL) (UniPELTConfig(): gated prefix of 10 rows through
            its 512-wide MLP, gated Pfeiffer adapter, gated LoRA r=8 on query and value) and
            the classifier: forward with labels + backward + AdamW step + zero_grad, train
            mode (the encoder's dropout 0.1). torch: adapters.init, add_adapter, train_adapter
            with the same config (built from peftcore's adapterhub_dict()).
  ap        the same with UniPELT(AP) (UniPELTConfig(lora=False): prefix + adapter).
  adapter   inference (eval; torch under inference_mode, peftcore under no_grad) with
            UniPELT(APL), LoRA's B and the adapter's up-projection set to seeded values.
  bare      inference of the model as loaded.

The measurements are bench/bottleneck.py's (its `run`): each framework × mode in its own
process --rounds times, then the training steps of both frameworks alternating in one process
("paired"; --no-paired skips it), and a bare and an adapted peftcore model's forwards
alternating.

Target (issue 21): the UniPELT train step ≥ 2× adapters-on-torch. The inference overhead is
reported beside the paper's (Mao et al. 2022, §4.4 / Table 4: PELT methods infer slower than
the fine-tuned model, UniPELT 4 %-11 % slower than its slowest submodule).
"""
from __future__ import annotations

import sys

from bottleneck import Spec, run


def config_of(mode, **kwargs):
    """peftcore's config of a mode (None: the bare model)."""
    from peftcore import UniPELTConfig
    if mode == "bare":
        return None
    return UniPELTConfig(lora=False, **kwargs) if mode == "ap" else UniPELTConfig(**kwargs)


def infer_note(model, ratio, torch_ratio):
    return (f"{model}: UniPELT(APL) / bare inference seq/s: peftcore (interleaved) {ratio:.3f} "
            f"(overhead {1 / ratio - 1:+.0%} time), adapters-on-torch {torch_ratio:.3f} "
            f"(overhead {1 / torch_ratio - 1:+.0%})")


UNIPELT = Spec(
    title="unipelt bench (peftcore beside AdapterHub adapters on torch)",
    modes=("apl", "ap", "adapter", "bare"), train_modes=("apl", "ap"),
    labels={"apl": "UniPELT(APL) train step", "ap": "UniPELT(AP) train step",
            "adapter": "infer, UniPELT(APL)", "bare": "infer, bare model"},
    config_of=config_of, seeded=("adapter_up.weight", "lora_B"), infer_note=infer_note)


if __name__ == "__main__":
    sys.exit(run(UNIPELT, __file__))
