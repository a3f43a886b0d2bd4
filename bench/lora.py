"""LoRA training step and merged-adapter inference: peftcore beside torch + transformers + peft.

    python bench/lora.py [--models minilm,bert-base] [--modes lora,full,merged,bare]
                         [--steps N] [--warmup N] [--batch 32] [--seq 128] [--threads 2]
                         [--rounds 2] [--torch-modes ...] [--quick] [--json FILE]
                         [--baseline DIR] [--paired] [--isa avx2|avx512|baseline]

For each model shape a transformers BertForSequenceClassification (2 labels) is built with
torch.manual_seed(0) and saved (save_pretrained) to a temporary folder; both frameworks load
that folder, so they run the same config and weights on the same random batch (B × T tokens,
no padding). The LoRA config is the same in both: r=8, lora_alpha=16, target_modules
query+value, lora_dropout=0.1, task_type SEQ_CLS (so the classifier is trained and saved too).

  lora    LoRA training step: forward with labels (cross-entropy) + backward + AdamW step
          (lr 1e-4, weight decay 0.01, over the trainable parameters) + zero_grad; train mode
          (dropout 0.1 in the encoder and on the LoRA input).
  full    the same step as a full fine-tune: every parameter trainable, the same AdamW.
  merged  inference (eval mode; torch under inference_mode) of the LoRA model after
          merge_and_unload(). The LoRA factors are first set to seeded random values (the
          same in both frameworks; a fresh B is zero) and the merged logits are checked
          against the unmerged model's.
  bare    inference of the model as loaded, without any adapter.

With both merged and bare selected, one more peftcore child (--no-interleaved skips it)
holds a bare and a merged model and alternates their forwards: the median of the paired
time ratios is robust to load that changes between the separate processes.

Each framework × model × mode runs in its own child process, so the peak RSS
(getrusage(RUSAGE_SELF).ru_maxrss at the end of the child) is that run's alone: interpreter,
libraries, weights, activations, gradients and optimizer state. "after load" is the resident
size once the model is ready (LoRA injected / merged), before the first step. sequences/s is
the batch over the median timed step (after the warm-up steps, which also create AdamW's
state). The load average is printed with every run: other processes competing for the
cores distort the timings.

--baseline DIR: also run DIR's peftcore (another checkout, its extension built in place:
`git worktree add DIR <commit> && cd DIR && python3 setup.py build_ext --inplace`) in every
peftcore mode, taking turns with this checkout's, and print this / baseline speed ratios:
a change's effect measured side by side in one run. Then one more child per mode imports
both checkouts' peftcore (the baseline's as `peftcore_baseline`) and alternates their steps:
the median of those paired ratios, with its quartiles, survives the load and CPU steal that
drift between separate processes.

--paired: one more child per model builds both LoRA models and alternates torch's and
peftcore's train steps in one process: the median of those paired ratios (peftcore's
speed-up), with its quartiles, also survives load that drifts between processes.

Targets: peftcore LoRA step / full step <= 0.72 (the ideal is 2/3: no weight gradients of the
frozen base); peftcore merged inference at most 3 % slower than the bare model (merged / bare
seq/s >= 0.97; a merged model is a bare model, so a ratio above 1 is noise).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import harness
from harness import (MODELS, child_prepare, describe_run, load_average, make_batch,
                     parse_list, peftcore_merge_check, peftcore_run, print_result, torch_batch,
                     torch_merge_check, torch_run)

FRAMEWORKS = ("peftcore", "torch")
MODES = ("lora", "full", "merged", "bare")
TRAIN_MODES = ("lora", "full")
LORA = dict(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"],
            lora_dropout=0.1)
ADAMW = dict(lr=1e-4, weight_decay=0.01)
CHECK_ROWS = 2  # rows of the batch used to check merged against unmerged logits


# ------------------------------------------------------------------ child side

_LORA_NAME = re.compile(r"\.lora_[AB]\.default\.weight$")


def lora_values(name, shape):
    """Seeded values for one LoRA factor, keyed by its (HF PEFT) parameter name, so both
    frameworks get the same adapter. Scaled so the merged delta is small but not negligible."""
    import numpy as np
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (rng.standard_normal(shape) * 0.05).astype(np.float32)


def child_torch(args):
    model, info = harness.torch_model(
        args, "LoraConfig" if args.mode in ("lora", "merged") else None, LORA)
    batch = torch_batch(args, MODELS[args.model]["vocab_size"])
    check = None
    if args.mode == "merged":
        model, check = torch_merge_check(model, batch, CHECK_ROWS, _torch_lora_values)
    result = torch_run(args, model, batch, info, args.mode in TRAIN_MODES, ADAMW,
                       all_trainable=args.mode == "full")
    result["merge_check"] = check
    return result


def _torch_lora_values(model):
    import torch
    for name, p in model.named_parameters():
        if _LORA_NAME.search(name):
            p.copy_(torch.from_numpy(lora_values(name, tuple(p.shape))))


def _lora_values(model):
    for name, p in model.named_parameters():
        if _LORA_NAME.search(name):
            p[...] = lora_values(name, p.shape)


def child_peftcore(args):
    import peftcore
    peftcore.set_num_threads(args.threads)
    model = harness.peftcore_model(args)
    info = {"blis": peftcore.backend_info().get("blis_arch"), "isa": peftcore.backend_info().get("isa")}
    if args.mode in ("lora", "merged"):
        model = peftcore.get_peft_model(model, peftcore.LoraConfig(**LORA))
    batch = make_batch(args, MODELS[args.model]["vocab_size"])
    check = None
    if args.mode == "merged":
        model, check = peftcore_merge_check(model, batch, CHECK_ROWS, _lora_values)
    result = peftcore_run(args, model, batch, info, args.mode in TRAIN_MODES, ADAMW,
                          all_trainable=args.mode == "full")
    result["merge_check"] = check
    engine = getattr(model, "get_base_model", lambda: model)()._engine
    if hasattr(engine, "activation_bytes"):
        result["info"]["activation_MB"] = round(engine.activation_bytes() / 2**20, 1)
    return result


def child_interleaved(args):
    """Merged LoRA vs bare model inference in one process, forwards alternating (the order
    flips every round): the paired ratio is robust to load that drifts between processes."""
    import warnings

    import peftcore
    peftcore.set_num_threads(args.threads)
    bare = harness.peftcore_model(args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft_model = peftcore.get_peft_model(harness.peftcore_model(args),
                                             peftcore.LoraConfig(**LORA))
    _lora_values(peft_model)
    return harness.interleaved_inference(args, bare, peft_model.merge_and_unload())


def import_baseline(checkout):
    """The peftcore of another checkout (its extension built in place) as the package
    `peftcore_baseline`, importable beside this checkout's `peftcore` in one process: the two
    extensions are separate shared objects, each with its own state."""
    import importlib.util
    folder = Path(checkout) / "peftcore"
    spec = importlib.util.spec_from_file_location(
        "peftcore_baseline", folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["peftcore_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _paired_side(pc, args):
    """A callable running one step of args.mode with the package `pc` (peftcore or the
    baseline's), on the same weights, LoRA values and batch as the separate children."""
    import numpy as np
    pc.set_num_threads(args.threads)
    model = pc.AutoModelForSequenceClassification.from_pretrained(args.folder)
    if args.mode in ("lora", "merged"):
        model = pc.get_peft_model(model, pc.LoraConfig(**LORA))
    ids, mask, labels = make_batch(args, MODELS[args.model]["vocab_size"])
    if args.mode == "merged":
        _lora_values(model)
        model = model.merge_and_unload()
    if args.mode in TRAIN_MODES:
        if args.mode == "full":
            for p in model.parameters():
                p.requires_grad = True
        opt = pc.optim.AdamW([p for p in model.parameters() if p.requires_grad], **ADAMW)
        model.train()

        def step():
            model(ids, attention_mask=mask, labels=labels)
            model.backward()
            opt.step()
            opt.zero_grad()
        return step
    model.eval()

    def forward():
        with pc.no_grad():
            return np.asarray(model(ids, attention_mask=mask).logits)
    return forward


def child_paired_baseline(args):
    """This checkout's peftcore and the baseline's in one process, their steps alternating
    (the order flipping every round): the median of the paired time ratios (this checkout's
    speed over the baseline's) is robust to load and CPU steal that drift between the
    separate processes."""
    import numpy as np

    import peftcore
    base = import_baseline(args.baseline)
    fns = {"this": _paired_side(peftcore, args), "baseline": _paired_side(base, args)}
    times = harness.alternate(fns, args.warmup, args.steps)
    pairs = [b / t for b, t in zip(times["baseline"], times["this"])]
    return {"times": times, "ratio": float(np.median(pairs)),
            "quartiles": [float(q) for q in np.percentile(pairs, [25, 75])],
            "this_seq_per_s": args.batch / statistics.median(times["this"]),
            "baseline_seq_per_s": args.batch / statistics.median(times["baseline"])}


def child_paired(args):
    """A LoRA training step of torch + peft and of peftcore in one process, alternating (the
    order flips every round; see harness.paired_train), each model built as in its own
    child."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    ours = peftcore.get_peft_model(harness.peftcore_model(args), peftcore.LoraConfig(**LORA))
    theirs, _ = harness.torch_model(args, "LoraConfig", LORA)
    return harness.paired_train(args, ours, theirs, ADAMW)


def child_main(args):
    if args.child == "prepare":
        result = child_prepare(args)
    elif args.child == "torch":
        result = child_torch(args)
    elif args.child == "interleaved":
        result = child_interleaved(args)
    elif args.child == "paired-baseline":
        result = child_paired_baseline(args)
    elif args.child == "paired":
        result = child_paired(args)
    else:
        result = child_peftcore(args)
    print_result(result)


# ------------------------------------------------------------------ parent side

def run_child(kind, args, model, folder, mode="bare"):
    if kind == "baseline":
        return harness.run_child(__file__, "peftcore", args, model, folder, mode,
                                 repo=args.baseline)
    if kind == "paired-baseline":
        return harness.run_child(__file__, kind, args, model, folder, mode,
                                 extra=("--baseline", args.baseline))
    return harness.run_child(__file__, kind, args, model, folder, mode)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None,
                    help=f"comma-separated, from {', '.join(MODELS)} (default: all; quick: minilm)")
    ap.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    ap.add_argument("--torch-modes", default=None,
                    help="modes also run in torch (default: all; quick: lora,bare)")
    harness.add_run_arguments(ap, quick_help="smoke test (< 1 min): minilm, batch 4 x seq 32, "
                                             "1 + 1 steps, torch only for lora and bare")
    ap.add_argument("--no-interleaved", action="store_true",
                    help="skip the extra merged-vs-bare check with both models in one process")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--baseline", help="another checkout (built in place) whose peftcore runs "
                                       "beside this one's: speed ratios this / baseline")
    ap.add_argument("--paired", action="store_true",
                    help="also alternate torch's and peftcore's LoRA train steps in one process "
                         "(robust to load that drifts between processes)")
    harness.add_child_arguments(ap, ("prepare", "interleaved", "paired-baseline", "paired") +
                                FRAMEWORKS, MODES)
    args = harness.finish_run_arguments(ap.parse_args(), ap)
    if args.quick:
        args.models = args.models or "minilm"
        args.torch_modes = args.torch_modes or "lora,bare"
    if args.child:
        return args
    args.model_list = parse_list(args.models or ",".join(MODELS), MODELS, "model", ap)
    args.mode_list = parse_list(args.modes, MODES, "mode", ap)
    args.torch_list = parse_list(args.torch_modes or ",".join(MODES), MODES, "torch mode", ap)
    if not args.model_list or not args.mode_list:
        ap.error("no model or no mode selected")
    if args.baseline:
        base = Path(args.baseline).resolve()
        if not list((base / "peftcore").glob("_C*.so")):
            ap.error(f"--baseline {base}: no peftcore/_C*.so there (build it in place first)")
        args.baseline = str(base)
    return args


def fmt_paired(r):
    return "" if r is None else \
        f"{r['ratio']:.3f} ({r['quartiles'][0]:.3f}-{r['quartiles'][1]:.3f})"


def main():
    args = parse_args()
    if args.child:
        return child_main(args)
    print(f"LoRA bench: batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps (median); LoRA {LORA}; AdamW "
          f"{ADAMW}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average {load_average()}\n{harness.describe_isa(args)}", flush=True)
    harness.warn_if_busy()
    results, problems, interleaved = {}, [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peftcore_lora_bench_") as tmp:
        for model in args.model_list:
            folder = Path(tmp) / model
            prep = run_child("prepare", args, model, folder)
            print(f"  {model}: {prep['params'] / 1e6:.1f}M parameters", flush=True)
            for mode in args.mode_list:
                res = results.setdefault(model, {}).setdefault(mode, {})
                runs = {}
                # each framework --rounds times, taking turns to go first (the machine's
                # speed drifts over minutes); reported: the median speed, the largest RSS
                frameworks = FRAMEWORKS + (("baseline",) if args.baseline else ())
                for fw in harness.round_order(frameworks, args.rounds):
                    if fw == "torch" and mode not in args.torch_list:
                        continue
                    r = run_child(fw, args, model, folder, mode)
                    runs.setdefault(fw, []).append(r)
                    res[fw] = harness.combine_rounds(runs[fw])
                    print(describe_run(fw, mode, r), flush=True)
                    if fw == "peftcore" and mode == "bare":
                        info = r["info"]
                        print(f"             peftcore info {info}", flush=True)
                    if fw == "torch" and mode in ("lora", "merged"):
                        print(f"             torch info {r['info']}", flush=True)
                    if r.get("merge_check") is not None and r["merge_check"] > 1e-4:
                        problems.append(f"{model} {fw}: merged logits differ from unmerged by "
                                        f"{r['merge_check']:.2e}")
                if mode == "lora" and "torch" in res and \
                        res["peftcore"]["info"]["trainable"] != res["torch"]["info"]["trainable"]:
                    problems.append(f"{model}: trainable LoRA parameters differ: peftcore "
                                    f"{res['peftcore']['info']['trainable']}, torch "
                                    f"{res['torch']['info']['trainable']}")
                if mode in ("merged", "bare") and "torch" in res:
                    diff = max(abs(a - b) for a, b in zip(res["peftcore"]["value"],
                                                          res["torch"]["value"]))
                    res["logit_diff"] = diff
                    if diff > 1e-3:
                        problems.append(f"{model} {mode}: peftcore and torch logits differ by "
                                        f"{diff:.2e}")
                if args.paired and mode == "lora":
                    r = run_child("paired", args, model, folder, mode)
                    res["paired"] = r
                    print(f"    lora   paired, one process, alternating: peftcore "
                          f"{r['peftcore_seq_per_s']:.2f} seq/s, torch {r['torch_seq_per_s']:.2f}"
                          f" seq/s, median paired peftcore / torch {r['ratio']:.2f}x (quartiles "
                          f"{r['quartiles'][0]:.2f}-{r['quartiles'][1]:.2f})", flush=True)
                if args.baseline:
                    r = run_child("paired-baseline", args, model, folder, mode)
                    res["paired_baseline"] = r
                    print(f"    {mode:6} paired in one process, alternating: this "
                          f"{r['this_seq_per_s']:.2f} seq/s, baseline "
                          f"{r['baseline_seq_per_s']:.2f} seq/s, median paired this / baseline "
                          f"{r['ratio']:.3f} (quartiles {r['quartiles'][0]:.3f}-"
                          f"{r['quartiles'][1]:.3f})", flush=True)
            if not args.no_interleaved and {"merged", "bare"} <= set(args.mode_list):
                r = run_child("interleaved", args, model, folder)
                interleaved[model] = r
                print(harness.describe_interleaved(r), flush=True)
    print(f"\ntotal wall {time.perf_counter() - start:.0f} s; load average at the end: "
          f"{load_average()}\n")

    labels = {"lora": "LoRA train step", "full": "full fine-tune step",
              "merged": "infer, merged LoRA", "bare": "infer, bare model"}
    harness.print_table(harness.SPEED_HEADER, [
        harness.speed_row(model, labels[mode], res.get("peftcore"), res.get("torch"))
        for model, modes in results.items() for mode, res in modes.items()])
    print()
    if args.baseline:
        print(f"this checkout against --baseline {args.baseline}, side by side:\n")
        print("| model | mode | this seq/s | baseline seq/s | this / baseline | paired in one "
              "process | this RSS MB | baseline RSS MB |")
        print("|" + "|".join(["---"] * 8) + "|")
        for model, modes in results.items():
            for mode, res in modes.items():
                p, b = res.get("peftcore"), res.get("baseline")
                if p and b:
                    print(f"| {model} | {labels[mode]} | {p['seq_per_s']:.2f} | "
                          f"{b['seq_per_s']:.2f} | {p['seq_per_s'] / b['seq_per_s']:.3f} | "
                          f"{fmt_paired(res.get('paired_baseline'))} | "
                          f"{p['peak_mb']:.0f} | {b['peak_mb']:.0f} |")
        print()
    for model, modes in results.items():
        lora, full = modes.get("lora", {}), modes.get("full", {})
        if "peftcore" in lora and "peftcore" in full:
            ratio = lora["peftcore"]["step_s"] / full["peftcore"]["step_s"]
            line = (f"{model}: peftcore LoRA step / full step = {lora['peftcore']['step_s']:.3f} s"
                    f" / {full['peftcore']['step_s']:.3f} s = {ratio:.3f} (target <= 0.72, "
                    f"ideal 0.667): {'met' if ratio <= 0.72 else 'MISSED'}")
            if "torch" in lora and "torch" in full:
                line += (f"; torch+peft for reference: "
                         f"{lora['torch']['step_s'] / full['torch']['step_s']:.3f}")
            print(line)
        merged, bare = modes.get("merged", {}), modes.get("bare", {})
        if "peftcore" in merged and "peftcore" in bare:
            ratio = merged["peftcore"]["seq_per_s"] / bare["peftcore"]["seq_per_s"]
            line = (f"{model}: peftcore merged / bare inference = "
                    f"{merged['peftcore']['seq_per_s']:.2f} / {bare['peftcore']['seq_per_s']:.2f}"
                    f" seq/s = {ratio:.3f} (target >= 0.97, merged within 3 % of bare): "
                    f"{'met' if ratio >= 0.97 else 'MISSED'}; peak RSS merged / bare = "
                    f"{merged['peftcore']['peak_mb'] / bare['peftcore']['peak_mb']:.3f}")
            if "torch" in merged and "torch" in bare:
                line += (f"; torch for reference: "
                         f"{merged['torch']['seq_per_s'] / bare['torch']['seq_per_s']:.3f}")
            print(line)
        harness.print_inference_checks(model, modes, interleaved)
    harness.print_others([r for modes in results.values() for res in modes.values()
                          for r in res.values() if isinstance(r, dict)]
                         + list(interleaved.values()))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        harness.write_json(args.json, args, results=results, interleaved=interleaved,
                           problems=problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
