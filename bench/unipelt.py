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

With adapter and bare both selected, one more peftcore child alternates a bare and an
adapted model's forwards in one process (the median of paired ratios).

Target (issue 21): the UniPELT train step ≥ 2× adapters-on-torch. The inference overhead is
reported beside the paper's (Mao et al. 2022, §4.4 / Table 4: PELT methods infer slower than
the fine-tuned model, UniPELT 4 %-11 % slower than its slowest submodule).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import (MODELS, child_prepare, load_average, make_batch, print_result, rss_mb,
                     run_steps, train_step)

FRAMEWORKS = ("peftcore", "torch")
MODES = ("apl", "ap", "adapter", "bare")
TRAIN_MODES = ("apl", "ap")
ADAMW = dict(lr=1e-3, weight_decay=0.01)
LABELS = {"apl": "UniPELT(APL) train step", "ap": "UniPELT(AP) train step",
          "adapter": "infer, UniPELT(APL)", "bare": "infer, bare model"}
SEEDED = ("adapter_up.weight", "lora_B")   # zero at init: seeded for the inference mode


def config_of(mode, **kwargs):
    """peftcore's config of a mode (None: the bare model)."""
    from peftcore import UniPELTConfig
    if mode == "bare":
        return None
    return UniPELTConfig(lora=False, **kwargs) if mode == "ap" else UniPELTConfig(**kwargs)


def up_values(name, shape):
    """Seeded small values for a zero-initialised weight, keyed by its AdapterHub name."""
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
    if args.mode != "bare":
        import adapters
        info["adapters"] = adapters.__version__
        adapters.init(model)
        config = adapters.AdapterConfig.load(config_of(args.mode).adapterhub_dict())
        model.add_adapter("default", config=config)
        model.train_adapter("default")
        if args.mode == "adapter":
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith(SEEDED):
                        p.copy_(torch.from_numpy(up_values(name, tuple(p.shape))))
    ids, mask, labels = (torch.from_numpy(a) for a in make_batch(args, MODELS[args.model]["vocab_size"]))
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    info["trainable"] = sum(p.numel() for p in trainable)
    info["total"] = sum(p.numel() for p in params)
    load_mb = rss_mb()
    if args.mode in TRAIN_MODES:
        opt = torch.optim.AdamW(trainable, **ADAMW)
        model.train()
        step = train_step(lambda: model(input_ids=ids, attention_mask=mask, labels=labels),
                          lambda out: out.loss.backward(), opt)
    else:
        model.eval()

        def step(phases):
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).logits[0].tolist()
    return run_steps(args, step, load_mb, info)


def _peftcore_model(args, mode):
    import warnings

    import peftcore
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved head must load too
        model = peftcore.AutoModelForSequenceClassification.from_pretrained(args.folder)
    if mode != "bare":
        model = peftcore.get_peft_model(model, config_of(mode, task_type="SEQ_CLS"))
    if mode == "adapter":
        for name, p in model.named_parameters():
            if name.endswith(SEEDED):
                p[...] = up_values(name[len("base_model.model."):], tuple(p.shape))
    return model


def child_peftcore(args):
    import numpy as np

    import peftcore
    peftcore.set_num_threads(args.threads)
    backend = peftcore.backend_info()
    info = {"blis": backend.get("blis_arch"), "isa": backend.get("isa")}
    model = _peftcore_model(args, args.mode)
    ids, mask, labels = make_batch(args, MODELS[args.model]["vocab_size"])
    named = list(model.named_parameters())
    trainable = [p for _, p in named if p.requires_grad]
    info["trainable"] = sum(p.size for p in trainable)
    info["total"] = sum(p.size for _, p in named)
    load_mb = rss_mb()
    if args.mode in TRAIN_MODES:
        opt = peftcore.optim.AdamW(trainable, **ADAMW)
        model.train()
        step = train_step(lambda: model(ids, attention_mask=mask, labels=labels),
                          lambda out: model.backward(), opt)
    else:
        model.eval()

        def step(phases):
            with peftcore.no_grad():
                return np.asarray(model(ids, attention_mask=mask).logits)[0].tolist()
    return run_steps(args, step, load_mb, info)


