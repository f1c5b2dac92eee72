"""Reproduction of the quantization claims on the full Fashion-MNIST (slow).

Run with ``python -m pytest -m slow tests/test_reproduce_quantized.py -s``;
results go to ``$CSUB_REPRO_DIR`` (default ``runs/repro-quantized``). One
model for all runs (an MLP 784-512-256-256-128-10 with group norm over the
features; its three hidden-to-hidden layers are quantized, weights and
inputs, the first and last stay float), the same epochs for all: the float
standard network, target_bits at each of 3..8 bits, and one lcs_l line.
"""
import json
import os

import pytest

from csub import models
from reproduce_common import reproduce_run, require_full_fashion_mnist

EPOCHS = int(os.environ.get("CSUB_REPRO_EPOCHS", "10"))
OUT = os.environ.get("CSUB_REPRO_DIR", "runs/repro-quantized")
HIDDEN = (512, 256, 256, 128)


def _run(name, method, subspace, regime="quantized", num_bits=None):
    return reproduce_run(OUT, name, lambda: models.mlp(hidden=HIDDEN, regime=regime, subspace=subspace, norm="gn"),
                         method=method, regime="quantized", epochs=EPOCHS, num_bits=num_bits, augment=False)


@pytest.mark.slow
def test_quantized_reproduction():
    require_full_fashion_mnist()
    std = _run("standard", "standard", None, regime=None)[0]["accuracy"]
    lcs = {r["bits"]: r for r in _run("lcs_l", "lcs_l", "line")}
    target = {b: _run(f"target_bits_{b}", "target_bits", None, num_bits=b)[0] for b in range(3, 9)}

    from csub import plot
    plot.accuracy_curve({"lcs_l": list(lcs.values()), "target_bits": list(target.values())},
                        os.path.join(OUT, "accuracy_vs_bits.png"), x="bits", title="Accuracy against bit width")
    summary = dict(epochs=EPOCHS, standard_float=std,
                   lcs_l={b: lcs[b]["accuracy"] for b in sorted(lcs)},
                   target_bits={b: target[b]["accuracy"] for b in sorted(target)},
                   model_bytes={b: lcs[b]["model_bytes"] for b in sorted(lcs)})
    print(json.dumps(summary, indent=1))
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for b in range(4, 9):
        assert lcs[b]["accuracy"] >= target[b]["accuracy"] - 0.015, b
    assert lcs[3]["accuracy"] >= target[3]["accuracy"] - 0.03
    assert lcs[8]["accuracy"] >= std - 0.01
