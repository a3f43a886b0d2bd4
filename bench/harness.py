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


# ------------------------------------------------------------------ shared by the bench scripts

def parse_list(text, allowed, what, ap):
    """The comma-separated items of `text`, each checked against `allowed` (ap.error if not)."""
    items = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in items if m not in allowed]
    if bad:
        ap.error(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return items


def add_run_arguments(ap, steps_help="timed steps (default 6; quick 1)",
                      warmup_help="untimed steps (default 2; quick 1)", rounds=2,
                      rounds_help="runs of each framework per mode, taking turns to go first "
                                  "(reported: the median speed, the largest RSS; default "
                                  "%(default)s, quick 1)",
                      quick_help="smoke test: batch 4 x seq 32, 1 + 1 steps, one round"):
    """The options every side-by-side bench takes: --steps --warmup --batch --seq --threads
    --isa --rounds --quick (steps and warmup default to None: see finish_run_arguments)."""
    ap.add_argument("--steps", type=int, default=None, help=steps_help)
    ap.add_argument("--warmup", type=int, default=None, help=warmup_help)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    add_isa_argument(ap)
    ap.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    ap.add_argument("--quick", action="store_true", help=quick_help)


def add_child_arguments(ap, kinds, modes, mode="bare"):
    """The options only the parent passes to a child (hidden from --help)."""
    import argparse
    ap.add_argument("--child", choices=tuple(kinds), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=modes, default=mode, help=argparse.SUPPRESS)


def finish_run_arguments(args, ap, steps=6, warmup=2, quick_steps=1, quick_warmup=1):
    """--quick's settings (batch 4 x seq 32 at most, one round, quick_steps + quick_warmup
    unless given), the steps/warmup defaults, and the ranges checked (ap.error)."""
    if args.quick:
        args.steps = quick_steps if args.steps is None else args.steps
        args.warmup = quick_warmup if args.warmup is None else args.warmup
        args.batch, args.seq = min(args.batch, 4), min(args.seq, 32)
        args.rounds = 1
    args.steps = steps if args.steps is None else args.steps
    args.warmup = warmup if args.warmup is None else args.warmup
    if (args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 2 or args.threads < 1
            or args.rounds < 1):
        ap.error("--steps, --batch, --threads, --rounds must be >= 1, --seq >= 2, --warmup >= 0")
    return args


def torch_batch(args, vocab_size):
    """make_batch as torch tensors."""
    import torch
    return tuple(torch.from_numpy(a) for a in make_batch(args, vocab_size))


def count_parameters(info, params, trainable, size):
    """info['trainable'] / info['total']: elements (size(p)) of the trainable / all params."""
    info["trainable"] = sum(size(p) for p in trainable)
    info["total"] = sum(size(p) for p in params)


def torch_run(args, model, batch, info, train, adamw, all_trainable=False):
    """The torch child's measurement: parameter counts into info, RSS after load, then
    run_steps of an AdamW train step (forward with labels, backward, step, zero_grad; train
    mode) when `train`, else of an eval inference forward (inference_mode, row 0's logits).
    all_trainable: assert every parameter trains (a full fine-tune)."""
    import torch
    ids, mask, labels = batch
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    count_parameters(info, params, trainable, lambda p: p.numel())
    load_mb = rss_mb()
    if train:
        if all_trainable:
            assert info["trainable"] == info["total"], "full fine-tune: some parameters frozen"
        opt = torch.optim.AdamW(trainable, **adamw)
        model.train()
        step = train_step(lambda: model(input_ids=ids, attention_mask=mask, labels=labels),
                          lambda out: out.loss.backward(), opt)
    else:
        model.eval()

        def step(phases):
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).logits[0].tolist()
    return run_steps(args, step, load_mb, info)


def peftcore_run(args, model, batch, info, train, adamw, all_trainable=False):
    """torch_run's peftcore side: the same counts, AdamW step or inference forward (under
    peftcore.no_grad, as torch.inference_mode)."""
    import numpy as np

    import peftcore
    ids, mask, labels = batch
    named = list(model.named_parameters())
    trainable = [p for _, p in named if p.requires_grad]
    count_parameters(info, [p for _, p in named], trainable, lambda p: p.size)
    load_mb = rss_mb()
    if train:
        if all_trainable:
            assert info["trainable"] == info["total"], "full fine-tune: some parameters frozen"
        opt = peftcore.optim.AdamW(trainable, **adamw)
        model.train()
        step = train_step(lambda: model(ids, attention_mask=mask, labels=labels),
                          lambda out: model.backward(), opt)
    else:
        model.eval()

        def step(phases):
            with peftcore.no_grad():  # as torch.inference_mode on the other side
                return np.asarray(model(ids, attention_mask=mask).logits)[0].tolist()
    return run_steps(args, step, load_mb, info)


