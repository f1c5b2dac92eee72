"""Masked sparse matmul: CSR compression, sparse conv2d / linear kernels, and the layers' choice
between the sparse and the dense path.

The sparse kernels are checked against the dense kernels on the masked
weight, against a float64 twin that works from the CSR itself
(tests/reference/spconv.py), against finite differences and against
PyTorch. Masked positions must get exactly zero gradient.
"""
import numpy as np
import pytest

import csub
from csub import _core
from csub.nn import layers
from gradcheck import assert_close, numerical_grad
from reference import conv as ref
from reference import spconv as sref


@pytest.fixture
def threads():
    old = csub.get_num_threads()
    yield csub.set_num_threads
    csub.set_num_threads(old)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def masked(rng, shape, keep, zero_row=False):
    """(w, mask, masked w, csr) with the top-k mask of keep fraction `keep` (1.0: all kept)."""
    w = f32(rng, *shape)
    mask = np.ones(shape, np.uint8) if keep >= 1.0 else _core.topk_mask(w, keep)
    if zero_row:
        mask[shape[0] // 2] = 0
    wm = _core.apply_mask(w, mask)
    return w, mask, wm, _core.csr_from_mask(wm, mask)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


# ====================================================================== CSR

def test_csr_by_hand():
    w = np.array([[1.0, 0.0, -2.0], [0.0, 0.0, 0.0], [3.0, 4.0, 5.0]], np.float32)
    mask = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1]], np.uint8)  # a kept zero, an empty row
    rowptr, colidx, values = _core.csr_from_mask(w, mask)
    np.testing.assert_array_equal(rowptr, [0, 2, 2, 4])
    np.testing.assert_array_equal(colidx, [0, 1, 1, 2])
    np.testing.assert_array_equal(values, [1.0, 0.0, 4.0, 5.0])
    assert rowptr.dtype == np.int64 and colidx.dtype == np.int32 and values.dtype == np.float32


@pytest.mark.parametrize("shape,keep", [((5, 3, 3, 3), 0.3), ((64, 16, 1, 1), 0.05), ((7, 11), 0.5),
                                        ((4, 2, 2, 2), 1.0)])
def test_csr_against_twin(rng, shape, keep):
    _, mask, wm, csr = masked(rng, shape, keep)
    for got, want in zip(csr, sref.csr_from_mask(wm, mask)):
        np.testing.assert_array_equal(got, want)


def test_csr_nothing_kept(rng):
    rowptr, colidx, values = _core.csr_from_mask(f32(rng, 3, 4), np.zeros((3, 4), np.uint8))
    np.testing.assert_array_equal(rowptr, [0, 0, 0, 0])
    assert colidx.size == 0 and values.size == 0


# ================================================================ conv2d

# (N, C, H, W, K, R, stride, padding): cPreResNet20's kinds of conv at reduced batch, odd sizes
CONV_SHAPES = [
    (2, 16, 8, 8, 16, 3, 1, 1),     # 3x3 bottleneck conv
    (2, 16, 8, 8, 64, 1, 1, 0),     # 1x1 expansion (direct: x itself)
    (2, 64, 8, 8, 16, 1, 1, 0),     # 1x1 reduction
    (2, 32, 8, 8, 32, 3, 2, 1),     # 3x3 stride 2
    (2, 64, 8, 8, 128, 1, 2, 0),    # 1x1 stride-2 shortcut
    (1, 5, 7, 9, 3, 3, 2, 2),       # batch 1, odd sizes, padding 2
    (3, 3, 8, 5, 4, 2, 3, 1),       # even kernel, stride 3
    (2, 4, 6, 7, 5, 4, 2, 3),       # kernel 4, padding larger than half the kernel
    (2, 2, 5, 6, 3, 3, 1, 0),       # no padding, 3x3 (wide rows wrap around)
    (2, 3, 7, 7, 2, 1, 2, 0),       # 1x1 stride 2, odd size
    (1, 3, 4, 4, 2, 5, 1, 2),       # kernel larger than the input
]
KEEPS = [1.0, 0.5, 0.1, 0.01]


