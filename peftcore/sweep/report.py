"""Reports of a sweep's database: tables (Markdown and CSV: method × task, mean ± std over
seeds, with the GLUE average, per K) and PNG plots (metric vs K per method, learning curves,
score vs train time, score vs trainable parameters), and for gated methods (UniPELT) a heat
map of the mean gates, layers × submodules, a panel per task, per method and K.

Scores are each task's GLUE score × 100 (the mean of its official metrics: F1 and accuracy
for MRPC/QQP, Matthews for CoLA, ...). The "GLUE avg" column is the mean of a row's task
scores, over the tasks of the sweep (all nine only when the sweep has them all). Standard
deviations are over seeds (sample std, n-1; 0 for one seed).
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from .spec import SweepError
from .store import Store

AVG = "GLUE avg"


def _db_of(path) -> Path:
    path = Path(path)
    if path.suffix == ".db":
        return path
    return path.with_name(path.stem + ".sweep.db")


def _k_order(k):
    return (1, 0) if str(k) == "all" else (0, int(k))


def trials(path, status=None) -> list[dict]:
    """Every trial row of a sweep (its file or its .sweep.db) as plain dicts."""
    store = Store(_db_of(path), create=False)
    try:
        rows = store.trials()
    finally:
        store.close()
    return [r for r in rows if status is None or r["status"] == status]


def load(path, as_frame: bool | None = None):
    """The sweep's trials, one row each: id, task, k, seed, method, label, status, score,
    each metric (as metric columns), train_seconds, wall_seconds, peak_rss_mb,
    trainable_params, all_params, steps, n_train, n_dev, eval_history, losses, options,
    training, error, selection_metrics (the checkpoint-choosing dev set's, when the score is
    a test set's: few_shot_dev "rest") and gates ({layer: {submodule: mean gate}} of a gated
    method, else None). A pandas DataFrame when pandas is installed (unless
    as_frame=False), else a list of dicts."""
    rows = []
    for r in trials(path):
        row = {key: r[key] for key in ("id", "task", "k", "seed", "method", "label", "status",
                                       "score", "train_seconds", "wall_seconds", "peak_rss_mb",
                                       "trainable_params", "all_params", "steps", "n_train",
                                       "n_dev", "threads", "attempts", "resumed_from", "error")}
        row["score"] = None if r["score"] is None else 100.0 * r["score"]
        for name, value in (r["metrics"] or {}).items():
            row[name] = value
        row["eval_history"] = r["eval_history"] or []
        row["losses"] = r["losses"] or []
        row["options"] = r["config"]["options"]
        row["training"] = r["config"]["training"]
        extra = r.get("extra") or {}
        row["selection_metrics"] = extra.get("selection_metrics")
        row["gates"] = extra.get("gates")
        rows.append(row)
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise
        return rows
    return pd.DataFrame(rows)


def _mean_std(values):
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summary(path) -> list[dict]:
    """The table's numbers: one dict per (K, label, task) — and (K, label, GLUE avg) — with
    method, metric, mean, std, n (seeds), over finished trials. Scores × 100; each official
    metric × 100 too."""
    done = trials(path, "done")
    return _summary(done)


def _summary(done) -> list[dict]:
    from ..train.glue import GLUE_TASKS, get_task

    groups = {}
    for r in done:
        groups.setdefault((r["k"], r["label"], r["method"], r["task"]), []).append(r)
    task_order = [t for t in GLUE_TASKS if any(r["task"] == t for r in done)]
    out = []
    for (k, label, method, task), rs in sorted(
            groups.items(), key=lambda kv: (_k_order(kv[0][0]), _first(done, kv[0][1]),
                                            task_order.index(kv[0][3]))):
        mean, std = _mean_std([100.0 * r["score"] for r in rs])
        out.append({"k": k, "label": label, "method": method, "task": task, "metric": "score",
                    "mean": mean, "std": std, "n": len(rs)})
        for metric in get_task(task).metrics:
            if metric in rs[0]["metrics"]:
                m, s = _mean_std([100.0 * r["metrics"][metric] for r in rs])
                out.append({"k": k, "label": label, "method": method, "task": task,
                            "metric": metric, "mean": m, "std": s, "n": len(rs)})
    # the GLUE average of each row that has every task of the sweep
    rows = {}
    for e in out:
        if e["metric"] == "score":
            rows.setdefault((e["k"], e["label"], e["method"]), {})[e["task"]] = e
    averages = []
    for (k, label, method), by_task in rows.items():
        if len(by_task) == len(task_order):
            seeds = min(e["n"] for e in by_task.values())
            averages.append({"k": k, "label": label, "method": method, "task": AVG,
                             "metric": "score",
                             "mean": float(np.mean([e["mean"] for e in by_task.values()])),
                             "std": float("nan"), "n": seeds})
    return out + averages


def _first(done, label):
    return min(r["position"] for r in done if r["label"] == label)


def markdown_table(entries, tasks) -> str:
    """One table per K: a row per method (label), a column per task (score mean ± std) and
    the GLUE average. Where a table has several rows, each column's best mean is in bold."""
    lines = []
    ks = sorted({e["k"] for e in entries}, key=_k_order)
    for k in ks:
        mine = [e for e in entries if e["k"] == k and e["metric"] == "score"]
        labels = list(dict.fromkeys(e["label"] for e in mine))
        seeds = sorted({e["n"] for e in mine if e["task"] != AVG})
        lines.append(f"### K = {k}" + (" (the whole training set)" if k == "all" else "") +
                     f" — mean ± std over {'/'.join(map(str, seeds))} seed(s)")
        lines.append("")
        header = ["method", *tasks, AVG]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        best = {}   # the best mean shown in each column
        for e in mine:
            best[e["task"]] = max(best.get(e["task"], -np.inf), round(e["mean"], 2))
        for label in labels:
            cells = [label]
            for task in [*tasks, AVG]:
                e = next((e for e in mine if e["label"] == label and e["task"] == task), None)
                if e is None:
                    cells.append("–")
                    continue
                text = f"{e['mean']:.2f}" if task == AVG else f"{e['mean']:.2f} ± {e['std']:.2f}"
                if len(labels) > 1 and round(e["mean"], 2) == best[task]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def csv_table(entries) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["k", "method", "label", "task", "metric", "mean", "std", "n"])
    for e in entries:
        w.writerow([e["k"], e["method"], e["label"], e["task"], e["metric"],
                    f"{e['mean']:.6f}", "" if math.isnan(e["std"]) else f"{e['std']:.6f}", e["n"]])
    return buf.getvalue()


