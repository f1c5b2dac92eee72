"""``python -m csub`` in the structured regime: width tables (lcs_l, us, ns), eval with a plot, and
a baseline of another regime rejected.

Runs as subprocesses in temporary directories, importing this repository's csub (MLP 784-300-100-10 with group norm
on the bundled Fashion-MNIST subset, one epoch: a few seconds per command).
"""
import json

import pytest

from csub import checkpoint
from csub.train import CHECKPOINT, STRUCTURED_WIDTHS
from test_cli import PNG_SIGNATURE, ok, parse_table, run_csub, run_fixture

WIDTHS = list(STRUCTURED_WIDTHS)  # 0.25 .. 1.0 in steps of 0.125, the default width_range (0.25, 1.0)
KEYS = ["alpha", "width", "params", "flops", "accuracy", "loss"]
TRAIN = ["train", "--dataset", "fashion-mnist-bundled", "--model", "mlp", "--regime", "structured",
         "--epochs", "1", "--quiet"]
LAYERS = [(784, 300), (300, 100), (100, 10)]  # the MLP's Linear layers (in, out), each with a bias


def width_rows(stdout):
    """{width: row} of a structured results table."""
    return parse_table(stdout, KEYS, "width")


def expected_cost(w, norm=True):
    """(params, flops) of the MLP at width w, by hand: hidden layers keep max(1, round(C w)) units,
    the 784 inputs and the 10 classes never change; FLOPs are 2 per multiply-accumulate. With
    group norm (the structured default for subspace methods) the hidden Linear layers have no
    bias and each norm has a scale and a shift per unit; without, every Linear has a bias."""
    def c(n):
        return max(1, int(n * w + 0.5))

    dims = [784, c(300), c(100), 10]
    macs = sum(a * b for a, b in zip(dims, dims[1:]))
    extra = 2 * (dims[1] + dims[2]) + 10 if norm else sum(dims[1:])
    return macs + extra, 2 * macs


def check_table(rows):
    assert sorted(rows) == WIDTHS
    for w, row in rows.items():
        assert row["alpha"] == pytest.approx((w - 0.25) / 0.75, abs=1e-4)  # w = 0.25 + 0.75 alpha
        assert (int(row["params"]), int(row["flops"])) == expected_cost(w), w
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["loss"] > 0.0
    flops = [rows[w]["flops"] for w in WIDTHS]
    assert all(a < b for a, b in zip(flops, flops[1:])), flops  # wider, more compute


def line_tensors(run):
    """Names of the checkpoint's line endpoints (theta1 tensors) in run directory ``run``."""
    state = checkpoint.load(str(run / CHECKPOINT))["model"]
    return [k for k in state if k.endswith(("weight1", "bias1"))]


# a finished 1-epoch structured lcs_l MLP run: (cwd, stdout)
run_dir = run_fixture("cli_structured", TRAIN + ["--method", "lcs_l", "--out", "RUN"])


def test_train_lcs_l_prints_width_table(run_dir):
    cwd, stdout = run_dir
    rows = width_rows(stdout)
    check_table(rows)
    assert line_tensors(cwd / "RUN") and all(".weight1" in k or ".bias1" in k for k in line_tensors(cwd / "RUN"))
    assert expected_cost(1.0) == (267010, 532400)
    config = json.loads((cwd / "RUN" / "config.json").read_text())
    assert (config["regime"], config["method"], config["model"]) == ("structured", "lcs_l", "mlp")
    results = json.loads((cwd / "RUN" / "eval.json").read_text())
    assert [r["width"] for r in results] == WIDTHS
    for r in results:
        assert list(r) == KEYS
        assert (rows[r["width"]]["params"], rows[r["width"]]["flops"]) == (r["params"], r["flops"])
        assert rows[r["width"]]["accuracy"] == pytest.approx(r["accuracy"], abs=5e-5)
    history = json.loads((cwd / "RUN" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert set(history[0]) >= {"test_accuracy@0", "test_accuracy@1"}  # both ends: widths 0.25 and 1


def test_eval_reprints_width_table_and_plots(run_dir):
    cwd, _ = run_dir
    proc = ok(run_csub(["eval", "RUN", "--plot", "RUN/w.png"], cwd))
    rows = width_rows(proc.stdout)
    check_table(rows)
    # the reloaded checkpoint gives the numbers the training run saved
    for r in json.loads((cwd / "RUN" / "eval.json").read_text()):
        assert rows[r["width"]]["accuracy"] == pytest.approx(r["accuracy"], abs=5e-5)
        assert rows[r["width"]]["loss"] == pytest.approx(r["loss"], abs=5e-5)
    assert "plot:" in proc.stdout
    assert (cwd / "RUN" / "w.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("method", ["us", "ns"])
def test_slimmable_baselines(tmp_path, method):
    proc = ok(run_csub(TRAIN + ["--method", method, "--out", "B"], tmp_path))
    check_table(width_rows(proc.stdout))
    config = json.loads((tmp_path / "B" / "config.json").read_text())
    assert (config["regime"], config["method"]) == ("structured", method)
    results = json.loads((tmp_path / "B" / "eval.json").read_text())
    assert [r["width"] for r in results] == WIDTHS
    assert line_tensors(tmp_path / "B") == []  # one network (a point), no line endpoints


@pytest.mark.parametrize("extra", [
    ["--method", "target_topk", "--topk", "0.5"],
    ["--method", "target_topk"],
], ids=["target_topk", "target_topk-without-topk"])
def test_target_topk_rejected(tmp_path, extra):
    proc = run_csub(TRAIN + extra + ["--out", "BAD"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "target_topk" in proc.stderr, proc.stderr
    if "--topk" in extra:
        assert "structured" in proc.stderr, proc.stderr  # the method belongs to another regime
    assert not (tmp_path / "BAD").exists()  # rejected before any work