def _conv_case(rng, N, C, H, W, K, R, stride, pad, keep, zero_row=False, bias=True):
    _, mask, wm, csr = masked(rng, (K, C, R, R), keep, zero_row)
    x = f32(rng, N, C, H, W)
    b = f32(rng, K) if bias else None
    P, Q = ref.conv_out_size(H, R, stride, pad), ref.conv_out_size(W, R, stride, pad)
    dy = f32(rng, N, K, P, Q)
    return x, mask, wm, csr, b, dy


def _sparse_conv(x, csr, wshape, b, dy, stride, pad, dw=None, db=None):
    y = _core.conv2d_sparse_forward(x, *csr, wshape, b, stride, pad)
    dx = _core.conv2d_sparse_backward(x, *csr, wshape, dy, dw, db, stride, pad)
    return y, dx


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", CONV_SHAPES)
def test_conv_sparse_against_dense_masked(rng, N, C, H, W, K, R, stride, pad, keep):
    x, mask, wm, csr, b, dy = _conv_case(rng, N, C, H, W, K, R, stride, pad, keep)
    dw, db = np.zeros_like(wm), np.zeros(K, np.float32)
    y, dx = _sparse_conv(x, csr, wm.shape, b, dy, stride, pad, dw, db)
    dw_d, db_d = np.zeros_like(wm), np.zeros(K, np.float32)
    y_d = _core.conv2d_forward(x, wm, b, stride, pad)
    dx_d = _core.conv2d_backward(x, wm, dy, dw_d, db_d, stride, pad)
    assert rel_err(y, y_d) < 1e-5 and rel_err(dx, dx_d) < 1e-5
    assert rel_err(dw, dw_d * mask) < 1e-5 and rel_err(db, db_d) < 1e-5
    assert not dw[mask == 0].any()  # masked positions: exactly zero


@pytest.mark.parametrize("R,pad,stride", [(1, 0, 1), (3, 1, 1), (3, 1, 2)])
def test_conv_sparse_every_row_length(rng, R, pad, stride):
    """Output rows of every length from 1 to 140: each tail of the 64-, 8- and 1-wide passes;
    plane rows of up to 8 vectors (their masks made once per plane on AVX-512) and longer ones
    (300 wide)."""
    for W in list(range(1, 141)) + [300]:
        x, mask, wm, csr, b, dy = _conv_case(rng, 1, 3, 2 * stride, W, 4, R, stride, pad, 0.5)
        y = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad)
        y_d = _core.conv2d_forward(x, wm, b, stride, pad)
        assert rel_err(y, y_d) < 1e-5, W


@pytest.mark.parametrize("keep", [0.5, 0.1])
@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", CONV_SHAPES[5:])
def test_conv_sparse_against_twin(rng, N, C, H, W, K, R, stride, pad, keep):
    x, mask, wm, csr, b, dy = _conv_case(rng, N, C, H, W, K, R, stride, pad, keep, zero_row=True)
    dv, db = np.zeros(csr[2].size, np.float32), np.zeros(K, np.float32)
    y, dx = _sparse_conv(x, csr, wm.shape, b, dy, stride, pad, dv, db)
    ey = sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad)
    edx, edv, edb = sref.conv2d_backward(x, *csr, wm.shape, dy, stride, pad)
    assert_close(y, ey, 1e-5, 1e-6, "y")
    assert_close(dx, edx, 1e-5, 1e-6, "dx")
    assert_close(dv, edv, 1e-5, 1e-6, "dvalues")
    assert_close(db, edb, 1e-5, 1e-6, "db")
    # and the twin agrees with the dense twin on the masked weight
    assert_close(ey, ref.conv2d_forward(x, wm, b, stride, pad), 1e-12, 1e-12, "twin y")


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [(1, 2, 5, 4, 3, 3, 2, 1), (2, 2, 4, 4, 3, 1, 1, 0),
                                                    (1, 2, 5, 6, 2, 3, 1, 0)])
