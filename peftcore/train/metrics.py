"""GLUE's official metrics, in NumPy (no SciPy or scikit-learn needed).

Per task (names as Hugging Face `evaluate`'s glue metric reports them):
CoLA matthews_correlation; MRPC and QQP f1 (of class 1) and accuracy; STS-B pearson and
spearmanr; the others accuracy (MNLI's matched and mismatched dev sets separately).
The GLUE score averages the nine task scores, a task's score being the mean of its metrics
(MNLI's: the mean of matched and mismatched accuracy), all ×100 as the leaderboard shows.
"""
from __future__ import annotations

import numpy as np

from .glue import GLUE_TASKS, get_task


def accuracy(predictions, labels) -> float:
    p, y = _pair(predictions, labels)
    return float((p == y).mean())


def f1_score(predictions, labels, positive: int = 1) -> float:
    """F1 of the positive class (scikit-learn's binary f1_score; 0.0 when it is never
    predicted nor present)."""
    p, y = _pair(predictions, labels)
    tp = int(((p == positive) & (y == positive)).sum())
    fp = int(((p == positive) & (y != positive)).sum())
    fn = int(((p != positive) & (y == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation, multi-class form (Gorodkin's R_K, as scikit-learn): for two
    classes (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0.0 when undefined."""
    p, y = _pair(predictions, labels)
    classes, inverse = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    yi, pi = inverse[:len(y)], inverse[len(y):]
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (yi, pi), 1.0)
    t = confusion.sum(axis=1)   # true counts per class
    q = confusion.sum(axis=0)   # predicted counts per class
    n = confusion.sum()
    correct = np.trace(confusion)
    cov_yp = correct * n - t @ q
    cov_yy = n * n - t @ t
    cov_pp = n * n - q @ q
    if cov_yy == 0 or cov_pp == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def pearson(x, y) -> float:
    x, y = _floats(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx @ dx) * (dy @ dy))
    return float("nan") if denom == 0 else float(np.clip((dx @ dy) / denom, -1.0, 1.0))


def _ranks(x):
    """Ranks 1..n, ties given their average rank (SciPy's rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0          # mean of ranks start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(x, y) -> float:
    x, y = _floats(x, y)
    return pearson(_ranks(x), _ranks(y))


def _pair(predictions, labels):
    p, y = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions for {y.size} labels")
    if p.size == 0:
        raise ValueError("no predictions to score (an empty set)")
    return p, y


def _floats(x, y):
    x, y = _pair(x, y)
    x, y = x.astype(np.float64), y.astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("correlation of values that are not all finite")
    return x, y


_METRIC_FUNCTIONS = {"accuracy": accuracy, "f1": f1_score,
                     "matthews_correlation": matthews_corrcoef,
                     "pearson": pearson, "spearmanr": spearman}


def predictions_from_logits(task, logits):
    """Class ids (argmax) for classification, the (n,) scores for STS-B."""
    spec = get_task(task)
    logits = np.asarray(logits)
    if spec.is_regression:
        return logits.reshape(len(logits))
    return logits.argmax(-1) if logits.ndim == 2 else logits


def compute_metrics(task, predictions, labels) -> dict:
    """The task's official metrics -> {name: value}. `predictions`: class ids or logits
    (classification), scores (STS-B)."""
    spec = get_task(task)
    preds = predictions_from_logits(spec, predictions)
    return {name: _METRIC_FUNCTIONS[name](preds, labels) for name in spec.metrics}


def task_score(task, metrics) -> float:
    """The task's GLUE score: the mean of its metrics. `metrics` is compute_metrics' dict;
    for MNLI a pair of them (matched, mismatched) or a dict holding both accuracies as
    'accuracy' (matched) and 'accuracy_mm'."""
    spec = get_task(task)
    if spec.name == "MNLI":
        if isinstance(metrics, (tuple, list)):
            return float(np.mean([m["accuracy"] for m in metrics]))
        return float(np.mean([metrics["accuracy"], metrics["accuracy_mm"]]))
    missing = [m for m in spec.metrics if m not in metrics]
    if missing:
        raise KeyError(f"{spec.name} results lack {missing}")
    return float(np.mean([metrics[m] for m in spec.metrics]))


def glue_score(results: dict) -> float:
    """The GLUE benchmark score: the mean over all nine tasks of task_score × 100.
    `results`: {task name: metrics}. The diagnostic set (AX) does not count."""
    tasks = {get_task(t).name: m for t, m in results.items() if get_task(t).name != "AX"}
    missing = [t for t in GLUE_TASKS if t not in tasks]
    if missing:
        raise ValueError(f"the GLUE score needs all nine tasks; missing {missing}")
    return float(np.mean([100.0 * task_score(t, m) for t, m in tasks.items()]))
