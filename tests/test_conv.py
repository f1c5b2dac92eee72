"""Dense matmul, linear and conv2d: kernels (csub._core) and layers (csub.nn.Linear, Conv2d)."""
import math

import numpy as np
import pytest

import csub
from csub import _core
from gradcheck import assert_close, numerical_grad
from reference import conv as ref
from testkit import bad_call_params, check_bad_call


@pytest.fixture
def threads():
    """Set csub's thread count inside a test; the previous count is restored afterwards."""
    old = csub.get_num_threads()
    yield csub.set_num_threads
    csub.set_num_threads(old)


def f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# ===================================================================== twins

def test_twin_gemm_against_matmul(rng):
    a, b = rng.standard_normal((4, 7)), rng.standard_normal((5, 7))
    np.testing.assert_allclose(ref.gemm(a, b, False, True), a @ b.T, rtol=1e-12)
    np.testing.assert_allclose(ref.gemm(a.T.copy(), b.T.copy(), True, False), a @ b.T, rtol=1e-12)


def test_twin_linear_backward_numerical(rng):
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    dy = rng.standard_normal((3, 4))
    dx, dw, db = ref.linear_backward(x, w, dy)
    assert_close(dx, numerical_grad(lambda t: ref.linear_forward(t, w, b), x, dy), 1e-7, 1e-7, "dx")
    assert_close(dw, numerical_grad(lambda t: ref.linear_forward(x, t, b), w, dy), 1e-7, 1e-7, "dw")
    assert_close(db, numerical_grad(lambda t: ref.linear_forward(x, w, t), b, dy), 1e-7, 1e-7, "db")


def _twin_conv_data(rng, N, C, H, W, K, R):
    """float64 x[N,C,H,W], w[K,C,R,R], b[K] for the NumPy twin."""
    return rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, R, R)), rng.standard_normal(K)


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [
    (1, 2, 4, 5, 3, 3, 1, 1),
    (2, 1, 5, 5, 2, 3, 2, 0),
    (1, 2, 3, 4, 2, 2, 2, 2),
])
def test_twin_conv_forward_against_scalar_loops(rng, N, C, H, W, K, R, stride, pad):
    x, w, b = _twin_conv_data(rng, N, C, H, W, K, R)
    assert_close(ref.conv2d_forward(x, w, b, stride, pad),
                 ref.conv2d_forward_loops(x, w, b, stride, pad), 1e-12, 1e-12, "y")


@pytest.mark.parametrize("geometry", [  # (N, C, H, W, K, R, stride, pad)
    (1, 2, 5, 4, 3, 3, 2, 1),
    (2, 2, 4, 4, 2, 1, 1, 0),
    (1, 1, 6, 5, 2, 3, 2, 2),
])
def test_twin_conv_backward_numerical(rng, geometry):
    N, C, H, W, K, R, stride, pad = geometry
    x, w, b = _twin_conv_data(rng, N, C, H, W, K, R)
    P, Q = ref.conv_out_size(H, R, stride, pad), ref.conv_out_size(W, R, stride, pad)
    dy = rng.standard_normal((N, K, P, Q))
    dx, dw, db = ref.conv2d_backward(x, w, dy, stride, pad)
    fwd = lambda xx, ww, bb: ref.conv2d_forward(xx, ww, bb, stride, pad)  # noqa: E731
    assert_close(dx, numerical_grad(lambda t: fwd(t, w, b), x, dy), 1e-7, 1e-7, "dx")
    assert_close(dw, numerical_grad(lambda t: fwd(x, t, b), w, dy), 1e-7, 1e-7, "dw")
    assert_close(db, numerical_grad(lambda t: fwd(x, w, t), b, dy), 1e-7, 1e-7, "db")


def test_twin_topk_mask(rng):
    w = np.array([0.5, -3.0, 0.1, 2.0, -0.2, 1.0])
    m = ref.topk_mask(w, 0.5)  # keep 6 - floor(3) = 3: |-3|, 2, 1
    np.testing.assert_array_equal(m, [False, True, False, True, False, True])
    assert ref.topk_keep(135, 0.37) == 50


# ====================================================================== gemm

GEMM_SHAPES = [(1, 1, 1), (1, 5, 3), (6, 1, 9), (2, 3, 1), (7, 13, 5), (33, 17, 64),
               (64, 200, 3), (129, 31, 70), (300, 257, 129)]


@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("transb", [False, True])
@pytest.mark.parametrize("M,N,K", GEMM_SHAPES)
def test_gemm_against_twin(rng, M, N, K, transa, transb):
    a = f32(rng, *((K, M) if transa else (M, K)))
    b = f32(rng, *((N, K) if transb else (K, N)))
    c = _core.gemm(a, b, transa, transb)
    assert c.dtype == np.float32 and c.shape == (M, N)
    assert_close(c, ref.gemm(a, b, transa, transb), 1e-5, 1e-6, "c")