def test_conv_sparse_twin_finite_differences(rng, N, C, H, W, K, R, stride, pad):
    x, mask, wm, csr, b, dy = _conv_case(rng, N, C, H, W, K, R, stride, pad, 0.5)
    rowptr, colidx, values = csr
    wshape = wm.shape
    dx, dv, db = sref.conv2d_backward(x, rowptr, colidx, values, wshape, dy, stride, pad)
    f = lambda xx, vv, bb: sref.conv2d_forward(xx, rowptr, colidx, vv, wshape, bb, stride, pad)  # noqa: E731
    assert_close(dx, numerical_grad(lambda t: f(t, values, b), x, dy), 1e-7, 1e-7, "dx")
    assert_close(dv, numerical_grad(lambda t: f(x, t, b), values, dy), 1e-7, 1e-7, "dvalues")
    assert_close(db, numerical_grad(lambda t: f(x, values, t), b, dy), 1e-7, 1e-7, "db")
    # the C kernels against the same finite differences
    dvc = np.zeros(values.size, np.float32)
    dxc = _core.conv2d_sparse_backward(x, *csr, wshape, dy, dvc, None, stride, pad)
    assert_close(dxc, dx, 1e-5, 1e-6, "dx (C)")
    assert_close(dvc, dv, 1e-5, 1e-6, "dvalues (C)")


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [(2, 16, 8, 8, 16, 3, 1, 1), (3, 6, 9, 7, 5, 3, 2, 1),
                                                    (1, 8, 6, 6, 12, 1, 2, 0)])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_conv_sparse_against_torch(rng, torch, N, C, H, W, K, R, stride, pad, keep):
    x, mask, wm, csr, b, dy = _conv_case(rng, N, C, H, W, K, R, stride, pad, keep)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, wm, b))
    yt = torch.nn.functional.conv2d(xt, wt * torch.tensor(mask, dtype=torch.float64), bt, stride, pad)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dw, db = np.zeros_like(wm), np.zeros(K, np.float32)
    y, dx = _sparse_conv(x, csr, wm.shape, b, dy, stride, pad, dw, db)
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-6, "y")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-6, "dx")
    assert_close(dw, wt.grad.numpy(), 1e-5, 1e-6, "dw")  # torch's gradient is zero where masked
    assert_close(db, bt.grad.numpy(), 1e-5, 1e-6, "db")


def test_conv_sparse_zero_row_and_nothing_kept(rng):
    x, mask, wm, csr, b, dy = _conv_case(rng, 2, 4, 6, 6, 6, 3, 1, 1, 0.3, zero_row=True)
    dw = np.zeros_like(wm)
    y, dx = _sparse_conv(x, csr, wm.shape, b, dy, 1, 1, dw)
    np.testing.assert_array_equal(y[:, 3], np.broadcast_to(b[3], y[:, 3].shape))  # bias only
    assert not dw[3].any()
    # nothing kept at all: y is the bias, dx and dw are zero
    none = _core.csr_from_mask(wm, np.zeros_like(mask))
    dw = np.full_like(wm, 7.0)
    y, dx = _sparse_conv(x, none, wm.shape, b, dy, 1, 1, dw)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None, None], y.shape))
    assert not dx.any() and (dw == 7.0).all()


def test_conv_sparse_backward_accumulates_and_options(rng):
    x, mask, wm, csr, b, dy = _conv_case(rng, 2, 4, 6, 6, 5, 3, 2, 1, 0.4)
    dw1, db1 = np.zeros_like(wm), np.zeros(5, np.float32)
    dx = _core.conv2d_sparse_backward(x, *csr, wm.shape, dy, dw1, db1, 2, 1)
    dw2, db2 = dw1.copy(), db1.copy()
    assert _core.conv2d_sparse_backward(x, *csr, wm.shape, dy, dw2, db2, 2, 1, need_dx=False) is None
    assert_close(dw2, 2 * dw1, 1e-6, 1e-7, "dw +=")
    assert_close(db2, 2 * db1, 1e-6, 1e-7, "db +=")
    # the (nnz,) form of dw equals the full form at the kept positions
    dv = np.zeros(csr[2].size, np.float32)
    dx2 = _core.conv2d_sparse_backward(x, *csr, wm.shape, dy, dv, stride=2, padding=1)
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(dw1[mask != 0], dv)


