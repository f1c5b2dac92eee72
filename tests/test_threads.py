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
