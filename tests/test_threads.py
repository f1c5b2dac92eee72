"""Threads: the thread count's range (every accepted count runs), and models shared between
Python threads (calls serialised, a forward/backward pair kept on one thread)."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import csub
from csub import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def threads():
    old = csub.get_num_threads()
    yield
    csub.set_num_threads(old)


@pytest.mark.parametrize("setter", [csub.set_num_threads, csub._core.set_num_threads], ids=["csub", "_core"])
def test_thread_count_out_of_range_is_refused_by_name(setter, threads):
    before = csub.get_num_threads()
    for bad in (0, -1, csub.MAX_NUM_THREADS + 1, 100_000, 2**31, 2**63, 2**64):
        with pytest.raises(ValueError, match="^n: "):
            setter(bad)
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError, match="^n: "):
            setter(bad)
    assert csub.get_num_threads() == before  # nothing refused was applied
    setter(csub.MAX_NUM_THREADS)
    assert csub.get_num_threads() == csub.MAX_NUM_THREADS
    setter(np.int64(3)) if setter is csub.set_num_threads else setter(3)
    assert csub.get_num_threads() == 3


# Runs in a child process: a crash there (it used to be SIGSEGV inside OpenMP) fails the test
# instead of killing the test run. Every kernel family of a training step and of the compressed
# runtime runs at the largest count, from the main thread and from a Python thread.
_RUN_AT = textwrap.dedent("""
    import sys, threading
    import numpy as np
    import csub
    from csub import models

    def step(n):
        csub.set_num_threads(n)
        rng = np.random.default_rng(0)
        out = []
        csub.manual_seed(0)
        nets = [(models.cnn(widths=(4, 8), image_size=16, norm="gn", regime="unstructured", subspace="line"), 0.3),
                (models.cnn(widths=(4, 8), image_size=16, norm="bn", regime="quantized"), 0.5),
                (models.cpreresnet20(in_channels=1, norm="in", regime="structured", subspace="line"), 0.4),
                (models.mlp(in_features=256, hidden=(16, 8), regime="unstructured", norm="bn"), 0.1)]
        for m, a in nets:
            x = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
            y = m.set_alpha(a)(x)
            dx = m.backward(np.ones_like(y))
            m.eval()
            out += [y, dx, m(x), m.compress(a, (1, 16, 16))(x)]
        return out

    ref = step(1)
    n = int(sys.argv[1])
    for where in ("main", "thread"):
        got = []
        if where == "main":
            got = step(n)
        else:
            t = threading.Thread(target=lambda: got.extend(step(n)))
            t.start()
            t.join()
        assert len(got) == len(ref)
        for a, b in zip(ref, got):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        print(where, "ok", flush=True)
""")


def test_the_largest_thread_count_runs_every_kernel_family():
    r = subprocess.run([sys.executable, "-c", _RUN_AT, str(csub.MAX_NUM_THREADS)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert r.stdout.split() == ["main", "ok", "thread", "ok"]


# -- one model, several Python threads ---------------------------------------------------------

def _net():
    m = models.cnn(widths=(8, 16), image_size=16, regime="unstructured", subspace="line", norm="in")
    x = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    return m, x


def _flipping(model, alphas, calls):
    """Start a thread that moves ``model`` between ``alphas`` until the returned stop() is called."""
    done = threading.Event()

    def run():
        i = 0
        while not done.is_set():
            calls(model, alphas[i % len(alphas)])
            i += 1

    t = threading.Thread(target=run)
    t.start()

    def stop():
        done.set()
        t.join()
    return stop


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_set_alpha_from_another_thread_never_mixes_alphas(mode):
    """The reproducer: set_alpha on one thread during forward on another gave outputs matching
    neither alpha in 159 of 200 calls. Each forward now runs at one alpha."""
    m, x = _net()
    m.train(mode == "train")
    alphas = (0.2, 0.9)
    ref = [m.set_alpha(a)(x) for a in alphas]
    stop = _flipping(m, alphas, lambda model, a: model.set_alpha(a))
    outputs = []
    try:
        for _ in range(200):
            outputs.append(m(x))
    finally:
        stop()
    mixed = sum(not any(np.array_equal(y, r) for r in ref) for y in outputs)
    assert mixed == 0


def test_concurrent_forwards_each_get_their_own_answer():
    m, x = _net()
    m.eval().set_alpha(0.5)
    xs = [x * (i + 1) for i in range(4)]
    ref = [m(v) for v in xs]
    got = [[] for _ in xs]

    def work(i):
        for _ in range(20):
            got[i].append(m(xs[i]))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, r in enumerate(ref):
        assert all(np.array_equal(g, r) for g in got[i])


def test_backward_on_another_thread_is_refused():
    m, x = _net()
    y = m.set_alpha(0.5)(x)
    err = []

    def other():
        try:
            m.backward(np.ones_like(y))
        except RuntimeError as e:
            err.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert err and "another thread" in err[0]
    m.backward(np.ones_like(y))  # the thread that ran forward may


def test_evaluate_and_flops_are_atomic_under_set_alpha():
    """evaluate holds the model for its whole grid: another thread's set_alpha waits, and the
    results are those of an undisturbed run."""
    m, _ = _net()
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (16, 1, 16, 16), dtype=np.uint8), rng.integers(0, 10, 16))
    ref = csub.train.evaluate(m, data, [0.1, 0.5, 1.0])
    flops = m.set_alpha(1.0).flops((1, 16, 16))
    stop = _flipping(m, (0.3, 0.7), lambda model, a: model.set_alpha(a))
    try:
        for _ in range(5):
            assert csub.train.evaluate(m, data, [0.1, 0.5, 1.0]) == ref
            assert m.flops((1, 16, 16)) == flops
    finally:
        stop()


def test_every_public_state_method_holds_the_lock():
    for cls in (models.MLP, models.CNN, models.CPreResNet20, models.ResNet18):
        for name in models.SubspaceNet._LOCKED:
            assert getattr(getattr(cls, name), "_locked", False), f"{cls.__name__}.{name}"
