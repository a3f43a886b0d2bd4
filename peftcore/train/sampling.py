"""Few-shot sampling: K training examples drawn with a seed, stratified by label.

The draw depends on the labels, K and the seed only, so every method given the same seed
trains on the same K examples. Dev comes from the rest of train (``dev="rest"``) or is the
official dev set (``dev="official"``: nothing is drawn for it here).
"""
from __future__ import annotations

import numpy as np

from ..utils.checks import is_int


def _allocation(counts: np.ndarray, k: int) -> np.ndarray:
    """How many of K each class gets: proportional to its count, largest remainders first
    (ties to the lower class id), and at least one per class when K allows."""
    share = counts * (k / counts.sum())
    take = np.floor(share).astype(np.int64)
    if k >= len(counts):
        take = np.maximum(take, 1)
        while take.sum() > k:  # the minimum pushed past K: trim the biggest
            take[np.argmax(take - share)] -= 1
    order = sorted(range(len(counts)), key=lambda c: (-(share[c] - np.floor(share[c])), c))
    for c in order:
        if take.sum() >= k:
            break
        if take[c] < counts[c]:
            take[c] += 1
    while take.sum() < k:  # classes full: the rest from any class with room
        c = int(np.argmax(counts - take))
        take[c] += 1
    return take


def sample_k(labels, k: int, seed: int, stratify: bool = True, exclude=None) -> np.ndarray:
    """Sorted row indices of K examples of `labels`, drawn with `seed`; stratified by label
    (classification) unless stratify=False. `exclude`: rows not to draw."""
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    if exclude is not None:
        rows = np.setdiff1d(rows, np.asarray(exclude, np.int64))
    if not is_int(k) or k < 1:
        raise ValueError(f"K must be an int >= 1, got {k!r}")
    if k > len(rows):
        raise ValueError(f"K={k} is larger than the training set ({len(rows)} examples"
                         f"{' left' if exclude is not None else ''})")
    rng = np.random.default_rng([int(seed), k])
    if not stratify:
        return np.sort(rng.choice(rows, k, replace=False))
    classes, counts = np.unique(labels[rows], return_counts=True)
    take = _allocation(counts, k)
    picked = [rng.choice(rows[labels[rows] == c], n, replace=False)
              for c, n in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def few_shot_split(labels, k: int, seed: int, dev: str = "rest", dev_size: int | None = None,
                   stratify: bool = True):
    """-> (train rows, dev rows or None). dev="rest": dev_size (default K) rows drawn from the
    rest of train, stratified too; dev="official": None (use the official dev set)."""
    if dev not in ("rest", "official"):
        raise ValueError(f"dev must be 'rest' or 'official', got {dev!r}")
    train_rows = sample_k(labels, k, seed, stratify)
    if dev == "official":
        return train_rows, None
    size = k if dev_size is None else dev_size
    try:
        dev_rows = sample_k(labels, size, seed + 1, stratify, exclude=train_rows)
    except ValueError as exc:
        raise ValueError(f"few-shot dev from the rest of train: {exc}") from None
    return train_rows, dev_rows