def torch_merge_check(model, batch, rows, set_values):
    """set_values(model) (under no_grad), then the eval logits of the batch's first `rows`
    rows before and after merge_and_unload(): (merged model, max |before - after|)."""
    import torch
    ids, mask = batch[0][:rows], batch[1][:rows]
    with torch.no_grad():
        set_values(model)
    model.eval()
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask).logits
    model = model.merge_and_unload()
    with torch.inference_mode():
        after = model(input_ids=ids, attention_mask=mask).logits
    return model, float((before - after).abs().max())


def peftcore_merge_check(model, batch, rows, set_values):
    """torch_merge_check's peftcore side (forwards under peftcore.no_grad)."""
    import numpy as np

    import peftcore
    ids, mask = batch[0][:rows], batch[1][:rows]
    set_values(model)
    model.eval()
    with peftcore.no_grad():  # as torch.inference_mode: no activations kept for a backward
        before = np.array(model(ids, attention_mask=mask).logits)
    model = model.merge_and_unload()
    model.eval()
    with peftcore.no_grad():
        after = np.array(model(ids, attention_mask=mask).logits)
    return model, float(np.abs(before - after).max())


def round_order(frameworks, rounds):
    """Each framework once a round, taking turns to go first (the machine's speed drifts
    over minutes, so neither side is favoured)."""
    return [fw for rnd in range(rounds)
            for fw in (frameworks if rnd % 2 == 0 else frameworks[::-1])]


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def describe_run(fw, mode, r):
    """One child's result as a progress line."""
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


def describe_interleaved(r):
    """The merged-vs-bare interleaved child's result as a progress line."""
    return (f"    merged vs bare, one process, alternating: merged "
            f"{r['merged_seq_per_s']:.2f} / bare {r['bare_seq_per_s']:.2f} seq/s, "
            f"median paired ratio {r['ratio']:.3f}  load avg {r['load'][0]:.1f}->"
            f"{r['load'][1]:.1f}, other processes used "
            f"{fmt(r.get('others_cores'), '.2f')} cores")


def warn_if_busy(limit=0.5):
    """Print a warning when the load average before the start exceeds `limit`."""
    busy = os.getloadavg()[0]
    if busy > limit:
        print(f"WARNING: load average {busy:.2f} before the start: other processes compete for "
              f"the cores and the timings below are unreliable", flush=True)