@pytest.mark.parametrize("transa,transb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("M,N,K", [(300, 257, 129), (257, 300, 129), (40, 600, 33), (600, 40, 33)])
def test_gemm_thread_count_invariance(rng, threads, M, N, K, transa, transb):
    # Large enough that csub_gemm splits C into panels (over N when N >= M, else over M).
    a = f32(rng, *((K, M) if transa else (M, K)))
    b = f32(rng, *((N, K) if transb else (K, N)))
    threads(1)
    c1 = _core.gemm(a, b, transa, transb)
    threads(2)
    c2 = _core.gemm(a, b, transa, transb)
    expected = ref.gemm(a, b, transa, transb)
    assert_close(c1, expected, 1e-5, 1e-6, "c (1 thread)")
    assert_close(c2, expected, 1e-5, 1e-6, "c (2 threads)")
    assert_close(c2, c1, 1e-6, 1e-7, "c (2 vs 1 threads)")


def test_gemm_empty_inner_dimension():
    c = _core.gemm(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32))
    np.testing.assert_array_equal(c, np.zeros((3, 4), np.float32))


def test_gemm_empty_outer_dimension():
    assert _core.gemm(np.ones((0, 3), np.float32), np.ones((3, 4), np.float32)).shape == (0, 4)
    b = np.ones((0, 3), np.float32)
    assert _core.gemm(np.ones((2, 3), np.float32), b, False, True).shape == (2, 0)


def test_gemm_against_torch(rng, torch):
    a, b = f32(rng, 37, 19), f32(rng, 23, 37)
    expected = torch.matmul(torch.tensor(a, dtype=torch.float64).T, torch.tensor(b, dtype=torch.float64).T)
    assert_close(_core.gemm(a, b, True, True), expected.numpy(), 1e-5, 1e-6, "c")


@pytest.mark.parametrize("args,exc,match", [
    ((np.ones((2, 3)), np.ones((3, 2), np.float32)), TypeError, "a"),
    ((np.ones((2, 3), np.float32), np.ones((3, 2), np.int32)), TypeError, "b"),
    (([[1.0, 2.0]], np.ones((2, 2), np.float32)), TypeError, "a"),
    ((np.ones(3, np.float32), np.ones((3, 2), np.float32)), ValueError, "a"),
    ((np.ones((2, 3), np.float32), np.ones((1, 3, 2), np.float32)), ValueError, "b"),
    ((np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)), ValueError, "b"),
    ((np.ones((3, 2), np.float32).T, np.ones((3, 2), np.float32)), ValueError, "a"),
    ((np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)[:, ::2]), ValueError, "b"),
])
def test_gemm_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        _core.gemm(*args)


# ==================================================================== linear

def _check_backward_adds(rng, backward, expected, bias):
    """backward(dw, db) -> dx adds into pre-existing gradients: dx and dw against the twin's
    expected (dx, dw, db), db too with a bias; without one (db=None) db stays as it was."""
    dx_e, dw_e, db_e = expected
    dw0, db0 = f32(rng, *dw_e.shape), f32(rng, *db_e.shape)  # pre-existing gradients: the kernel adds to them
    dw, db = dw0.copy(), db0.copy()
    dx = backward(dw, db if bias else None)
    assert_close(dx, dx_e, 1e-5, 1e-6, "dx")
    assert_close(dw, dw0 + dw_e, 1e-5, 1e-6, "dw")
    if bias:
        assert_close(db, db0 + db_e, 1e-5, 1e-6, "db")
    else:
        np.testing.assert_array_equal(db, db0)


LINEAR_SHAPES = [(1, 1, 1), (1, 7, 3), (5, 13, 3), (4, 3, 16), (64, 300, 129)]


