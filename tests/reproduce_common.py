"""What the slow reproduction tests (tests/test_reproduce_*.py) share: one resumable run per method
on the full Fashion-MNIST, reused once finished."""
import json
import os

import pytest

import csub
from csub import data, train


def require_full_fashion_mnist():
    """Skip the calling test unless the full Fashion-MNIST is installed (or $CSUB_DATA names it)."""
    if not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("CSUB_DATA"):
        pytest.skip("full Fashion-MNIST not installed")


def reproduce_run(out, name, build, **fit_kwargs):
    """The evaluation (out/name/eval.json, a list of per-alpha dicts) of one run: unless that file
    exists, seed 0, build the model with ``build()`` and ``fit`` it on the full Fashion-MNIST
    train/test split into out/name with ``fit_kwargs``, resuming a killed run there."""
    path = os.path.join(out, name)
    if not os.path.exists(os.path.join(path, "eval.json")):
        csub.manual_seed(0)
        model = build()
        tr, te = data.fashion_mnist("train"), data.fashion_mnist("test")
        train.fit(model, tr, te, out=path, resume=True, progress=True, **fit_kwargs)
    with open(os.path.join(path, "eval.json")) as f:
        return json.load(f)
