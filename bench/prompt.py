"""Prompt tuning, P-tuning (MLP, LSTM) and prefix tuning (with and without projection):
peftcore's training step beside torch + transformers + HF PEFT's, and each method's
inference overhead over the bare model.

    python bench/prompt.py [--models minilm] [--methods prompt,p_tuning_mlp,...]
                           [--virtual-tokens 20] [--steps N] [--warmup N] [--batch 32]
                           [--seq 128] [--threads 2] [--isa avx2] [--quick] [--json FILE]
                           [--only train|infer]

The model is built as in bench/methods.py (bench/harness.py): a transformers
BertForSequenceClassification (2 labels, MiniLM's shape by default) with torch.manual_seed(0),
saved and loaded by both frameworks; the same random batch (B × T tokens, no padding).

For each method one child process alternates torch's and peftcore's training steps (forward
with labels + backward + AdamW + zero_grad, train mode, the encoder's dropout 0.1), the order
flipping every round; the median of the paired time ratios is robust to load that drifts.
One more child per framework alternates the bare model's eval forward (torch under
inference_mode, peftcore under no_grad) with each method's, giving each method's inference
overhead (median of paired ratios − 1).

Targets (issue #18): every train step >= 2× torch's; inference overhead at most P/T of
attention's share of the forward. A prompt method runs P more rows through every layer, so
its overhead is about P/T of the whole forward (not only attention's); prefix tuning adds P
key/value rows to attention only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import harness
from harness import MODELS, child_prepare, load_average, make_batch, print_result

METHODS = ("prompt", "p_tuning_mlp", "p_tuning_lstm", "prefix", "prefix_projection")
ADAMW = dict(lr=1e-3, weight_decay=0.01)


def make_config(lib, method, P):
    kw = dict(task_type="SEQ_CLS", num_virtual_tokens=P)
    return {
        "prompt": lambda: lib.PromptTuningConfig(**kw),
        "p_tuning_mlp": lambda: lib.PromptEncoderConfig(encoder_hidden_size=128, **kw),
        "p_tuning_lstm": lambda: lib.PromptEncoderConfig(
            encoder_reparameterization_type="LSTM", encoder_hidden_size=128, **kw),
        "prefix": lambda: lib.PrefixTuningConfig(**kw),
        "prefix_projection": lambda: lib.PrefixTuningConfig(prefix_projection=True,
                                                            encoder_hidden_size=128, **kw),
    }[method]()


def _models(args, method):
    import warnings

    import peft
    import torch
    import transformers

    import peftcore
    torch.set_num_threads(args.threads)
    peftcore.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.BertForSequenceClassification.from_pretrained(args.folder)
        ours = peftcore.AutoModelForSequenceClassification.from_pretrained(args.folder)
        if method != "bare":
            theirs = peft.get_peft_model(theirs, make_config(peft, method, args.virtual_tokens))
            ours = peftcore.get_peft_model(ours, make_config(peftcore, method, args.virtual_tokens))
    return ours, theirs


def child_train(args):
    """torch + peft and peftcore training steps alternating in one process."""
    ours, theirs = _models(args, args.mode)
    return harness.paired_train(args, ours, theirs, ADAMW)


def child_infer(args):
    """One framework's bare model and every method's, eval forwards alternating."""
    import numpy as np

    import peftcore
    ids, mask, _ = make_batch(args, MODELS[args.model]["vocab_size"])
    fns = {}
    for method in ["bare"] + args.method_list:
        ours, theirs = _models(args, method)
        if args.mode == "peftcore":
            ours.eval()

            def run(m=ours):
                with peftcore.no_grad():
                    m(ids, attention_mask=mask)
        else:
            import torch
            theirs.eval()
            t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)

            def run(m=theirs):
                with torch.inference_mode():
                    m(input_ids=t_ids, attention_mask=t_mask)
        fns[method] = run
    if args.mode == "peftcore":
        fns["attention"] = bare_attention(args, ids.shape)
    times = harness.alternate(fns, args.warmup, args.steps)
    return {m: {"overhead": float(np.median([t / b for t, b in zip(times[m], times["bare"])]) - 1),
                "seq_per_s": args.batch / statistics.median(times[m])}
            for m in fns}


def bare_attention(args, shape):
    """A callable running the attention of the bare model's eval forward alone, through
    peftcore.functional at its shapes: every layer's queries over its T keys, but the last
    layer's first query only (the classifier reads position 0, and the engine's last layer
    computes that row alone). Its time over the bare forward's is attention's share."""
    import numpy as np

    import peftcore.functional as F
    cfg = MODELS[args.model]
    B, T = shape
    C, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, T, C), dtype=np.float32) for _ in range(3))
    q0 = np.ascontiguousarray(q[:, :1])
    mask = np.ones((B, T), np.int64)

    def run():
        for _ in range(L - 1):
            F.multi_head_attention(q, k, v, H, mask)
        F.multi_head_attention(q0, k, v, H, mask)
    return run


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm", help=f"from {', '.join(MODELS)}")
    ap.add_argument("--methods", default=",".join(METHODS), help="default: %(default)s")
    ap.add_argument("--virtual-tokens", type=int, default=20)
    ap.add_argument("--steps", type=int, default=None, help="paired rounds (default 6; quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="default 1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    harness.add_isa_argument(ap)
    ap.add_argument("--quick", action="store_true", help="smoke test: batch 4 x seq 32, 1 step")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--only", choices=("train", "infer"), help="measure only one of the two")
    ap.add_argument("--child", choices=("prepare", "train", "infer"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="prompt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.steps = 1 if args.steps is None else args.steps
        args.warmup = 1 if args.warmup is None else args.warmup
        args.batch, args.seq = min(args.batch, 4), min(args.seq, 32)
    args.steps = 6 if args.steps is None else args.steps
    args.warmup = 1 if args.warmup is None else args.warmup
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.method_list if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    return args


def main():
    args = parse_args()
    if args.child:
        kinds = {"prepare": child_prepare, "train": child_train, "infer": child_infer}
        print_result(kinds[args.child](args))
        return
    extra = ["--virtual-tokens", str(args.virtual_tokens), "--methods", ",".join(args.method_list)]
    P, T = args.virtual_tokens, args.seq
    print(f"# bench/prompt.py: {args.batch}x{T}, P={P}, {args.threads} threads; "
          f"{harness.describe_isa(args)}; load average at start {load_average()}")
    results = {}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            harness.run_child(__file__, "prepare", args, model, tmp, "bare", extra)
            res = {"train": {}, "infer": {}}
            for method in args.method_list if args.only != "infer" else []:
                r = harness.run_child(__file__, "train", args, model, tmp, method, extra)
                res["train"][method] = r
                print(f"  {model} {method:18s} train step: peftcore {r['peftcore_seq_per_s']:6.2f} "
                      f"seq/s, torch+peft {r['torch_seq_per_s']:6.2f} seq/s, paired median "
                      f"{r['ratio']:.2f}x (target >= 2: {'met' if r['ratio'] >= 2 else 'MISSED'})"
                      f"  trainable {r['trainable'][0]:,} / {r['trainable'][1]:,}  load avg "
                      f"{r['load'][0]:.1f}->{r['load'][1]:.1f}, other processes "
                      f"{r['others_cores'] or 0:.2f} cores", flush=True)
            for fw in ("peftcore", "torch") if args.only != "train" else []:
                r = harness.run_child(__file__, "infer", args, model, tmp, fw, extra)
                res["infer"][fw] = r
                bound = ""
                if "attention" in r:
                    share = r["attention"]["overhead"] + 1
                    bound = (f"; attention {100 * share:.1f}% of the bare forward, P/T of it "
                             f"{100 * share * P / T:.2f}%")
                for method in args.method_list:
                    print(f"  {model} {fw:8s} inference {method:18s} overhead over the bare "
                          f"model {100 * r[method]['overhead']:+.2f}% ({r[method]['seq_per_s']:.1f} "
                          f"vs {r['bare']['seq_per_s']:.1f} seq/s; P/T = {100 * P / T:.1f}%{bound})",
                          flush=True)
            results[model] = res
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
