"""Bottleneck adapters: peftcore beside AdapterHub `adapters` on torch + transformers.

    python bench/bottleneck.py [--models minilm,bert-base] [--modes pfeiffer,houlsby,adapter,bare]
                               [--steps N] [--warmup N] [--batch 32] [--seq 128] [--threads 2]
                               [--rounds 2] [--isa avx2] [--quick]

The models are built as in bench/lora.py (see bench/harness.py): a transformers
BertForSequenceClassification (2 labels) with torch.manual_seed(0), saved and loaded by both
frameworks; the same random batch (B × T tokens, no padding) for both.

  pfeiffer  training step of a Pfeiffer adapter (SeqBnConfig(), reduction 16, relu) and the
            classifier: forward with labels + backward + AdamW step + zero_grad, train mode
            (the encoder's dropout 0.1). torch: adapters.init, add_adapter, train_adapter.
  houlsby   the same with a Houlsby adapter (DoubleSeqBnConfig(), swish, both blocks).
  adapter   inference (eval; torch under inference_mode, peftcore under no_grad) with the
            Pfeiffer adapter, its up-projection set to seeded values (so it is not zero).
  bare      inference of the model as loaded.

With adapter and bare both selected, one more peftcore child alternates a bare and an
adapted model's forwards in one process (the median of paired ratios).

Targets (issue 17): the MiniLM Pfeiffer train step ≥ 2× adapters-on-torch; inference with
the adapter at most 10 % slower than the bare model (adapter / bare seq/s ≥ 0.90).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import harness
from harness import (MODELS, child_prepare, load_average, make_batch, peftcore_run,
                     print_result, torch_batch, torch_run)

FRAMEWORKS = ("peftcore", "torch")
MODES = ("pfeiffer", "houlsby", "adapter", "bare")
TRAIN_MODES = ("pfeiffer", "houlsby")
CONFIG = {"pfeiffer": "SeqBnConfig", "houlsby": "DoubleSeqBnConfig", "adapter": "SeqBnConfig"}
ADAMW = dict(lr=1e-3, weight_decay=0.01)
LABELS = {"pfeiffer": "Pfeiffer train step", "houlsby": "Houlsby train step",
          "adapter": "infer, Pfeiffer adapter", "bare": "infer, bare model"}


def up_values(name, shape):
    """Seeded small values for an adapter_up weight, keyed by its AdapterHub name."""
    import zlib

    import numpy as np
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)


# ------------------------------------------------------------------ child side

def child_torch(args):
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    model = transformers.BertForSequenceClassification.from_pretrained(args.folder)
    info = {"torch": torch.__version__, "transformers": transformers.__version__}
    if args.mode in CONFIG:
        import adapters
        info["adapters"] = adapters.__version__
        adapters.init(model)
        model.add_adapter("default", config=getattr(adapters, CONFIG[args.mode])())
        model.train_adapter("default")
        if args.mode == "adapter":
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("adapter_up.weight"):
                        p.copy_(torch.from_numpy(up_values(name, tuple(p.shape))))
    batch = torch_batch(args, MODELS[args.model]["vocab_size"])
    return torch_run(args, model, batch, info, args.mode in TRAIN_MODES, ADAMW)


def _peftcore_model(args, mode):
    import peftcore
    model = harness.peftcore_model(args)
    if mode in CONFIG:
        model = peftcore.get_peft_model(model, getattr(peftcore, CONFIG[mode])(task_type="SEQ_CLS"))
    if mode == "adapter":
        for name, p in model.named_parameters():
            if name.endswith("adapter_up.weight"):
                p[...] = up_values(name[len("base_model.model."):], tuple(p.shape))
    return model


def child_peftcore(args):
    import peftcore
    peftcore.set_num_threads(args.threads)
    backend = peftcore.backend_info()
    info = {"blis": backend.get("blis_arch"), "isa": backend.get("isa")}
    model = _peftcore_model(args, args.mode)
    batch = make_batch(args, MODELS[args.model]["vocab_size"])
    return peftcore_run(args, model, batch, info, args.mode in TRAIN_MODES, ADAMW)


def child_interleaved(args):
    """Adapter vs bare inference in one process, forwards alternating (order flips)."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    return harness.interleaved_inference(args, _peftcore_model(args, "bare"),
                                         _peftcore_model(args, "adapter"), name="adapter")


def child_main(args):
    kinds = {"prepare": child_prepare, "torch": child_torch, "peftcore": child_peftcore,
             "interleaved": child_interleaved}
    print_result(kinds[args.child](args))


# ------------------------------------------------------------------ parent side

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm", help="comma-separated, from " + ", ".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    harness.add_run_arguments(ap, rounds_help="runs per framework and mode",
                              quick_help="smoke test: batch 4 x seq 32, 1 + 1 steps")
    harness.add_child_arguments(ap, ("prepare", "interleaved") + FRAMEWORKS, MODES)
    args = harness.finish_run_arguments(ap.parse_args(), ap)
    if args.child:
        return args
    args.model_list = harness.parse_list(args.models, MODELS, "model", ap)
    args.mode_list = harness.parse_list(args.modes, MODES, "mode", ap)
    return args


def main():
    args = parse_args()
    if args.child:
        return child_main(args)
    print(f"bottleneck bench: batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"{args.warmup} + {args.steps} steps, {args.rounds} rounds; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{load_average()}\n{harness.describe_isa(args)}", flush=True)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="peftcore_bottleneck_bench_") as tmp:
        for model in args.model_list:
            folder = Path(tmp) / model
            harness.run_child(__file__, "prepare", args, model, folder, "bare")
            speeds = {}
            for mode in args.mode_list:
                runs = {fw: [] for fw in FRAMEWORKS}
                for fw in harness.round_order(FRAMEWORKS, args.rounds):
                    r = harness.run_child(__file__, fw, args, model, folder, mode)
                    runs[fw].append(r)
                    print(f"    {mode:8s} {fw:8s} {r['seq_per_s']:8.2f} seq/s  peak "
                          f"{r['peak_mb']:.0f} MB  trainable {r['info']['trainable']:,}",
                          flush=True)
                speeds[mode] = {fw: harness.combine_rounds(rs) for fw, rs in runs.items()}
                rows.append(harness.speed_row(model, LABELS[mode], speeds[mode]["peftcore"],
                                              speeds[mode]["torch"], rss_ratio=False))
            for mode in TRAIN_MODES:
                if mode in speeds:
                    ratio = speeds[mode]["peftcore"]["seq_per_s"] / speeds[mode]["torch"]["seq_per_s"]
                    notes.append(f"{model}: {LABELS[mode]} peftcore / adapters-on-torch = "
                                f"{ratio:.2f}x (target >= 2): {'met' if ratio >= 2 else 'MISSED'}")
            if {"adapter", "bare"} <= set(speeds):
                r = harness.run_child(__file__, "interleaved", args, model, folder, "bare")
                ratio = r["ratio"]
                torch_ratio = speeds["adapter"]["torch"]["seq_per_s"] / speeds["bare"]["torch"]["seq_per_s"]
                notes.append(f"{model}: peftcore adapter / bare inference, interleaved = {ratio:.3f} "
                            f"(target >= 0.90): {'met' if ratio >= 0.90 else 'MISSED'}; "
                            f"adapters-on-torch: {torch_ratio:.3f}")
    print()
    harness.print_table(("model", "mode", "peftcore seq/s", "torch seq/s", "ratio",
                         "peftcore RSS MB", "torch RSS MB"), rows)
    print()
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
