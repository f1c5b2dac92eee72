"""ReLU, residual add, max/average/global-average pools, Flatten and softmax cross-entropy.

Each C kernel is checked against its NumPy float64 twin (tests/reference/misc.py),
its backward against central differences of the twin's forward, and both
against PyTorch (float64, autograd) where PyTorch has the same operation.
"""
import numpy as np
import pytest

import csub
from csub import _core, nn
from gradcheck import assert_close, numerical_grad
from reference import misc

F32 = np.float32


def away_from_zero(rng, shape, gap=1e-2):
    """Normal values with |x| >= gap, so relu is differentiable at every entry."""
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < gap, np.sign(x + 1e-30) * (gap + np.abs(x)), x)
    return x.astype(F32)


def distinct(rng, shape, step=1e-2):
    """A random permutation of well separated values: no ties in any pool window."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * step - n * step / 2).astype(F32)


# ------------------------------------------------------------------ twins vs FD

@pytest.mark.parametrize("shape", [(7,), (2, 3, 5), (1, 5, 3, 3)])
def test_relu_twin_backward_matches_fd(rng, shape):
    x = away_from_zero(rng, shape).astype(np.float64)
    dy = rng.standard_normal(shape)
    assert_close(misc.relu_backward(x, dy), numerical_grad(misc.relu_forward, x, dy), 1e-7, 1e-8)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (2, 3)])
def test_pool_twins_backward_match_fd(rng, k, s):
    shape = (2, 3, 7, 6)
    x = distinct(rng, shape).astype(np.float64)
    P, Q = misc.pool_out(7, k, s), misc.pool_out(6, k, s)
    dy = rng.standard_normal((2, 3, P, Q))
    fd = numerical_grad(lambda a: misc.maxpool2d_forward(a, k, s)[0], x, dy)
    assert_close(misc.maxpool2d_backward(x, dy, k, s), fd, 1e-7, 1e-8)
    fd = numerical_grad(lambda a: misc.avgpool2d_forward(a, k, s), x, dy)
    assert_close(misc.avgpool2d_backward(shape, dy, k, s), fd, 1e-7, 1e-8)
    dg = rng.standard_normal((2, 3))
    fd = numerical_grad(misc.gap_forward, x, dg)
    assert_close(misc.gap_backward(shape, dg), fd, 1e-7, 1e-8)


def test_cross_entropy_twin_backward_matches_fd(rng):
    z = rng.standard_normal((4, 5)) * 3
    labels = np.array([0, 4, 2, 2])
    fd = numerical_grad(lambda a: np.array(misc.cross_entropy_forward(a, labels)), z, np.array(1.0))
    assert_close(misc.cross_entropy_backward(z, labels), fd, 1e-7, 1e-9)
    assert_close(misc.cross_entropy_backward(z, labels, scale=-2.5), -2.5 * fd, 1e-7, 1e-9)


def test_add_twin_backward_matches_fd(rng):
    a, b, dy = (rng.standard_normal((3, 4)) for _ in range(3))
    da, db = misc.add_backward(dy)
    assert_close(da, numerical_grad(lambda t: misc.add_forward(t, b), a, dy), 1e-7, 1e-9)
    assert_close(db, numerical_grad(lambda t: misc.add_forward(a, t), b, dy), 1e-7, 1e-9)


# ------------------------------------------------------------------ relu / add

@pytest.mark.parametrize("shape", [(1,), (13,), (2, 5, 3, 7), (1, 3, 1, 1), (70000,)])
def test_relu_kernel(rng, shape):
    # (70000,) takes the threaded path of the kernel
    x = away_from_zero(rng, shape)
    dy = rng.standard_normal(shape).astype(F32)
    y = _core.relu_forward(x)
    assert y.dtype == F32 and y.shape == x.shape
    np.testing.assert_array_equal(y, misc.relu_forward(x).astype(F32))  # exact: a select
    dx = _core.relu_backward(x, dy)
    np.testing.assert_array_equal(dx, misc.relu_backward(x, dy).astype(F32))
    if x.size <= 200:
        assert_close(dx, numerical_grad(misc.relu_forward, x, dy), 1e-5, 1e-6)


def test_relu_at_zero_nan_and_inf():
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45], F32)
    y = _core.relu_forward(x)
    np.testing.assert_array_equal(y[[0, 1, 3, 4, 5, 6]], np.array([0, 0, np.inf, 0, 1e-45, 0], F32))
    assert np.isnan(y[2])  # NaN propagates instead of being hidden
    assert not np.signbit(y[1])  # relu(-0) is +0
    dx = _core.relu_backward(x, np.full(7, 3.0, F32))
    np.testing.assert_array_equal(dx, np.array([0, 0, 3, 3, 0, 3, 0], F32))


def test_relu_matches_torch(torch, rng):
    x = away_from_zero(rng, (2, 5, 4, 3))
    dy = rng.standard_normal(x.shape).astype(F32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.relu(xt)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(_core.relu_forward(x), yt.detach().numpy(), 0, 1e-7)
    assert_close(_core.relu_backward(x, dy), xt.grad.numpy(), 0, 1e-7)
    # special values, as torch.relu
    s = np.array([0.0, -0.0, np.nan, np.inf, -np.inf], F32)
    np.testing.assert_array_equal(_core.relu_forward(s), torch.relu(torch.tensor(s)).numpy())
    st = torch.tensor(s, requires_grad=True)
    torch.relu(st).backward(torch.ones(5))
    np.testing.assert_array_equal(_core.relu_backward(s, np.ones(5, F32)), st.grad.numpy())


@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 13, 3, 3), (70001,)])
def test_add_kernel(rng, shape):
    a, b = (rng.standard_normal(shape).astype(F32) for _ in range(2))
    y = _core.add(a, b)
    assert y.dtype == F32 and y.shape == shape
    np.testing.assert_array_equal(y, a + b)  # float32 a + b rounds once, exactly like C
    assert_close(y, misc.add_forward(a, b), 1e-6, 1e-7)


@pytest.mark.parametrize("shape", [(1, 4, 200, 170), (2, 3, 5, 7), (1, 40, 64, 64)])
def test_add_four_dims_on_thread_counts(rng, shape):
    """A 4-D add (the runtime's form): one large image splits by rows of each plane, exact on 1 to 3 threads."""
    a, b = (rng.standard_normal(shape).astype(F32) for _ in range(2))
    old = csub.get_num_threads()
    try:
        for t in (1, 2, 3):
            csub.set_num_threads(t)
            np.testing.assert_array_equal(_core.add(a, b), a + b)
            out = a.copy()
            np.testing.assert_array_equal(_core.add(out, b, out=out), a + b)
    finally:
        csub.set_num_threads(old)


def test_add_out_may_alias_an_operand(rng):
    a, b = (rng.standard_normal((3, 70001)).astype(F32) for _ in range(2))
    want = a + b
    out = np.empty_like(a)
    assert _core.add(a, b, out=out) is out
    np.testing.assert_array_equal(out, want)
    a2 = a.copy()
    assert _core.add(a2, b, out=a2) is a2
    np.testing.assert_array_equal(a2, want)
    b2 = b.copy()
    assert _core.add(a, b2, out=b2) is b2
    np.testing.assert_array_equal(b2, want)
    ro = np.zeros_like(a)
    ro.flags.writeable = False
    for bad, exc in ((np.zeros((3, 5), F32), ValueError), (np.zeros(a.shape), TypeError), (ro, ValueError),
                     (np.zeros((70001, 3), F32).T, ValueError)):
        with pytest.raises(exc, match="^out"):
            _core.add(a, b, out=bad)


def test_relu_layer(rng):
    m = nn.ReLU()
    x = away_from_zero(rng, (2, 3, 5, 5))
    dy = rng.standard_normal(x.shape).astype(F32)
    np.testing.assert_array_equal(m(x), misc.relu_forward(x).astype(F32))
    np.testing.assert_array_equal(m.backward(dy), misc.relu_backward(x, dy).astype(F32))
    # a non-contiguous input is accepted by the layer and gives the same result
    big = np.zeros((2, 3, 5, 10), F32)
    big[..., ::2] = x
    np.testing.assert_array_equal(m(big[..., ::2]), misc.relu_forward(x).astype(F32))
    assert list(m.parameters()) == []
    # exact zeros: no gradient flows through relu at 0 (as torch)
    z = np.array([[0.0, -0.0, 1.0, -1.0]], F32)
    np.testing.assert_array_equal(m(z), [[0, 0, 1, 0]])
    np.testing.assert_array_equal(m.backward(np.full((1, 4), 2.0, F32)), [[0, 0, 2, 0]])


# ---------------------------------------------------------------------- pools

POOL_CASES = [  # (N, C, H, W, k, s)
    (1, 1, 4, 4, 2, 2),
    (2, 3, 7, 7, 2, 2),     # odd size: the last row/column is dropped
    (1, 5, 9, 6, 3, 3),
    (2, 13, 5, 7, 3, 1),    # overlapping windows
    (3, 3, 8, 5, 2, 1),
    (1, 5, 9, 9, 3, 2),
    (2, 3, 7, 8, 2, 3),     # stride > kernel: some entries are in no window
    (1, 2, 3, 3, 3, 1),     # one window
]


@pytest.mark.parametrize("N,C,H,W,k,s", POOL_CASES)
def test_maxpool_kernel_vs_twin_and_fd(rng, N, C, H, W, k, s):
    x = distinct(rng, (N, C, H, W))
    y, am = _core.maxpool2d_forward(x, k, s)
    ry, ram = misc.maxpool2d_forward(x, k, s)
    assert y.dtype == F32 and am.dtype == np.int32 and y.shape == ry.shape
    np.testing.assert_array_equal(y, ry.astype(F32))
    np.testing.assert_array_equal(am, ram)
    dy = rng.standard_normal(y.shape).astype(F32)
    dx = _core.maxpool2d_backward(dy, am, x.shape, k, s)
    assert dx.shape == x.shape and dx.dtype == F32
    assert_close(dx, misc.maxpool2d_backward(x, dy, k, s), 1e-6, 1e-7)
    if x.size <= 600:
        fd = numerical_grad(lambda a: misc.maxpool2d_forward(a, k, s)[0], x, dy)
        assert_close(dx, fd, 1e-5, 1e-6)


@pytest.mark.parametrize("N,C,H,W,k,s", POOL_CASES + [
    (1, 2, 9, 1200, 3, 2),   # several bands of columns
    (1, 1, 3, 1100, 3, 600), # one output column per band
    (1, 2, 520, 530, 515, 4),  # a window wider than a band
    (2, 3, 112, 112, 3, 2),  # ResNet18's (AVX-512: 16 outputs a step, the last 7 masked)
    (1, 2, 35, 37, 3, 2), (1, 1, 3, 3, 3, 2), (1, 3, 5, 50, 3, 2), (1, 2, 7, 36, 3, 2),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_maxpool_infer_is_the_forwards_y(rng, N, C, H, W, k, s, threads):
    old = csub.get_num_threads()
    csub.set_num_threads(threads)
    try:
        x = distinct(rng, (N, C, H, W))
        x.reshape(-1)[rng.choice(x.size, max(1, x.size // 50), replace=False)] = -np.inf
        y = _core.maxpool2d_infer(x, k, s)
        np.testing.assert_array_equal(y, _core.maxpool2d_forward(x, k, s)[0])
        if x.size <= 5000:
            np.testing.assert_array_equal(y, misc.maxpool2d_forward(x, k, s)[0].astype(F32))
        x.reshape(-1)[rng.choice(x.size, max(1, x.size // 30), replace=False)] = np.nan
        x[0, 0, k - 1, k - 1] = np.nan  # the last element of the first window
        y, (want, _) = _core.maxpool2d_infer(x, k, s), _core.maxpool2d_forward(x, k, s)
        assert np.isnan(want).any()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        np.testing.assert_array_equal(y[~np.isnan(y)], want[~np.isnan(want)])
    finally:
        csub.set_num_threads(old)


@pytest.mark.parametrize("N,C,H,W,k,s", POOL_CASES + [(2, 3, 112, 112, 3, 2)])
def test_maxpool_infer_matches_torch(torch, rng, N, C, H, W, k, s):
    x = distinct(rng, (N, C, H, W))
    want = torch.nn.functional.max_pool2d(torch.tensor(x), k, s).numpy()
    np.testing.assert_array_equal(_core.maxpool2d_infer(x, k, s), want)


def test_maxpool_infer_refuses_bad_arguments(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(F32)
    with pytest.raises(ValueError, match="kernel_size"):
        _core.maxpool2d_infer(x, 0, 1)
    with pytest.raises(ValueError, match="x"):
        _core.maxpool2d_infer(x[0], 2, 2)


@pytest.mark.parametrize("N,C,H,W,k,s", POOL_CASES)
def test_avgpool_kernel_vs_twin_and_fd(rng, N, C, H, W, k, s):
    x = rng.standard_normal((N, C, H, W)).astype(F32)
    y = _core.avgpool2d_forward(x, k, s)
    assert_close(y, misc.avgpool2d_forward(x, k, s), 1e-5, 1e-6)
    dy = rng.standard_normal(y.shape).astype(F32)
    dx = _core.avgpool2d_backward(dy, x.shape, k, s)
    assert_close(dx, misc.avgpool2d_backward(x.shape, dy, k, s), 1e-5, 1e-6)
    if x.size <= 600:
        fd = numerical_grad(lambda a: misc.avgpool2d_forward(a, k, s), x, dy)
        assert_close(dx, fd, 1e-5, 1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 4), (1, 13, 3, 5), (3, 5, 7, 1), (2, 8, 100, 100)])
def test_gap_kernel_vs_twin_and_fd(rng, shape):
    x = rng.standard_normal(shape).astype(F32) + 3.0
    y = _core.gap_forward(x)
    assert y.shape == shape[:2] and y.dtype == F32
    assert_close(y, misc.gap_forward(x), 1e-5, 1e-6)
    dy = rng.standard_normal(shape[:2]).astype(F32)
    dx = _core.gap_backward(dy, shape)
    assert_close(dx, misc.gap_backward(shape, dy), 1e-6, 1e-7)
    if x.size <= 600:
        assert_close(dx, numerical_grad(misc.gap_forward, x, dy), 1e-5, 1e-6)


@pytest.mark.parametrize("N,C,H,W,k,s", POOL_CASES)
def test_pools_match_torch(torch, rng, N, C, H, W, k, s):
    F = torch.nn.functional
    x = distinct(rng, (N, C, H, W))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = F.max_pool2d(xt, k, s)
    y, am = _core.maxpool2d_forward(x, k, s)
    dy = rng.standard_normal(y.shape).astype(F32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(y, yt.detach().numpy(), 0, 1e-7)
    assert_close(_core.maxpool2d_backward(dy, am, x.shape, k, s), xt.grad.numpy(), 1e-6, 1e-7)

    x = rng.standard_normal((N, C, H, W)).astype(F32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = F.avg_pool2d(xt, k, s)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(_core.avgpool2d_forward(x, k, s), yt.detach().numpy(), 1e-5, 1e-6)
    assert_close(_core.avgpool2d_backward(dy, x.shape, k, s), xt.grad.numpy(), 1e-5, 1e-6)

    dg = rng.standard_normal((N, C)).astype(F32)
    for f in (lambda t: F.adaptive_avg_pool2d(t, 1).reshape(N, C), lambda t: t.mean(dim=(2, 3))):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        yt = f(xt)
        yt.backward(torch.tensor(dg, dtype=torch.float64))
        assert_close(_core.gap_forward(x), yt.detach().numpy(), 1e-5, 1e-6)
        assert_close(_core.gap_backward(dg, x.shape), xt.grad.numpy(), 1e-6, 1e-7)


@pytest.mark.parametrize("k,s", [(2, 2), (2, 1), (3, 1), (3, 2)])
def test_maxpool_ties_first_maximum_gets_gradient(torch, rng, k, s):
    # small integers: most windows hold ties, overlapping windows share them
    x = rng.integers(0, 3, size=(2, 3, 7, 8)).astype(F32)
    y, am = _core.maxpool2d_forward(x, k, s)
    _, ram = misc.maxpool2d_forward(x, k, s)
    np.testing.assert_array_equal(am, ram)
    dy = rng.standard_normal(y.shape).astype(F32)
    dx = _core.maxpool2d_backward(dy, am, x.shape, k, s)
    assert_close(dx, misc.maxpool2d_backward(x, dy, k, s), 1e-6, 1e-7)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(xt, k, s, return_indices=True)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    np.testing.assert_array_equal(am, it.numpy())
    assert_close(dx, xt.grad.numpy(), 1e-6, 1e-7)


def test_maxpool_all_equal_window_picks_first():
    x = np.full((1, 1, 4, 4), 5.0, F32)
    y, am = _core.maxpool2d_forward(x, 2, 2)
    np.testing.assert_array_equal(am.ravel(), [0, 2, 8, 10])
    dx = _core.maxpool2d_backward(np.ones_like(y), am, x.shape, 2, 2)
    expect = np.zeros((4, 4), F32)
    expect[[0, 0, 2, 2], [0, 2, 0, 2]] = 1
    np.testing.assert_array_equal(dx[0, 0], expect)


def test_maxpool_special_values(torch):
    x = np.array([[[[-np.inf, -np.inf, 1.0, np.nan],
                    [-np.inf, -np.inf, 2.0, 0.0],
                    [-3.0, -2.0, np.inf, 1.0],
                    [-1.0, -3.4e38, 0.0, 0.0]]]], F32)
    y, am = _core.maxpool2d_forward(x, 2, 2)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 2, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())  # -inf window, NaN propagates, +inf
    np.testing.assert_array_equal(am, it.numpy())
    assert np.isnan(y[0, 0, 0, 1]) and y[0, 0, 0, 0] == -np.inf and am[0, 0, 0, 0] == 0


@pytest.mark.parametrize("k,s", [(2, None), (3, 2), (2, 1)])
def test_pool_layers(rng, k, s):
    x = distinct(rng, (2, 5, 9, 7))
    s_eff = k if s is None else s
    m = nn.MaxPool2d(k, s)
    assert m.stride == s_eff
    y = m(x)
    np.testing.assert_array_equal(y, misc.maxpool2d_forward(x, k, s_eff)[0].astype(F32))
    dy = rng.standard_normal(y.shape).astype(F32)
    assert_close(m.backward(dy), misc.maxpool2d_backward(x, dy, k, s_eff), 1e-6, 1e-7)

    a = nn.AvgPool2d(k, s)
    y = a(x)
    assert_close(y, misc.avgpool2d_forward(x, k, s_eff), 1e-5, 1e-6)
    assert_close(a.backward(dy), misc.avgpool2d_backward(x.shape, dy, k, s_eff), 1e-6, 1e-7)

    g = nn.GlobalAvgPool2d()
    assert_close(g(x), misc.gap_forward(x), 1e-5, 1e-6)
    dg = rng.standard_normal((2, 5)).astype(F32)
    assert_close(g.backward(dg), misc.gap_backward(x.shape, dg), 1e-6, 1e-7)


def test_flatten_layer(rng):
    f = nn.Flatten()
    x = rng.standard_normal((3, 2, 5, 7)).astype(F32)
    y = f(x)
    assert y.shape == (3, 70)
    np.testing.assert_array_equal(y, x.reshape(3, -1))
    dy = rng.standard_normal((3, 140)).astype(F32)[:, ::2]  # non-contiguous gradient
    dx = f.backward(dy)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx, np.ascontiguousarray(dy).reshape(x.shape))


# ---------------------------------------------------------------- bad input

def test_relu_add_bad_input():
    x = np.zeros((2, 3), F32)
    with pytest.raises(TypeError, match="x"):
        _core.relu_forward(x.astype(np.float64))
    with pytest.raises(TypeError, match="x"):
        _core.relu_forward([1.0, 2.0])
    with pytest.raises(TypeError, match="x"):
        _core.relu_forward(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="x"):
        _core.relu_forward(np.zeros((3, 4), F32)[:, ::2])
    with pytest.raises(ValueError, match="dy"):
        _core.relu_backward(x, np.zeros((3, 2), F32))
    with pytest.raises(TypeError, match="dy"):
        _core.relu_backward(x, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dy"):
        _core.relu_backward(x, np.zeros((2, 6), F32)[:, ::2])
    with pytest.raises(ValueError, match="b"):
        _core.add(x, np.zeros(6, F32))
    with pytest.raises(TypeError, match="a"):
        _core.add(np.zeros((2, 3)), x)
    with pytest.raises(TypeError, match="b"):
        _core.add(x, [[0.0] * 3] * 2)
    with pytest.raises(ValueError, match="b"):
        _core.add(x, np.zeros((3, 2), F32).T)
    with pytest.raises(TypeError, match="x"):
        nn.ReLU()(np.zeros(3))
    with pytest.raises(TypeError, match="x"):
        nn.ReLU()([1.0])


def test_pool_kernels_bad_input():
    x = np.zeros((1, 2, 5, 5), F32)
    for fwd in (_core.maxpool2d_forward, _core.avgpool2d_forward):
        with pytest.raises(TypeError, match="x"):
            fwd(x.astype(np.float64), 2, 2)
        with pytest.raises(ValueError, match="x"):
            fwd(np.zeros((2, 5, 5), F32), 2, 2)
        with pytest.raises(ValueError, match="x"):
            fwd(np.zeros((1, 2, 5, 10), F32)[..., ::2], 2, 2)
        with pytest.raises(ValueError, match="kernel_size"):
            fwd(x, 0, 2)
        with pytest.raises(ValueError, match="stride"):
            fwd(x, 2, 0)
        with pytest.raises(ValueError, match="kernel_size"):
            fwd(x, 6, 1)  # window larger than the input
    y, am = _core.maxpool2d_forward(x, 2, 2)
    with pytest.raises(ValueError, match="dy"):
        _core.maxpool2d_backward(np.zeros((1, 2, 3, 3), F32), am, x.shape, 2, 2)
    with pytest.raises(TypeError, match="argmax"):
        _core.maxpool2d_backward(y, am.astype(np.int64), x.shape, 2, 2)
    with pytest.raises(ValueError, match="argmax"):
        _core.maxpool2d_backward(y, np.full_like(am, 25), x.shape, 2, 2)  # outside the 5x5 plane
    with pytest.raises(ValueError, match="argmax"):
        _core.maxpool2d_backward(y, np.full_like(am, -1), x.shape, 2, 2)
    with pytest.raises(ValueError, match="input_shape"):
        _core.maxpool2d_backward(y, am, (1, 2, 5), 2, 2)
    with pytest.raises(ValueError, match="input_shape"):
        _core.avgpool2d_backward(y, (1, 2, 0, 5), 2, 2)
    with pytest.raises(ValueError, match="dy"):
        _core.avgpool2d_backward(np.zeros((1, 2, 2, 3), F32), x.shape, 2, 2)
    with pytest.raises(TypeError, match="x"):
        _core.gap_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="x"):
        _core.gap_forward(np.zeros((2, 3), F32))
    with pytest.raises(ValueError, match="dy"):
        _core.gap_backward(np.zeros((1, 3), F32), x.shape)
    with pytest.raises(ValueError, match="input_shape"):
        _core.gap_backward(np.zeros((1, 2), F32), (1, 2, 5))


def test_pool_layers_bad_input():
    for cls in (nn.MaxPool2d, nn.AvgPool2d):
        for bad in (0, -1, 2.0, True, None, "2"):
            with pytest.raises((ValueError, TypeError), match="kernel_size"):
                cls(bad)
        for bad in (0, 1.5, False):
            with pytest.raises((ValueError, TypeError), match="stride"):
                cls(2, bad)
        with pytest.raises(TypeError, match="x"):
            cls(2)(np.zeros((1, 1, 4, 4)))
        with pytest.raises(ValueError, match="x"):
            cls(2)(np.zeros((1, 4, 4), F32))
        with pytest.raises(ValueError, match="kernel_size"):
            cls(3)(np.zeros((1, 1, 2, 5), F32))
    with pytest.raises(ValueError, match="x"):
        nn.GlobalAvgPool2d()(np.zeros((1, 4), F32))
    with pytest.raises(TypeError, match="x"):
        nn.Flatten()([[1.0]])


# ---------------------------------------------------------------------- loss

@pytest.mark.parametrize("N,K", [(1, 1), (1, 2), (4, 5), (7, 13), (3, 10)])
def test_cross_entropy_kernel(rng, N, K):
    z = (rng.standard_normal((N, K)) * 4).astype(F32)
    labels = rng.integers(0, K, N).astype(np.int64)
    loss, prob = _core.cross_entropy_forward(z, labels)
    assert isinstance(loss, float) and prob.dtype == F32 and prob.shape == (N, K)
    assert abs(loss - misc.cross_entropy_forward(z, labels)) <= 1e-6 * max(1.0, abs(loss))
    assert_close(prob, np.exp(misc.log_softmax(z)), 1e-6, 1e-7)
    for scale in (1.0, 0.25, -3.0):
        d = _core.cross_entropy_backward(prob, labels, scale)
        assert_close(d, misc.cross_entropy_backward(z, labels, scale), 1e-5, 1e-7)
        fd = numerical_grad(lambda a: np.array(misc.cross_entropy_forward(a, labels)), z, np.array(scale))
        assert_close(d, fd, 1e-5, 1e-6)


@pytest.mark.parametrize("N,K", [(1, 3), (5, 10), (8, 7)])
def test_cross_entropy_layer_matches_torch(torch, rng, N, K):
    z = (rng.standard_normal((N, K)) * 3).astype(F32)
    labels = rng.integers(0, K, N)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(labels), reduction="mean")
    lt.backward()
    crit = nn.CrossEntropyLoss()
    loss = crit(z, labels)
    assert abs(loss - lt.item()) <= 1e-6 * max(1.0, abs(lt.item()))
    assert_close(crit.backward(), zt.grad.numpy(), 1e-5, 1e-7)
    assert_close(crit.backward(scale=2.0), 2.0 * zt.grad.numpy(), 1e-5, 1e-7)
    assert_close(crit.prob, torch.softmax(zt, 1).detach().numpy(), 1e-6, 1e-7)


def test_cross_entropy_large_logits_are_stable(torch):
    z = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4 - 1.0], [-1e4, -1e4 + 2, -1e4 + 1]], F32)
    labels = np.array([2, 0, 1])
    crit = nn.CrossEntropyLoss()
    loss = crit(z, labels)
    d = crit.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(d)) and np.all(np.isfinite(crit.prob))
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(labels))
    lt.backward()
    assert abs(loss - lt.item()) <= 1e-6 * abs(lt.item())
    assert_close(d, zt.grad.numpy(), 1e-6, 1e-7)
    assert_close(loss, misc.cross_entropy_forward(z, labels), 1e-9, 0)
    assert np.allclose(crit.prob.sum(axis=1), 1.0, atol=1e-6)


def test_cross_entropy_labels_any_integer_dtype():
    z = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]], F32)
    crit = nn.CrossEntropyLoss()
    ref = misc.cross_entropy_forward(z, [2, 1])
    for labels in ([2, 1], np.array([2, 1], np.int32), np.array([2, 1], np.uint8),
                   np.array([2, 0, 1, 5])[::2]):
        assert abs(crit(z, labels) - ref) < 1e-6


