"""GEMM throughput: peftcore.functional.linear (forward, no bias) beside numpy.matmul, or
peftcore's own GEMM paths side by side (--paths).

    python bench/gemm.py [--threads N] [--repeats R] [--warmup W]
    python bench/gemm.py --paths [--threads 1,2] [--rounds R] [--repeats R] [--models ...]

For each shape N×OUT×IN, y = x·wᵀ with x (N, IN) and w (OUT, IN), both float32, is timed
with peftcore (BLIS) and with NumPy (x @ w.T, its own BLAS) at the same thread count.
Both allocate their output on every call. GFLOP/s = 2·N·OUT·IN / seconds, reported for the
best and the median of R timed calls after W warm-up calls.

--paths times the products of linear layers (forward y = x·Wᵀ, backward dX = dY·W and
dW = dYᵀ·X, into preallocated outputs) of MiniLM (hidden 384, intermediate 1536) and
bert-base (768 / 3072), for N = 32·128 = 4096 and 4·32 = 128 rows, through each path of
peftcore's GEMM (pc_sgemm) for the instruction set in use (PEFTCORE_ISA): `packed` (our
packing + BLIS's micro-kernel), `blis` (bli_sgemm_ex, small-matrix path off: the engine's
fallback) and `blis-sup` (its small-matrix path on, whose bits depend on how a product is
split: for information). Every round times every path on every shape, the paths' order
rotating from round to round; a path's GFLOP/s is the median over rounds of its best call
in the round, and ours/BLIS the median over rounds of the per-round ratio. --clock cpu
times calls by the process's CPU time (all its threads) instead of the wall clock: on a
shared machine it leaves out the time the process waits for a core, which the wall clock
counts (it also leaves out nothing else, so with 2 threads it measures work, not latency).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from harness import time_calls

SHAPES = [(4096, 768, 768), (4096, 3072, 768), (4096, 384, 384), (4096, 8, 768)]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# (hidden, intermediate) of the models whose linear layers --paths times
MODEL_WIDTHS = {"minilm": (384, 1536), "bert-base": (768, 3072)}
ROWS = (4096, 128)  # a 32×128 batch, a 4×32 one
PATHS = ("packed", "blis", "blis-sup")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default=None,
                    help="threads (default: all usable cores, %s; with --paths a list such as "
                         "1,2, default 1,2)" % usable_cores())
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per shape (default 10; with --paths, per round: 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per shape first")
    ap.add_argument("--paths", action="store_true",
                    help="peftcore's GEMM paths side by side on linear layers' products")
    ap.add_argument("--rounds", type=int, default=5, help="--paths: rounds (default 5)")
    ap.add_argument("--models", default=",".join(MODEL_WIDTHS),
                    help="--paths: models, comma-separated (default %(default)s)")
    ap.add_argument("--rows", default=",".join(map(str, ROWS)),
                    help="--paths: row counts N, comma-separated (default %(default)s)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="--paths: time by the wall clock or by the process's CPU time")
    ap.add_argument("--kinds", default="fwd,dX,dW",
                    help="--paths: products, comma-separated (default %(default)s)")
    args = ap.parse_args()
    try:
        args.threads = ([int(t) for t in args.threads.split(",")] if args.threads else
                        [1, 2] if args.paths else [usable_cores()])
        args.rows = [int(n) for n in args.rows.split(",")]
    except ValueError:
        ap.error("--threads and --rows take integers, comma-separated")
    args.models = args.models.split(",")
    if args.repeats is None:
        args.repeats = 3 if args.paths else 10
    if unknown := [m for m in args.models if m not in MODEL_WIDTHS]:
        ap.error(f"unknown model(s) {unknown}: expected some of {list(MODEL_WIDTHS)}")
    if (min(args.threads) < 1 or args.repeats < 1 or args.warmup < 0 or args.rounds < 1
            or min(args.rows) < 1 or (not args.paths and len(args.threads) != 1)):
        ap.error("--threads (one value without --paths), --repeats, --rounds and --rows "
                 "must be >= 1, --warmup >= 0")
    return args


def linear_products(models, rows, kinds):
    """(label, M, N, K, trans_a, trans_b) of each linear layer's three products: forward
    x·Wᵀ, dX = dY·W, dW = dYᵀ·X, for a layer IN -> OUT with N rows."""
    out = []
    for model in models:
        hidden, inter = MODEL_WIDTHS[model]
        layers = [(hidden, hidden), (hidden, inter), (inter, hidden)]  # (IN, OUT)
        for n in rows:
            for i, o in layers:
                product = {"fwd": (n, o, i, False, True), "dX": (n, i, o, False, False),
                           "dW": (o, i, n, True, False)}
                out += [(f"{model} N={n} {i}->{o} {kind}", *product[kind]) for kind in kinds]
    return out


def best_seconds(fn, warmup, repeats, clock):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def compare_paths(args) -> int:
    """Our packing + BLIS's micro-kernel against BLIS's own GEMM, side by side."""
    import numpy as np

    import peftcore
    from peftcore import _C

    info = peftcore.backend_info()
    default = _C._set_gemm_path("blis")
    paths = [p for p in PATHS if p != "packed"]
    try:
        _C._set_gemm_path("packed")
        paths.insert(0, "packed")
    except ValueError:
        print("the packed path is not available for this kernel set: BLIS only")
    print(f"peftcore {peftcore.__version__}: isa {info['isa']}, BLIS {info['blis_version']} "
          f"arch {info['blis_arch']}, default path {default!r}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.rounds} rounds x {args.repeats} timed calls (after {args.warmup} warm-up) per "
          f"path, shape and thread count; GFLOP/s ({args.clock} clock): median over rounds of "
          f"each round's best")
    rng = np.random.default_rng(0)
    kinds = args.kinds.split(",")
    if unknown := [k for k in kinds if k not in ("fwd", "dX", "dW")]:
        sys.exit(f"unknown --kinds {unknown}: expected some of fwd, dX, dW")
    products = linear_products(args.models, args.rows, kinds)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    operands = []
    for label, m, n, k, ta, tb in products:
        a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
        operands.append((a, b, np.zeros((m, n), np.float32)))
    # gflops[threads][product][path] = per-round GFLOP/s
    gflops = {t: [{p: [] for p in paths} for _ in products] for t in args.threads}
    for r in range(args.rounds):
        for t in args.threads:
            peftcore.set_num_threads(t)
            for j, ((label, m, n, k, ta, tb), (a, b, c)) in enumerate(zip(products, operands)):
                shift = (r + j) % len(paths)
                for path in paths[shift:] + paths[:shift]:
                    _C._set_gemm_path(path)
                    call = lambda: _C._gemm(a, b, c, ta, tb, 1.0, 0.0)  # noqa: E731
                    best = best_seconds(call, args.warmup, args.repeats, clock)
                    gflops[t][j][path].append(2.0 * m * n * k / best / 1e9)
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    _C._set_gemm_path(default)
    # the paths agree to rounding
    for (label, m, n, k, ta, tb), (a, b, c) in zip(products, operands):
        results = {}
        for path in paths:
            _C._set_gemm_path(path)
            _C._gemm(a, b, c, ta, tb, 1.0, 0.0)
            results[path] = c.copy()
        ref = results["blis"]
        for path, got in results.items():
            err = float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))
            assert err < 1e-4, f"{path} differs from blis at {label}: {err}"
    _C._set_gemm_path(default)

    has_packed = "packed" in paths
    header = (f"{'product':>30} {'M x N x K':>17} {'thr':>3} | {'BLIS':>6} "
              f"{'ours':>6} {'ours/BLIS':>9} | {'sup on':>6} {'ours/sup':>8}")
    print()
    print(header)
    print("-" * len(header))
    med = statistics.median
    summary = {t: [] for t in args.threads}
    for t in args.threads:
        for j, (label, m, n, k, ta, tb) in enumerate(products):
            g = gflops[t][j]
            blis, sup = med(g["blis"]), med(g["blis-sup"])
            if has_packed:
                ours = med(g["packed"])
                ratio = med([o / b for o, b in zip(g["packed"], g["blis"])])
                ratio_sup = med([o / b for o, b in zip(g["packed"], g["blis-sup"])])
                summary[t].append(ratio)
                cols = f"{ours:6.1f} {ratio:9.2f} | {sup:6.1f} {ratio_sup:8.2f}"
            else:
                cols = f"{'-':>6} {'-':>9} | {sup:6.1f} {'-':>8}"
            print(f"{label:>30} {f'{m}x{n}x{k}':>17} {t:3d} | {blis:6.1f} {cols}")
    if has_packed:
        print()
        for t in args.threads:
            r = summary[t]
            geo = float(np.exp(np.mean(np.log(r))))
            print(f"threads {t}: ours/BLIS geometric mean {geo:.3f}, min {min(r):.2f}, "
                  f"max {max(r):.2f}, ours faster on {sum(x > 1 for x in r)} of {len(r)}")
    return 0


def main() -> int:
    args = parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if args.paths:
        return compare_paths(args)
    args.threads = args.threads[0]
    # NumPy's BLAS reads its thread count when it loads: set it before importing numpy.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np

    import peftcore
    import peftcore.functional as F

    numpy_threads = "?"
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
        numpy_threads = ",".join(str(i["num_threads"]) for i in threadpool_info()
                                 if i.get("user_api") == "blas") or "?"
    except ImportError:
        numpy_threads = os.environ["OPENBLAS_NUM_THREADS"] + " (env)"
    peftcore.set_num_threads(args.threads)

    info = peftcore.backend_info()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        numpy_blas = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        numpy_blas = "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"

    print(f"peftcore {peftcore.__version__}: BLIS {info['blis_version']}, arch {info['blis_arch']}"
          f"{' (from BLIS_ARCH_TYPE)' if info['blis_arch_from_env'] else ''}, "
          f"threads {peftcore.get_num_threads()}")
    print(f"numpy {np.__version__}: {numpy_blas}, threads {numpy_threads}")
    print(f"python {platform.python_version()}, CPU {cpu}, {usable_cores()} usable cores, "
          f"simd: {info['simd']}")
    print(f"y = x·wᵀ float32, no bias; {args.warmup} warm-up + {args.repeats} timed calls; "
          f"GFLOP/s best / median")
    print()
    header = (f"{'N x OUT x IN':>18} | {'peftcore best':>13} {'median':>8} | "
              f"{'numpy best':>10} {'median':>8} | {'ratio':>5}")
    print(header)
    print("-" * len(header))

    rng = np.random.default_rng(0)
    for n, out, inp in SHAPES:
        x = rng.standard_normal((n, inp), dtype=np.float32)
        w = rng.standard_normal((out, inp), dtype=np.float32)
        flops = 2.0 * n * out * inp
        y_pc, y_np = F.linear(x, w), x @ w.T
        err = float(np.max(np.abs(y_pc - y_np)) / max(1.0, float(np.max(np.abs(y_np)))))
        assert err < 1e-4, f"results differ at {n}x{out}x{inp}: {err}"
        t_pc = time_calls(lambda: F.linear(x, w), args.warmup, args.repeats)
        t_np = time_calls(lambda: x @ w.T, args.warmup, args.repeats)
        g = lambda t: flops / t / 1e9  # noqa: E731
        pc_best, pc_med = g(min(t_pc)), g(statistics.median(t_pc))
        np_best, np_med = g(min(t_np)), g(statistics.median(t_np))
        print(f"{f'{n} x {out} x {inp}':>18} | {pc_best:13.1f} {pc_med:8.1f} | "
              f"{np_best:10.1f} {np_med:8.1f} | {pc_best / np_best:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