@pytest.mark.parametrize("N", [1, 2, 5])
def test_conv_sparse_thread_counts(rng, threads, N):
    x, mask, wm, csr, b, dy = _conv_case(rng, N, 8, 7, 7, 6, 3, 2, 1, 0.3)
    out = []
    for t in (1, 2, 3):
        threads(t)
        dw = np.zeros_like(wm)
        out.append(_sparse_conv(x, csr, wm.shape, b, dy, 2, 1, dw) + (dw,))
    for o in out[1:]:
        for a, e in zip(o, out[0]):
            assert rel_err(a, e) < 1e-6
    threads(2)  # the same thread count gives the same bits
    dw = np.zeros_like(wm)
    again = _sparse_conv(x, csr, wm.shape, b, dy, 2, 1, dw) + (dw,)
    for a, e in zip(again, out[1]):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", CONV_SHAPES[5:] + [(1, 2, 9, 7, 3, 1, 2, 0)])
def test_conv_sparse_residual_fused(rng, N, C, H, W, K, R, stride, pad):
    """The two-step form with a residual: y = conv + b + residual, as the twin plus the residual."""
    x, mask, wm, csr, b, dy = _conv_case(rng, N, C, H, W, K, R, stride, pad, 0.3, zero_row=True)
    res = f32(rng, *dy.shape)
    y = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res)
    assert_close(y, sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad) + res, 1e-5, 1e-6, "y + residual")
    with pytest.raises(ValueError, match="residual"):
        _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res[:, :1].copy())


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", CONV_SHAPES[5:] + [(1, 2, 9, 7, 3, 1, 2, 0)])
def test_conv_sparse_relu_fused(rng, N, C, H, W, K, R, stride, pad):
    """relu=True: max(conv + b (+ residual), 0) against the twin; NaN stays NaN, as csub's ReLU."""
    x, mask, wm, csr, b, dy = _conv_case(rng, N, C, H, W, K, R, stride, pad, 0.3, zero_row=True)
    res = f32(rng, *dy.shape)
    want = sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad)
    assert_close(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, relu=True), np.maximum(want, 0),
                 1e-5, 1e-6, "relu(y)")
    assert_close(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res, relu=True),
                 np.maximum(want + res, 0), 1e-5, 1e-6, "relu(y + residual)")
    res[...] = np.nan
    assert np.isnan(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res, relu=True)).all()


def test_conv_sparse_relu_in_the_last_channel_block(rng):
    """A 1x1 conv writes y in place over input-channel blocks and applies the ReLU as the last block
    is stored: also for a row with no weight in that block (here: all in the first 8 channels) and
    an empty row."""
    C, K = 64, 8  # keep 0.5: blocks of 33 channels (csr.c fwd_layout), two of them
    w = f32(rng, K, C, 1, 1)
    mask = (rng.random(w.shape) < 0.5).astype(np.uint8)
    mask[0, 8:] = 0
    mask[1] = 0
    wm = _core.apply_mask(w, mask)
    csr = _core.csr_from_mask(wm, mask)
    x, b = f32(rng, 2, C, 32, 32), f32(rng, K)
    want = np.maximum(sref.conv2d_forward(x, *csr, wm.shape, b, 1, 0), 0)
    assert_close(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, 1, 0, relu=True), want, 1e-5, 1e-6, "relu(y)")


# One image, a layer large enough (at least 4M multiply-adds) that the threads share it: (C, H, W, R,
# stride, pad, keep, split): by output rows (csub_row_band), or by output channels where the kept
# weights outweigh the planes (ResNet18's last stages)
SPLIT_CASES = [
    (24, 66, 40, 3, 1, 1, 0.6, "rows"), (24, 66, 40, 3, 2, 1, 0.6, "rows"), (96, 66, 80, 1, 1, 0, 0.6, "rows"),
    (96, 66, 80, 1, 2, 0, 0.6, "rows"), (192, 7, 7, 3, 1, 1, 0.5, "channels"), (160, 14, 14, 3, 2, 1, 0.5, "channels"),
    (512, 7, 7, 1, 1, 0, 0.5, "channels"),
]


