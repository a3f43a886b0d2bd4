"""UniPELT's gates out of the model: to JSON or CSV, and as a heat map of layers ×
submodules averaged over a dataset (matplotlib, an optional dependency: peftcore[plot]).

`model.get_gate_values(input_ids, attention_mask=...)` gives {layer: {submodule: per-example
array}}; `mean_gate_values` averages such dicts over the batches of a dataset."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ...utils.io import atomic_write_bytes, save_figure


def _rows(gates: dict):
    """(layer, submodule, example, gate index, value) of a get_gate_values result."""
    for layer in sorted(gates):
        for sub in sorted(gates[layer]):
            values = np.asarray(gates[layer][sub])
            values = values[:, None] if values.ndim == 1 else values
            for example in range(values.shape[0]):
                for k in range(values.shape[1]):
                    yield layer, sub, example, k, float(values[example, k])


def write_gate_values(gates: dict, path) -> Path:
    """Write get_gate_values' result to `path` (atomically): .json as {layer: {submodule:
    [[per example]...]}}, .csv as rows layer,submodule,example,gate,value."""
    path = Path(path)
    if path.suffix == ".json":
        body = {str(layer): {sub: np.asarray(v).tolist() for sub, v in subs.items()}
                for layer, subs in sorted(gates.items())}
        data = json.dumps(body, indent=1).encode()
    elif path.suffix == ".csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["layer", "submodule", "example", "gate", "value"])
        writer.writerows(_rows(gates))
        data = text.getvalue().encode()
    else:
        raise ValueError(f"write_gate_values writes .json or .csv files, got {path.name!r}")
    atomic_write_bytes(path, data)
    return path


def mean_gate_values(batches) -> dict:
    """{layer: {submodule: mean gate}} over every example of several get_gate_values results
    (a (B, 2) prefix gate counts its key and value gates apart: 'prefix_key',
    'prefix_value')."""
    sums: dict = {}
    for gates in batches:
        for layer, subs in gates.items():
            for sub, values in subs.items():
                values = np.asarray(values, np.float64)
                parts = {sub: values} if values.ndim == 1 else \
                    {f"{sub}_key": values[:, 0], f"{sub}_value": values[:, -1]}
                for name, v in parts.items():
                    total, count = sums.setdefault(layer, {}).get(name, (0.0, 0))
                    sums[layer][name] = (total + float(v.sum()), count + v.size)
    return {layer: {sub: total / count for sub, (total, count) in subs.items()}
            for layer, subs in sums.items()}


def plot_gate_heatmap(gates, path=None, title="UniPELT gates", ax=None):
    """Heat map of layers (rows) × submodules (columns) of mean gate values: `gates` is
    mean_gate_values' result, one get_gate_values result, or a list of them (averaged).
    Saves to `path` when given; returns the matplotlib Figure."""
    try:
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_gate_heatmap needs matplotlib: pip install matplotlib "
                          "(or peftcore[plot])") from None
    if isinstance(gates, dict) and gates and all(
            np.ndim(v) == 0 for subs in gates.values() for v in subs.values()):
        means = gates
    else:
        means = mean_gate_values(gates if isinstance(gates, (list, tuple)) else [gates])
    layers = sorted(means)
    subs = sorted({s for layer in layers for s in means[layer]})
    grid = np.full((len(layers), len(subs)), np.nan)
    for i, layer in enumerate(layers):
        for j, sub in enumerate(subs):
            grid[i, j] = means[layer].get(sub, np.nan)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.3 + 1.1 * len(subs), 1.0 + 0.45 * len(layers)))
    else:
        fig = ax.figure
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(subs)), subs, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers])
    for i in range(len(layers)):
        for j in range(len(subs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="white" if grid[i, j] < 0.6 else "black", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="mean gate")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig
