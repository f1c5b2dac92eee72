"""Reproduction of the structured-sparsity (width) claims on the full Fashion-MNIST (slow).

Run with ``python -m pytest -m slow tests/test_reproduce_structured.py -s``;
results go to ``$CSUB_REPRO_DIR`` (default ``runs/repro-structured``). One
model for all runs (an MLP 784-512-256-256-128-10 with group norm over the
features, one group), the same epochs for all: a standard network, the
lcs_l line (norms on the line, weights shared), and the us and ns baselines.
"""
import json
import os

import pytest

from csub import models
from reproduce_common import reproduce_run, require_full_fashion_mnist

EPOCHS = int(os.environ.get("CSUB_REPRO_EPOCHS", "5"))
OUT = os.environ.get("CSUB_REPRO_DIR", "runs/repro-structured")
HIDDEN = (512, 256, 256, 128)


def _run(name, method, subspace, regime="structured"):
    return reproduce_run(OUT, name, lambda: models.mlp(hidden=HIDDEN, regime=regime, subspace=subspace, norm="gn"),
                         method=method, regime="structured", epochs=EPOCHS, augment=False)


@pytest.mark.slow
def test_structured_reproduction():
    require_full_fashion_mnist()
    std = _run("standard", "standard", None, regime=None)[0]["accuracy"]
    lcs = {r["width"]: r for r in _run("lcs_l", "lcs_l", "line")}
    us = {r["width"]: r for r in _run("us", "us", "point")}
    ns = {r["width"]: r for r in _run("ns", "ns", "point")}

    from csub import plot
    plot.accuracy_curve({k: list(v.values()) for k, v in (("lcs_l", lcs), ("us", us), ("ns", ns))},
                        os.path.join(OUT, "accuracy_vs_width.png"), x="width", title="Accuracy against width")
    summary = dict(epochs=EPOCHS, standard=std, **{k: {w: v[w]["accuracy"] for w in sorted(v)}
                                                   for k, v in (("lcs_l", lcs), ("us", us), ("ns", ns))},
                   flops={w: lcs[w]["flops"] for w in sorted(lcs)})
    print(json.dumps(summary, indent=1))
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    assert lcs[1.0]["accuracy"] >= std - 0.015
    assert lcs[0.25]["accuracy"] >= us[0.25]["accuracy"] - 0.01
    widths = sorted(lcs)
    for narrow, wide in zip(widths, widths[1:]):  # falls (within noise) as the width falls
        assert lcs[narrow]["accuracy"] <= lcs[wide]["accuracy"] + 0.01, (narrow, wide)
