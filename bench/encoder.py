"""Encoder training step and inference: peftcore beside PyTorch/transformers, side by side.

    python bench/encoder.py [--models minilm,bert-base] [--steps N] [--warmup N]
                            [--batch 32] [--seq 128] [--threads 2] [--rounds 3] [--quick]

For each model shape, a transformers BertForSequenceClassification (2 labels) is built with
a fixed seed and saved to a temporary folder; both frameworks load that folder, so they run
the same config with the same weights on the same random batch (B × T tokens, no padding).

  train  forward + backward with labels (cross-entropy), full fine-tune, train mode (dropout
         0.1 as in the config), gradients zeroed each step; no optimizer step.
  infer  forward only, eval mode (torch under inference_mode, peftcore under no_grad).

Each framework × model × mode runs in its own child process, so the peak RSS
(getrusage(RUSAGE_SELF).ru_maxrss at the end of the child) is that run's alone; it includes
the interpreter, the imported libraries, the weights, activations and gradients. "load MB"
is the resident size after loading the model, before the first step. sequences/s counts the
median timed step (after the warm-up steps). The machine's load average is printed with
each run: other processes competing for the cores distort the timings. Each framework runs
--rounds times, taking turns to go first; the table gives the median speed and the largest
peak RSS of its runs, as this machine's speed drifts by tens of % over minutes, and the
lowest and highest ratio of the two sides' runs of the same round.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import harness
from harness import (MODELS, child_prepare, load_average, make_batch, print_result, rss_mb,
                     run_steps, train_step)

FRAMEWORKS = ("torch", "peftcore")
MODES = ("train", "infer")


# ------------------------------------------------------------------ child side

def child_torch(args):
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    model = transformers.BertForSequenceClassification.from_pretrained(args.folder)
    ids, mask, labels = make_batch(args, model.config.vocab_size)
    ids, mask, labels = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)
    load_mb = rss_mb()
    if args.mode == "train":
        model.train()

        def forward():
            model.zero_grad(set_to_none=True)
            return model(input_ids=ids, attention_mask=mask, labels=labels)

        step = train_step(forward, lambda out: out.loss.backward())
    else:
        model.eval()

        def step(phases):
            with torch.inference_mode():
                return float(model(input_ids=ids, attention_mask=mask).logits[0, 0])
    info = {"attn_implementation": model.config._attn_implementation,
            "torch": torch.__version__, "transformers": transformers.__version__}
    return run_steps(args, step, load_mb, info)


def child_peftcore(args):
    import peftcore
    peftcore.set_num_threads(args.threads)
    model = harness.peftcore_model(args)
    ids, mask, labels = make_batch(args, model.config.vocab_size)
    if args.inference_rows is not None:  # else peftcore's default
        model.inference_rows = args.inference_rows or None
    load_mb = rss_mb()
    if args.mode == "train":
        model.train()

        def forward():
            model.zero_grad()
            return model(ids, attention_mask=mask, labels=labels)

        step = train_step(forward, lambda out: model.backward())
    else:
        model.eval()

        def step(phases):
            with peftcore.no_grad():  # as torch.inference_mode on the other side
                return float(model(ids, attention_mask=mask).logits[0, 0])
    info = {"blis": peftcore.backend_info().get("blis_arch"), "isa": peftcore.backend_info().get("isa"),
            "activation_MB": None}
    result = run_steps(args, step, load_mb, info)
    result["info"]["activation_MB"] = round(model._engine.activation_bytes() / 2**20, 1)
    return result


def child_main(args):
    if args.child == "prepare":
        result = child_prepare(args)
    elif args.child == "torch":
        result = child_torch(args)
    else:
        result = child_peftcore(args)
    print_result(result)


# ------------------------------------------------------------------ parent side

def run_child(kind, args, model, folder, mode="train"):
    extra = [] if args.inference_rows is None else ["--inference-rows", str(args.inference_rows)]
    return harness.run_child(__file__, kind, args, model, folder, mode, extra)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm,bert-base",
                    help=f"comma-separated, from {', '.join(MODELS)} (default: %(default)s)")
    ap.add_argument("--modes", default="train,infer", help="default: %(default)s")
    harness.add_run_arguments(
        ap, steps_help="timed steps (default 5; quick 2)", warmup_help="untimed steps (default 1)",
        rounds=3, rounds_help="runs of each framework, alternating (reported: the median speed, "
                              "the largest peak RSS; default %(default)s, quick 1)",
        quick_help="smoke test: 1 timed step, no warm-up, batch 4 × seq 32")
    ap.add_argument("--inference-rows", type=int, default=None,
                    help="peftcore's model.inference_rows: eval forwards hold layer scratch for "
                         "about this many tokens over all threads' workers; 0 = each worker's "
                         "share of the batch at once (default: peftcore's, 32 MiB of scratch)")
    ap.add_argument("--json", help="also write all results to this file")
    # child-only options
    harness.add_child_arguments(ap, ("prepare",) + FRAMEWORKS, MODES, mode="train")
    args = harness.finish_run_arguments(ap.parse_args(), ap, steps=5, warmup=1, quick_warmup=0)
    if args.child:
        return args
    args.model_list = harness.parse_list(args.models, MODELS, "model", ap)
    args.mode_list = harness.parse_list(args.modes, MODES, "mode", ap)
    if not args.model_list or not args.mode_list:
        ap.error("no model or no mode selected")
    return args


def main():
    args = parse_args()
    if args.child:
        return child_main(args)
    print(f"encoder bench: batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average {load_average()}\n{harness.describe_isa(args)}", flush=True)
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="peftcore_bench_") as tmp:
        for model in args.model_list:
            folder = Path(tmp) / model
            prep = run_child("prepare", args, model, folder)
            print(f"  {model}: {prep['params'] / 1e6:.1f}M parameters", flush=True)
            for mode in args.mode_list:
                runs = {fw: [] for fw in FRAMEWORKS}
                for rnd in range(args.rounds):
                    # alternate who goes first: a machine whose speed drifts over minutes
                    # then favours neither side
                    for fw in (FRAMEWORKS if rnd % 2 == 0 else FRAMEWORKS[::-1]):
                        r = run_child(fw, args, model, folder, mode)
                        runs[fw].append(r)
                        print(f"    {mode:5s} {fw:8s} round {rnd + 1}: {r['seq_per_s']:8.2f} seq/s  "
                              f"step {r['step_s']:.3f} s  peak {r['peak_mb']:.0f} MB  "
                              f"(after load {r['load_mb']:.0f} MB)  load avg {r['load'][0]:.1f}->"
                              f"{r['load'][1]:.1f}  {r['info']}", flush=True)
                res = {fw: harness.combine_rounds(runs[fw]) for fw in FRAMEWORKS}
                results[f"{model}/{mode}"] = res
                rows.append((model, mode, res["torch"], res["peftcore"]))
    print(f"\nload average at the end: {load_average()}\n")
    header = ("| model | mode | torch seq/s | peftcore seq/s | speed ratio (pc/torch) "
              "| ratio by round (min-max) | torch peak MB | peftcore peak MB | RSS ratio (pc/torch) | torch MB after load "
              "| peftcore MB after load |")
    print(header)
    print("|" + "|".join(["---"] * 11) + "|")
    for model, mode, t, p in rows:
        # round k of each side ran back to back: their ratio shows how far the machine moved
        by_round = [pc / th for th, pc in zip(t["rounds"], p["rounds"])]
        print(f"| {model} | {mode} | {t['seq_per_s']:.2f} | {p['seq_per_s']:.2f} | "
              f"{p['seq_per_s'] / t['seq_per_s']:.2f}x | "
              f"{min(by_round):.2f}-{max(by_round):.2f}x | {t['peak_mb']:.0f} | {p['peak_mb']:.0f} | "
              f"{p['peak_mb'] / t['peak_mb']:.2f} | {t['load_mb']:.0f} | {p['load_mb']:.0f} |")
    if args.json:
        harness.write_json(args.json, args, results=results)


if __name__ == "__main__":
    main()