@pytest.mark.parametrize("C,H,W,R,stride,pad,keep,by", SPLIT_CASES)
def test_conv_sparse_one_image_split(rng, threads, C, H, W, R, stride, pad, keep, by):
    """1 to 3 threads give the same bits (each output is one thread's sum in a fixed order) and
    agree with the dense convolution, with a residual and the ReLU or not."""
    x, mask, wm, csr, b, dy = _conv_case(rng, 1, C, H, W, C, R, stride, pad, keep)
    P, Q = dy.shape[2:]
    ph = min(stride, R) ** 2
    planes = C * ph * (P + (R - 1) // stride) * (Q + (R - 1) // stride)  # floats (csr.c, make_geom)
    assert (len(csr[2]) * 12 > planes * 4) == (by == "channels")  # the rule of the split
    res = f32(rng, *dy.shape)
    want = _core.conv2d_forward(x, wm, b, stride, pad)
    out = []
    for t in (1, 2, 3):
        threads(t)
        out.append((_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad),
                    _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res, relu=True)))
    for y, yr in out:
        assert rel_err(y, want) < 1e-5 and rel_err(yr, np.maximum(want + res, 0)) < 1e-5
        np.testing.assert_array_equal(y, out[0][0])
        np.testing.assert_array_equal(yr, out[0][1])


# The forward's blocking (csrc/csr.c, fwd_layout): output rows in bands, input channels in blocks
# whose plane rows fit in L1, output channels in chunks; wide rows rounded up to whole vectors.
BLOCKED_SHAPES = [
    (3, 64, 30, 37, 130, 3, 1, 1),   # bands of 4 rows (last one short), 2 channel blocks, 2 chunks of channels
    (1, 64, 30, 37, 130, 3, 1, 1),   # one image: the threads split its rows, then bands within
    (2, 300, 7, 7, 20, 3, 1, 1),     # 7x7 planes, one band, 3 channel blocks
    (5, 96, 14, 13, 16, 3, 2, 1),    # stride 2 (four phase planes), odd width, 3 channel blocks
    (2, 24, 70, 45, 10, 3, 2, 1),    # stride 2, bands of 6 rows (the last one short), 2 channel blocks
    (1, 300, 40, 30, 8, 1, 2, 0),    # 1x1 stride 2, bands of 9 rows, 5 channel blocks
    (2, 700, 12, 12, 6, 1, 1, 0),    # 1x1 stride 1 (x itself, rows not rounded), 12 channel blocks
    (4, 40, 17, 21, 9, 3, 1, 1),     # width not a multiple of 16, one block
]


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_sparse_blocked_row_lengths(rng, stride):
    """Planes large enough for bands and channel blocks, at every width from 24 to 72: each
    rounding of a band's wide rows to whole 16-float vectors, against the dense convolution."""
    for W in range(24, 73):
        x, mask, wm, csr, b, dy = _conv_case(rng, 2, 48, 30, W, 5, 3, stride, 1, 0.3)
        res = f32(rng, *dy.shape)
        want = _core.conv2d_forward(x, wm, b, stride, 1)
        assert rel_err(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, 1), want) < 1e-5, W
        assert rel_err(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, 1, residual=res), want + res) < 1e-5, W


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", BLOCKED_SHAPES)
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_conv_sparse_blocked_forward_against_twin(rng, threads, N, C, H, W, K, R, stride, pad, keep):
    """Forward with bias, with and without a residual, against the float64 twin, at 1 to 3
    threads: each output is one sum in a fixed order, so every thread count gives the same bits."""
    x, mask, wm, csr, b, dy = _conv_case(rng, N, C, H, W, K, R, stride, pad, keep, zero_row=True)
    res = f32(rng, *dy.shape)
    want = sref.conv2d_forward(x, *csr, wm.shape, b, stride, pad)
    out = []
    for t in (1, 2, 3):
        threads(t)
        y = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad)
        yr = _core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res)
        assert_close(y, want, 1e-5, 1e-6, f"y, {t} threads")
        assert_close(yr, want + res, 1e-5, 1e-6, f"y + residual, {t} threads")
        # the ReLU applied as y is written: the same sums, then max(., 0)
        np.testing.assert_array_equal(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, relu=True),
                                      np.where(y <= 0, np.float32(0), y))
        np.testing.assert_array_equal(_core.conv2d_sparse_forward(x, *csr, wm.shape, b, stride, pad, residual=res,
                                                                  relu=True), np.where(yr <= 0, np.float32(0), yr))
        out.append((y, yr))
    for y, yr in out[1:]:
        np.testing.assert_array_equal(y, out[0][0])
        np.testing.assert_array_equal(yr, out[0][1])