@pytest.mark.parametrize("N,I,O", LINEAR_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_backward_against_twin(rng, N, I, O, bias):
    x, w, dy = f32(rng, N, I), f32(rng, O, I), f32(rng, N, O)
    b = f32(rng, O) if bias else None
    assert_close(_core.linear_forward(x, w, b), ref.linear_forward(x, w, b), 1e-5, 1e-6, "y")
    _check_backward_adds(rng, lambda dw, db: _core.linear_backward(x, w, dy, dw, db), ref.linear_backward(x, w, dy),
                         bias)


def test_linear_backward_numerical(rng):
    x, w, b, dy = f32(rng, 3, 5), f32(rng, 4, 5), f32(rng, 4), f32(rng, 3, 4)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = _core.linear_backward(x, w, dy, dw, db)
    assert_close(dx, numerical_grad(lambda t: ref.linear_forward(t, w, b), x, dy), 1e-4, 1e-5, "dx")
    assert_close(dw, numerical_grad(lambda t: ref.linear_forward(x, t, b), w, dy), 1e-4, 1e-5, "dw")
    assert_close(db, numerical_grad(lambda t: ref.linear_forward(x, w, t), b, dy), 1e-4, 1e-5, "db")


def test_linear_backward_accumulates_and_need_dx(rng):
    x, w, dy = f32(rng, 6, 9), f32(rng, 5, 9), f32(rng, 6, 5)
    _, dw_e, db_e = ref.linear_backward(x, w, dy)
    dw, db = np.zeros_like(w), np.zeros(5, np.float32)
    assert _core.linear_backward(x, w, dy, dw, db, need_dx=False) is None
    assert _core.linear_backward(x, w, dy, dw, db, need_dx=False) is None
    assert_close(dw, 2 * dw_e, 1e-5, 1e-6, "dw")
    assert_close(db, 2 * db_e, 1e-5, 1e-6, "db")
    # only db requested; dx alone
    db2 = np.zeros(5, np.float32)
    _core.linear_backward(x, w, dy, None, db2, need_dx=False)
    assert_close(db2, db_e, 1e-5, 1e-6, "db")
    dx = _core.linear_backward(x, w, dy)
    assert_close(dx, ref.linear_backward(x, w, dy)[0], 1e-5, 1e-6, "dx")


def test_linear_empty_batch_leaves_gradients():
    x, w, dy = np.ones((0, 5), np.float32), np.ones((3, 5), np.float32), np.ones((0, 3), np.float32)
    dw, db = np.full((3, 5), 2.0, np.float32), np.full(3, 2.0, np.float32)
    assert _core.linear_forward(x, w, db).shape == (0, 3)
    assert _core.linear_backward(x, w, dy, dw, db).shape == (0, 5)
    assert np.all(dw == 2.0) and np.all(db == 2.0)


@pytest.mark.parametrize("C,H,W,K,R,stride,pad", [(16, 34, 30, 16, 3, 1, 1), (24, 33, 17, 40, 3, 2, 1),
                                                   (64, 32, 32, 64, 1, 1, 0), (2, 3, 3, 2, 3, 1, 1)])
def test_conv_one_image_split_by_rows(rng, threads, C, H, W, K, R, stride, pad):
    """One image on 1 to 3 threads: a product large enough splits by output rows (each
    thread lays out and multiplies its own band), a small one runs on one thread; all
    agree with the float64 twin."""
    x = rng.standard_normal((1, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, R, R)) / np.sqrt(C * R * R)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    want = ref.conv2d_forward(x, w, b, stride, pad)
    for t in (1, 2, 3):
        threads(t)
        assert_close(_core.conv2d_forward(x, w, b, stride, pad), want, 1e-5, 1e-5, f"y ({t} threads)")


def test_linear_thread_count_invariance(rng, threads):
    x, w, b, dy = f32(rng, 96, 300), f32(rng, 129, 300), f32(rng, 129), f32(rng, 96, 129)
    out = []
    for n in (1, 2):
        threads(n)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        y = _core.linear_forward(x, w, b)
        dx = _core.linear_backward(x, w, dy, dw, db)
        out.append((y, dx, dw, db))
    for name, a1, a2 in zip(("y", "dx", "dw", "db"), *out):
        assert_close(a2, a1, 1e-6, 1e-7, name)


def test_linear_against_torch(rng, torch):
    x, w, b, dy = f32(rng, 7, 11), f32(rng, 5, 11), f32(rng, 5), f32(rng, 7, 5)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(_core.linear_forward(x, w, b), yt.detach().numpy(), 1e-5, 1e-6, "y")
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = _core.linear_backward(x, w, dy, dw, db)
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-6, "dx")
    assert_close(dw, wt.grad.numpy(), 1e-5, 1e-6, "dw")
    assert_close(db, bt.grad.numpy(), 1e-5, 1e-6, "db")


def _linear_bad_cases():
    x, w, b, dy = (np.ones(s, np.float32) for s in ((3, 4), (2, 4), (2,), (3, 2)))
    ro = np.zeros((2, 4), np.float32)
    ro.flags.writeable = False
    fwd = [
        ((x.astype(np.float64), w), TypeError, "x"),
        ((x, w.astype(np.int64)), TypeError, "w"),
        ((x.tolist(), w), TypeError, "x"),
        ((x[0], w), ValueError, "x"),
        ((x, np.ones((2, 5), np.float32)), ValueError, "w"),
        ((x, w, np.ones(3, np.float32)), ValueError, "b"),
        ((x, w, np.ones((2, 1), np.float32)), ValueError, "b"),
        ((np.ones((4, 3), np.float32).T, w), ValueError, "x"),
    ]
    bwd = [
        ((x, w, dy.astype(np.float64)), TypeError, "dy"),
        ((x, w, np.ones((3, 3), np.float32)), ValueError, "dy"),
        ((x, w, np.ones((4, 2), np.float32)), ValueError, "dy"),
        ((x, w, dy, np.zeros((4, 2), np.float32)), ValueError, "dw"),
        ((x, w, dy, np.zeros((2, 4), np.float64)), TypeError, "dw"),
        ((x, w, dy, ro), ValueError, "dw"),
        ((x, w, dy, None, np.zeros(3, np.float32)), ValueError, "db"),
        ((x, w, dy, None, np.zeros((2, 4), np.float32)[:, 0]), ValueError, "db"),
        ((x, np.ones((2, 5), np.float32), dy), ValueError, "w"),
    ]
    return ([pytest.param(_core.linear_forward, *c, id=f"fwd{i}") for i, c in enumerate(fwd)] +
            [pytest.param(_core.linear_backward, *c, id=f"bwd{i}") for i, c in enumerate(bwd)])


