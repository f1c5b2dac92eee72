"""``python -m csub``: run as a subprocess in a temporary directory, importing this repository's csub."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import csub
from csub.train import UNSTRUCTURED_ALPHAS

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAIN_MLP = ["train", "--dataset", "fashion-mnist-bundled", "--model", "mlp", "--method", "lcs_l",
             "--epochs", "1", "--out", "RUN", "--quiet"]
RUN_FILES = ("checkpoint.safetensors", "config.json", "eval.json", "history.json")


def run_csub(args, cwd, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, "-m", "csub", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def parse_table(stdout, columns, key):
    """{row[key]: row dict} of the table format_table prints, whose header must be ``columns``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == columns[:2])
    keys = lines[start].split()
    assert keys == columns
    rows = {}
    for line in lines[start + 1:]:
        parts = line.split()
        if len(parts) != len(keys):
            break
        try:
            row = dict(zip(keys, map(float, parts)))
        except ValueError:
            break
        rows[row[key]] = row
    return rows


def table_rows(stdout):
    """{alpha: row} of an unstructured results table."""
    return parse_table(stdout, ["alpha", "topk", "sparsity", "accuracy", "loss"], "alpha")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 1-epoch lcs_l MLP run in a temporary cwd: (cwd, stdout)."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = ok(run_csub(TRAIN_MLP, cwd))
    return cwd, proc.stdout


def test_help(tmp_path):
    out = ok(run_csub(["--help"], tmp_path)).stdout
    assert "usage: python -m csub" in out
    for command in ("train", "eval", "demo"):
        assert command in out


def test_version(tmp_path):
    assert ok(run_csub(["--version"], tmp_path)).stdout.strip() == f"csub {csub.__version__}"


def test_train_writes_run(run_dir):
    cwd, stdout = run_dir
    for name in RUN_FILES:
        assert (cwd / "RUN" / name).is_file(), name
    rows = table_rows(stdout)
    assert sorted(rows) == pytest.approx(sorted(UNSTRUCTURED_ALPHAS), abs=1e-4)
    config = json.loads((cwd / "RUN" / "config.json").read_text())
    assert (config["model"], config["method"], config["dataset"]) == ("mlp", "lcs_l", "fashion-mnist-bundled")
    history = json.loads((cwd / "RUN" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    results = json.loads((cwd / "RUN" / "eval.json").read_text())
    assert [r["alpha"] for r in results] == list(UNSTRUCTURED_ALPHAS)
    for r in results:
        assert 0.0 <= r["sparsity"] < 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert rows[round(r["alpha"], 4)]["accuracy"] == pytest.approx(r["accuracy"], abs=5e-5)


def test_eval_alphas_and_plot(run_dir):
    cwd, _ = run_dir
    proc = ok(run_csub(["eval", "RUN", "--alphas", "0.1", "1.0", "--plot", "RUN/p.png"], cwd))
    rows = table_rows(proc.stdout)
    assert sorted(rows) == [0.1, 1.0]
    png = cwd / "RUN" / "p.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    # The reloaded checkpoint gives the numbers the training run saved.
    saved = {r["alpha"]: r for r in json.loads((cwd / "RUN" / "eval.json").read_text())}
    for alpha in (0.1, 1.0):
        assert rows[alpha]["accuracy"] == pytest.approx(saved[alpha]["accuracy"], abs=5e-5)
        assert rows[alpha]["sparsity"] == pytest.approx(saved[alpha]["sparsity"], abs=5e-5)


def test_resume_finished_run_does_not_retrain(run_dir):
    cwd, _ = run_dir
    ckpt, hist = cwd / "RUN" / "checkpoint.safetensors", cwd / "RUN" / "history.json"
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (ckpt, hist)]
    proc = ok(run_csub(TRAIN_MLP + ["--resume"], cwd))
    assert sorted(table_rows(proc.stdout)) == pytest.approx(sorted(UNSTRUCTURED_ALPHAS), abs=1e-4)
    # fit rewrites both files (atomically) after every trained epoch: untouched means no epoch ran.
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (ckpt, hist)] == before


def test_demo(tmp_path):
    proc = ok(run_csub(["demo", "--epochs", "1", "--out", "DEMO", "--quiet"], tmp_path, timeout=300))
    rows = table_rows(proc.stdout)
    assert sorted(rows) == pytest.approx(sorted(UNSTRUCTURED_ALPHAS), abs=1e-4)
    assert (tmp_path / "DEMO" / "accuracy.png").read_bytes()[:8] == PNG_SIGNATURE
    # the exported line follows a changing budget; the same loose budget gets the same (most accurate) alpha
    assert (tmp_path / "DEMO" / "model.safetensors").stat().st_size > 0
    picks = [line.split("alpha ")[1].split()[0] for line in proc.stdout.splitlines() if line.startswith("budget ")]
    assert len(picks) == 4 and picks[0] == picks[3]


def test_export_and_budget(run_dir):
    cwd, _ = run_dir
    proc = ok(run_csub(["export", "RUN", "RUN/model.safetensors"], cwd))
    assert "exported: RUN/model.safetensors" in proc.stdout
    model = csub.load(str(cwd / "RUN" / "model.safetensors"))
    assert model.regime == "unstructured" and len(model.levels) == len(UNSTRUCTURED_ALPHAS)
    proc = ok(run_csub(["budget", "RUN/model.safetensors", "--latency-ms", "1000", "0.000001", "--reps", "2"], cwd))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("budget ")]
    assert "nothing fits" in lines[1] and "alpha" in lines[0]
    proc = run_csub(["budget", "RUN/nope.safetensors", "--latency-ms", "1"], cwd)
    assert proc.returncode != 0 and "nope.safetensors" in proc.stderr


@pytest.mark.parametrize("args, problem", [
    (["train", "--dataset", "fashion-mnist-bundled", "--model", "mlp", "--method", "target_topk",
      "--epochs", "1", "--out", "BAD"], "--topk"),
    (["train", "--dataset", "fashion-mnist-bundled", "--model", "mlp", "--epochs", "0", "--out", "BAD"],
     "--epochs"),
    (["train", "--dataset", "fashion-mnist-bundled", "--model", "no_such_model", "--out", "BAD"],
     "no_such_model"),
    (["demo", "--epochs", "0", "--out", "BAD"], "--epochs"),
], ids=["target_topk-without-topk", "epochs-0", "unknown-model", "demo-epochs-0"])
def test_bad_arguments(tmp_path, args, problem):
    proc = run_csub(args, tmp_path)
    assert proc.returncode != 0
    assert problem in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "BAD").exists()  # rejected before any work
