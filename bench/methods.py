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
import json
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
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    model = transformers.BertForSequenceClassification.from_pretrained(args.folder)
    info = {"attn": model.config._attn_implementation, "torch": torch.__version__,
            "transformers": transformers.__version__}
    if args.mode in ("ia3", "merged"):
        import peft
        info["peft"] = peft.__version__
        model = peft.get_peft_model(model, peft.IA3Config(**IA3))
    elif args.mode == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(_bias_only(name))
    ids, mask, labels = (torch.from_numpy(a) for a in make_batch(args, MODELS[args.model]["vocab_size"]))
    check = None
    if args.mode == "merged":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".ia3_l." in name:
                    p.copy_(torch.from_numpy(ia3_values(name, tuple(p.shape))))
        model.eval()
        with torch.inference_mode():
            before = model(input_ids=ids[:CHECK_ROWS], attention_mask=mask[:CHECK_ROWS]).logits
        model = model.merge_and_unload()
        with torch.inference_mode():
            after = model(input_ids=ids[:CHECK_ROWS], attention_mask=mask[:CHECK_ROWS]).logits
        check = float((before - after).abs().max())
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
    result = run_steps(args, step, load_mb, info)
    result["merge_check"] = check
    return result


def _peftcore_model(args, mode):
    """The peftcore model of `mode` (merged: the (IA)³ model with seeded vectors, merged),
    and the merged-vs-unmerged logit check."""
    import warnings

    import numpy as np

    import peftcore
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved head must load too
        model = peftcore.AutoModelForSequenceClassification.from_pretrained(args.folder)
    if mode in ("ia3", "merged"):
        model = peftcore.get_peft_model(model, peftcore.IA3Config(**IA3))
    elif mode == "bitfit":
        model = peftcore.get_peft_model(model, peftcore.BitFitConfig(task_type="SEQ_CLS"))
    check = None
    if mode == "merged":
        ids, mask, _ = make_batch(args, MODELS[args.model]["vocab_size"])
        for name, p in model.named_parameters():
            if ".ia3_l." in name:
                p[...] = ia3_values(name, tuple(p.shape))
        model.eval()
        with peftcore.no_grad():
            before = np.array(model(ids[:CHECK_ROWS], attention_mask=mask[:CHECK_ROWS]).logits)
        model = model.merge_and_unload()
        model.eval()
        with peftcore.no_grad():
            after = np.array(model(ids[:CHECK_ROWS], attention_mask=mask[:CHECK_ROWS]).logits)
        check = float(np.abs(before - after).max())
    return model, check


def child_peftcore(args):
    import numpy as np

    import peftcore
    peftcore.set_num_threads(args.threads)
    backend = peftcore.backend_info()
    info = {"blis": backend.get("blis_arch"), "isa": backend.get("isa")}
    model, check = _peftcore_model(args, args.mode)
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
            with peftcore.no_grad():  # as torch.inference_mode on the other side
                return np.asarray(model(ids, attention_mask=mask).logits)[0].tolist()
    result = run_steps(args, step, load_mb, info)
    result["merge_check"] = check
    return result