@pytest.mark.parametrize("fn,args,exc,match", _linear_bad_cases())
def test_linear_bad_input(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


# ==================================================================== conv2d

# (N, C, H, W, K, R, stride, padding)
CONV_CASES = [
    (1, 3, 7, 9, 5, 3, 1, 1),     # non-square input, batch 1
    (2, 13, 8, 8, 16, 1, 1, 0),   # 1x1 stride 1 (the pointwise fast path)
    (3, 5, 9, 7, 13, 1, 2, 0),    # 1x1 stride 2
    (2, 3, 6, 5, 4, 1, 1, 1),     # 1x1 with padding: not the fast path
    (2, 3, 11, 10, 4, 5, 2, 2),   # 5x5 stride 2 padding 2
    (2, 5, 5, 5, 7, 5, 1, 0),     # kernel covers the whole input
    (4, 16, 6, 6, 3, 3, 2, 1),
    (1, 16, 5, 6, 5, 3, 1, 2),    # padding 2 with a 3x3 kernel
    (3, 13, 9, 9, 5, 3, 2, 0),    # stride 2 leaves the last row/column unused
    (2, 2, 3, 3, 2, 3, 3, 0),
    (2, 3, 64, 61, 8, 7, 2, 3),   # a 7x7 stride-2 stem: im2col in two bands of rows, an odd width
    (1, 4, 40, 37, 6, 5, 3, 2),   # stride 3: three column phases
    (2, 2, 9, 11, 3, 3, 2, 2),    # padding past the kernel's half: zero heads and tails on every row
]


def _conv_data(rng, N, C, H, W, K, R, stride, pad):
    P, Q = ref.conv_out_size(H, R, stride, pad), ref.conv_out_size(W, R, stride, pad)
    return f32(rng, N, C, H, W), f32(rng, K, C, R, R), f32(rng, K), f32(rng, N, K, P, Q)


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward_backward_against_twin(rng, N, C, H, W, K, R, stride, pad, bias):
    x, w, b, dy = _conv_data(rng, N, C, H, W, K, R, stride, pad)
    if not bias:
        b = None
    y = _core.conv2d_forward(x, w, b, stride, pad)
    assert y.dtype == np.float32
    assert_close(y, ref.conv2d_forward(x, w, b, stride, pad), 1e-5, 1e-6, "y")
    _check_backward_adds(rng, lambda dw, db: _core.conv2d_backward(x, w, dy, dw, db, stride, pad),
                         ref.conv2d_backward(x, w, dy, stride, pad), bias)


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [
    (1, 3, 5, 4, 2, 3, 2, 1),
    (2, 3, 4, 4, 3, 1, 1, 0),   # pointwise fast path
    (2, 3, 5, 5, 2, 1, 2, 0),   # 1x1 stride 2
    (1, 2, 5, 5, 2, 5, 1, 2),
    (2, 2, 4, 5, 3, 3, 1, 0),
])
def test_conv2d_backward_numerical(rng, N, C, H, W, K, R, stride, pad):
    x, w, b, dy = _conv_data(rng, N, C, H, W, K, R, stride, pad)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = _core.conv2d_backward(x, w, dy, dw, db, stride, pad)
    fwd = lambda xx, ww, bb: ref.conv2d_forward(xx, ww, bb, stride, pad)  # noqa: E731
    assert_close(dx, numerical_grad(lambda t: fwd(t, w, b), x, dy), 1e-4, 1e-5, "dx")
    assert_close(dw, numerical_grad(lambda t: fwd(x, t, b), w, dy), 1e-4, 1e-5, "dw")
    assert_close(db, numerical_grad(lambda t: fwd(x, w, t), b, dy), 1e-4, 1e-5, "db")


@pytest.mark.parametrize("R,stride,pad", [(3, 1, 1), (1, 1, 0), (1, 2, 0), (5, 2, 2)])
def test_conv2d_backward_accumulates_and_need_dx(rng, R, stride, pad):
    x, w, b, dy = _conv_data(rng, 3, 5, 7, 6, 4, R, stride, pad)
    _, dw_e, db_e = ref.conv2d_backward(x, w, dy, stride, pad)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    for _ in range(2):
        assert _core.conv2d_backward(x, w, dy, dw, db, stride, pad, need_dx=False) is None
    assert_close(dw, 2 * dw_e, 1e-5, 1e-6, "dw")
    assert_close(db, 2 * db_e, 1e-5, 1e-6, "db")
    dx = _core.conv2d_backward(x, w, dy, None, None, stride, pad)  # dx alone
    assert_close(dx, ref.conv2d_backward(x, w, dy, stride, pad)[0], 1e-5, 1e-6, "dx")
    db2 = np.zeros_like(b)
    assert _core.conv2d_backward(x, w, dy, db=db2, stride=stride, padding=pad, need_dx=False) is None
    assert_close(db2, db_e, 1e-5, 1e-6, "db")


def test_conv2d_dx_overwrites_every_element(rng):
    # stride 2 on an even size never reads the last row and column; their dx must be 0, not garbage
    x, w, b, dy = _conv_data(rng, 2, 3, 8, 8, 4, 3, 2, 0)
    for _ in range(3):  # fresh output buffers from the allocator each time
        dx = _core.conv2d_backward(x, w, dy, None, None, 2, 0)
        assert np.all(dx[:, :, 7, :] == 0) and np.all(dx[:, :, :, 7] == 0)
        assert_close(dx, ref.conv2d_backward(x, w, dy, 2, 0)[0], 1e-5, 1e-6, "dx")


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [
    (1, 3, 7, 9, 5, 3, 1, 1),
    (3, 13, 8, 8, 16, 1, 1, 0),
    (2, 5, 9, 7, 13, 1, 2, 0),
    (2, 3, 11, 10, 4, 5, 2, 2),
])
def test_conv2d_against_torch(rng, torch, N, C, H, W, K, R, stride, pad):
    x, w, b, dy = _conv_data(rng, N, C, H, W, K, R, stride, pad)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=pad)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(_core.conv2d_forward(x, w, b, stride, pad), yt.detach().numpy(), 1e-5, 1e-6, "y")
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = _core.conv2d_backward(x, w, dy, dw, db, stride, pad)
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-6, "dx")
    assert_close(dw, wt.grad.numpy(), 1e-5, 1e-6, "dw")
    assert_close(db, bt.grad.numpy(), 1e-5, 1e-6, "db")


