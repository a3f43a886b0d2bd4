"""What the side-by-side benches share: model shapes, the batch, timing, memory readings and
running one measurement in its own child process.

Each bench script runs itself again as a child (``--child KIND ...``) for every framework ×
model × mode, so every peak RSS is that run's alone; the child prints one ``RESULT {json}``
line that `run_child` reads back.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    # all-MiniLM-L6-v2's shapes
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, vocab_size=30522),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, vocab_size=30522),
}


# ------------------------------------------------------------------ child side

def rss_mb() -> float:
    """Current resident set size in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def make_batch(args, vocab_size):
    """(ids, mask, labels): args.batch × args.seq random tokens framed by [CLS] … [SEP], no
    padding, random binary labels; the same for every framework."""
    import numpy as np
    rng = np.random.default_rng(1234)
    ids = rng.integers(1000, vocab_size, size=(args.batch, args.seq), dtype=np.int64)
    ids[:, 0] = 101   # [CLS]
    ids[:, -1] = 102  # [SEP]
    mask = np.ones_like(ids)
    labels = rng.integers(0, 2, size=args.batch, dtype=np.int64)
    return ids, mask, labels


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    return statistics.median(time_calls(fn, warmup, repeats))


def train_step(forward, backward, optimizer=None):
    """A timed training step for run_steps: forward() → output with .loss, backward(output),
    then the optimizer's step and zero_grad; records (forward, backward, optimizer) seconds."""
    def step(phases):
        t0 = time.perf_counter()
        out = forward()
        t1 = time.perf_counter()
        backward(out)
        t2 = time.perf_counter()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
        t3 = time.perf_counter()
        phases.append((t1 - t0, t2 - t1, t3 - t2))
        return float(out.loss)
    return step


def run_steps(args, step, load_mb, info):
    """args.warmup untimed then args.steps timed calls of step(phases); the median step, its
    phases (when the step records them) and the peak RSS."""
    import math
    phases = []
    for _ in range(args.warmup):
        step(phases)
    phases.clear()
    times, value = [], None
    for _ in range(args.steps):
        t0 = time.perf_counter()
        value = step(phases)
        times.append(time.perf_counter() - t0)
    flat = value if isinstance(value, list) else [value]
    assert all(math.isfinite(v) for v in flat), f"non-finite output {value}"
    median = statistics.median(times)
    result = {"seq_per_s": args.batch / median, "step_s": median, "times": times,
              "load_mb": load_mb, "peak_mb": peak_rss_mb(), "value": value, "info": info}
    if phases:  # median forward / backward / optimizer times
        result["phases"] = [statistics.median(p[i] for p in phases) for i in range(3)]
    return result


def print_result(result) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ parent side

def cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (all cores, /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --isa: both frameworks held to one instruction set, so an AVX-512 machine measures what an
# AVX2 (or SSE-only) CPU runs: peftcore through PEFTCORE_ISA, torch through its own kernels'
# capability (ATEN), MKL's GEMMs and oneDNN's
ISA_ENV = {
    "avx512": dict(PEFTCORE_ISA="avx512", ATEN_CPU_CAPABILITY="avx512",
                   MKL_ENABLE_INSTRUCTIONS="AVX512", ONEDNN_MAX_CPU_ISA="AVX512_CORE"),
    "avx2": dict(PEFTCORE_ISA="avx2", ATEN_CPU_CAPABILITY="avx2",
                 MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2"),
    "baseline": dict(PEFTCORE_ISA="baseline", ATEN_CPU_CAPABILITY="default",
                     MKL_ENABLE_INSTRUCTIONS="SSE4_2", ONEDNN_MAX_CPU_ISA="SSE41"),
}


def add_isa_argument(ap) -> None:
    ap.add_argument("--isa", choices=sorted(ISA_ENV), default=None,
                    help="hold both frameworks to this instruction set (default: the best "
                         "each finds)")


def describe_isa(args) -> str:
    """One line for a bench's header: what the frameworks run on."""
    isa = getattr(args, "isa", None)
    if not isa:
        return "instruction set: each framework's best for this CPU"
    return ("instruction set: " + isa + " for both (" +
            ", ".join(f"{k}={v}" for k, v in ISA_ENV[isa].items()) + ")")


def run_child(script, kind, args, model, folder, mode, extra=(), repo=None):
    """Run `script --child kind` for one model × mode in its own process; its RESULT plus
    the load average before/after, wall time and how many cores other processes kept busy.
    repo: the checkout whose peftcore the child imports (default: this one)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo or REPO),
                                                        os.environ.get("PYTHONPATH")])))
    if getattr(args, "isa", None):
        env.update(ISA_ENV[args.isa])
    cmd = [sys.executable, str(script), "--child", kind, "--model", model, "--folder", str(folder),
           "--mode", mode, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads),
           *extra]
    load_before = os.getloadavg()[0]
    busy0, own0 = cpu_busy_seconds(), children_cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    busy1, own1 = cpu_busy_seconds(), children_cpu_seconds()
    load_after = os.getloadavg()[0]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child {kind} {model} {mode} failed (exit {proc.returncode}):\n"
                 f"{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["load"] = (load_before, load_after)
    result["wall_s"] = wall
    # cores kept busy by everything else on the machine while this child ran (our own
    # parent is idle, waiting): 0 on a quiet machine
    result["others_cores"] = (None if busy0 is None else
                              max(0.0, (busy1 - busy0 - (own1 - own0)) / max(wall, 1e-9)))
    return result


def combine_rounds(runs):
    """One child result from several runs of the same measurement: the median speed (and
    its step time), the largest peak and after-load RSS, every run's speed under
    'rounds'."""
    import statistics
    speeds = [r["seq_per_s"] for r in runs]
    mid = sorted(runs, key=lambda r: r["seq_per_s"])[(len(runs) - 1) // 2]
    out = dict(mid)
    out["seq_per_s"] = statistics.median(speeds)
    out["step_s"] = statistics.median(r["step_s"] for r in runs)
    out["peak_mb"] = max(r["peak_mb"] for r in runs)
    out["load_mb"] = max(r["load_mb"] for r in runs)
    out["rounds"] = speeds
    return out


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def child_prepare(args):
    """Build transformers' BertForSequenceClassification (2 labels) for args.model with a
    fixed seed and save it to args.folder, for both frameworks to load."""
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.BertConfig(num_labels=2, **MODELS[args.model])
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(args.folder)
    return {"params": sum(p.numel() for p in model.parameters())}