def child_interleaved(args):
    """Adapter vs bare inference in one process, forwards alternating (order flips)."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    models = {"bare": _peftcore_model(args, "bare"), "adapter": _peftcore_model(args, "adapter")}
    for m in models.values():
        m.eval()
    ids, mask, _ = make_batch(args, MODELS[args.model]["vocab_size"])
    times = {"bare": [], "adapter": []}
    with peftcore.no_grad():
        for _ in range(args.warmup):
            for m in models.values():
                m(ids, attention_mask=mask)
        for i in range(args.steps):
            order = ("bare", "adapter") if i % 2 == 0 else ("adapter", "bare")
            for name in order:
                t0 = time.perf_counter()
                models[name](ids, attention_mask=mask)
                times[name].append(time.perf_counter() - t0)
    pairs = [b / a for b, a in zip(times["bare"], times["adapter"])]  # adapter / bare seq/s
    return {"times": times, "ratio": statistics.median(pairs)}


def child_main(args):
    kinds = {"prepare": child_prepare, "torch": child_torch, "peftcore": child_peftcore,
             "interleaved": child_interleaved}
    print_result(kinds[args.child](args))


# ------------------------------------------------------------------ parent side

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm", help="comma-separated, from " + ", ".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 6; quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; quick 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    harness.add_isa_argument(ap)
    ap.add_argument("--rounds", type=int, default=2, help="runs per framework and mode")
    ap.add_argument("--quick", action="store_true", help="smoke test: batch 4 x seq 32, 1 + 1 steps")
    ap.add_argument("--child", choices=("prepare", "interleaved") + FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="bare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.steps = 1 if args.steps is None else args.steps
        args.warmup = 1 if args.warmup is None else args.warmup
        args.batch, args.seq, args.rounds = min(args.batch, 4), min(args.seq, 32), 1
    args.steps = 6 if args.steps is None else args.steps
    args.warmup = 2 if args.warmup is None else args.warmup
    if args.child:
        return args
    args.model_list = [m for m in args.models.split(",") if m]
    args.mode_list = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.model_list if m not in MODELS] + [m for m in args.mode_list if m not in MODES]
    if bad:
        ap.error(f"unknown models or modes {bad}")
    return args


def main():
    args = parse_args()
    if args.child:
        return child_main(args)
    print(f"unipelt bench: batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"{args.warmup} + {args.steps} steps, {args.rounds} rounds; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{load_average()}\n{harness.describe_isa(args)}", flush=True)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="peftcore_unipelt_bench_") as tmp:
        for model in args.model_list:
            folder = Path(tmp) / model
            harness.run_child(__file__, "prepare", args, model, folder, "bare")
            speeds = {}
            for mode in args.mode_list:
                runs = {fw: [] for fw in FRAMEWORKS}
                for rnd in range(args.rounds):
                    for fw in (FRAMEWORKS if rnd % 2 == 0 else FRAMEWORKS[::-1]):
                        r = harness.run_child(__file__, fw, args, model, folder, mode)
                        runs[fw].append(r)
                        print(f"    {mode:8s} {fw:8s} {r['seq_per_s']:8.2f} seq/s  peak "
                              f"{r['peak_mb']:.0f} MB  trainable {r['info']['trainable']:,}",
                              flush=True)
                speeds[mode] = {fw: harness.combine_rounds(rs) for fw, rs in runs.items()}
                p, t = speeds[mode]["peftcore"], speeds[mode]["torch"]
                rows.append(f"| {model} | {LABELS[mode]} | {p['seq_per_s']:.2f} | "
                            f"{t['seq_per_s']:.2f} | {p['seq_per_s'] / t['seq_per_s']:.2f} | "
                            f"{p['peak_mb']:.0f} | {t['peak_mb']:.0f} |")
            for mode in TRAIN_MODES:
                if mode in speeds:
                    ratio = speeds[mode]["peftcore"]["seq_per_s"] / speeds[mode]["torch"]["seq_per_s"]
                    notes.append(f"{model}: {LABELS[mode]} peftcore / adapters-on-torch = "
                                f"{ratio:.2f}x (target >= 2): {'met' if ratio >= 2 else 'MISSED'}")
            if {"adapter", "bare"} <= set(speeds):
                r = harness.run_child(__file__, "interleaved", args, model, folder, "bare")
                ratio = r["ratio"]
                torch_ratio = speeds["adapter"]["torch"]["seq_per_s"] / speeds["bare"]["torch"]["seq_per_s"]
                notes.append(f"{model}: UniPELT(APL) / bare inference seq/s: peftcore "
                            f"(interleaved) {ratio:.3f} (overhead {1 / ratio - 1:+.0%} time), "
                            f"adapters-on-torch {torch_ratio:.3f} (overhead "
                            f"{1 / torch_ratio - 1:+.0%})")
    print("\n| model | mode | peftcore seq/s | torch seq/s | ratio | peftcore RSS MB | torch RSS MB |")
    print("|" + "|".join(["---"] * 7) + "|")
    for row in rows:
        print(row)
    print()
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