@pytest.mark.parametrize("geometry", [  # (N, C, H, W, K, R, stride, pad)
    (1, 3, 9, 9, 5, 3, 1, 1),
    (5, 13, 8, 8, 16, 1, 1, 0),
    (4, 5, 9, 7, 13, 1, 2, 0),
    (6, 16, 10, 10, 16, 3, 2, 1),
    (3, 3, 11, 10, 4, 5, 1, 2),
])
def test_conv2d_thread_count_invariance(rng, threads, geometry):
    x, w, b, dy = _conv_data(rng, *geometry)
    stride, pad = geometry[-2:]
    out = []
    for n in (1, 2):
        threads(n)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        y = _core.conv2d_forward(x, w, b, stride, pad)
        dx = _core.conv2d_backward(x, w, dy, dw, db, stride, pad)
        out.append((y, dx, dw, db))
    for name, a1, a2 in zip(("y", "dx", "dw", "db"), *out):
        assert_close(a2, a1, 1e-6, 1e-7, name)
    assert_close(out[1][2], ref.conv2d_backward(x, w, dy, stride, pad)[1], 1e-5, 1e-6, "dw")


def _conv_bad_cases():
    x, w, b = np.ones((2, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32), np.ones(4, np.float32)
    dy = np.ones((2, 4, 3, 3), np.float32)  # stride 1, padding 0
    ro = np.zeros_like(w)
    ro.flags.writeable = False
    fwd = [
        ((x.astype(np.float64), w), {}, TypeError, "x"),
        ((x, w.astype(np.int32)), {}, TypeError, "w"),
        ((x.tolist(), w), {}, TypeError, "x"),
        ((x[0], w), {}, ValueError, "x"),
        ((x, w[0]), {}, ValueError, "w"),
        ((np.ones((2, 4, 5, 5), np.float32), w), {}, ValueError, "channels"),  # x has 4 channels, w 3
        ((np.ones((2, 4, 5, 5), np.float32), w), {}, ValueError, "w"),
        ((np.ones((2, 3, 2, 5), np.float32), w), {}, ValueError, "x"),  # kernel taller than input
        ((np.ones((2, 3, 5, 5), np.float32), np.ones((4, 3, 8, 8), np.float32)), {"padding": 1},
         ValueError, "kernel"),
        ((x, w), {"stride": 0}, ValueError, "stride"),
        ((x, w), {"stride": -2}, ValueError, "stride"),
        ((x, w), {"padding": -1}, ValueError, "padding"),
        ((x, w, np.ones(3, np.float32)), {}, ValueError, "b"),
        ((x, w, np.ones(4)), {}, TypeError, "b"),
        ((np.ones((2, 5, 5, 3), np.float32).transpose(0, 3, 1, 2), w), {}, ValueError, "x"),
        ((np.ones((0, 3, 5, 5), np.float32), w), {}, ValueError, "x"),
        ((x, np.ones((0, 3, 3, 3), np.float32)), {}, ValueError, "w"),
    ]
    bwd = [
        ((x, w, dy.astype(np.float64)), {}, TypeError, "dy"),
        ((x, w, np.ones((2, 4, 5, 5), np.float32)), {}, ValueError, "dy"),  # shape of padding 1
        ((x, w, np.ones((2, 3, 3, 3), np.float32)), {}, ValueError, "dy"),
        ((x, w, dy), {"padding": 1}, ValueError, "dy"),
        ((x, w, dy, np.zeros((4, 3, 3, 2), np.float32)), {}, ValueError, "dw"),
        ((x, w, dy, np.zeros((4, 3, 9), np.float32)), {}, ValueError, "dw"),
        ((x, w, dy, np.zeros((4, 3, 3, 3))), {}, TypeError, "dw"),
        ((x, w, dy, ro), {}, ValueError, "dw"),
        ((x, w, dy, None, np.zeros(5, np.float32)), {}, ValueError, "db"),
        ((x, w, dy), {"stride": 0}, ValueError, "stride"),
        ((x, w, dy), {"padding": -3}, ValueError, "padding"),
        ((np.ones((2, 2, 5, 5), np.float32), w, dy), {}, ValueError, "w"),
    ]
    return bad_call_params(fwd=(_core.conv2d_forward, fwd), bwd=(_core.conv2d_backward, bwd))


@pytest.mark.parametrize("fn,args,kwargs,exc,match", _conv_bad_cases())
def test_conv2d_bad_input(fn, args, kwargs, exc, match):
    check_bad_call(fn, args, kwargs, exc, match)


def test_conv2d_noncontiguous_dw_rejected_and_untouched(rng):
    x, w, b, dy = _conv_data(rng, 2, 3, 5, 5, 4, 3, 1, 0)
    big = np.zeros((4, 3, 3, 6), np.float32)
    with pytest.raises(ValueError, match="dw"):
        _core.conv2d_backward(x, w, dy, big[:, :, :, ::2])
    assert not big.any()


# ==================================================================== layers

def _grads(layer):
    return {n: p.grad.copy() for n, p in layer.named_parameters()}


def _randomize(layer, rng):
    """Non-trivial values for every parameter (biases start at zero)."""
    for p in layer.parameters():
        p.data[...] = rng.standard_normal(p.shape).astype(np.float32)


def _make(kind, subspace=None, bias=True):
    if kind == "linear":
        return csub.nn.Linear(7, 5, bias=bias, subspace=subspace)
    return csub.nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias, subspace=subspace)


