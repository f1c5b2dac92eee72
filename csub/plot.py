"""Plots (matplotlib, an optional dependency: ``pip install csub[plot]``)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Union


def accuracy_curve(runs: Mapping[str, List[Dict[str, Any]]], path: Union[str, "os.PathLike[str]"], x: str = "sparsity",
                   title: str = "Accuracy against sparsity") -> Union[str, "os.PathLike[str]"]:
    """Write a PNG of test accuracy against ``x`` for several runs on one figure.

    Args:
        runs: ``{label: results}`` where results is a list of dicts as
            ``csub.train.evaluate`` returns (keys ``x`` and ``accuracy``).
        path: output PNG path.
        x: the key on the horizontal axis ("sparsity", "topk" or "alpha").
    Returns:
        path.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("csub.plot needs matplotlib: pip install 'csub[plot]'") from e
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, results in runs.items():
        pts = sorted((r[x], 100.0 * r["accuracy"]) for r in results)
        style = "o" if len(pts) == 1 else ".-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax.set_xlabel({"sparsity": "sparsity (zeros over all conv/linear weights)",
                   "topk": "keep fraction (top-k)", "alpha": "alpha", "bits": "bit width",
                   "width": "width factor"}.get(x, x))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