def test_cross_entropy_bad_input():
    z = np.zeros((3, 4), F32)
    crit = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError):
        nn.CrossEntropyLoss().backward()
    for bad in ([0, 4, 1], [-1, 0, 0], np.array([0, 1, 2**40])):
        with pytest.raises(ValueError, match="labels"):
            crit(z, bad)
    for bad in (np.array([0.0, 1.0, 2.0]), np.array([True, False, True]), ["a", "b", "c"]):
        with pytest.raises(TypeError, match="labels"):
            crit(z, bad)
    for bad in ([0, 1], [0, 1, 2, 3], np.zeros((3, 1), np.int64), 1):
        with pytest.raises(ValueError, match="labels"):
            crit(z, bad)
    with pytest.raises(TypeError, match="logits"):
        crit(z.astype(np.float64), [0, 1, 2])
    with pytest.raises(ValueError, match="logits"):
        crit(np.zeros(4, F32), [0])
    with pytest.raises(ValueError, match="logits"):
        crit(np.zeros((0, 4), F32), np.zeros(0, np.int64))
    crit(z, [0, 1, 2])
    with pytest.raises(TypeError, match="scale"):
        crit.backward("1.0")
    with pytest.raises(ValueError, match="scale"):
        crit.backward(float("nan"))
    # the kernels themselves
    with pytest.raises(TypeError, match="labels"):
        _core.cross_entropy_forward(z, np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError, match="labels"):
        _core.cross_entropy_forward(z, np.array([0, 1, 2, 3, 0, 0], np.int64)[::2])
    with pytest.raises(ValueError, match="labels"):
        _core.cross_entropy_forward(z, np.array([0, 1, 4], np.int64))
    with pytest.raises(ValueError, match="logits"):
        _core.cross_entropy_forward(np.zeros((4, 3), F32).T, np.array([0, 1, 2], np.int64))
    _, prob = _core.cross_entropy_forward(z, np.array([0, 1, 2], np.int64))
    with pytest.raises(ValueError, match="labels"):
        _core.cross_entropy_backward(prob, np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="labels"):
        _core.cross_entropy_backward(prob, np.array([0, 1, -3], np.int64))
    with pytest.raises(TypeError, match="prob"):
        _core.cross_entropy_backward(prob.astype(np.float64), np.array([0, 1, 2], np.int64))
    with pytest.raises(ValueError, match="scale"):
        _core.cross_entropy_backward(prob, np.array([0, 1, 2], np.int64), float("inf"))


def test_module_namespace_exports():
    for name in ("ReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten", "CrossEntropyLoss"):
        assert isinstance(getattr(csub.nn, name), type)
