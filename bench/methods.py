"""(IA)³ and BitFit training steps and merged-(IA)³ inference: peftcore beside torch +
transformers (+ peft for (IA)³).

    python bench/methods.py [--models minilm,bert-base] [--modes ia3,bitfit,merged,bare]
                            [--steps N] [--warmup N] [--batch 32] [--seq 128] [--threads 2]
                            [--rounds 2] [--isa avx2] [--quick] [--json FILE]

The models are built as in bench/lora.py (see bench/harness.py): a transformers
BertForSequenceClassification (2 labels) with torch.manual_seed(0), saved and loaded by both
frameworks; the same random batch (B × T tokens, no padding) for both.

  ia3     (IA)³ training step with HF PEFT's defaults for BERT (task_type SEQ_CLS: vectors on
          key, value and both output.dense layers, the FFN's output.dense feed-forward, the
          classifier trained): forward with labels + backward + AdamW step + zero_grad, train
          mode (the encoder's dropout 0.1). torch: peft.IA3Config; peftcore: IA3Config.
  bitfit  BitFit training step: every bias (LayerNorm's included) and the classifier train.
          torch: the same transformers model with everything else frozen (requires_grad
          False), the bias-only baseline; peftcore: BitFitConfig(task_type="SEQ_CLS").
  merged  inference (eval; torch under inference_mode, peftcore under no_grad) of the (IA)³
          model after merge_and_unload(), its vectors first set to seeded values near 1 (the
          same in both); merged logits are checked against the unmerged model's.
  bare    inference of the model as loaded.

With merged and bare both selected, one more peftcore child (--no-interleaved skips it)
alternates a bare and a merged model's forwards in one process; for each training mode one
more child (--no-paired skips it) alternates torch's and peftcore's steps in one process.
The medians of these paired ratios are robust to load that drifts between processes (no
peak RSS from them: both frameworks share the process).

Targets: each training step at least 2× torch's speed (peftcore seq/s / torch seq/s >= 2);
merged (IA)³ inference within 3 % of the bare model (merged / bare seq/s >= 0.97).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import (MODELS, child_prepare, describe_run, fmt, load_average, make_batch,
                     parse_list, peftcore_merge_check, peftcore_run, print_result, torch_batch,
                     torch_merge_check, torch_run)

FRAMEWORKS = ("peftcore", "torch")
MODES = ("ia3", "bitfit", "merged", "bare")
TRAIN_MODES = ("ia3", "bitfit")
IA3 = dict(task_type="SEQ_CLS")
ADAMW = dict(lr=1e-3, weight_decay=0.01)
CHECK_ROWS = 2  # rows of the batch used to check merged against unmerged logits
LABELS = {"ia3": "(IA)³ train step", "bitfit": "BitFit train step",
          "merged": "infer, merged (IA)³", "bare": "infer, bare model"}


# ------------------------------------------------------------------ child side

def ia3_values(name, shape):
    """Seeded values near 1 for one (IA)³ vector, keyed by its (HF PEFT) parameter name."""
    import zlib

    import numpy as np
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (1 + 0.05 * rng.standard_normal(shape)).astype(np.float32)


def _bias_only(name):
    """The torch baseline of BitFit trains this transformers parameter."""
    return name.endswith(".bias") or name.startswith("classifier.")


def child_torch(args):
    model, info = harness.torch_model(
        args, "IA3Config" if args.mode in ("ia3", "merged") else None, IA3)
    if args.mode == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(_bias_only(name))
    batch = torch_batch(args, MODELS[args.model]["vocab_size"])
    check = None
    if args.mode == "merged":
        model, check = torch_merge_check(model, batch, CHECK_ROWS, _torch_ia3_values)
    result = torch_run(args, model, batch, info, args.mode in TRAIN_MODES, ADAMW)
    result["merge_check"] = check
    return result


def _torch_ia3_values(model):
    import torch
    for name, p in model.named_parameters():
        if ".ia3_l." in name:
            p.copy_(torch.from_numpy(ia3_values(name, tuple(p.shape))))


def _ia3_values(model):
    for name, p in model.named_parameters():
        if ".ia3_l." in name:
            p[...] = ia3_values(name, tuple(p.shape))


def _peftcore_model(args, mode):
    """The peftcore model of `mode` (merged: the (IA)³ model with seeded vectors, merged),
    and the merged-vs-unmerged logit check."""
    import peftcore
    model = harness.peftcore_model(args)
    if mode in ("ia3", "merged"):
        model = peftcore.get_peft_model(model, peftcore.IA3Config(**IA3))
    elif mode == "bitfit":
        model = peftcore.get_peft_model(model, peftcore.BitFitConfig(task_type="SEQ_CLS"))
    check = None
    if mode == "merged":
        model, check = peftcore_merge_check(
            model, make_batch(args, MODELS[args.model]["vocab_size"]), CHECK_ROWS, _ia3_values)
    return model, check


def child_peftcore(args):
    import peftcore
    peftcore.set_num_threads(args.threads)
    backend = peftcore.backend_info()
    info = {"blis": backend.get("blis_arch"), "isa": backend.get("isa")}
    model, check = _peftcore_model(args, args.mode)
    batch = make_batch(args, MODELS[args.model]["vocab_size"])
    result = peftcore_run(args, model, batch, info, args.mode in TRAIN_MODES, ADAMW)
    result["merge_check"] = check
    return result


def child_interleaved(args):
    """Merged (IA)³ vs bare model inference in one process, forwards alternating (the order
    flips every round)."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    bare, _ = _peftcore_model(args, "bare")
    merged, _ = _peftcore_model(args, "merged")
    return harness.interleaved_inference(args, bare, merged)