def _layer_io(kind, rng, n=2):
    if kind == "linear":
        return f32(rng, n, 7), f32(rng, n, 5)
    return f32(rng, n, 3, 7, 6), f32(rng, n, 5, 4, 3)


def _twin(kind, x, w, b, dy):
    """(y, dx, dw, db) of the twin for the layer configuration built by _make."""
    if kind == "linear":
        return (ref.linear_forward(x, w, b),) + ref.linear_backward(x, w, dy)
    return (ref.conv2d_forward(x, w, b, 2, 1),) + ref.conv2d_backward(x, w, dy, 2, 1)


KINDS = ["linear", "conv"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("subspace", [None, "point"])
def test_layer_plain_against_twin(rng, kind, subspace):
    layer = _make(kind, subspace)
    _randomize(layer, rng)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    x, dy = _layer_io(kind, rng)
    y_e, dx_e, dw_e, db_e = _twin(kind, x, layer.weight.data, layer.bias.data, dy)
    for step in (1, 2):  # the second step accumulates onto the first
        assert_close(layer(x), y_e, 1e-5, 1e-6, "y")
        assert_close(layer.backward(dy), dx_e, 1e-5, 1e-6, "dx")
        assert_close(layer.weight.grad, step * dw_e, 1e-5, 1e-6, "weight.grad")
        assert_close(layer.bias.grad, step * db_e, 1e-5, 1e-6, "bias.grad")


@pytest.mark.parametrize("kind", KINDS)
def test_layer_without_bias(rng, kind):
    layer = _make(kind, bias=False)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    x, dy = _layer_io(kind, rng)
    y_e, dx_e, dw_e, _ = _twin(kind, x, layer.weight.data, None, dy)
    assert_close(layer(x), y_e, 1e-5, 1e-6, "y")
    assert_close(layer.backward(dy), dx_e, 1e-5, 1e-6, "dx")
    assert_close(layer.weight.grad, dw_e, 1e-5, 1e-6, "weight.grad")


@pytest.mark.parametrize("kind", KINDS)
def test_layer_against_torch(rng, torch, kind):
    layer = _make(kind)
    _randomize(layer, rng)
    x, dy = _layer_io(kind, rng, n=3)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, layer.weight.data, layer.bias.data))
    if kind == "linear":
        yt = torch.nn.functional.linear(xt, wt, bt)
    else:
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride=2, padding=1)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(layer(x), yt.detach().numpy(), 1e-5, 1e-6, "y")
    assert_close(layer.backward(dy), xt.grad.numpy(), 1e-5, 1e-6, "dx")
    assert_close(layer.weight.grad, wt.grad.numpy(), 1e-5, 1e-6, "weight.grad")
    assert_close(layer.bias.grad, bt.grad.numpy(), 1e-5, 1e-6, "bias.grad")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_line_endpoints_reproduce_plain_layer(rng, kind, alpha):
    line = _make(kind, "line")
    _randomize(line, rng)
    assert [n for n, _ in line.named_parameters()] == ["weight", "weight1", "bias", "bias1"]
    end = "1" if alpha == 1.0 else ""
    plain = _make(kind)
    plain.weight.data[...] = getattr(line, "weight" + end).data
    plain.bias.data[...] = getattr(line, "bias" + end).data
    line.set_alpha(alpha)
    x, dy = _layer_io(kind, rng)
    np.testing.assert_allclose(line(x), plain(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(line.backward(dy), plain.backward(dy), rtol=1e-6, atol=1e-6)
    other = "" if end else "1"
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(line, name + end).grad, getattr(plain, name).grad,
                                   rtol=1e-6, atol=1e-6)
        assert not getattr(line, name + other).grad.any()
    assert np.abs(plain.weight.grad).max() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.3, 0.75])
def test_line_mixed_alpha_against_twin(rng, kind, alpha):
    layer = _make(kind, "line").set_alpha(alpha)
    _randomize(layer, rng)
    w = ref.line(layer.weight.data, layer.weight1.data, alpha)
    b = ref.line(layer.bias.data, layer.bias1.data, alpha)
    x, dy = _layer_io(kind, rng)
    y_e, dx_e, dw_e, db_e = _twin(kind, x, w, b, dy)
    assert_close(layer(x), y_e, 1e-5, 1e-6, "y")
    assert_close(layer.backward(dy), dx_e, 1e-5, 1e-6, "dx")
    assert_close(layer.weight.grad, (1 - alpha) * dw_e, 1e-5, 1e-6, "weight.grad")
    assert_close(layer.weight1.grad, alpha * dw_e, 1e-5, 1e-6, "weight1.grad")
    assert_close(layer.bias.grad, (1 - alpha) * db_e, 1e-5, 1e-6, "bias.grad")
    assert_close(layer.bias1.grad, alpha * db_e, 1e-5, 1e-6, "bias1.grad")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf")])
