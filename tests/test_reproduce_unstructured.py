"""Reproduction of the unstructured-sparsity claims on the full Fashion-MNIST (slow).

Run with ``python -m pytest -m slow tests/test_reproduce_unstructured.py -s``;
results are written to ``$CSUB_REPRO_DIR`` (default ``runs/repro-unstructured-<epochs>``).
One model (the CNN), the same epochs for all methods: 30 by default
(``$CSUB_REPRO_EPOCHS``), about 40 minutes a run on one core of the 2-core
machine, five runs; finished runs are reused and a killed one resumes.
"""
import json
import os

import pytest

from csub import models
from reproduce_common import reproduce_run, require_full_fashion_mnist

EPOCHS = int(os.environ.get("CSUB_REPRO_EPOCHS", "30"))
OUT = os.environ.get("CSUB_REPRO_DIR", f"runs/repro-unstructured-{EPOCHS}")
WIDTHS = (16, 32, 64)


def _run(name, method, subspace, regime="unstructured", topk=None):
    return reproduce_run(OUT, name, lambda: models.cnn(widths=WIDTHS, regime=regime, subspace=subspace),
                         method=method, epochs=EPOCHS, lr=0.1, topk=topk)


@pytest.mark.slow
def test_unstructured_reproduction():
    require_full_fashion_mnist()
    std = _run("standard", "standard", None, regime=None)[0]["accuracy"]
    lcs_l = {r["alpha"]: r for r in _run("lcs_l", "lcs_l", "line")}
    t90 = _run("target_topk_0.1", "target_topk", None, topk=0.1)[0]
    t95 = _run("target_topk_0.05", "target_topk", None, topk=0.05)[0]
    lcs_p = {r["alpha"]: r for r in _run("lcs_p", "lcs_p", "point")}

    from csub import plot
    plot.accuracy_curve({"lcs_l": list(lcs_l.values()), "lcs_p": list(lcs_p.values()),
                         "target_topk": [t95, t90], "standard": [{"sparsity": 0.0, "accuracy": std}]},
                        os.path.join(OUT, "accuracy_vs_sparsity.png"))
    summary = dict(epochs=EPOCHS, standard=std, lcs_l_dense=lcs_l[1.0]["accuracy"],
                   lcs_l_topk_0_1=lcs_l[0.1]["accuracy"], lcs_l_topk_0_05=lcs_l[0.05]["accuracy"],
                   lcs_p_dense=lcs_p[1.0]["accuracy"], lcs_p_topk_0_1=lcs_p[0.1]["accuracy"],
                   target_topk_0_1=t90["accuracy"], target_topk_0_05=t95["accuracy"],
                   sparsity_at_0_1=lcs_l[0.1]["sparsity"], sparsity_at_0_05=lcs_l[0.05]["sparsity"])
    print(json.dumps(summary, indent=1))
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    assert lcs_l[1.0]["accuracy"] >= std - 0.015
    assert lcs_l[0.1]["accuracy"] >= t90["accuracy"] - 0.03
    assert lcs_l[0.05]["accuracy"] >= t95["accuracy"] - 0.03