def child_paired(args):
    """A training step of torch and of peftcore in one process, alternating (the order flips
    every round; see harness.paired_train). Both models are built as in their own children."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    ours, _ = _peftcore_model(args, args.mode)
    theirs, _ = harness.torch_model(args, "IA3Config" if args.mode == "ia3" else None, IA3)
    if args.mode == "bitfit":
        for name, p in theirs.named_parameters():
            p.requires_grad_(_bias_only(name))
    return harness.paired_train(args, ours, theirs, ADAMW)


def child_main(args):
    kinds = {"prepare": child_prepare, "torch": child_torch, "peftcore": child_peftcore,
             "interleaved": child_interleaved, "paired": child_paired}
    print_result(kinds[args.child](args))


# ------------------------------------------------------------------ parent side

def run_child(kind, args, model, folder, mode="bare"):
    return harness.run_child(__file__, kind, args, model, folder, mode)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None,
                    help=f"comma-separated, from {', '.join(MODELS)} (default: minilm)")
    ap.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    harness.add_run_arguments(ap, quick_help="smoke test: minilm, batch 4 x seq 32, 1 + 1 "
                                             "steps, one round")
    ap.add_argument("--no-interleaved", action="store_true",
                    help="skip the merged-vs-bare check with both models in one process")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--no-paired", action="store_true",
                    help="skip the extra train-step check with torch and peftcore alternating "
                         "in one process")
    harness.add_child_arguments(ap, ("prepare", "interleaved", "paired") + FRAMEWORKS, MODES)
    args = harness.finish_run_arguments(ap.parse_args(), ap)
    if args.child:
        return args
    args.model_list = parse_list(args.models or "minilm", MODELS, "model", ap)
    args.mode_list = parse_list(args.modes, MODES, "mode", ap)
    if not args.model_list or not args.mode_list:
        ap.error("no model or no mode selected")
    return args


def run_mode(args, model, folder, mode, problems):
    """Both frameworks, args.rounds times each, taking turns to go first."""
    res, runs = {}, {}
    for fw in harness.round_order(FRAMEWORKS, args.rounds):
        r = run_child(fw, args, model, folder, mode)
        runs.setdefault(fw, []).append(r)
        res[fw] = harness.combine_rounds(runs[fw])
        print(describe_run(fw, mode, r), flush=True)
        if r.get("merge_check") is not None and r["merge_check"] > 1e-4:
            problems.append(f"{model} {fw}: merged logits differ from unmerged by "
                            f"{r['merge_check']:.2e}")
    if mode in TRAIN_MODES and res["peftcore"]["info"]["trainable"] != res["torch"]["info"]["trainable"]:
        problems.append(f"{model} {mode}: trainable parameters differ: peftcore "
                        f"{res['peftcore']['info']['trainable']}, torch "
                        f"{res['torch']['info']['trainable']}")
    if mode in ("merged", "bare"):
        diff = max(abs(a - b) for a, b in zip(res["peftcore"]["value"], res["torch"]["value"]))
        res["logit_diff"] = diff
        if diff > 1e-3:
            problems.append(f"{model} {mode}: peftcore and torch logits differ by {diff:.2e}")
    return res


def summary(results, interleaved, paired):
    harness.print_table(harness.SPEED_HEADER, [
        harness.speed_row(model, LABELS[mode], res["peftcore"], res["torch"])
        for model, modes in results.items() for mode, res in modes.items()])
    print()
    for model, modes in results.items():
        for mode in TRAIN_MODES:
            if mode in modes:
                ratio = modes[mode]["peftcore"]["seq_per_s"] / modes[mode]["torch"]["seq_per_s"]
                print(f"{model}: {LABELS[mode]} peftcore / torch = {ratio:.2f}x (target >= 2): "
                      f"{'met' if ratio >= 2 else 'MISSED'}")
            if mode in paired.get(model, {}):
                ratio = paired[model][mode]["ratio"]
                print(f"{model}: {LABELS[mode]} peftcore / torch, alternating in one process "
                      f"(median of paired steps) = {ratio:.2f}x (target >= 2): "
                      f"{'met' if ratio >= 2 else 'MISSED'}")
        if "merged" in modes and "bare" in modes:
            m, b = modes["merged"], modes["bare"]
            ratio = m["peftcore"]["seq_per_s"] / b["peftcore"]["seq_per_s"]
            print(f"{model}: peftcore merged / bare inference = {m['peftcore']['seq_per_s']:.2f} / "
                  f"{b['peftcore']['seq_per_s']:.2f} seq/s = {ratio:.3f} (target >= 0.97): "
                  f"{'met' if ratio >= 0.97 else 'MISSED'}; torch for reference: "
                  f"{m['torch']['seq_per_s'] / b['torch']['seq_per_s']:.3f}")
        harness.print_inference_checks(model, modes, interleaved)


def main():
    args = parse_args()
    if args.child:
        return child_main(args)
    print(f"(IA)³ / BitFit bench: batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps (median), {args.rounds} rounds; "
          f"(IA)³ {IA3}; AdamW {ADAMW}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average {load_average()}\n{harness.describe_isa(args)}",
          flush=True)
    harness.warn_if_busy()
    results, problems, interleaved, paired = {}, [], {}, {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peftcore_methods_bench_") as tmp:
        for model in args.model_list:
            folder = Path(tmp) / model
            prep = run_child("prepare", args, model, folder)
            print(f"  {model}: {prep['params'] / 1e6:.1f}M parameters", flush=True)
            for mode in args.mode_list:
                results.setdefault(model, {})[mode] = run_mode(args, model, folder, mode, problems)
                if mode in TRAIN_MODES and not args.no_paired:
                    r = run_child("paired", args, model, folder, mode)
                    paired.setdefault(model, {})[mode] = r
                    print(f"    {mode} paired, one process, alternating: peftcore "
                          f"{r['peftcore_seq_per_s']:.2f} / torch {r['torch_seq_per_s']:.2f} seq/s, "
                          f"median paired speed-up {r['ratio']:.2f}x  load avg "
                          f"{r['load'][0]:.1f}->{r['load'][1]:.1f}, other processes used "
                          f"{fmt(r.get('others_cores'), '.2f')} cores", flush=True)
            if not args.no_interleaved and {"merged", "bare"} <= set(args.mode_list):
                r = run_child("interleaved", args, model, folder)
                interleaved[model] = r
                print(harness.describe_interleaved(r), flush=True)
    print(f"\ntotal wall {time.perf_counter() - start:.0f} s; load average at the end: "
          f"{load_average()}\n")
    summary(results, interleaved, paired)
    harness.print_others([r for modes in results.values() for res in modes.values()
                          for r in res.values() if isinstance(r, dict)]
                         + list(interleaved.values())
                         + [r for modes in paired.values() for r in modes.values()])
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        harness.write_json(args.json, args, results=results, interleaved=interleaved,
                           paired=paired, problems=problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
