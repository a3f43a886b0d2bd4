"""GEMM throughput: peftcore.functional.linear (forward, no bias) beside numpy.matmul.

    python bench/gemm.py [--threads N] [--repeats R] [--warmup W]

For each shape N×OUT×IN, y = x·wᵀ with x (N, IN) and w (OUT, IN), both float32, is timed
with peftcore (BLIS) and with NumPy (x @ w.T, its own BLAS) at the same thread count.
Both allocate their output on every call. GFLOP/s = 2·N·OUT·IN / seconds, reported for the
best and the median of R timed calls after W warm-up calls.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

from harness import time_calls

SHAPES = [(4096, 768, 768), (4096, 3072, 768), (4096, 384, 384), (4096, 8, 768)]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=usable_cores(),
                    help="threads for both libraries (default: all usable cores, %(default)s)")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per shape")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per shape first")
    args = ap.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("--threads and --repeats must be >= 1, --warmup >= 0")
    return args


def main() -> int:
    args = parse_args()
    # NumPy's BLAS reads its thread count when it loads: set it before importing numpy.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
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