TRIAL_COLUMNS = ("id", "task", "k", "seed", "method", "label", "status", "score", "steps",
                 "train_seconds", "wall_seconds", "peak_rss_mb", "trainable_params",
                 "all_params", "n_train", "n_dev", "threads", "attempts", "resumed_from", "error")


def trials_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*TRIAL_COLUMNS, "metrics", "options", "training"])
    for r in rows:
        values = []
        for c in TRIAL_COLUMNS:
            v = r[c]
            if c == "score" and v is not None:
                v = f"{100.0 * v:.6f}"
            elif c == "error" and v:
                v = v.splitlines()[0]
            elif isinstance(v, float):
                v = f"{v:.3f}"
            values.append("" if v is None else v)
        w.writerow([*values, json.dumps(r["metrics"], sort_keys=True) if r["metrics"] else "",
                    json.dumps(r["config"]["options"], sort_keys=True),
                    json.dumps(r["config"]["training"], sort_keys=True)])
    return buf.getvalue()


# ------------------------------------------------------------------ plots


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise SweepError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(labels):
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def plot_metric_vs_k(done, entries, path):
    """Score (mean ± std over seeds) against K, a line per method, a panel per task; K
    "all" is drawn at the training set's size."""
    plt = _plt()
    tasks = list(dict.fromkeys(e["task"] for e in entries if e["task"] != AVG))
    labels = list(dict.fromkeys(e["label"] for e in entries))
    colors = _colors(labels)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for label in labels:
            pts = [e for e in entries if e["task"] == task and e["label"] == label and
                   e["metric"] == "score"]
            if not pts:
                continue
            pts.sort(key=lambda e: _k_order(e["k"]))
            xs = [_k_size(done, task, e["k"]) for e in pts]
            ax.errorbar(xs, [e["mean"] for e in pts], yerr=[e["std"] for e in pts], marker="o",
                        capsize=3, label=label, color=colors[label])
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("K (training examples)")
        ax.set_ylabel("dev score")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    _save(plt, fig, path)


def _save(plt, fig, path):
    """The figure laid out, written atomically and closed."""
    from ..utils.io import save_figure

    fig.tight_layout()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def _k_size(done, task, k):
    if str(k) != "all":
        return int(k)
    sizes = [r["n_train"] for r in done if r["task"] == task and r["k"] == "all"]
    return int(np.mean(sizes)) if sizes else 1


