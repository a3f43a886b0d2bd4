"""A per-run report: trainable parameters, train time, peak RSS, dev metrics, and inference
latency at batch 1 and 32 (median of timed eval forwards under no_grad), as JSON and as a
table."""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

from ..grad_mode import no_grad


def peak_rss_mb() -> float:
    """The process's peak resident set so far, MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def parameter_counts(model) -> dict:
    trainable = sum(p.size for _, p in model.named_parameters() if p.requires_grad)
    total = sum(p.size for _, p in model.named_parameters())
    return {"trainable_params": int(trainable), "all_params": int(total),
            "trainable_percent": round(100.0 * trainable / max(total, 1), 4)}


def inference_latency(model, encodings, batch_sizes=(1, 32), repeats: int = 5) -> dict:
    """Median seconds·1000 of one eval forward per batch size, over the first rows of
    `encodings` (repeated when there are fewer), after one warm-up; restores the mode."""
    was_training = model.training
    model.eval()
    n = len(encodings["input_ids"])
    out = {}
    for bs in batch_sizes:
        rows = np.arange(bs) % n
        width = int(encodings["attention_mask"][rows].sum(axis=1).max())
        batch = {k: v[rows, :width] for k, v in encodings.items()}
        times = []
        with no_grad():
            for i in range(repeats + 1):
                start = time.perf_counter()
                model(**batch)
                if i:  # the first is the warm-up
                    times.append(time.perf_counter() - start)
        out[f"latency_ms_batch_{bs}"] = round(1000.0 * float(np.median(times)), 3)
    model.train(was_training)
    return out


def format_table(report: dict) -> str:
    """Two columns, one row per scalar of the report (nested dicts flattened with dots)."""
    rows = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4f}" if abs(value) < 1e4 else f"{value:.1f}"))
        else:
            rows.append((prefix, str(value)))

    walk("", report)
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}}  {v}" for k, v in rows), line])


def write_report(path, report: dict):
    from ..utils.io import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(report, indent=2, default=str).encode())
