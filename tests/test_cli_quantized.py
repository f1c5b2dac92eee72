"""``python -m csub`` in the quantized regime: bit-width tables, target_bits and its argument checks.

Runs as subprocesses in temporary directories, importing this repository's csub (MLP on the
bundled Fashion-MNIST subset, one epoch: a few seconds per command).
"""
import json

import pytest

from csub.nn.quant import alpha_for_bits
from test_cli import PNG_SIGNATURE, ok, parse_table, run_csub, run_fixture

BITS = list(range(3, 9))  # the default bit_range (3, 8)
TRAIN = ["train", "--dataset", "fashion-mnist-bundled", "--model", "mlp", "--regime", "quantized",
         "--epochs", "1", "--quiet"]


def bits_rows(stdout):
    """{bits: row} of a quantized results table."""
    rows = parse_table(stdout, ["alpha", "bits", "model_bytes", "accuracy", "loss"], "bits")
    return {int(b): r for b, r in rows.items()}


# a finished 1-epoch quantized lcs_l MLP run: (cwd, stdout)
run_dir = run_fixture("cli_quantized", TRAIN + ["--method", "lcs_l", "--out", "RUN"])


def test_train_lcs_l_prints_bits_table(run_dir):
    cwd, stdout = run_dir
    rows = bits_rows(stdout)
    assert sorted(rows) == BITS
    for b, row in rows.items():
        assert row["alpha"] == pytest.approx(alpha_for_bits(b), abs=1e-4)
        assert 0.0 <= row["accuracy"] <= 1.0
    sizes = [rows[b]["model_bytes"] for b in BITS]
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes  # more bits, more bytes
    config = json.loads((cwd / "RUN" / "config.json").read_text())
    assert (config["regime"], config["method"], config["num_bits"]) == ("quantized", "lcs_l", None)
    results = json.loads((cwd / "RUN" / "eval.json").read_text())
    assert [r["bits"] for r in results] == BITS
    for r in results:
        assert set(r) == {"alpha", "bits", "model_bytes", "accuracy", "loss"}
        assert rows[r["bits"]]["model_bytes"] == r["model_bytes"]
        assert rows[r["bits"]]["accuracy"] == pytest.approx(r["accuracy"], abs=5e-5)


def test_eval_reprints_bits_table(run_dir):
    cwd, _ = run_dir
    rows = bits_rows(ok(run_csub(["eval", "RUN"], cwd)).stdout)
    assert sorted(rows) == BITS
    # The reloaded checkpoint (weights and activation ranges) gives the numbers the training run saved.
    for r in json.loads((cwd / "RUN" / "eval.json").read_text()):
        assert rows[r["bits"]]["model_bytes"] == r["model_bytes"]
        assert rows[r["bits"]]["accuracy"] == pytest.approx(r["accuracy"], abs=5e-5)
        assert rows[r["bits"]]["loss"] == pytest.approx(r["loss"], abs=5e-5)


def test_eval_plot_quantized(run_dir):
    cwd, _ = run_dir
    ok(run_csub(["eval", "RUN", "--plot", "RUN/bits.png"], cwd))
    assert (cwd / "RUN" / "bits.png").read_bytes()[:8] == PNG_SIGNATURE


def test_target_bits(tmp_path):
    proc = ok(run_csub(TRAIN + ["--method", "target_bits", "--num-bits", "4", "--out", "T4"], tmp_path))
    rows = bits_rows(proc.stdout)
    assert sorted(rows) == [4]
    results = json.loads((tmp_path / "T4" / "eval.json").read_text())
    assert len(results) == 1 and results[0]["bits"] == 4
    assert results[0]["alpha"] == pytest.approx(alpha_for_bits(4))
    assert 0.0 <= results[0]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "T4" / "config.json").read_text())["num_bits"] == 4


@pytest.mark.parametrize("extra, problems", [
    (["--method", "target_bits"], ["--num-bits"]),
    (["--method", "target_bits", "--num-bits", "9"], ["num_bits", "9"]),
], ids=["target_bits-without-num-bits", "num-bits-9"])
def test_bad_arguments(tmp_path, extra, problems):
    proc = run_csub(TRAIN + extra + ["--out", "BAD"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    for problem in problems:
        assert problem in proc.stderr, proc.stderr
    assert not (tmp_path / "BAD").exists()  # rejected before any work