def test_set_alpha_out_of_range(kind, alpha):
    layer = _make(kind, "line")
    with pytest.raises(ValueError, match="alpha"):
        layer.set_alpha(alpha)
    with pytest.raises(TypeError, match="alpha"):
        layer.set_alpha("0.5")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("subspace,alpha", [(None, 1.0), ("line", 0.3), ("line", 1.0)])
@pytest.mark.parametrize("topk", [0.1, 0.37, 0.5, 0.9])
def test_topk_layer_against_twin(rng, kind, subspace, alpha, topk):
    layer = _make(kind, subspace).set_alpha(alpha)
    _randomize(layer, rng)
    layer.topk = topk
    if subspace == "line":
        w_int = ref.line(layer.weight.data, layer.weight1.data, alpha)
        b = ref.line(layer.bias.data, layer.bias1.data, alpha)
    else:
        w_int, b = layer.weight.data.astype(np.float64), layer.bias.data
    mask = ref.topk_mask(w_int, topk)
    n = w_int.size
    keep = n - math.floor((1 - topk) * n)
    assert mask.sum() == keep
    x, dy = _layer_io(kind, rng)
    y_e, dx_e, dw_e, db_e = _twin(kind, x, w_int * mask, b, dy)
    assert_close(layer(x), y_e, 1e-5, 1e-6, "y")
    w_eff = layer.effective_weight()
    assert np.count_nonzero(w_eff) == keep
    np.testing.assert_array_equal(w_eff != 0, mask)
    assert_close(layer.backward(dy), dx_e, 1e-5, 1e-6, "dx")
    g = dw_e * mask  # the plain gradient at kept positions, zero at masked ones
    if subspace == "line":
        assert_close(layer.weight.grad, (1 - alpha) * g, 1e-5, 1e-6, "weight.grad")
        assert_close(layer.weight1.grad, alpha * g, 1e-5, 1e-6, "weight1.grad")
        assert not layer.weight.grad[~mask].any() and not layer.weight1.grad[~mask].any()
        assert_close(layer.bias1.grad, alpha * db_e, 1e-5, 1e-6, "bias1.grad")
    else:
        assert_close(layer.weight.grad, g, 1e-5, 1e-6, "weight.grad")
        assert not layer.weight.grad[~mask].any()
        assert_close(layer.bias.grad, db_e, 1e-5, 1e-6, "bias.grad")
    if subspace is None:
        assert np.all(layer.weight.grad[mask] != 0)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_ties_keep_lower_index_first(rng, kind):
    layer = _make(kind, bias=False)
    n = layer.weight.size
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    layer.weight.data[...] = (0.5 * signs).reshape(layer.weight.shape)  # every |w| equal
    layer.weight.data.reshape(-1)[n - 1] = 2.0                         # one clear winner, last
    layer.topk = 0.5
    keep = n - math.floor(0.5 * n)
    mask = ref.topk_mask(layer.weight.data, 0.5)
    assert mask.reshape(-1)[n - 1] and mask.reshape(-1)[:keep - 1].all() and mask.sum() == keep
    x, dy = _layer_io(kind, rng)
    y_e, _, dw_e, _ = _twin(kind, x, layer.weight.data * mask, None, dy)
    assert_close(layer(x), y_e, 1e-5, 1e-6, "y")
    layer.backward(dy)
    assert_close(layer.weight.grad, dw_e * mask, 1e-5, 1e-6, "weight.grad")


@pytest.mark.parametrize("kind", KINDS)
def test_topk_one_is_dense_and_mask_is_not_stored_in_weight(rng, kind):
    layer = _make(kind)
    _randomize(layer, rng)
    w0 = layer.weight.data.copy()
    x, dy = _layer_io(kind, rng)
    layer.topk = 0.2
    y_sparse = layer(x)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.weight.data, w0)  # masking never writes the parameter
    layer.topk = 1.0
    layer.zero_grad()
    y_e, dx_e, dw_e, _ = _twin(kind, x, w0, layer.bias.data, dy)
    assert_close(layer(x), y_e, 1e-5, 1e-6, "y")
    layer.backward(dy)
    assert_close(layer.weight.grad, dw_e, 1e-5, 1e-6, "weight.grad")
    assert np.abs(y_sparse - y_e).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("topk", [0.0, -0.5, 1.5, float("nan")])
def test_topk_out_of_range(rng, kind, topk):
    layer = _make(kind)
    layer.topk = topk
    x, _ = _layer_io(kind, rng)
    with pytest.raises(ValueError, match="topk"):
        layer(x)
    layer.topk = "0.5"
    with pytest.raises(TypeError, match="topk"):
        layer(x)


# ------------------------------------------------------------ initialisation

@pytest.mark.parametrize("cin,cout,k", [(4, 64, 3), (64, 16, 1), (8, 32, 5)])
def test_conv2d_init_std_fan_out(cin, cout, k):
    csub.manual_seed(11)
    layer = csub.nn.Conv2d(cin, cout, k, bias=True)
    w = layer.weight.data
    assert w.shape == (cout, cin, k, k) and w.dtype == np.float32
    std = math.sqrt(2.0 / (cout * k * k))
    tol = 4 * std / math.sqrt(2 * w.size) + 0.02 * std  # a few standard errors of the sample std
    assert abs(w.std() - std) < tol, (w.std(), std)
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size)
    assert not layer.bias.data.any()


