"""The sparse convolution's kept weights compiled to AVX-512 code (csrc/sparse_jit.c), the
runtime's path for 3x3 and larger sparse convs where the CPU has AVX-512.

``_core.conv2d_sparse_forward(..., jit=True)`` makes the code for the call and runs it. It is
checked against the float64 twin computed from the CSR itself (tests/reference/spconv.py), against
PyTorch, and bit for bit against the gather kernels it replaces (each output channel's kept weights
summed in the same order, by the same fused multiply-adds), over shapes that reach every part of
the emitted code: more than one chunk of output channels, uneven chunks, empty rows, weight tables
past the one-byte displacement, input offsets past it, strides and paddings, 5x5 and 7x7 kernels.
"""
import os

import numpy as np
import pytest

import csub
from csub import _core
from gradcheck import assert_close
from reference import spconv as sref
from testkit import run_json_at_isa, supported_isa_levels

needs_jit = pytest.mark.skipif(not _core.sparse_jit_available(), reason="no AVX-512 here: the code is not made")


@pytest.fixture
def threads():
    old = csub.get_num_threads()
    yield csub.set_num_threads
    csub.set_num_threads(old)


def case(rng, N, C, H, W, K, R, keep, zero_rows=()):
    w = rng.standard_normal((K, C, R, R)).astype(np.float32)
    mask = np.ones(w.shape, np.uint8) if keep >= 1.0 else _core.topk_mask(w, keep)
    for k in zero_rows:
        mask[k] = 0
    wm = _core.apply_mask(w, mask)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    return x, wm, mask, _core.csr_from_mask(wm, mask), b


# (N, C, H, W, K, R, stride, pad, keep): one chunk (K <= 29), chunks of up to 29 and uneven ones (30, 31,
# 61, 97), keep 1.0 (a load feeding every accumulator; tables of thousands of weights), odd sizes, strides
# 2 and 3; offsets from one to thousands of 16-float blocks apart (the code's block pointer moved up)
SHAPES = [
    (1, 3, 9, 9, 5, 3, 1, 1, 0.5), (2, 16, 12, 10, 31, 3, 1, 1, 0.3), (1, 64, 14, 14, 61, 3, 1, 1, 0.1),
    (3, 7, 13, 11, 33, 3, 2, 1, 0.4), (1, 12, 15, 15, 97, 3, 1, 1, 1.0), (2, 5, 17, 19, 8, 5, 1, 2, 0.6),
    (1, 3, 23, 23, 16, 7, 2, 3, 0.5), (2, 9, 10, 10, 30, 3, 3, 0, 0.5), (1, 96, 7, 7, 64, 3, 1, 1, 0.2),
    (1, 2, 3, 3, 4, 3, 1, 1, 1.0),
]


@needs_jit
@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad,keep", SHAPES)
def test_jit_against_twin_and_gather(rng, N, C, H, W, K, R, stride, pad, keep):
    x, wm, mask, csr, b = case(rng, N, C, H, W, K, R, keep, zero_rows=(K // 2,))
    y = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, jit=True)
    assert_close(y, sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad), 1e-5, 1e-6, "y")
    np.testing.assert_array_equal(y[:, K // 2], np.broadcast_to(b[K // 2], y[:, K // 2].shape))  # bias only
    gather = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, relu=True)
    np.testing.assert_array_equal(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, relu=True,
                                                              jit=True), gather)


@needs_jit
@pytest.mark.parametrize("threads_n", [1, 2, 3])
def test_jit_pieces_and_image_groups(rng, threads, threads_n):
    """Chunks whose code runs past one piece (20 channels of about 690 kept weights: several
    pieces, the later ones continuing the sums the earlier stored), run over groups of images
    (5 images: 4 + 1 on one thread, 3 + 2 on two, 2 + 2 + 1 on three): the bits of the gather,
    and the twin."""
    threads(threads_n)
    x, wm, mask, csr, b = case(rng, 5, 256, 7, 7, 40, 3, 0.3, zero_rows=(7,))
    res = rng.standard_normal((5, 40, 7, 7)).astype(np.float32)
    y = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, 1, 1, residual=res, relu=True, jit=True)
    np.testing.assert_array_equal(y, _core.conv2d_sparse_forward(x, *csr, wm.shape, b, 1, 1, residual=res, relu=True))
    want = np.maximum(sref.conv2d_forward(x, *csr, wm.shape, b, 1, 1) + res, 0)
    assert_close(y, want, 1e-5, 1e-6, "y")


@needs_jit
@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad,keep", SHAPES[:4])
def test_jit_against_torch(rng, torch, N, C, H, W, K, R, stride, pad, keep):
    x, wm, mask, csr, b = case(rng, N, C, H, W, K, R, keep)
    want = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(wm, dtype=torch.float64),
                                      torch.tensor(b, dtype=torch.float64), stride, pad)
    assert_close(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, jit=True), want.numpy(),
                 1e-5, 1e-6, "y")


