"""``python -m csub``: run as a subprocess in a temporary directory, importing this repository's csub."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def run_fixture(name, args):
    """A module-scoped fixture: ``python -m csub`` with ``args`` run to success once in a new
    temporary cwd (named after ``name``), shared by the module's tests as (cwd, stdout)."""
    @pytest.fixture(scope="module")
    def run_dir(tmp_path_factory):
        cwd = tmp_path_factory.mktemp(name)
        return cwd, ok(run_csub(args, cwd)).stdout

    return run_dir


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


run_dir = run_fixture("cli", TRAIN_MLP)  # a finished 1-epoch lcs_l MLP run: (cwd, stdout)


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


# -- files that cannot be written: checked before the work, one line on stderr, no traceback --

def failed_cleanly(proc):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m csub "), proc.stderr
    return lines[0]


def test_eval_refuses_an_unwritable_run_before_evaluating(run_dir):
    cwd, _ = run_dir
    for name in ("eval_cli.json", "eval_cli.csv"):
        blocker = cwd / "RUN" / name
        if blocker.exists():
            blocker.unlink()
        blocker.mkdir()  # a directory where the results go (root writes through permission bits)
        try:
            proc = run_csub(["eval", "RUN", "--alphas", "1.0"], cwd)
            line = failed_cleanly(proc)
            assert name in line and "is a directory" in line
            assert proc.stdout == ""  # refused before the evaluation, not after it
        finally:
            blocker.rmdir()
    proc = run_csub(["eval", "RUN", "--alphas", "1.0", "--plot", "RUN/config.json/p.png"], cwd)
    assert "--plot" in failed_cleanly(proc) and proc.stdout == ""


@pytest.mark.parametrize("target, kind", [("RUN/config.json/m.safetensors", "Not a directory"),
                                          ("RUN", "is a directory"),
                                          ("/sys/csub-test-model.safetensors", "Permission denied|Operation not permitted")])
def test_export_refuses_an_unwritable_target_before_evaluating(run_dir, target, kind):
    if target.startswith("/sys") and not os.path.isdir("/sys"):
        pytest.skip("no /sys to refuse the write")
    cwd, _ = run_dir
    proc = run_csub(["export", "RUN", target], cwd)
    line = failed_cleanly(proc)
    assert re.search(kind, line) and target in line
    assert proc.stdout == ""  # nothing evaluated


@pytest.mark.parametrize("out, kind", [("FILE", "File exists"), ("FILE/run", "Not a directory"),
                                       ("/sys/csub-test-run", "Permission denied|Operation not permitted")])
def test_train_refuses_an_unwritable_out_before_training(tmp_path, out, kind):
    if out.startswith("/sys") and not os.path.isdir("/sys"):
        pytest.skip("no /sys to refuse the write")
    (tmp_path / "FILE").write_text("a file, not a directory")
    proc = run_csub(TRAIN_MLP[:-3] + ["--out", out, "--quiet"], tmp_path)
    line = failed_cleanly(proc)
    assert re.search(kind, line) and out in line
    assert proc.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_fit_refuses_an_unwritable_out_before_the_first_epoch(tmp_path):
    from csub import models, train

    (tmp_path / "FILE").write_text("x")
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (8, 1, 4, 4), dtype=np.uint8), rng.integers(0, 10, 8))
    m = models.mlp(in_features=16, hidden=(4,), regime="unstructured", subspace="line")
    w = m.body[1].weight.data.copy()
    with pytest.raises(NotADirectoryError, match="out: cannot write"):
        train.fit(m, data, epochs=1, batch_size=4, out=str(tmp_path / "FILE" / "run"), progress=False)
    (tmp_path / "run" / "checkpoint.safetensors").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="checkpoint.safetensors"):
        train.fit(m, data, epochs=1, batch_size=4, out=str(tmp_path / "run"), progress=False)
    np.testing.assert_array_equal(m.body[1].weight.data, w)  # no step was taken


@pytest.mark.parametrize("err", [PermissionError(13, "Permission denied", "RUN/x.json"),
                                 IsADirectoryError(21, "Is a directory", "RUN/x.json"),
                                 NotADirectoryError(20, "Not a directory", "RUN/x.json"),
                                 FileExistsError(17, "File exists", "RUN/x.json"),
                                 FileNotFoundError(2, "No such file or directory", "RUN/x.json"),
                                 OSError(28, "No space left on device", "RUN/x.json")],
                         ids=lambda e: type(e).__name__ + str(e.errno))
def test_every_os_error_is_one_line(monkeypatch, capsys, err):
    from csub import cli

    def fail(args):
        raise err

    monkeypatch.setattr(cli, "cmd_eval", fail)
    assert cli.main(["eval", "RUN"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"python -m csub eval: error: {err.strerror}: RUN/x.json\n"


def test_eval_prints_before_saving(run_dir, monkeypatch, capsys):
    """A save that fails after the checks (disk full, a race) still leaves the results on stdout."""
    from csub import cli, train

    cwd, _ = run_dir

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(cwd / "RUN" / "eval_cli.json"))

    monkeypatch.setattr(train, "save_results", disk_full)
    assert cli.main(["eval", str(cwd / "RUN"), "--alphas", "0.1", "1.0"]) == 1
    captured = capsys.readouterr()
    assert sorted(table_rows(captured.out)) == [0.1, 1.0]
    assert "No space left on device" in captured.err and captured.err.count("\n") == 1
