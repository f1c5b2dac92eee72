"""The memory of csub's large outputs (csrc/python/py_alloc.c): an output from 1 MiB up takes
the block of an earlier one of the same byte size that nothing references any more; views keep
a block alive; the cache is bounded by CSUB_ARRAY_CACHE_MB (oldest blocks dropped first, 0 turns
it off, a bad value fails the import naming it); csub.empty_cache frees it; and reused memory
never shows through (outputs are fully written, zeros are zeros)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import csub
from csub import _core

MIB = 1 << 20


def _addr(a):
    return a.__array_interface__["data"][0]


def _big(rng, rows=512):
    """A gemm output of rows x 1024 float32 (2 MiB at 512 rows) and its operands' exact product."""
    a = rng.standard_normal((rows, 8)).astype(np.float32)
    b = rng.standard_normal((8, 1024)).astype(np.float32)
    return _core.gemm(a, b), a.astype(np.float64) @ b.astype(np.float64)


def _run(code, **env):
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                       timeout=120)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(autouse=True)
def _empty():
    csub.empty_cache()
    yield
    csub.empty_cache()


def test_a_freed_output_is_reused_for_the_same_size(rng):
    if _core.array_cache_info()["capacity"] == 0:
        pytest.skip("CSUB_ARRAY_CACHE_MB=0 for this run")
    c, _ = _big(rng)
    where = _addr(c)
    assert c.base is not None and not c.flags.owndata and c.flags.writeable and c.flags.c_contiguous
    assert _addr(c) % 64 == 0
    del c
    info = _core.array_cache_info()
    assert info["blocks"] == 1 and info["bytes"] == 2 * MIB
    c2, want = _big(rng)  # the same size: the same block, fully rewritten
    assert _addr(c2) == where and _core.array_cache_info()["blocks"] == 0
    np.testing.assert_allclose(c2, want, rtol=1e-5, atol=1e-5)
    d, want_d = _big(rng, rows=600)  # another size: a new block
    assert _addr(d) != where
    np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-5)


def test_small_outputs_and_live_views_are_left_alone(rng):
    small, _ = _big(rng, rows=64)  # 256 KiB: NumPy's own memory
    assert small.flags.owndata
    del small
    assert _core.array_cache_info()["blocks"] == 0
    c, want = _big(rng)
    view = c[100:200]
    del c
    assert _core.array_cache_info()["blocks"] == 0  # the view holds the block
    again, _ = _big(rng)
    np.testing.assert_allclose(view, want[100:200], rtol=1e-5, atol=1e-5)  # not overwritten
    del again, view
    assert _core.array_cache_info()["blocks"] == 2


def test_empty_cache_frees_every_block(rng):
    a, _ = _big(rng)
    b, _ = _big(rng, rows=300)
    nbytes = a.nbytes + b.nbytes
    del a, b
    if _core.array_cache_info()["capacity"] == 0:
        pytest.skip("CSUB_ARRAY_CACHE_MB=0 for this run")
    assert csub.empty_cache() == nbytes
    assert _core.array_cache_info()["blocks"] == 0 and csub.empty_cache() == 0


_EVICT = r"""
import numpy as np
from csub import _core
a, b, c = (_core.gemm(np.ones((n, 8), np.float32), np.ones((8, 1024), np.float32)) for n in (256, 300, 350))
del a, b, c  # 1, 1.17 and 1.37 MiB freed in this order into a 3 MiB cache: the first is dropped
info = _core.array_cache_info()
again = _core.gemm(np.ones((256, 8), np.float32), np.ones((8, 1024), np.float32))
print(info["capacity"], info["blocks"], info["bytes"], float(again.min()), float(again.max()))
"""


def test_the_cache_is_bounded_oldest_blocks_first():
    rc, out, err = _run(_EVICT, CSUB_ARRAY_CACHE_MB="3")
    assert rc == 0, err
    cap, blocks, nbytes, lo, hi = out.split()
    assert int(cap) == 3 * MIB and int(blocks) == 2 and int(nbytes) == (300 + 350) * 4096
    assert float(lo) == float(hi) == 8.0


def test_zero_turns_the_cache_off():
    code = ("import numpy as np; from csub import _core\n"
            "c = _core.gemm(np.ones((512, 8), np.float32), np.ones((8, 1024), np.float32))\n"
            "own = c.flags.owndata; del c; print(own, _core.array_cache_info()['blocks'])")
    rc, out, err = _run(code, CSUB_ARRAY_CACHE_MB="0")
    assert rc == 0, err
    assert out.split() == ["True", "0"]


@pytest.mark.parametrize("value", ["-1", "lots", "1.5", "3 MB"])
def test_a_bad_size_fails_the_import_naming_it(value):
    rc, _, err = _run("import csub", CSUB_ARRAY_CACHE_MB=value)
    assert rc != 0 and "CSUB_ARRAY_CACHE_MB" in err and "ImportError" in err, err


def test_training_steps_reuse_their_activations(rng):
    """Two forward-backward passes of a CNN: the second allocates from the first's blocks, and both
    give the same gradients (no stale values in reused memory)."""
    if _core.array_cache_info()["capacity"] == 0:
        pytest.skip("CSUB_ARRAY_CACHE_MB=0 for this run")
    csub.manual_seed(4)
    model = csub.models.cnn(widths=(32, 64), num_classes=10)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    grads = []
    for _ in range(2):
        model.zero_grad()
        out = model(x)
        model.backward(np.ones_like(out) / out.size)
        grads.append([p.grad.copy() for p in model.parameters()])
        del out
    assert _core.array_cache_info()["blocks"] > 0
    for g1, g2 in zip(*grads):
        np.testing.assert_array_equal(g1, g2)