@pytest.mark.parametrize("fin,fout", [(500, 20), (13, 300), (128, 128)])
def test_linear_init_std_fan_in(fin, fout):
    csub.manual_seed(12)
    layer = csub.nn.Linear(fin, fout)
    w = layer.weight.data
    assert w.shape == (fout, fin) and w.dtype == np.float32
    std = math.sqrt(2.0 / fin)
    tol = 4 * std / math.sqrt(2 * w.size) + 0.02 * std
    assert abs(w.std() - std) < tol, (w.std(), std)
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size)
    assert not layer.bias.data.any()


@pytest.mark.parametrize("kind", KINDS)
def test_line_endpoints_drawn_independently(kind):
    csub.manual_seed(3)
    layer = _make(kind, "line")
    w0, w1 = layer.weight.data.astype(np.float64), layer.weight1.data.astype(np.float64)
    assert w0.shape == w1.shape
    # independent draws: nearly uncorrelated, both with the initialisation's spread
    corr = float(np.sum(w0 * w1) / np.sqrt(np.sum(w0 ** 2) * np.sum(w1 ** 2)))
    assert abs(corr) < 0.35
    assert 0.5 < w1.std() / w0.std() < 2.0
    np.testing.assert_array_equal(layer.bias.data, layer.bias1.data)  # both biases start at 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("subspace", [None, "line"])
def test_manual_seed_reproducible(kind, subspace):
    csub.manual_seed(2024)
    a = _make(kind, subspace)
    csub.manual_seed(2024)
    b = _make(kind, subspace)
    c = _make(kind, subspace)  # the generator has moved on
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=n)
    assert not np.array_equal(a.weight.data, c.weight.data)
    csub.manual_seed(2025)
    d = _make(kind, subspace)
    assert not np.array_equal(a.weight.data, d.weight.data)


# --------------------------------------------------------------- bad input

@pytest.mark.parametrize("ctor,kwargs,match", [
    (csub.nn.Conv2d, dict(in_channels=0, out_channels=4, kernel_size=3), "in_channels"),
    (csub.nn.Conv2d, dict(in_channels=3, out_channels=0, kernel_size=3), "out_channels"),
    (csub.nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=0), "kernel_size"),
    (csub.nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=2.5), "kernel_size"),
    (csub.nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=0), "stride"),
    (csub.nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding=-1), "padding"),
    (csub.nn.Conv2d, dict(in_channels=True, out_channels=4, kernel_size=3), "in_channels"),
    (csub.nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, subspace="plane"), "subspace"),
    (csub.nn.Linear, dict(in_features=0, out_features=4), "in_features"),
    (csub.nn.Linear, dict(in_features=3, out_features=-1), "out_features"),
    (csub.nn.Linear, dict(in_features="3", out_features=4), "in_features"),
    (csub.nn.Linear, dict(in_features=3, out_features=4, subspace="lines"), "subspace"),
])
def test_layer_bad_constructor_args(ctor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ctor(**kwargs)


@pytest.mark.parametrize("kind,x,exc", [
    ("conv", np.ones((2, 4, 7, 6), np.float32), ValueError),   # wrong number of channels
    ("conv", np.ones((3, 7, 6), np.float32), ValueError),      # rank 3
    ("conv", np.ones((2, 3, 7, 6)), TypeError),                # float64
    ("conv", np.ones((2, 3, 7, 6), np.int64), TypeError),
    ("conv", np.ones((2, 3, 7, 6), np.float32).tolist(), TypeError),
    ("linear", np.ones((2, 8), np.float32), ValueError),       # wrong in_features
    ("linear", np.ones((2, 7, 1), np.float32), ValueError),
    ("linear", np.ones((2, 7)), TypeError),
    ("linear", [[1.0] * 7], TypeError),
])
def test_layer_bad_input(kind, x, exc):
    layer = _make(kind)
    with pytest.raises(exc, match="x"):
        layer(x)


def test_conv2d_layer_kernel_bigger_than_padded_input():
    layer = csub.nn.Conv2d(3, 5, 5, padding=1)
    layer(np.ones((1, 3, 3, 3), np.float32))  # padded 5x5: exactly one output
    with pytest.raises(ValueError, match="x"):
        layer(np.ones((1, 3, 2, 6), np.float32))  # padded height 4 < 5


@pytest.mark.parametrize("kind", KINDS)
def test_layer_bad_dy(rng, kind):
    layer = _make(kind)
    x, dy = _layer_io(kind, rng)
    layer(x)
    with pytest.raises(ValueError, match="dy"):
        layer.backward(dy[:1])
    with pytest.raises(TypeError, match="dy"):
        layer.backward(dy.astype(np.float64))
    assert not layer.weight.grad.any()  # a rejected backward leaves the gradients alone


@pytest.mark.parametrize("kind", KINDS)
def test_layer_accepts_noncontiguous_x(rng, kind):
    layer = _make(kind)
    _randomize(layer, rng)
    x, dy = _layer_io(kind, rng)
    xt = np.asfortranarray(x)
    assert not xt.flags.c_contiguous
    y_e, dx_e, _, _ = _twin(kind, x, layer.weight.data, layer.bias.data, dy)
    assert_close(layer(xt), y_e, 1e-5, 1e-6, "y")
    assert_close(layer.backward(dy), dx_e, 1e-5, 1e-6, "dx")
