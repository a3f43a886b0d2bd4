"""Where peftcore's encoder training step spends its time, per op category.

    python bench/profile_encoder.py [--model minilm|bert-base] [--batch 32] [--seq 128]
                                    [--threads 2] [--repeats 3] [--quick]

1. The engine's own step, timed as a whole: train-mode forward with labels, then backward
   (full fine-tune), plus an eval-mode forward for reference.
2. Each op of that step run alone through peftcore.functional at the layer's shapes
   (N = batch·seq rows, hidden C, intermediate I, H heads): the four linears' GEMMs
   (forward, backward dX, backward dW+db), attention forward/backward (with its probability
   dropout), LayerNorm, GELU, dropout, the residual add and the embeddings. Each op's time
   × how often one step runs it gives its share of the step.

Caveats: functional ops allocate their outputs on every call (the engine reuses one arena),
so big elementwise ops include page-fault cost the engine doesn't pay; the engine splits
the fused QKV weight gradient into three GEMMs. The "sum of ops" row is therefore an
estimate of the step, to compare with the measured one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import peftcore  # noqa: E402
import peftcore.functional as F  # noqa: E402
from harness import MODELS, median_time  # noqa: E402

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    ap.add_argument("--quick", action="store_true", help="smoke test: batch 4 × seq 32, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seq, args.repeats = min(args.batch, 4), min(args.seq, 32), 1
    if min(args.batch, args.seq, args.threads, args.repeats) < 1:
        ap.error("--batch, --seq, --threads and --repeats must be >= 1")
    return args


def main():
    args = parse_args()
    peftcore.set_num_threads(args.threads)
    shapes = MODELS[args.model]
    B, T = args.batch, args.seq
    N, C, I = B * T, shapes["hidden_size"], shapes["intermediate_size"]
    H, L, V = shapes["num_attention_heads"], shapes["num_hidden_layers"], shapes["vocab_size"]
    p_drop = 0.1
    print(f"peftcore encoder step profile: {args.model} (C={C}, I={I}, H={H}, L={L}), "
          f"batch {B} x seq {T} (N={N} rows), {args.threads} threads, median of "
          f"{args.repeats}; {peftcore.backend_info()['blis_arch']} kernels\n")

    # ---------------------------------------------------------------- the whole step
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(model_type="bert", num_labels=2, **shapes), seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, V, size=(B, T))
    mask = np.ones_like(ids)
    labels = rng.integers(0, 2, size=B)

    model.train()
    fwd_times, bwd_times = [], []
    for i in range(args.repeats + 1):
        model.zero_grad()
        t0 = time.perf_counter()
        model(ids, attention_mask=mask, labels=labels)
        t1 = time.perf_counter()
        model.backward()
        t2 = time.perf_counter()
        if i:  # the first step allocates the arena and gradients
            fwd_times.append(t1 - t0)
            bwd_times.append(t2 - t1)
    fwd, bwd = statistics.median(fwd_times), statistics.median(bwd_times)
    model.eval()
    infer = median_time(lambda: model(ids, attention_mask=mask), args.repeats)
    step = fwd + bwd
    print(f"measured: train forward {fwd * 1e3:.1f} ms + backward {bwd * 1e3:.1f} ms = step "
          f"{step * 1e3:.1f} ms ({B / step:.2f} seq/s); eval forward {infer * 1e3:.1f} ms "
          f"({B / infer:.2f} seq/s)\n")
    model = None  # free the engine's buffers before the ops run alone

    # ---------------------------------------------------------------- ops alone
    def f32(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    x_c, x_i = f32(N, C), f32(N, I)
    rows = []  # (category, op, shape, seconds per call, calls per step, flops per call)

    def add(category, op, shape, fn, calls, flops=0.0):
        rows.append((category, op, shape, median_time(fn, args.repeats), calls, flops))

    linears = [("qkv", C, 3 * C, x_c), ("attn.out", C, C, x_c), ("intermediate", C, I, x_c),
               ("output", I, C, x_i)]
    for name, fin, fout, x in linears:
        w, b, dy = f32(fout, fin, scale=0.02), f32(fout), f32(N, fout)
        flops = 2.0 * N * fin * fout
        add("GEMM fwd", name, f"{N}x{fin} -> {fout}", lambda: F.linear(x, w, b), L, flops)
        t_dx = median_time(lambda: F.linear_backward(dy, x, w, False, False), args.repeats)
        t_all = median_time(lambda: F.linear_backward(dy, x, w, True, True), args.repeats)
        rows.append(("GEMM bwd dX", name, f"{N}x{fout} -> {fin}", t_dx, L, flops))
        rows.append(("GEMM bwd dW+db", name, f"{fout}x{fin} over {N}", max(t_all - t_dx, 0.0),
                     L, flops))

    q, k, v = f32(B, T, C), f32(B, T, C), f32(B, T, C)
    att_flops = 4.0 * B * H * T * T * (C // H)
    add("attention", "fwd (+prob dropout)", f"{B}x{H} heads, {T}x{T}",
        lambda: F.multi_head_attention(q, k, v, H, mask, dropout_p=p_drop, seed=1), L,
        att_flops)
    out, probs = F.multi_head_attention(q, k, v, H, mask, dropout_p=p_drop, seed=1,
                                        return_probs=True)
    add("attention", "bwd", f"{B}x{H} heads, {T}x{T}",
        lambda: F.multi_head_attention_backward(out, probs, q, k, v, H, dropout_p=p_drop,
                                                seed=1), L, 2 * att_flops)

    g, beta = 1 + f32(C, scale=0.1), f32(C, scale=0.1)
    ln_out, mean, rstd = F.layer_norm(x_c, C, g, beta, 1e-12, return_stats=True)
    add("layernorm", "fwd", f"{N}x{C}", lambda: F.layer_norm(x_c, C, g, beta, 1e-12,
                                                             return_stats=True), 2 * L + 1)
    add("layernorm", "bwd", f"{N}x{C}",
        lambda: F.layer_norm_backward(x_c, x_c, g, mean=mean, rstd=rstd), 2 * L + 1)
    add("gelu", "fwd", f"{N}x{I}", lambda: F.gelu(x_i), L)
    add("gelu", "bwd", f"{N}x{I}", lambda: F.gelu_backward(x_i, x_i), L)
    add("dropout", "fwd", f"{N}x{C}", lambda: F.dropout(x_c, p_drop, True, 3), 2 * L + 1)
    add("dropout", "bwd", f"{N}x{C}", lambda: F.dropout_backward(x_c, p_drop, True, 3),
        2 * L + 1)
    add("residual add", "fwd", f"{N}x{C}", lambda: F.add(x_c, x_c), 2 * L)
    word = f32(V, C, scale=0.02)
    pos_ids = np.broadcast_to(np.arange(T), (B, T)).copy()
    add("embedding", "fwd (word+pos+type)", f"{N}x{C}", lambda: F.embedding(ids, word), 3)
    dy_emb = f32(B, T, C)
    add("embedding", "bwd word", f"{V}x{C}", lambda: F.embedding_backward(dy_emb, ids, V), 1)
    add("embedding", "bwd pos+type", f"512x{C}",
        lambda: F.embedding_backward(dy_emb, pos_ids, 512), 2)

    # ---------------------------------------------------------------- report
    total = sum(t * calls for _, _, _, t, calls, _ in rows)
    print("| category | op | shape | ms/call | calls/step | ms/step | % of measured step "
          "| GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for cat, op, shape, t, calls, flops in rows:
        gflops = f"{flops / t / 1e9:.0f}" if flops and t > 0 else ""
        print(f"| {cat} | {op} | {shape} | {t * 1e3:.2f} | {calls} | {t * calls * 1e3:.1f} | "
              f"{100 * t * calls / step:.1f} | {gflops} |")
    print()
    by_cat = {}
    for cat, _, _, t, calls, _ in rows:
        by_cat[cat] = by_cat.get(cat, 0.0) + t * calls
    print("| category | ms/step | % of measured step |")
    print("|---|---|---|")
    for cat, t in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"| {cat} | {t * 1e3:.1f} | {100 * t / step:.1f} |")
    print(f"| **sum of ops** | {total * 1e3:.1f} | {100 * total / step:.1f} |")
    print(f"| **measured step** (fwd {fwd * 1e3:.0f} + bwd {bwd * 1e3:.0f}) | {step * 1e3:.1f} "
          f"| 100.0 |")
    gemm = sum(v for k, v in by_cat.items() if k.startswith("GEMM"))
    flops_gemm = sum(f * c for cat, _, _, _, c, f in rows if cat.startswith("GEMM"))
    print(f"\nGEMMs: {flops_gemm / 1e9:.0f} GFLOP per step at {flops_gemm / gemm / 1e9:.0f} "
          f"GFLOP/s alone; whole step {(flops_gemm + L * 3 * att_flops) / step / 1e9:.0f} "
          f"GFLOP/s (GEMM + attention flops / measured step time)")


if __name__ == "__main__":
    main()