def print_table(header, rows):
    """A Markdown table: header (column names) and rows (lists of cells, already text)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * len(header)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


SPEED_HEADER = ("model", "mode", "peftcore seq/s", "torch seq/s", "ratio (pc/torch)",
                "peftcore RSS MB", "torch RSS MB", "RSS ratio (pc/torch)")


def speed_row(model, label, p, t, rss_ratio=True):
    """SPEED_HEADER's cells for peftcore's (p) and torch's (t) combined results ('-' for a
    side not run); rss_ratio=False drops the last column."""
    ratio = p["seq_per_s"] / t["seq_per_s"] if p and t else None
    rss = p["peak_mb"] / t["peak_mb"] if p and t else None
    row = [model, label, fmt(p and p["seq_per_s"], ".2f"), fmt(t and t["seq_per_s"], ".2f"),
           fmt(ratio, ".2f"), fmt(p and p["peak_mb"], ".0f"), fmt(t and t["peak_mb"], ".0f")]
    return row + [fmt(rss, ".2f")] if rss_ratio else row


def print_others(results):
    """The range of cores other processes kept busy over `results` (child results), with a
    warning when any run saw more than 0.2."""
    others = [r["others_cores"] for r in results if r.get("others_cores") is not None]
    if others:
        print(f"other processes used {min(others):.2f}..{max(others):.2f} cores (mean "
              f"{statistics.mean(others):.2f}) of {os.cpu_count()} during the runs"
              + ("; timings are unreliable" if max(others) > 0.2 else ""))


def write_json(path, args, **parts):
    """All results to `path` with the arguments (not the parsed *_list ones)."""
    Path(path).write_text(json.dumps(
        {"args": {k: v for k, v in vars(args).items() if not k.endswith("_list")}, **parts},
        indent=1))


def alternate(fns, warmup, steps):
    """{name: seconds of each timed call} of the callables fns ({name: fn}) taking turns:
    `warmup` untimed rounds, then `steps` rounds calling each once, the order flipping every
    round (load that drifts then favours none of them)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    items = list(fns.items())
    for i in range(steps):
        for name, fn in (items if i % 2 == 0 else items[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_train(args, ours, theirs, adamw):
    """peftcore's model `ours` and torch's `theirs` (each with its trainable parameters set)
    taking turns at a training step (forward with labels, backward, AdamW step, zero_grad; train
    mode) on the same batch in one process: `ratio`, the median over rounds of torch's time over
    peftcore's (peftcore's speed-up), its quartiles, each side's seq/s and trainable count. The
    paired ratio is robust to load and CPU steal that drift between separate processes."""
    import numpy as np
    import torch

    import peftcore
    ids, mask, labels = make_batch(args, MODELS[args.model]["vocab_size"])
    t_ids, t_mask, t_labels = (torch.from_numpy(a) for a in (ids, mask, labels))
    ours_trainable = [p for p in ours.parameters() if p.requires_grad]
    theirs_trainable = [p for p in theirs.parameters() if p.requires_grad]
    ours_opt = peftcore.optim.AdamW(ours_trainable, **adamw)
    theirs_opt = torch.optim.AdamW(theirs_trainable, **adamw)
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

    times = alternate({"peftcore": step_ours, "torch": step_theirs}, args.warmup, args.steps)
    pairs = [t / o for t, o in zip(times["torch"], times["peftcore"])]
    return {"times": times, "ratio": float(np.median(pairs)),
            "quartiles": [float(q) for q in np.percentile(pairs, [25, 75])],
            "peftcore_seq_per_s": args.batch / statistics.median(times["peftcore"]),
            "torch_seq_per_s": args.batch / statistics.median(times["torch"]),
            "trainable": [int(sum(p.size for p in ours_trainable)),
                          int(sum(p.numel() for p in theirs_trainable))]}


def interleaved_inference(args, bare, other, name="merged"):
    """peftcore inference of a bare and an `other` model in one process (eval, no_grad),
    forwards alternating: each one's times and seq/s, and `ratio`, the median over rounds of
    bare time / other time (other's seq/s over bare's), robust to load that drifts between
    processes."""
    import peftcore
    bare.eval()
    other.eval()
    ids, mask, _ = make_batch(args, MODELS[args.model]["vocab_size"])
    with peftcore.no_grad():  # inference only, as torch.inference_mode
        times = alternate({"bare": lambda: bare(ids, attention_mask=mask),
                           name: lambda: other(ids, attention_mask=mask)},
                          args.warmup, args.steps)
    pairs = [b / m for b, m in zip(times["bare"], times[name])]
    return {"times": times, "ratio": statistics.median(pairs),
            "bare_seq_per_s": args.batch / statistics.median(times["bare"]),
            f"{name}_seq_per_s": args.batch / statistics.median(times[name])}


def torch_model(args, peft_config=None, peft_kwargs=None):
    """(model, info): transformers' BertForSequenceClassification from args.folder with
    args.threads torch threads, wrapped by HF PEFT's `peft_config` class (its name, e.g.
    "LoraConfig", with peft_kwargs) when given; info names the versions and attention."""
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    model = transformers.BertForSequenceClassification.from_pretrained(args.folder)
    info = {"attn": model.config._attn_implementation, "torch": torch.__version__,
            "transformers": transformers.__version__}
    if peft_config:
        import peft
        info["peft"] = peft.__version__
        model = peft.get_peft_model(model, getattr(peft, peft_config)(**(peft_kwargs or {})))
    return model, info


def peftcore_model(args):
    """peftcore's AutoModelForSequenceClassification from args.folder; any warning while
    loading is an error (the saved head must load too)."""
    import warnings

    import peftcore
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return peftcore.AutoModelForSequenceClassification.from_pretrained(args.folder)


def print_inference_checks(model, modes, interleaved):
    """The summary lines of a model's merged-vs-bare checks: the interleaved child's paired
    ratio (target >= 0.97) and, per inference mode, the largest |peftcore - torch| logit."""
    if model in interleaved:
        ratio = interleaved[model]["ratio"]
        print(f"{model}: peftcore merged / bare, interleaved in one process (median of paired "
              f"steps) = {ratio:.3f} (target >= 0.97): {'met' if ratio >= 0.97 else 'MISSED'}")
    for mode in ("merged", "bare"):
        if "logit_diff" in modes.get(mode, {}):
            print(f"{model}: {mode} logits, max |peftcore - torch| over row 0 = "
                  f"{modes[mode]['logit_diff']:.1e}")
