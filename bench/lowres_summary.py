"""UniPELT's low-resource question on a `peftcore sweep` database: per K, each method's
average over the tasks every method finished (3 seeds each), UniPELT against the best single
method with the seed spread of the average, and the mean gates per task.

    python3 bench/lowres_summary.py bench/lowres_glue.yaml     # or its .sweep.db
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peftcore import sweep  # noqa: E402

UNIONS = ("UniPELT(AP)", "UniPELT(APL)")
PARTS = ("LoRA", "Pfeiffer adapter", "prefix tuning")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="the sweep file or its .sweep.db")
    args = ap.parse_args()
    rows = [r for r in sweep.load(args.sweep, as_frame=False) if r["status"] == "done"]
    by = defaultdict(dict)          # (k, label) -> {task: {seed: score}}
    for r in rows:
        by[(r["k"], r["label"])].setdefault(r["task"], {})[r["seed"]] = r["score"]
    ks = sorted({k for k, _ in by}, key=lambda k: (k == "all", int(k) if k != "all" else 0))
    for k in ks:
        labels = [lab for kk, lab in by if kk == k]
        seeds = sorted({s for lab in labels for t in by[(k, lab)].values() for s in t})
        tasks = sorted(set.intersection(*[{t for t, s in by[(k, lab)].items()
                                           if len(s) == len(seeds)} for lab in labels]))
        if not tasks:
            print(f"K = {k}: no task finished by every method yet")
            continue
        print(f"\nK = {k}: average over {', '.join(tasks)} ({len(seeds)} seeds; ± is the std "
              f"over seeds of the per-seed average)")
        avg = {}
        for lab in labels:
            per_seed = [np.mean([by[(k, lab)][t][s] for t in tasks]) for s in seeds]
            avg[lab] = (float(np.mean(per_seed)), float(np.std(per_seed, ddof=1)), per_seed)
        for lab, (m, sd, _) in sorted(avg.items(), key=lambda kv: -kv[1][0]):
            print(f"  {lab:<20} {m:6.2f} ± {sd:4.2f}")
        singles = {lab: v for lab, v in avg.items() if lab not in UNIONS}
        best = max(singles, key=lambda lab: singles[lab][0]) if singles else None
        parts = {lab: v for lab, v in avg.items() if lab in PARTS}
        best_part = max(parts, key=lambda lab: parts[lab][0]) if parts else None
        for union in UNIONS:
            if union not in avg or best is None:
                continue
            diff = [u - b for u, b in zip(avg[union][2], singles[best][2])]
            print(f"  {union} - best single ({best}): {np.mean(diff):+.2f} "
                  f"(per seed {', '.join(f'{d:+.1f}' for d in diff)})")
            if best_part is not None and best_part != best:
                diff = [u - b for u, b in zip(avg[union][2], parts[best_part][2])]
                print(f"  {union} - best of its parts ({best_part}): {np.mean(diff):+.2f}")
    gated = [r for r in rows if r["gates"]]
    if gated:
        print("\nmean gates over layers and seeds (per task, K):")
        acc = defaultdict(list)
        for r in gated:
            for layer in r["gates"].values():
                for sub, g in layer.items():
                    acc[(r["label"], r["k"], r["task"], sub)].append(g)
        for key in sorted({key[:3] for key in acc}, key=lambda x: (x[0], int(x[1]) if
                                                                   x[1] != "all" else 1e9, x[2])):
            subs = sorted(s for (*kk, s) in acc if tuple(kk) == key)
            print(f"  {key[0]:<13} K={key[1]:<5} {key[2]:<6} " +
                  "  ".join(f"{s} {np.mean(acc[key + (s,)]):.2f}" for s in subs))


if __name__ == "__main__":
    main()