def child_interleaved(args):
    """Merged (IA)³ vs bare model inference in one process, forwards alternating (the order
    flips every round)."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    bare, _ = _peftcore_model(args, "bare")
    merged, _ = _peftcore_model(args, "merged")
    bare.eval()
    merged.eval()
    ids, mask, _ = make_batch(args, MODELS[args.model]["vocab_size"])
    times = {"bare": [], "merged": []}
    with peftcore.no_grad():
        for _ in range(args.warmup):
            bare(ids, attention_mask=mask)
            merged(ids, attention_mask=mask)
        for i in range(args.steps):
            order = (("bare", bare), ("merged", merged))
            for name, model in (order if i % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                model(ids, attention_mask=mask)
                times[name].append(time.perf_counter() - t0)
    pairs = [b / m for b, m in zip(times["bare"], times["merged"])]  # merged seq/s / bare seq/s
    return {"times": times, "ratio": statistics.median(pairs),
            "bare_seq_per_s": args.batch / statistics.median(times["bare"]),
            "merged_seq_per_s": args.batch / statistics.median(times["merged"])}


def child_paired(args):
    """A training step of torch and of peftcore in one process, alternating (the order flips
    every round): the median of the paired time ratios is robust to load that drifts while
    the separate processes run. Both models are built as in their own children."""
    import numpy as np
    import torch
    import transformers

    import peftcore
    torch.set_num_threads(args.threads)
    peftcore.set_num_threads(args.threads)
    ids, mask, labels = make_batch(args, MODELS[args.model]["vocab_size"])
    ours, _ = _peftcore_model(args, args.mode)
    ours_opt = peftcore.optim.AdamW([p for p in ours.parameters() if p.requires_grad], **ADAMW)
    theirs = transformers.BertForSequenceClassification.from_pretrained(args.folder)
    if args.mode == "ia3":
        import peft
        theirs = peft.get_peft_model(theirs, peft.IA3Config(**IA3))
    else:
        for name, p in theirs.named_parameters():
            p.requires_grad_(_bias_only(name))
    theirs_opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], **ADAMW)
    t_ids, t_mask, t_labels = (torch.from_numpy(a) for a in (ids, mask, labels))
    ours.train()
    theirs.train()

    def step_ours():
        ours(ids, attention_mask=mask, labels=labels)
        ours.backward()
        ours_opt.step()
        ours_opt.zero_grad()

    def step_theirs():
        theirs(input_ids=t_ids, attention_mask=t_mask, labels=t_labels).loss.backward()
        theirs_opt.step()
        theirs_opt.zero_grad()

    for _ in range(args.warmup):
        step_ours()
        step_theirs()
    times = {"peftcore": [], "torch": []}
    for i in range(args.steps):
        order = (("peftcore", step_ours), ("torch", step_theirs))
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    pairs = [t / o for t, o in zip(times["torch"], times["peftcore"])]  # peftcore speed-up
    return {"times": times, "ratio": float(np.median(pairs)),
            "peftcore_seq_per_s": args.batch / statistics.median(times["peftcore"]),
            "torch_seq_per_s": args.batch / statistics.median(times["torch"])}


def child_main(args):
    kinds = {"prepare": child_prepare, "torch": child_torch, "peftcore": child_peftcore,
             "interleaved": child_interleaved, "paired": child_paired}
    print_result(kinds[args.child](args))


# ------------------------------------------------------------------ parent side

def run_child(kind, args, model, folder, mode="bare"):
    return harness.run_child(__file__, kind, args, model, folder, mode)


def parse_list(text, allowed, what, ap):
    items = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in items if m not in allowed]
    if bad:
        ap.error(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return items


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None,
                    help=f"comma-separated, from {', '.join(MODELS)} (default: minilm)")
    ap.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 6; quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; quick 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    harness.add_isa_argument(ap)
    ap.add_argument("--rounds", type=int, default=2,
                    help="runs of each framework per mode, taking turns to go first (reported: "
                         "the median speed, the largest RSS; default %(default)s, quick 1)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: minilm, batch 4 x seq 32, 1 + 1 steps, one round")
    ap.add_argument("--no-interleaved", action="store_true",
                    help="skip the merged-vs-bare check with both models in one process")
    ap.add_argument("--json", help="also write all results to this file")
    # child-only options
    ap.add_argument("--no-paired", action="store_true",
                    help="skip the extra train-step check with torch and peftcore alternating "
                         "in one process")
    ap.add_argument("--child", choices=("prepare", "interleaved", "paired") + FRAMEWORKS,
                    help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="bare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.steps = 1 if args.steps is None else args.steps
        args.warmup = 1 if args.warmup is None else args.warmup
        args.batch, args.seq = min(args.batch, 4), min(args.seq, 32)
        args.rounds = 1
    args.steps = 6 if args.steps is None else args.steps
    args.warmup = 2 if args.warmup is None else args.warmup
    if (args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 2 or args.threads < 1
            or args.rounds < 1):
        ap.error("--steps, --batch, --threads, --rounds must be >= 1, --seq >= 2, --warmup >= 0")
    if args.child:
        return args
    args.model_list = parse_list(args.models or "minilm", MODELS, "model", ap)
    args.mode_list = parse_list(args.modes, MODES, "mode", ap)
    if not args.model_list or not args.mode_list:
        ap.error("no model or no mode selected")
    return args


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def describe(fw, mode, r):
    text = f"    {mode:6s} {fw:8s} {r['seq_per_s']:8.2f} seq/s  step {r['step_s']:.3f} s"
    if "phases" in r:
        f, b, o = r["phases"]
        text += f" (fwd {f:.3f} bwd {b:.3f} adamw {o:.3f})"
    text += (f"  peak {r['peak_mb']:.0f} MB (after load {r['load_mb']:.0f})  trainable "
             f"{r['info']['trainable']:,}/{r['info']['total']:,}")
    if r.get("merge_check") is not None:
        text += f"  |merged-unmerged| {r['merge_check']:.1e}"
    text += (f"  load avg {r['load'][0]:.1f}->{r['load'][1]:.1f}, other processes used "
             f"{fmt(r.get('others_cores'), '.2f')} cores  wall {r['wall_s']:.0f} s")
    return text


def run_mode(args, model, folder, mode, problems):
    """Both frameworks, args.rounds times each, taking turns to go first."""
    res, runs = {}, {}
    order = [fw for rnd in range(args.rounds)
             for fw in (FRAMEWORKS if rnd % 2 == 0 else FRAMEWORKS[::-1])]
    for fw in order:
        r = run_child(fw, args, model, folder, mode)
        runs.setdefault(fw, []).append(r)
        res[fw] = harness.combine_rounds(runs[fw])
        print(describe(fw, mode, r), flush=True)
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
    print("| model | mode | peftcore seq/s | torch seq/s | ratio (pc/torch) | peftcore RSS MB "
          "| torch RSS MB | RSS ratio (pc/torch) |")
    print("|" + "|".join(["---"] * 8) + "|")
    for model, modes in results.items():
        for mode, res in modes.items():
            p, t = res["peftcore"], res["torch"]
            print(f"| {model} | {LABELS[mode]} | {p['seq_per_s']:.2f} | {t['seq_per_s']:.2f} | "
                  f"{p['seq_per_s'] / t['seq_per_s']:.2f} | {p['peak_mb']:.0f} | "
                  f"{t['peak_mb']:.0f} | {p['peak_mb'] / t['peak_mb']:.2f} |")
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
        if model in interleaved:
            ratio = interleaved[model]["ratio"]
            print(f"{model}: peftcore merged / bare, interleaved in one process (median of paired "
                  f"steps) = {ratio:.3f} (target >= 0.97): {'met' if ratio >= 0.97 else 'MISSED'}")
        for mode in ("merged", "bare"):
            if "logit_diff" in modes.get(mode, {}):
                print(f"{model}: {mode} logits, max |peftcore - torch| over row 0 = "
                      f"{modes[mode]['logit_diff']:.1e}")


def main():
    args = parse_args()
    if args.child:
        return child_main(args)
    print(f"(IA)³ / BitFit bench: batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps (median), {args.rounds} rounds; "
          f"(IA)³ {IA3}; AdamW {ADAMW}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average {load_average()}\n{harness.describe_isa(args)}",
          flush=True)
    if os.getloadavg()[0] > 0.5:
        print(f"WARNING: load average {os.getloadavg()[0]:.2f} before the start: other processes "
              f"compete for the cores and the timings below are unreliable", flush=True)
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
                print(f"    merged vs bare, one process, alternating: merged "
                      f"{r['merged_seq_per_s']:.2f} / bare {r['bare_seq_per_s']:.2f} seq/s, "
                      f"median paired ratio {r['ratio']:.3f}  load avg {r['load'][0]:.1f}->"
                      f"{r['load'][1]:.1f}, other processes used "
                      f"{fmt(r.get('others_cores'), '.2f')} cores", flush=True)
    print(f"\ntotal wall {time.perf_counter() - start:.0f} s; load average at the end: "
          f"{load_average()}\n")
    summary(results, interleaved, paired)
    others = [r["others_cores"] for modes in results.values() for res in modes.values()
              for r in res.values() if isinstance(r, dict) and r.get("others_cores") is not None]
    others += [r["others_cores"] for r in interleaved.values() if r.get("others_cores") is not None]
    others += [r["others_cores"] for modes in paired.values() for r in modes.values()
               if r.get("others_cores") is not None]
    if others:
        print(f"other processes used {min(others):.2f}..{max(others):.2f} cores (mean "
              f"{statistics.mean(others):.2f}) of {os.cpu_count()} during the runs"
              + ("; timings are unreliable" if max(others) > 0.2 else ""))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": {k: v for k, v in vars(args).items() if not k.endswith("_list")},
             "results": results, "interleaved": interleaved, "paired": paired,
             "problems": problems}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