# ================================================================ linear

@pytest.mark.parametrize("N,I,O", [(1, 7, 5), (4, 16, 9), (33, 40, 17), (130, 64, 48)])
@pytest.mark.parametrize("keep", KEEPS)
def test_linear_sparse_against_dense_and_twin(rng, N, I, O, keep):
    _, mask, wm, csr = masked(rng, (O, I), keep, zero_row=O > 3)
    x, b, dy = f32(rng, N, I), f32(rng, O), f32(rng, N, O)
    y = _core.linear_sparse_forward(x, *csr, wm.shape, b)
    dw, db = np.zeros_like(wm), np.zeros(O, np.float32)
    dx = _core.linear_sparse_backward(x, *csr, wm.shape, dy, dw, db)
    dw_d, db_d = np.zeros_like(wm), np.zeros(O, np.float32)
    assert rel_err(y, _core.linear_forward(x, wm, b)) < 1e-5
    assert rel_err(dx, _core.linear_backward(x, wm, dy, dw_d, db_d)) < 1e-5
    assert rel_err(dw, dw_d * mask) < 1e-5 and rel_err(db, db_d) < 1e-5
    assert not dw[mask == 0].any()
    edx, edv, edb = sref.linear_backward(x, *csr, dy)
    assert_close(y, sref.linear_forward(x, *csr, b), 1e-5, 1e-6, "y")
    assert_close(dx, edx, 1e-5, 1e-6, "dx")
    assert_close(dw[mask != 0], edv, 1e-5, 1e-6, "dw")
    assert_close(db, edb, 1e-5, 1e-6, "db")


def test_linear_sparse_twin_finite_differences(rng):
    _, mask, wm, csr = masked(rng, (4, 6), 0.5)
    rowptr, colidx, values = csr
    x, b, dy = f32(rng, 3, 6), f32(rng, 4), f32(rng, 3, 4)
    dx, dv, db = sref.linear_backward(x, *csr, dy)
    f = lambda xx, vv: sref.linear_forward(xx, rowptr, colidx, vv, b)  # noqa: E731
    assert_close(dx, numerical_grad(lambda t: f(t, values), x, dy), 1e-7, 1e-7, "dx")
    assert_close(dv, numerical_grad(lambda t: f(x, t), values, dy), 1e-7, 1e-7, "dvalues")


def test_linear_sparse_against_torch(rng, torch):
    _, mask, wm, csr = masked(rng, (9, 13), 0.2)
    x, b, dy = f32(rng, 5, 13), f32(rng, 9), f32(rng, 5, 9)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, wm, b))
    yt = torch.nn.functional.linear(xt, wt * torch.tensor(mask, dtype=torch.float64), bt)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dw, db = np.zeros_like(wm), np.zeros(9, np.float32)
    assert_close(_core.linear_sparse_forward(x, *csr, wm.shape, b), yt.detach().numpy(), 1e-5, 1e-6, "y")
    assert_close(_core.linear_sparse_backward(x, *csr, wm.shape, dy, dw, db), xt.grad.numpy(), 1e-5, 1e-6, "dx")
    assert_close(dw, wt.grad.numpy(), 1e-5, 1e-6, "dw")
    assert_close(db, bt.grad.numpy(), 1e-5, 1e-6, "db")


# ================================================================ layers

def _layer(kind, subspace):
    if kind == "linear":
        return csub.nn.Linear(24, 10, bias=True, subspace=subspace)
    return csub.nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=True, subspace=subspace)