@needs_jit
@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad,keep", SHAPES[1:4])
def test_jit_residual_relu_and_nan(rng, N, C, H, W, K, R, stride, pad, keep):
    """relu(conv + b + residual) as the twin; no bias; NaN in x or in the residual stays NaN."""
    x, wm, mask, csr, b = case(rng, N, C, H, W, K, R, keep)
    want = sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad)
    res = rng.standard_normal(want.shape).astype(np.float32)
    got = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res, relu=True, jit=True)
    assert_close(got, np.maximum(want + res, 0), 1e-5, 1e-6, "relu(y + residual)")
    assert_close(_core.conv2d_sparse_forward(x, *csr, wm.shape, None, stride, pad, jit=True),
                 sref.conv2d_forward(x, *csr, wm.shape, None, stride, pad), 1e-5, 1e-6, "y without a bias")
    x[0, :, 0, 0] = np.nan  # reaches the outputs whose window holds (0, 0) through a kept weight
    nan_want = np.isnan(sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad))
    assert nan_want.any()
    np.testing.assert_array_equal(np.isnan(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad,
                                                                       relu=True, jit=True)), nan_want)
    res[...] = np.nan
    assert np.isnan(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res, jit=True)).all()


@needs_jit
def test_jit_nothing_kept(rng):
    x, wm, mask, csr, b = case(rng, 2, 4, 6, 6, 35, 3, 0.3)
    none = _core.csr_from_mask(wm, np.zeros_like(mask))
    y = _core.conv2d_sparse_forward(x, *none, wm.shape, b, 1, 1, jit=True)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None, None], y.shape))


# one image split across threads by bands of rows, or by chunks of output channels (few rows, or the
# code outweighs the planes: ResNet18's 14 x 14 layer's 9 chunks, the fifth cut between two threads
# by rows), and whole images per thread
@needs_jit
@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad,keep", [
    (1, 24, 66, 40, 64, 3, 1, 1, 0.6), (1, 24, 66, 40, 64, 3, 2, 1, 0.6), (1, 192, 7, 7, 96, 3, 1, 1, 0.5),
    (1, 160, 14, 14, 120, 3, 2, 1, 0.5), (1, 256, 14, 14, 256, 3, 1, 1, 0.1), (3, 16, 20, 20, 40, 3, 1, 1, 0.3)])
def test_jit_thread_counts_same_bits(rng, threads, N, C, H, W, K, R, stride, pad, keep):
    """Every output is one chunk's sum whatever the split: the same bits on 1, 2 and 3 threads."""
    x, wm, mask, csr, b = case(rng, N, C, H, W, K, R, keep)
    res = rng.standard_normal((N, K, (H + 2 * pad - R) // stride + 1, (W + 2 * pad - R) // stride + 1))
    res = res.astype(np.float32)
    out = []
    for t in (1, 2, 3):
        threads(t)
        out.append(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res, jit=True))
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])
    assert_close(out[0], sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad) + res, 1e-5, 1e-6, "y")


SCRIPT = """
import json, sys
import numpy as np
from csub import _core
rng = np.random.default_rng(3)
w = rng.standard_normal((40, 8, 3, 3)).astype(np.float32)
mask = _core.topk_mask(w, 0.3)
csr = _core.csr_from_mask(_core.apply_mask(w, mask), mask)
x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
y = _core.conv2d_sparse_forward(x, *csr, w.shape, None, 1, 1, jit=True)
g = _core.conv2d_sparse_forward(x, *csr, w.shape, None, 1, 1)
print(json.dumps({"isa": _core.isa(), "available": _core.sparse_jit_available(), "same": bool((y == g).all())}))
"""


def test_jit_only_at_avx512():
    """At a level below AVX-512 no code is made and jit=True runs the gather: the same numbers."""
    for isa in supported_isa_levels():
        res = run_json_at_isa(isa, SCRIPT)
        assert res["available"] == (isa in ("avx512", "avx512vnni")), res
        assert res["same"], res


def test_runtime_jit_against_gather(rng, monkeypatch):
    """A compressed sparse network with its 3x3 convs as code and with CSUB_SPARSE_JIT=0 (read at
    set_alpha): the same logits, at two alphas in turn (the code is made again at each)."""
    from csub import models
    csub.manual_seed(0)
    model = models.resnet18(regime="unstructured", num_classes=10)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    monkeypatch.setenv("CSUB_SPARSE_JIT", "0")
    gather = model.compress(0.1, input_shape=(3, 32, 32))
    monkeypatch.delenv("CSUB_SPARSE_JIT")
    code = model.compress(0.1, input_shape=(3, 32, 32))
    for alpha in (0.1, 0.25, 0.1):
        code.set_alpha(alpha)
        monkeypatch.setenv("CSUB_SPARSE_JIT", "0")
        gather.set_alpha(alpha)
        monkeypatch.delenv("CSUB_SPARSE_JIT")
        assert_close(code(x), gather(x), 1e-5, 1e-6, f"logits at alpha {alpha}")
    if _core.sparse_jit_available():
        assert code.memory_bytes() > gather.memory_bytes()  # the code is counted
    else:
        assert code.memory_bytes() == gather.memory_bytes()
    assert os.environ.get("CSUB_SPARSE_JIT") is None


def test_jit_bad_input(rng):
    """jit=True goes through the same checks as the gather: a bad argument is named, never run."""
    x, wm, mask, csr, b = case(rng, 1, 4, 6, 6, 5, 3, 0.5)
    with pytest.raises(ValueError, match="residual"):
        _core.conv2d_sparse_forward(x, *csr, wm.shape, b, 1, 1, residual=np.zeros((1, 1, 6, 6), np.float32),
                                    jit=True)
    with pytest.raises(ValueError, match="x"):
        _core.conv2d_sparse_forward(x[0], *csr, wm.shape, b, 1, 1, jit=True)
    with pytest.raises(TypeError):
        _core.sparse_jit_available(1)