def plot_learning_curves(done, path):
    """Per task: the training loss (top) and the dev score at each evaluation (bottom),
    averaged over seeds, a line per method and K."""
    from ..train.metrics import task_score

    plt = _plt()
    tasks = list(dict.fromkeys(r["task"] for r in done))
    groups = {}
    for r in done:
        groups.setdefault((r["task"], r["label"], r["k"]), []).append(r)
    labels = list(dict.fromkeys(r["label"] for r in done))
    colors = _colors(labels)
    ks = sorted({r["k"] for r in done}, key=_k_order)
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6), squeeze=False)
    for col, task in enumerate(tasks):
        for (t, label, k), rs in groups.items():
            if t != task:
                continue
            style = dict(color=colors[label], linestyle=styles[ks.index(k) % len(styles)],
                         label=f"{label} K={k}")
            n = min(len(r["losses"]) for r in rs)
            if n:
                curve = np.mean([r["losses"][:n] for r in rs], axis=0)
                width = max(1, n // 20)
                smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
                axes[0][col].plot(np.arange(len(smooth)) + width, smooth, **style)
            steps = [s for s, _ in rs[0]["eval_history"]]
            if steps and all([s for s, _ in r["eval_history"]] == steps for r in rs):
                scores = np.mean([[100.0 * _eval_score(task, m, task_score)
                                   for _, m in r["eval_history"]] for r in rs], axis=0)
                axes[1][col].plot(steps, scores, marker=".", **style)
        axes[0][col].set_title(task)
        axes[0][col].set_ylabel("training loss")
        axes[1][col].set_ylabel("dev score")
        axes[1][col].set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6)
    _save(plt, fig, path)


def _eval_score(task, metrics, task_score):
    if task == "MNLI" and "mm_accuracy" in metrics:
        return task_score(task, {"accuracy": metrics["accuracy"], "accuracy_mm": metrics["mm_accuracy"]})
    return task_score(task, metrics)


def plot_score_vs(done, x_key, xlabel, path, log=False):
    """Each finished trial's score against x_key (train_seconds or trainable_params), a
    colour per method, a panel per task."""
    plt = _plt()
    tasks = list(dict.fromkeys(r["task"] for r in done))
    labels = list(dict.fromkeys(r["label"] for r in done))
    colors = _colors(labels)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for label in labels:
            rs = [r for r in done if r["task"] == task and r["label"] == label]
            if rs:
                ax.scatter([r[x_key] for r in rs], [100.0 * r["score"] for r in rs], s=18,
                           color=colors[label], label=label, alpha=0.8)
        if log:
            ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dev score")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    _save(plt, fig, path)


def _slug(text) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("_")


def plot_gates(done, folder) -> dict:
    """Per method label and K with gates: the mean gate (over seeds and the scored rows) of
    each layer × submodule, a panel per task -> {file name: path}."""
    from ..tuners.unipelt.gates import plot_gate_heatmap

    groups = {}
    for r in done:
        gates = (r.get("extra") or {}).get("gates")
        if gates:
            groups.setdefault((r["label"], r["k"]), {}).setdefault(r["task"], []).append(gates)
    written = {}
    plt = _plt() if groups else None
    for (label, k), by_task in sorted(groups.items(), key=lambda kv: (kv[0][0], _k_order(kv[0][1]))):
        fig, axes = plt.subplots(1, len(by_task), figsize=(4.6 * len(by_task), 4.2), squeeze=False)
        for ax, (task, runs) in zip(axes[0], by_task.items()):
            mean = {}
            for layer in sorted({layer for g in runs for layer in g}, key=int):
                subs = {sub for g in runs for sub in g.get(layer, {})}
                mean[int(layer)] = {sub: float(np.mean([g[layer][sub] for g in runs
                                                         if sub in g.get(layer, {})]))
                                    for sub in subs}
            plot_gate_heatmap(mean, ax=ax, title=f"{task}, K={k} ({len(runs)} seed{'' if len(runs) == 1 else 's'})")
        fig.suptitle(f"{label}: mean gates")
        name = f"gates_{_slug(label)}_k{k}.png"
        _save(plt, fig, Path(folder) / name)
        written[name] = Path(folder) / name
    return written


PLOTS = ("metric_vs_k.png", "learning_curves.png", "score_vs_train_time.png",
         "score_vs_trainable_params.png")