def _run(layer, x, dy):
    layer.zero_grad()
    y = layer(x)
    dx = layer.backward(dy)
    return y, dx, {n: p.grad.copy() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("subspace,alpha", [(None, 1.0), ("line", 0.3)])
@pytest.mark.parametrize("topk", [0.05, 0.2, 0.5])
def test_layer_sparse_path_equals_dense_path(rng, monkeypatch, kind, subspace, alpha, topk):
    csub.manual_seed(3)
    layer = _layer(kind, subspace).set_alpha(alpha)
    for p in layer.parameters():
        p.data[...] = f32(rng, *p.shape)
    layer.topk = topk
    x = f32(rng, 3, 24) if kind == "linear" else f32(rng, 3, 8, 9, 7)
    dy = f32(rng, 3, 10) if kind == "linear" else f32(rng, 3, 12, 5, 4)
    monkeypatch.setitem(layers.SPARSE_CROSSOVER, kind, 1.0)
    y_s, dx_s, g_s = _run(layer, x, dy)
    assert layer._csr is not None  # the sparse path ran
    mask = layer._mask != 0
    monkeypatch.setitem(layers.SPARSE_CROSSOVER, kind, 0.0)
    y_d, dx_d, g_d = _run(layer, x, dy)
    assert layer._csr is None
    assert rel_err(y_s, y_d) < 1e-5 and rel_err(dx_s, dx_d) < 1e-5
    for name in g_d:
        assert rel_err(g_s[name], g_d[name]) < 1e-5, name
        if name.startswith("weight"):
            assert not g_s[name][~mask].any() and not g_d[name][~mask].any()


def test_layer_path_follows_crossover(rng, monkeypatch):
    layer = csub.nn.Conv2d(4, 6, 3, padding=1)
    x = f32(rng, 2, 4, 5, 5)
    monkeypatch.setitem(layers.SPARSE_CROSSOVER, "conv", 0.3)
    for topk, sparse in ((None, False), (1.0, False), (0.5, False), (0.3, True), (0.1, True)):
        layer.topk = topk
        layer(x)
        assert (layer._csr is not None) == sparse, topk
    layer.enable_quantization()  # quantized weights keep the dense path
    layer.num_bits = 4
    layer.topk = 0.1
    layer(x)
    assert layer._csr is None


def test_model_sparse_path_equals_dense_path(rng, monkeypatch):
    from csub.models import cpreresnet20
    from csub.nn.loss import CrossEntropyLoss

    csub.manual_seed(0)
    model = cpreresnet20(norm="gn", regime="unstructured", subspace="line")
    model.train()
    model.set_alpha(0.1)
    x, labels = f32(rng, 2, 3, 16, 16), np.array([1, 7])
    out = {}
    for cross in (1.0, 0.0):
        monkeypatch.setitem(layers.SPARSE_CROSSOVER, "conv", cross)
        model.zero_grad()
        crit = CrossEntropyLoss()
        loss = crit(model(x), labels)
        model.backward(crit.backward())
        out[cross] = (loss, {n: p.grad.copy() for n, p in model.named_parameters()})
    assert abs(out[1.0][0] - out[0.0][0]) < 1e-5
    for name, g in out[0.0][1].items():
        assert rel_err(out[1.0][1][name], g) < 1e-4, name


# ============================================================== bad input

def _bad_cases():
    x = np.ones((2, 3, 5, 5), np.float32)
    ws = (4, 3, 3, 3)
    mask = np.zeros(ws, np.uint8)
    mask[:, :, 1, 1] = 1
    rp, ci, va = _core.csr_from_mask(np.ones(ws, np.float32), mask)
    dy = np.ones((2, 4, 5, 5), np.float32)  # stride 1, padding 1
    bad_ci = ci.copy()
    bad_ci[0] = 27
    unsorted = ci.copy()
    unsorted[[0, 1]] = unsorted[[1, 0]]  # row 0's columns out of order
    dup = ci.copy()
    dup[1] = dup[0]  # a column twice in row 0
    ro = np.zeros(ws, np.float32)
    ro.flags.writeable = False
    K = {"stride": 1, "padding": 1}
    fwd = [
        ((x.astype(np.float64), rp, ci, va, ws), TypeError, "x"),
        ((x, rp.astype(np.int32), ci, va, ws), TypeError, "rowptr"),
        ((x, rp, ci.astype(np.int64), va, ws), TypeError, "colidx"),
        ((x, rp, ci, va.astype(np.float64), ws), TypeError, "values"),
        ((x, rp, ci, va[:-1], ws), ValueError, "values"),
        ((x, rp[:-1], ci, va, ws), ValueError, "rowptr"),
        ((x, rp, bad_ci, va, ws), ValueError, "colidx"),
        ((x, rp, unsorted, va, ws), ValueError, "colidx"),
        ((x, rp, dup, va, ws), ValueError, "colidx"),
        ((x, rp[::-1].copy(), ci, va, ws), ValueError, "rowptr"),
        ((x, rp, ci, va, (4, 2, 3, 3)), ValueError, "weight_shape"),
        ((x, rp, ci, va, (4, 3, 3)), ValueError, "weight_shape"),
        ((x, rp, ci, va, (4, 3, 0, 3)), ValueError, "weight_shape"),
        ((x, rp, ci, va, (5, 3, 3, 3)), ValueError, "rowptr"),
        ((x[0], rp, ci, va, ws), ValueError, "x"),
    ]
    cases = [pytest.param(_core.conv2d_sparse_forward, a, K, e, m, id=f"fwd{i}") for i, (a, e, m) in enumerate(fwd)]
    bwd = [
        ((x, rp, ci, va, ws, dy.astype(np.float64)), {}, TypeError, "dy"),
        ((x, rp, ci, va, ws, dy[:, :3].copy()), {}, ValueError, "dy"),
        ((x, rp, ci, va, ws, dy, np.zeros((4, 3, 3, 2), np.float32)), {}, ValueError, "dw"),
        ((x, rp, ci, va, ws, dy, np.zeros(5, np.float32)), {}, ValueError, "dw"),
        ((x, rp, ci, va, ws, dy, ro), {}, ValueError, "dw"),
        ((x, rp, ci, va, ws, dy, None, np.zeros(3, np.float32)), {}, ValueError, "db"),
        ((x, rp, ci, va, ws, dy), {"stride": 0}, ValueError, "stride"),
        ((x, rp, ci, va, ws, dy), {"padding": -1}, ValueError, "padding"),
    ]
    cases += [pytest.param(_core.conv2d_sparse_backward, a, {**K, **k}, e, m, id=f"bwd{i}")
              for i, (a, k, e, m) in enumerate(bwd)]
    xl = np.ones((3, 6), np.float32)
    lrp, lci, lva = _core.csr_from_mask(np.ones((4, 6), np.float32), np.eye(4, 6, dtype=np.uint8))
    lin = [
        (_core.linear_sparse_forward, (xl, lrp, lci, lva, (4, 5)), ValueError, "x"),
        (_core.linear_sparse_forward, (xl, lrp, lci, lva, (4, 6), np.ones(3, np.float32)), ValueError, "b"),
        (_core.linear_sparse_forward, (xl, lrp, lci, lva, (3, 6)), ValueError, "rowptr"),
        (_core.linear_sparse_backward, (xl, lrp, lci, lva, (4, 6), np.ones((3, 5), np.float32)), ValueError, "dy"),
        (_core.linear_sparse_backward, (xl, lrp, lci, lva, (4, 6), np.ones((3, 4), np.float32),
                                        np.zeros((6, 4), np.float32)), ValueError, "dw"),
    ]
    cases += [pytest.param(f, a, {}, e, m, id=f"lin{i}") for i, (f, a, e, m) in enumerate(lin)]
    csr = [
        ((np.ones((2, 3), np.float32), np.ones((2, 3), np.bool_)), TypeError, "mask"),
        ((np.ones((2, 3), np.float64), np.ones((2, 3), np.uint8)), TypeError, "w"),
        ((np.ones((2, 3), np.float32), np.ones((3, 2), np.uint8)), ValueError, "mask"),
        ((np.ones(3, np.float32), np.ones(3, np.uint8)), ValueError, "w"),
    ]
    cases += [pytest.param(_core.csr_from_mask, a, {}, e, m, id=f"csr{i}") for i, (a, e, m) in enumerate(csr)]
    return cases


@pytest.mark.parametrize("fn,args,kwargs,exc,match", _bad_cases())
def test_sparse_bad_input(fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=f"^{match}"):  # the message starts with the argument's name
        fn(*args, **kwargs)