def write_reports(path, out_dir=None, plots: bool = True, quiet: bool = False, out=None) -> dict:
    """results.md, results.csv, trials.csv and the plots into out_dir (default: the folder
    <sweep>.report next to the sweep file). -> {name: path}."""
    from ..utils.io import atomic_write_bytes

    out = out or sys.stdout
    db = _db_of(path)
    folder = Path(out_dir) if out_dir else db.with_name(db.name.removesuffix(".sweep.db") + ".report")
    folder.mkdir(parents=True, exist_ok=True)
    rows = trials(db)
    done = [r for r in rows if r["status"] == "done"]
    entries = _summary(done)
    tasks = list(dict.fromkeys(e["task"] for e in entries if e["task"] != AVG))
    counts = {s: sum(r["status"] == s for r in rows) for s in
              ("done", "failed", "interrupted", "pending", "running")}
    tested = any((r.get("extra") or {}).get("selection_metrics") for r in done)
    scored_on = ("the official dev split; the checkpoint was chosen on rows of the rest of "
                 "train" if tested else "dev")
    head = (f"# Sweep {db.name.removesuffix('.sweep.db')}\n\n"
            f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
            f". Scores: each task's GLUE score × 100 on {scored_on}.\n\n")
    written = {}
    md = head + (markdown_table(entries, tasks) if entries else "No finished trial yet.\n")
    for name, text in (("results.md", md), ("results.csv", csv_table(entries)),
                       ("trials.csv", trials_csv(rows))):
        atomic_write_bytes(folder / name, text.encode())
        written[name] = folder / name
    if plots and done:
        plot_metric_vs_k(done, entries, folder / PLOTS[0])
        plot_learning_curves(done, folder / PLOTS[1])
        plot_score_vs(done, "train_seconds", "train time (s)", folder / PLOTS[2])
        plot_score_vs(done, "trainable_params", "trainable parameters", folder / PLOTS[3],
                      log=True)
        written.update({p: folder / p for p in PLOTS})
        written.update(plot_gates(done, folder))
    if not quiet:
        print(md, file=out)
        print(f"report written to {folder}", file=out)
    return written


def status_text(path) -> str:
    """Counts by status, the time the trials left should take, the running trials and the
    failed ones with their errors."""
    rows = trials(path)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    done = [r for r in rows if r["status"] == "done"]
    if done:
        lines.append(f"train time so far: {sum(r['train_seconds'] for r in done):.1f} s "
                     f"(wall {sum(r['wall_seconds'] for r in rows):.1f} s over all trials)")
    left = [r for r in rows if r["status"] in ("pending", "running", "interrupted")]
    if done and left:
        seconds = sum(_expected_wall(done, r) for r in left)
        line = (f"left: {len(left)} trial(s), about {_duration(seconds)} of trial time (each "
                f"as the finished ones of its method and task took, else of its method scaled "
                f"by how the task's time compares, else of all)")
        parallel = _parallel(path)
        if parallel:
            line += f", {_duration(seconds / parallel)} at {parallel} at a time"
        lines.append(line)
    for r in rows:
        if r["status"] in ("running", "failed", "interrupted"):
            error = (r["error"] or "").splitlines()[0] if r["error"] else ""
            lines.append(f"  {r['status']:<11} {r['id']}  {r['label']} {r['task']} K={r['k']} "
                         f"seed {r['seed']}" + (f": {error}" if error else ""))
    return "\n".join(lines)


def _expected_wall(done, trial) -> float:
    """A trial's wall time, guessed from the finished trials most like it: those of its
    method and task; else its method's on other tasks, each scaled by how much slower this
    task ran than that one for the methods that ran both; else its method's; else all."""
    def mean(label=None, task=None):
        times = [r["wall_seconds"] for r in done if label in (None, r["label"]) and
                 task in (None, r["task"])]
        return float(np.mean(times)) if times else None

    label, task = trial["label"], trial["task"]
    if (own := mean(label, task)) is not None:
        return own
    guesses = []
    for other_task in sorted({r["task"] for r in done if r["label"] == label}):
        ratios = [mean(other, task) / mean(other, other_task)
                  for other in sorted({r["label"] for r in done if r["task"] == task})
                  if mean(other, other_task)]
        if ratios:
            guesses.append(mean(label, other_task) * float(np.mean(ratios)))
    if guesses:
        return float(np.mean(guesses))
    for guess in (mean(label), mean()):
        if guess is not None:
            return guess
    return 0.0


def _parallel(path) -> int | None:
    """How many trials the sweep file runs at a time, as `sweep run` does without options
    (None for a database path, 'auto', or a file that no longer parses)."""
    if Path(path).suffix == ".db":
        return None
    from .runner import _default_parallel
    from .spec import parse

    try:
        run = parse(path).run
    except (SweepError, OSError):
        return None
    value = run.get("parallel") or _default_parallel(run.get("threads", 1))
    return value if isinstance(value, int) else None


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
