"""Batch norm, group norm and instance norm: the C kernels against the NumPy
float64 twins (tests/reference/norm.py), finite differences and PyTorch; the
layers BatchNorm2d, GroupNorm, InstanceNorm2d; argument checking."""
import numpy as np
import pytest

import csub
from csub import _core
from csub.nn import BatchNorm2d, GroupNorm, InstanceNorm2d
from gradcheck import assert_close, numerical_grad
from reference import norm as ref

F32 = np.float32

# (N, C, ...) shapes: odd channel counts, batch 1 with H*W > 1, 2-D, 3-D and 4-D
BN_SHAPES = [(4, 3), (7, 13), (2, 5, 3, 3), (1, 13, 2, 3), (3, 3, 5), (2, 16, 3, 1)]
# (shape, num_groups): one group, in between, one group per channel (instance norm)
GN_CASES = [((2, 12, 3, 3), 1), ((2, 12, 3, 3), 3), ((2, 12, 3, 3), 12), ((1, 5, 7), 5),
            ((3, 6, 4), 2), ((1, 13, 2, 3), 1), ((2, 3, 2, 5), 3), ((3, 10), 5)]


def _rand(rng, shape, loc=0.0, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(F32)


def _affine(rng, C):
    return _rand(rng, C, 1.0, 0.5), _rand(rng, C, 0.0, 0.5)


def _running(rng, C):
    return _rand(rng, C, 0.0, 0.5), (0.5 + rng.random(C)).astype(F32)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# ================================================================ the twins

@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3, 2), (1, 3, 2, 3)])
def test_twin_batchnorm_backward_matches_finite_differences(rng, shape, training):
    C = shape[1]
    x, dy = _f64(_rand(rng, shape)), _f64(_rand(rng, shape))
    g, b = map(_f64, _affine(rng, C))
    rm, rv = map(_f64, _running(rng, C))
    kw = dict(running_mean=rm, running_var=rv, eps=1e-3)

    def fwd(x_, g_, b_):
        return ref.batchnorm_forward(x_, g_, b_, rm, rv, 0.1, 1e-3, training)[0]

    dx, dg, db = ref.batchnorm_backward(x, g, dy, training=training, **kw)
    assert_close(dx, numerical_grad(lambda t: fwd(t, g, b), x, dy), 1e-6, 1e-7, "dx")
    assert_close(dg, numerical_grad(lambda t: fwd(x, t, b), g, dy), 1e-6, 1e-7, "dgamma")
    assert_close(db, numerical_grad(lambda t: fwd(x, g, t), b, dy), 1e-6, 1e-7, "dbeta")


def test_twin_batchnorm_statistics_by_hand():
    # channel 0 holds 1, 2, 3, 6 (mean 3, biased var 3.5, unbiased 14/3),
    # channel 1 holds 10, 12, 10, 12 (mean 11, biased var 1, unbiased 4/3)
    x = np.array([[1.0, 10.0], [2.0, 12.0], [3.0, 10.0], [6.0, 12.0]])
    y, mean, invstd, rm, rv = ref.batchnorm_forward(x, np.ones(2), np.zeros(2), np.zeros(2),
                                                    np.ones(2), momentum=0.5, eps=0.0)
    np.testing.assert_allclose(mean, [3.0, 11.0])
    np.testing.assert_allclose(invstd, [1 / np.sqrt(3.5), 1.0])
    np.testing.assert_allclose(rm, [1.5, 5.5])
    np.testing.assert_allclose(rv, [0.5 + 0.5 * 14 / 3, 0.5 + 0.5 * 4 / 3])
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 3) / np.sqrt(3.5))
    np.testing.assert_allclose(y[:, 1], [-1.0, 1.0, -1.0, 1.0])


@pytest.mark.parametrize("shape,G", [((2, 6, 2, 2), 1), ((2, 6, 2, 2), 3), ((2, 6, 3), 6), ((1, 4, 5), 2)])
def test_twin_groupnorm_backward_matches_finite_differences(rng, shape, G):
    C = shape[1]
    x, dy = _f64(_rand(rng, shape)), _f64(_rand(rng, shape))
    g, b = map(_f64, _affine(rng, C))

    def fwd(x_, g_, b_):
        return ref.groupnorm_forward(x_, g_, b_, G, 1e-3)[0]

    dx, dg, db = ref.groupnorm_backward(x, g, dy, G, 1e-3)
    assert_close(dx, numerical_grad(lambda t: fwd(t, g, b), x, dy), 1e-6, 1e-7, "dx")
    assert_close(dg, numerical_grad(lambda t: fwd(x, t, b), g, dy), 1e-6, 1e-7, "dgamma")
    assert_close(db, numerical_grad(lambda t: fwd(x, g, t), b, dy), 1e-6, 1e-7, "dbeta")


def test_twin_groupnorm_statistics_by_hand():
    # one sample, 4 channels of 1 value, 2 groups: {1, 3} and {10, 14}
    x = np.array([[1.0, 3.0, 10.0, 14.0]])
    y, mean, invstd = ref.groupnorm_forward(x, np.ones(4), np.zeros(4), 2, eps=0.0)
    np.testing.assert_allclose(mean, [[2.0, 12.0]])
    np.testing.assert_allclose(invstd, [[1.0, 0.5]])
    np.testing.assert_allclose(y, [[-1.0, 1.0, -1.0, 1.0]])


# ================================================================ batch norm kernel

def _bn_state(rng, shape, loc=0.3, scale=2.0):
    """x, gamma, beta and running statistics (rm, rv) of shape[1] channels, with copies (rm0, rv0)."""
    x = _rand(rng, shape, loc, scale)
    g, b = _affine(rng, shape[1])
    rm, rv = _running(rng, shape[1])
    return x, g, b, rm, rv, rm.copy(), rv.copy()


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_forward_training(rng, shape):
    C = shape[1]
    x, g, b, rm, rv, rm0, rv0 = _bn_state(rng, shape)
    y, mean, invstd = _core.batchnorm_forward(x, g, b, rm, rv, 0.2, 1e-4, True)
    ey, emean, einv, erm, erv = ref.batchnorm_forward(x, g, b, rm0, rv0, 0.2, 1e-4, True)
    assert y.dtype == mean.dtype == invstd.dtype == F32
    assert y.shape == x.shape and mean.shape == invstd.shape == (C,)
    assert_close(y, ey, 1e-4, 1e-5, "y")
    assert_close(mean, emean, 1e-5, 1e-6, "mean")
    assert_close(invstd, einv, 1e-5, 1e-6, "invstd")
    # running statistics are updated in place, with the unbiased variance
    assert_close(rm, erm, 1e-5, 1e-6, "running_mean")
    assert_close(rv, erv, 1e-5, 1e-6, "running_var")
    assert not np.allclose(rv, rv0)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_forward_eval_uses_running_statistics(rng, shape):
    x, g, b, rm, rv, rm0, rv0 = _bn_state(rng, shape)
    y, mean, invstd = _core.batchnorm_forward(x, g, b, rm, rv, 0.1, 1e-3, False)
    ey, emean, einv, _, _ = ref.batchnorm_forward(x, g, b, rm0, rv0, 0.1, 1e-3, False)
    assert_close(y, ey, 1e-5, 1e-6, "y")
    np.testing.assert_array_equal(mean, rm0)
    assert_close(invstd, einv, 1e-6, 1e-7, "invstd")
    np.testing.assert_array_equal(rm, rm0)  # evaluation leaves them alone
    np.testing.assert_array_equal(rv, rv0)


def test_batchnorm_eval_accepts_a_single_value_per_channel(rng):
    x = _rand(rng, (1, 5))
    g, b = _affine(rng, 5)
    rm, rv = _running(rng, 5)
    y, _, _ = _core.batchnorm_forward(x, g, b, rm, rv, training=False)
    assert_close(y, ref.batchnorm_forward(x, g, b, rm, rv, training=False)[0], 1e-5, 1e-6, "y")


def test_batchnorm_training_without_running_statistics(rng):
    x = _rand(rng, (3, 5, 2, 2))
    g, b = _affine(rng, 5)
    y, mean, invstd = _core.batchnorm_forward(x, g, b)  # defaults: training, no running stats
    ey, emean, einv, _, _ = ref.batchnorm_forward(x, g, b)
    assert_close(y, ey, 1e-4, 1e-5, "y")
    assert_close(mean, emean, 1e-5, 1e-6, "mean")
    assert_close(invstd, einv, 1e-5, 1e-6, "invstd")


def test_batchnorm_momentum_endpoints(rng):
    x, g, b, rm, rv, rm0, rv0 = _bn_state(rng, (4, 3, 2, 2), 2.0, 3.0)
    _core.batchnorm_forward(x, g, b, rm, rv, 0.0, 1e-5, True)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    _core.batchnorm_forward(x, g, b, rm, rv, 1.0, 1e-5, True)
    xd = _f64(x)
    assert_close(rm, xd.mean(axis=(0, 2, 3)), 1e-6, 1e-6, "running_mean")
    assert_close(rv, xd.var(axis=(0, 2, 3), ddof=1), 1e-5, 1e-6, "running_var")


def _bn_inputs(rng, shape, training, loc=0.0, scale=1.0):
    C = shape[1]
    x = _rand(rng, shape, loc, scale)
    dy = _rand(rng, shape)
    g, b = _affine(rng, C)
    rm, rv = _running(rng, C)
    if not training:
        rm = (rm + F32(loc)).astype(F32)
    return x, dy, g, b, rm, rv


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_backward_against_twin_and_finite_differences(rng, shape, training):
    x, dy, g, b, rm, rv = _bn_inputs(rng, shape, training)
    eps = 1e-3
    _, mean, invstd = _core.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), 0.1, eps, training)
    dg0, db0 = _rand(rng, shape[1]), _rand(rng, shape[1])
    dg, db = dg0.copy(), db0.copy()
    dx = _core.batchnorm_backward(x, g, dy, mean, invstd, dg, db, training)
    ex, eg, eb = ref.batchnorm_backward(x, g, dy, rm, rv, eps, training)
    assert dx.dtype == F32 and dx.shape == x.shape
    assert_close(dx, ex, 1e-4, 1e-5, "dx")
    assert_close(dg, dg0 + eg, 1e-4, 1e-5, "dgamma")  # += onto what was there
    assert_close(db, db0 + eb, 1e-4, 1e-5, "dbeta")

    def fwd(x_, g_, b_):
        return ref.batchnorm_forward(x_, g_, b_, rm, rv, 0.1, eps, training)[0]

    xd, gd, bd = _f64(x), _f64(g), _f64(b)
    assert_close(dx, numerical_grad(lambda t: fwd(t, gd, bd), xd, dy), 1e-4, 1e-5, "dx (fd)")
    assert_close(dg - dg0, numerical_grad(lambda t: fwd(xd, t, bd), gd, dy), 1e-4, 1e-5, "dgamma (fd)")
    assert_close(db - db0, numerical_grad(lambda t: fwd(xd, gd, t), bd, dy), 1e-4, 1e-5, "dbeta (fd)")


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward_without_parameter_gradients(rng, training):
    x, dy, g, b, rm, rv = _bn_inputs(rng, (2, 5, 3, 3), training)
    _, mean, invstd = _core.batchnorm_forward(x, g, b, rm, rv, training=training)
    dg = np.zeros(5, F32)
    full = _core.batchnorm_backward(x, g, dy, mean, invstd, dg, None, training)
    only = _core.batchnorm_backward(x, g, dy, mean, invstd, training=training)
    assert_close(only, full, 1e-6, 1e-7, "dx")
    assert np.any(dg != 0)


def test_batchnorm_eval_gradient_is_a_per_channel_scale(rng):
    x, dy, g, b, rm, rv = _bn_inputs(rng, (3, 5, 2, 2), False)
    _, mean, invstd = _core.batchnorm_forward(x, g, b, rm, rv, eps=1e-5, training=False)
    dx = _core.batchnorm_backward(x, g, dy, mean, invstd, training=False)
    scale = (_f64(g) / np.sqrt(_f64(rv) + 1e-5)).reshape(1, 5, 1, 1)
    assert_close(dx, scale * dy, 1e-5, 1e-6, "dx")
    dxt = _core.batchnorm_backward(x, g, dy, mean, invstd, training=True)
    assert not np.allclose(dxt, dx, atol=1e-3)  # the training gradient differs


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(8, 3, 4, 4), (1, 5, 6, 6), (64, 13)])
def test_batchnorm_large_offset(rng, shape, training):
    """mean 1000, std 0.01: the result must not lose digits to the offset."""
    x, dy, g, b, rm, rv = _bn_inputs(rng, shape, training, 1000.0, 0.01)
    if not training:
        rm = (1000.0 + 0.001 * rng.standard_normal(shape[1])).astype(F32)
        rv = (1e-4 * (0.5 + rng.random(shape[1]))).astype(F32)
    eps = 1e-6
    y, mean, invstd = _core.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), 0.1, eps, training)
    ey, _, einv, _, _ = ref.batchnorm_forward(x, g, b, rm, rv, 0.1, eps, training)
    assert_close(y, ey, 1e-4, 1e-5, "y")
    assert_close(invstd, einv, 1e-5, 1e-6, "invstd")
    dg, db = np.zeros_like(g), np.zeros_like(b)
    dx = _core.batchnorm_backward(x, g, dy, mean, invstd, dg, db, training)
    ex, eg, eb = ref.batchnorm_backward(x, g, dy, rm, rv, eps, training)
    assert_close(dx, ex, 1e-4, 1e-5, "dx")
    assert_close(dg, eg, 1e-4, 1e-5, "dgamma")
    assert_close(db, eb, 1e-4, 1e-5, "dbeta")


def test_batchnorm_large_offset_running_variance(rng):
    x = _rand(rng, (16, 3, 4, 4), 1000.0, 0.01)
    g, b = _affine(rng, 3)
    rm, rv = np.zeros(3, F32), np.zeros(3, F32)
    _core.batchnorm_forward(x, g, b, rm, rv, 1.0, 1e-5, True)
    xd = _f64(x)
    assert_close(rm, xd.mean(axis=(0, 2, 3)), 1e-6, 0, "running_mean")
    np.testing.assert_allclose(rv, xd.var(axis=(0, 2, 3), ddof=1), rtol=1e-4)


# ================================================================ group norm kernel

@pytest.mark.parametrize("shape,G", GN_CASES)
def test_groupnorm_forward(rng, shape, G):
    x = _rand(rng, shape, -0.5, 2.0)
    g, b = _affine(rng, shape[1])
    y, mean, invstd = _core.groupnorm_forward(x, g, b, G, 1e-4)
    ey, emean, einv = ref.groupnorm_forward(x, g, b, G, 1e-4)
    assert y.dtype == F32 and y.shape == x.shape
    assert mean.shape == invstd.shape == (shape[0], G)
    assert_close(y, ey, 1e-4, 1e-5, "y")
    assert_close(mean, emean, 1e-5, 1e-6, "mean")
    assert_close(invstd, einv, 1e-5, 1e-6, "invstd")


@pytest.mark.parametrize("shape,G", GN_CASES)
def test_groupnorm_backward_against_twin_and_finite_differences(rng, shape, G):
    C, eps = shape[1], 1e-3
    x, dy = _rand(rng, shape, 0.2, 1.5), _rand(rng, shape)
    g, b = _affine(rng, C)
    _, mean, invstd = _core.groupnorm_forward(x, g, b, G, eps)
    dg0, db0 = _rand(rng, C), _rand(rng, C)
    dg, db = dg0.copy(), db0.copy()
    dx = _core.groupnorm_backward(x, g, dy, mean, invstd, dg, db)
    ex, eg, eb = ref.groupnorm_backward(x, g, dy, G, eps)
    assert dx.dtype == F32 and dx.shape == x.shape
    assert_close(dx, ex, 1e-4, 1e-5, "dx")
    assert_close(dg, dg0 + eg, 1e-4, 1e-5, "dgamma")
    assert_close(db, db0 + eb, 1e-4, 1e-5, "dbeta")

    def fwd(x_, g_, b_):
        return ref.groupnorm_forward(x_, g_, b_, G, eps)[0]

    xd, gd, bd = _f64(x), _f64(g), _f64(b)
    assert_close(dx, numerical_grad(lambda t: fwd(t, gd, bd), xd, dy), 1e-4, 1e-5, "dx (fd)")
    assert_close(dg - dg0, numerical_grad(lambda t: fwd(xd, t, bd), gd, dy), 1e-4, 1e-5, "dgamma (fd)")
    assert_close(db - db0, numerical_grad(lambda t: fwd(xd, gd, t), bd, dy), 1e-4, 1e-5, "dbeta (fd)")


def test_groupnorm_backward_without_parameter_gradients(rng):
    x, dy = _rand(rng, (2, 6, 3, 3)), _rand(rng, (2, 6, 3, 3))
    g, b = _affine(rng, 6)
    _, mean, invstd = _core.groupnorm_forward(x, g, b, 3)
    db = np.zeros(6, F32)
    full = _core.groupnorm_backward(x, g, dy, mean, invstd, None, db)
    only = _core.groupnorm_backward(x, g, dy, mean, invstd)
    assert_close(only, full, 1e-6, 1e-7, "dx")
    assert_close(db, _f64(dy).sum(axis=(0, 2, 3)), 1e-5, 1e-6, "dbeta")


@pytest.mark.parametrize("shape,G", [((4, 12, 5, 5), 3), ((2, 6, 8, 8), 6), ((3, 5, 40), 1)])
def test_groupnorm_large_offset(rng, shape, G):
    x, dy = _rand(rng, shape, 1000.0, 0.01), _rand(rng, shape)
    g, b = _affine(rng, shape[1])
    eps = 1e-6
    y, mean, invstd = _core.groupnorm_forward(x, g, b, G, eps)
    ey, _, einv = ref.groupnorm_forward(x, g, b, G, eps)
    assert_close(y, ey, 1e-4, 1e-5, "y")
    assert_close(invstd, einv, 1e-5, 1e-6, "invstd")
    dg, db = np.zeros_like(g), np.zeros_like(b)
    dx = _core.groupnorm_backward(x, g, dy, mean, invstd, dg, db)
    ex, eg, eb = ref.groupnorm_backward(x, g, dy, G, eps)
    assert_close(dx, ex, 1e-4, 1e-5, "dx")
    assert_close(dg, eg, 1e-4, 1e-5, "dgamma")
    assert_close(db, eb, 1e-4, 1e-5, "dbeta")


def test_groupnorm_of_constant_group_is_beta(rng):
    # instance norm on (N, C): each group holds one value, the output is beta
    x = _rand(rng, (3, 5))
    g, b = _affine(rng, 5)
    y, mean, invstd = _core.groupnorm_forward(x, g, b, 5, 1e-5)
    assert_close(y, np.broadcast_to(b, x.shape), 1e-6, 1e-6, "y")
    assert_close(mean, x, 1e-7, 1e-7, "mean")
    dx = _core.groupnorm_backward(x, g, _rand(rng, (3, 5)), mean, invstd)
    assert_close(dx, np.zeros_like(x), 1e-6, 1e-6, "dx")


# ================================================================ against PyTorch

@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(6, 5), (2, 13, 3, 3), (1, 3, 4, 5), (4, 16, 2, 2)])
def test_batchnorm_against_torch(torch, rng, shape, training):
    F = torch.nn.functional
    C, momentum, eps = shape[1], 0.3, 1e-4
    x, dy, g, b, rm, rv = _bn_inputs(rng, shape, training, 0.5, 1.7)
    rm_c, rv_c = rm.copy(), rv.copy()
    y, _, _ = _core.batchnorm_forward(x, g, b, rm_c, rv_c, momentum, eps, training)
    _, mean, invstd = _core.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), momentum, eps, training)
    dg, db = np.zeros(C, F32), np.zeros(C, F32)
    dx = _core.batchnorm_backward(x, g, dy, mean, invstd, dg, db, training)

    tx = torch.tensor(_f64(x), requires_grad=True)
    tg = torch.tensor(_f64(g), requires_grad=True)
    tb = torch.tensor(_f64(b), requires_grad=True)
    trm, trv = torch.tensor(_f64(rm)), torch.tensor(_f64(rv))
    ty = F.batch_norm(tx, trm, trv, tg, tb, training=training, momentum=momentum, eps=eps)
    ty.backward(torch.tensor(_f64(dy)))
    assert_close(y, ty.detach().numpy(), 1e-4, 1e-5, "y")
    assert_close(rm_c, trm.numpy(), 1e-5, 1e-6, "running_mean")
    assert_close(rv_c, trv.numpy(), 1e-5, 1e-6, "running_var")
    assert_close(dx, tx.grad.numpy(), 1e-4, 1e-5, "dx")
    assert_close(dg, tg.grad.numpy(), 1e-4, 1e-5, "dgamma")
    assert_close(db, tb.grad.numpy(), 1e-4, 1e-5, "dbeta")


def test_batchnorm_running_statistics_over_steps_against_torch(torch, rng):
    F = torch.nn.functional
    rm, rv = np.zeros(5, F32), np.ones(5, F32)
    trm, trv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    g, b = _affine(rng, 5)
    for step in range(4):
        x = _rand(rng, (3, 5, 2, 3), step, 1.0 + step)
        _core.batchnorm_forward(x, g, b, rm, rv, 0.1, 1e-5, True)
        F.batch_norm(torch.tensor(_f64(x)), trm, trv, torch.tensor(_f64(g)), torch.tensor(_f64(b)),
                     training=True, momentum=0.1, eps=1e-5)
    assert_close(rm, trm.numpy(), 1e-5, 1e-6, "running_mean")
    assert_close(rv, trv.numpy(), 1e-5, 1e-6, "running_var")


def _groupnorm_against_torch(torch, x, dy, g, b, G, eps, torch_norm):
    """_core's group norm forward and backward at G groups against torch_norm(tx, tg, tb) in float64;
    returns torch's (y, x, gamma) after its backward."""
    y, mean, invstd = _core.groupnorm_forward(x, g, b, G, eps)
    dg, db = np.zeros_like(g), np.zeros_like(b)
    dx = _core.groupnorm_backward(x, g, dy, mean, invstd, dg, db)
    tx = torch.tensor(_f64(x), requires_grad=True)
    tg = torch.tensor(_f64(g), requires_grad=True)
    tb = torch.tensor(_f64(b), requires_grad=True)
    ty = torch_norm(tx, tg, tb)
    ty.backward(torch.tensor(_f64(dy)))
    assert_close(y, ty.detach().numpy(), 1e-4, 1e-5, "y")
    assert_close(dx, tx.grad.numpy(), 1e-4, 1e-5, "dx")
    assert_close(dg, tg.grad.numpy(), 1e-4, 1e-5, "dgamma")
    assert_close(db, tb.grad.numpy(), 1e-4, 1e-5, "dbeta")
    return ty, tx, tg


@pytest.mark.parametrize("shape,G", GN_CASES + [((2, 16, 5, 5), 4)])
def test_groupnorm_against_torch(torch, rng, shape, G):
    F = torch.nn.functional
    eps = 1e-4
    x, dy = _rand(rng, shape, 0.4, 1.3), _rand(rng, shape)
    g, b = _affine(rng, shape[1])
    _groupnorm_against_torch(torch, x, dy, g, b, G, eps, lambda tx, tg, tb: F.group_norm(tx, G, tg, tb, eps))


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 13, 3, 3), (1, 3, 4, 4)])
def test_instance_norm_against_torch(torch, rng, shape):
    F = torch.nn.functional
    C, eps = shape[1], 1e-5
    x, dy = _rand(rng, shape, -1.0, 0.7), _rand(rng, shape)
    g, b = _affine(rng, C)
    ty, tx, tg = _groupnorm_against_torch(torch, x, dy, g, b, C, eps,
                                          lambda tx, tg, tb: F.instance_norm(tx, weight=tg, bias=tb, eps=eps))
    # and the layer computes the same
    layer = InstanceNorm2d(C)
    layer.weight.data[...] = g
    layer.bias.data[...] = b
    assert_close(layer(x), ty.detach().numpy(), 1e-4, 1e-5, "InstanceNorm2d")
    assert_close(layer.backward(dy), tx.grad.numpy(), 1e-4, 1e-5, "InstanceNorm2d dx")
    assert_close(layer.weight.grad, tg.grad.numpy(), 1e-4, 1e-5, "InstanceNorm2d dweight")


# ================================================================ layers

def _set_affine(layer, g, b, suffix=""):
    getattr(layer, "weight" + suffix).data[...] = g
    getattr(layer, "bias" + suffix).data[...] = b


@pytest.mark.parametrize("shape", [(2, 5, 3, 3), (6, 13), (1, 3, 2, 2)])
def test_batchnorm2d_train_and_eval(rng, shape):
    C = shape[1]
    layer = BatchNorm2d(C, eps=1e-4, momentum=0.25)
    np.testing.assert_array_equal(layer.running_mean, np.zeros(C))
    np.testing.assert_array_equal(layer.running_var, np.ones(C))
    g, b = _affine(rng, C)
    _set_affine(layer, g, b)
    assert layer.training
    rm0, rv0 = layer.running_mean.copy(), layer.running_var.copy()
    x, dy = _rand(rng, shape, 0.5, 2.0), _rand(rng, shape)
    y = layer(x)
    ey, _, _, erm, erv = ref.batchnorm_forward(x, g, b, rm0, rv0, 0.25, 1e-4, True)
    assert_close(y, ey, 1e-4, 1e-5, "y (train)")
    assert_close(layer.running_mean, erm, 1e-5, 1e-6, "running_mean")
    assert_close(layer.running_var, erv, 1e-5, 1e-6, "running_var")
    dx = layer.backward(dy)
    ex, eg, eb = ref.batchnorm_backward(x, g, dy, eps=1e-4, training=True)
    assert_close(dx, ex, 1e-4, 1e-5, "dx (train)")
    assert_close(layer.weight.grad, eg, 1e-4, 1e-5, "weight.grad")
    assert_close(layer.bias.grad, eb, 1e-4, 1e-5, "bias.grad")

    layer.eval()
    assert not layer.training
    layer.zero_grad()
    rm1, rv1 = layer.running_mean.copy(), layer.running_var.copy()
    x2 = _rand(rng, shape, -0.3, 0.8)
    y2 = layer(x2)
    np.testing.assert_array_equal(layer.running_mean, rm1)
    np.testing.assert_array_equal(layer.running_var, rv1)
    ey2 = ref.batchnorm_forward(x2, g, b, rm1, rv1, 0.25, 1e-4, False)[0]
    assert_close(y2, ey2, 1e-5, 1e-6, "y (eval)")
    dx2 = layer.backward(dy)
    ex2, eg2, eb2 = ref.batchnorm_backward(x2, g, dy, rm1, rv1, 1e-4, False)
    assert_close(dx2, ex2, 1e-5, 1e-6, "dx (eval)")
    assert_close(layer.weight.grad, eg2, 1e-4, 1e-5, "weight.grad (eval)")
    assert_close(layer.bias.grad, eb2, 1e-4, 1e-5, "bias.grad (eval)")

    layer.train()
    assert layer.training
    y3 = layer(x2)
    assert not np.allclose(y3, y2, atol=1e-3)
    assert not np.array_equal(layer.running_mean, rm1)


def test_batchnorm2d_backward_uses_the_mode_of_its_forward(rng):
    layer = BatchNorm2d(3)
    x, dy = _rand(rng, (4, 3, 2, 2), 1.0, 2.0), _rand(rng, (4, 3, 2, 2))
    layer(x)
    layer.eval()  # switched between forward and backward
    dx = layer.backward(dy)
    assert_close(dx, ref.batchnorm_backward(x, np.ones(3), dy, training=True)[0], 1e-4, 1e-5, "dx")


def test_batchnorm2d_gradients_accumulate(rng):
    layer = BatchNorm2d(5)
    x, dy = _rand(rng, (3, 5, 2, 2)), _rand(rng, (3, 5, 2, 2))
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer(x)
    layer.backward(dy)
    assert_close(layer.weight.grad, 2 * once[0], 1e-5, 1e-6, "weight.grad")
    assert_close(layer.bias.grad, 2 * once[1], 1e-5, 1e-6, "bias.grad")


def test_batchnorm2d_state_dict_round_trip(rng):
    layer = BatchNorm2d(5, momentum=0.5)
    _set_affine(layer, *_affine(rng, 5))
    for _ in range(3):
        layer(_rand(rng, (4, 5, 3, 3), 2.0, 3.0))
    sd = layer.state_dict()
    assert set(sd) == {"weight", "bias", "running_mean", "running_var"}
    np.testing.assert_array_equal(sd["running_mean"], layer.running_mean)
    np.testing.assert_array_equal(sd["running_var"], layer.running_var)
    assert not np.allclose(sd["running_mean"], 0) and not np.allclose(sd["running_var"], 1)
    # a copy: later training does not change the saved state
    saved = {k: v.copy() for k, v in sd.items()}
    layer(_rand(rng, (4, 5, 3, 3), -2.0, 1.0))
    np.testing.assert_array_equal(sd["running_mean"], saved["running_mean"])

    fresh = BatchNorm2d(5, momentum=0.5)
    fresh.load_state_dict(sd)
    for k in sd:
        np.testing.assert_array_equal(fresh.state_dict()[k], sd[k])
    layer.load_state_dict(sd)
    fresh.eval()
    layer.eval()
    x = _rand(rng, (2, 5, 3, 3), 2.0, 3.0)
    np.testing.assert_array_equal(fresh(x), layer(x))
    assert_close(fresh(x), ref.batchnorm_forward(x, sd["weight"], sd["bias"], sd["running_mean"],
                                                 sd["running_var"], training=False)[0], 1e-5, 1e-6, "y")
    # the restored buffers are the ones the layer updates
    fresh.train()
    fresh(x)
    assert not np.array_equal(fresh.running_mean, sd["running_mean"])


def test_batchnorm2d_load_state_dict_checks_buffers():
    layer = BatchNorm2d(3)
    sd = layer.state_dict()
    sd["running_var"] = np.ones(4, F32)
    with pytest.raises(ValueError, match="running_var"):
        layer.load_state_dict(sd)
    sd = layer.state_dict()
    del sd["running_mean"]
    with pytest.raises(KeyError, match="running_mean"):
        layer.load_state_dict(sd)


def _norm_layers(C, subspace=None):
    return [BatchNorm2d(C, subspace=subspace), GroupNorm(1, C, subspace=subspace),
            GroupNorm(C, C, subspace=subspace), InstanceNorm2d(C, subspace=subspace)]


@pytest.mark.parametrize("make", [lambda s: BatchNorm2d(6, subspace=s), lambda s: GroupNorm(3, 6, subspace=s),
                                  lambda s: GroupNorm(1, 6, subspace=s), lambda s: InstanceNorm2d(6, subspace=s)],
                         ids=["batch", "group3", "group1", "instance"])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_line_subspace(rng, make, alpha):
    line = make("line")
    assert set(n for n, _ in line.named_parameters()) == {"weight", "weight1", "bias", "bias1"}
    for n in ("weight", "weight1"):
        np.testing.assert_array_equal(getattr(line, n).data, np.ones(6))
    for n in ("bias", "bias1"):
        np.testing.assert_array_equal(getattr(line, n).data, np.zeros(6))
    assert line.weight.data is not line.weight1.data
    g0, b0 = _affine(rng, 6)
    g1, b1 = _affine(rng, 6)
    _set_affine(line, g0, b0)
    _set_affine(line, g1, b1, "1")
    line.set_alpha(alpha)
    plain = make(None)
    _set_affine(plain, (1 - alpha) * g0 + alpha * g1, (1 - alpha) * b0 + alpha * b1)
    x, dy = _rand(rng, (3, 6, 2, 3), 0.5, 1.5), _rand(rng, (3, 6, 2, 3))
    y, ey = line(x), plain(x)
    if alpha in (0.0, 1.0):  # the endpoint's own tensors, the plain layer exactly
        np.testing.assert_array_equal(plain.weight.data, g1 if alpha else g0)
        np.testing.assert_array_equal(y, ey)
    assert_close(y, ey, 1e-6, 1e-6, "y")
    dx, edx = line.backward(dy), plain.backward(dy)
    assert_close(dx, edx, 1e-6, 1e-6, "dx")
    for n in ("weight", "bias"):
        g = getattr(plain, n).grad
        assert np.any(g != 0)
        assert_close(getattr(line, n).grad, (1 - alpha) * g, 1e-6, 1e-6, n + ".grad")
        assert_close(getattr(line, n + "1").grad, alpha * g, 1e-6, 1e-6, n + "1.grad")
    if isinstance(line, BatchNorm2d):
        assert_close(line.running_mean, plain.running_mean, 1e-7, 1e-7, "running_mean")
        assert set(line.state_dict()) == {"weight", "weight1", "bias", "bias1", "running_mean", "running_var"}


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_line_subspace_rejects_bad_alpha(bad):
    for layer in _norm_layers(4, "line"):
        with pytest.raises(ValueError, match="alpha"):
            layer.set_alpha(bad)


def test_point_subspace_is_a_plain_layer(rng):
    for a, b in zip(_norm_layers(4, "point"), _norm_layers(4, None)):
        assert set(n for n, _ in a.named_parameters()) == {"weight", "bias"}
        x = _rand(rng, (2, 4, 3, 3))
        np.testing.assert_array_equal(a(x), b(x))


@pytest.mark.parametrize("make,shape", [(lambda: GroupNorm(3, 12), (2, 12, 3, 3)),
                                        (lambda: GroupNorm(1, 5), (1, 5, 4)),
                                        (lambda: GroupNorm(2, 4), (3, 4)),
                                        (lambda: InstanceNorm2d(13), (2, 13, 2, 3))])
def test_groupnorm_layers_same_in_train_and_eval(rng, make, shape):
    layer = make()
    C = shape[1]
    g, b = _affine(rng, C)
    _set_affine(layer, g, b)
    assert set(layer.state_dict()) == {"weight", "bias"}  # no running statistics
    x, dy = _rand(rng, shape, 0.3, 2.0), _rand(rng, shape)
    y_train = layer(x)
    dx_train = layer.backward(dy)
    grads_train = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer.zero_grad()
    layer.eval()
    y_eval = layer(x)
    dx_eval = layer.backward(dy)
    np.testing.assert_array_equal(y_eval, y_train)
    np.testing.assert_array_equal(dx_eval, dx_train)
    np.testing.assert_array_equal(layer.weight.grad, grads_train[0])
    np.testing.assert_array_equal(layer.bias.grad, grads_train[1])
    G = layer.num_groups
    assert_close(y_train, ref.groupnorm_forward(x, g, b, G, layer.eps)[0], 1e-4, 1e-5, "y")
    ex, eg, eb = ref.groupnorm_backward(x, g, dy, G, layer.eps)
    assert_close(dx_train, ex, 1e-4, 1e-5, "dx")
    assert_close(grads_train[0], eg, 1e-4, 1e-5, "weight.grad")
    assert_close(grads_train[1], eb, 1e-4, 1e-5, "bias.grad")


def test_groupnorm_layer_state_dict_round_trip(rng):
    a, b = GroupNorm(2, 6, subspace="line"), GroupNorm(2, 6, subspace="line")
    _set_affine(a, *_affine(rng, 6))
    _set_affine(a, *_affine(rng, 6), "1")
    b.load_state_dict(a.state_dict())
    x = _rand(rng, (2, 6, 3))
    a.set_alpha(0.4)
    b.set_alpha(0.4)
    np.testing.assert_array_equal(a(x), b(x))


def test_layer_reprs():
    assert "13" in repr(BatchNorm2d(13)) and "line" in repr(BatchNorm2d(13, subspace="line"))
    assert "3, 12" in repr(GroupNorm(3, 12))
    assert "5" in repr(InstanceNorm2d(5))


def test_layer_accepts_non_contiguous_input(rng):
    x = _rand(rng, (2, 3, 4, 6))[:, :, :, ::2]
    layer = GroupNorm(3, 3)
    np.testing.assert_array_equal(layer(x), GroupNorm(3, 3)(np.ascontiguousarray(x)))


# ================================================================ bad input

def _bn_args(shape=(2, 3, 2, 2)):
    C = shape[1]
    return dict(x=np.ones(shape, F32) + np.arange(np.prod(shape), dtype=F32).reshape(shape),
                gamma=np.ones(C, F32), beta=np.zeros(C, F32),
                running_mean=np.zeros(C, F32), running_var=np.ones(C, F32))


def _with(**changes):
    args = _bn_args()
    args.update(changes)
    return {k: v for k, v in args.items() if v is not _DROP}


_DROP = object()
_BN_FWD_BAD = [
    (dict(x=np.ones((2, 3, 2, 2))), TypeError, "x"),
    (dict(x=np.ones((2, 3, 2, 2), np.int32)), TypeError, "x"),
    (dict(x=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), TypeError, "x"),
    (dict(x=np.ones(3, F32)), ValueError, "x"),
    (dict(x=np.ones((0, 3, 2, 2), F32)), ValueError, "x"),
    (dict(x=np.ones((2, 3, 2, 4), F32)[..., ::2]), ValueError, "x"),
    (dict(x=np.ones((2, 4, 2, 2), F32)), ValueError, "gamma"),
    (dict(gamma=np.ones(3)), TypeError, "gamma"),
    (dict(gamma=np.ones(4, F32)), ValueError, "gamma"),
    (dict(gamma=np.ones((1, 3), F32)), ValueError, "gamma"),
    (dict(beta=np.zeros(2, F32)), ValueError, "beta"),
    (dict(beta=np.zeros(6, F32)[::2]), ValueError, "beta"),
    (dict(running_mean=np.zeros(4, F32)), ValueError, "running_mean"),
    (dict(running_mean=np.zeros(3)), TypeError, "running_mean"),
    (dict(running_var=np.ones(2, F32)), ValueError, "running_var"),
    (dict(running_var=np.ones(3, np.float16)), TypeError, "running_var"),
    (dict(running_var=_DROP), ValueError, "running_var"),
    (dict(running_mean=_DROP), ValueError, "running_mean"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=1.5), ValueError, "momentum"),
    (dict(momentum=float("nan")), ValueError, "momentum"),
    (dict(eps=-1e-5), ValueError, "eps"),
    (dict(eps=2.0), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
]


@pytest.mark.parametrize("changes,exc,name", _BN_FWD_BAD)
def test_batchnorm_forward_bad_input(changes, exc, name):
    with pytest.raises(exc, match=name):
        _core.batchnorm_forward(**_with(**changes))


def test_batchnorm_forward_read_only_running_stats():
    args = _bn_args()
    args["running_mean"].setflags(write=False)
    with pytest.raises(ValueError, match="running_mean"):
        _core.batchnorm_forward(**args)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 3, 1)])
def test_batchnorm_training_needs_two_values_per_channel(shape):
    args = _bn_args(shape)
    for kw in (args, dict(x=args["x"], gamma=args["gamma"], beta=args["beta"])):
        with pytest.raises(ValueError, match="x"):
            _core.batchnorm_forward(**kw, training=True)
    # the layer too
    layer = BatchNorm2d(3)
    if len(shape) in (2, 4):
        with pytest.raises(ValueError, match="x"):
            layer(args["x"])
        np.testing.assert_array_equal(layer.running_mean, np.zeros(3))


def test_batchnorm_eval_needs_running_statistics():
    args = _bn_args()
    with pytest.raises(ValueError, match="running_mean"):
        _core.batchnorm_forward(args["x"], args["gamma"], args["beta"], training=False)


def _bn_bwd_args():
    a = _bn_args()
    y, mean, invstd = _core.batchnorm_forward(a["x"], a["gamma"], a["beta"])
    return dict(x=a["x"], gamma=a["gamma"], dy=np.ones_like(y), mean=mean, invstd=invstd,
                dgamma=np.zeros(3, F32), dbeta=np.zeros(3, F32))


_BN_BWD_BAD = [
    (dict(x=np.ones((2, 3, 2, 2))), TypeError, "x"),
    (dict(x=np.ones(3, F32)), ValueError, "x"),
    (dict(gamma=np.ones(5, F32)), ValueError, "gamma"),
    (dict(dy=np.ones((2, 3, 2, 2))), TypeError, "dy"),
    (dict(dy=np.ones((2, 3, 4), F32)), ValueError, "dy"),
    (dict(dy=np.ones((2, 3, 2, 4), F32)[..., ::2]), ValueError, "dy"),
    (dict(dy=np.ones((2, 3, 2, 2), F32).tolist()), TypeError, "dy"),
    (dict(mean=np.zeros(4, F32)), ValueError, "mean"),
    (dict(mean=np.zeros(3, np.int64)), TypeError, "mean"),
    (dict(invstd=np.ones((3, 1), F32)), ValueError, "invstd"),
    (dict(dgamma=np.zeros(2, F32)), ValueError, "dgamma"),
    (dict(dgamma=np.zeros(3)), TypeError, "dgamma"),
    (dict(dbeta=np.zeros(4, F32)), ValueError, "dbeta"),
]


def test_batchnorm_backward_read_only_gradient():
    args = _bn_bwd_args()
    args["dbeta"].setflags(write=False)
    with pytest.raises(ValueError, match="dbeta"):
        _core.batchnorm_backward(**args)
    np.testing.assert_array_equal(args["dgamma"], 0)


def _gn_args(C=12, G=3):
    x = np.arange(2 * C * 4, dtype=F32).reshape(2, C, 2, 2) % 7
    return dict(x=x, gamma=np.ones(C, F32), beta=np.zeros(C, F32), num_groups=G)


_GN_FWD_BAD = [
    (dict(x=np.ones((2, 12, 2, 2))), TypeError, "x"),
    (dict(x=np.ones((2, 12, 2, 2), np.int64)), TypeError, "x"),
    (dict(x=np.ones((2, 12, 2, 4), F32)[..., ::2]), ValueError, "x"),
    (dict(x=np.ones(12, F32)), ValueError, "x"),
    (dict(x=[[0.0] * 12]), TypeError, "x"),
    (dict(x=np.ones((2, 6, 2, 2), F32)), ValueError, "gamma"),
    (dict(gamma=np.ones(12)), TypeError, "gamma"),
    (dict(beta=np.zeros(13, F32)), ValueError, "beta"),
    (dict(num_groups=5), ValueError, "num_groups"),
    (dict(num_groups=24), ValueError, "num_groups"),
    (dict(num_groups=0), ValueError, "num_groups"),
    (dict(num_groups=-3), ValueError, "num_groups"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps=3.0), ValueError, "eps"),
]


@pytest.mark.parametrize("fn,kw,name", [
    ("groupnorm_forward", dict(num_groups=3.0), "num_groups"),
    ("groupnorm_forward", dict(num_groups="3"), "num_groups"),
    ("batchnorm_forward", dict(momentum="0.1"), "momentum"),
    ("batchnorm_forward", dict(eps=None), "eps"),
])
def test_argument_parsing_errors_name_the_argument(fn, kw, name):
    if fn == "groupnorm_forward":
        args = _gn_args()
    else:
        args = _bn_args()
    args.update(kw)
    with pytest.raises(TypeError, match=name):
        getattr(_core, fn)(**args)


def test_argument_overflow_names_the_argument():
    args = _gn_args()
    args.update(num_groups=2**70)
    with pytest.raises(ValueError, match="num_groups"):
        _core.groupnorm_forward(**args)


def _gn_bwd_args():
    a = _gn_args()
    y, mean, invstd = _core.groupnorm_forward(**a)
    return dict(x=a["x"], gamma=a["gamma"], dy=np.ones_like(y), mean=mean, invstd=invstd,
                dgamma=np.zeros(12, F32), dbeta=np.zeros(12, F32))


_GN_BWD_BAD = [
    (dict(x=np.ones((2, 12, 2, 2))), TypeError, "x"),
    (dict(dy=np.ones((2, 12, 4), F32)), ValueError, "dy"),
    (dict(dy=np.ones((2, 12, 2, 2), np.float64)), TypeError, "dy"),
    (dict(gamma=np.ones(6, F32)), ValueError, "gamma"),
    (dict(mean=np.zeros((2, 5), F32), invstd=np.ones((2, 5), F32)), ValueError, "mean"),
    (dict(mean=np.zeros((3, 3), F32)), ValueError, "mean"),
    (dict(mean=np.zeros(6, F32)), ValueError, "mean"),
    (dict(invstd=np.ones((2, 4), F32)), ValueError, "invstd"),
    (dict(invstd=np.ones((2, 6), F32)[:, ::2]), ValueError, "invstd"),
    (dict(dgamma=np.zeros(3, F32)), ValueError, "dgamma"),
    (dict(dbeta=np.zeros(12, np.float64)), TypeError, "dbeta"),
]


@pytest.mark.parametrize("fn,make_args,changes,exc,name",
                         [("batchnorm_backward", _bn_bwd_args, *c) for c in _BN_BWD_BAD]
                         + [("groupnorm_forward", _gn_args, *c) for c in _GN_FWD_BAD]
                         + [("groupnorm_backward", _gn_bwd_args, *c) for c in _GN_BWD_BAD])
def test_norm_kernel_bad_input(fn, make_args, changes, exc, name):
    args = make_args()
    args.update(changes)
    with pytest.raises(exc, match=name):
        getattr(_core, fn)(**args)


@pytest.mark.parametrize("make,exc,name", [
    (lambda: BatchNorm2d(0), ValueError, "num_features"),
    (lambda: BatchNorm2d(3.0), ValueError, "num_features"),
    (lambda: BatchNorm2d(True), ValueError, "num_features"),
    (lambda: BatchNorm2d(3, eps=0.0), ValueError, "eps"),
    (lambda: BatchNorm2d(3, eps=-1e-5), ValueError, "eps"),
    (lambda: BatchNorm2d(3, eps=float("nan")), ValueError, "eps"),
    (lambda: BatchNorm2d(3, eps="1e-5"), ValueError, "eps"),
    (lambda: BatchNorm2d(3, momentum=-0.5), ValueError, "momentum"),
    (lambda: BatchNorm2d(3, momentum=1.01), ValueError, "momentum"),
    (lambda: BatchNorm2d(3, momentum=float("nan")), ValueError, "momentum"),
    (lambda: BatchNorm2d(3, momentum=True), ValueError, "momentum"),
    (lambda: BatchNorm2d(3, momentum=None), ValueError, "momentum"),
    (lambda: BatchNorm2d(3, subspace="plane"), ValueError, "subspace"),
    (lambda: GroupNorm(5, 12), ValueError, "num_groups"),
    (lambda: GroupNorm(0, 12), ValueError, "num_groups"),
    (lambda: GroupNorm(24, 12), ValueError, "num_groups"),
    (lambda: GroupNorm(3.0, 12), ValueError, "num_groups"),
    (lambda: GroupNorm(3, 0), ValueError, "num_channels"),
    (lambda: GroupNorm(3, 12, eps=1.0), ValueError, "eps"),
    (lambda: InstanceNorm2d(-1), ValueError, "num_features"),
    (lambda: InstanceNorm2d(4, eps=5), ValueError, "eps"),
])
def test_layer_constructor_bad_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


def test_layer_constructor_accepts_numpy_numbers(rng):
    layer = BatchNorm2d(np.int64(3), eps=np.float32(1e-3), momentum=np.float32(0.5))
    assert layer.num_channels == 3 and layer.momentum == 0.5
    assert abs(layer.eps - 1e-3) < 1e-9
    assert GroupNorm(np.int32(2), 4, eps=np.float64(1e-4)).num_groups == 2


@pytest.mark.parametrize("layer", [BatchNorm2d(3), GroupNorm(3, 3), InstanceNorm2d(3)],
                         ids=["batch", "group", "instance"])
@pytest.mark.parametrize("x,exc", [
    (np.ones((2, 3, 2, 2)), TypeError),
    (np.ones((2, 3, 2, 2), np.int32), TypeError),
    ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], TypeError),
    (np.ones((2, 4, 2, 2), F32), ValueError),
    (np.ones((2, 5), F32), ValueError),
    (np.ones(3, F32), ValueError),
    (np.ones((2, 3, 2, 2, 2), F32), ValueError),
])
def test_layer_forward_bad_input(layer, x, exc):
    with pytest.raises(exc, match="x"):
        layer(x)


def test_layer_backward_bad_gradient(rng):
    for layer in (BatchNorm2d(3), GroupNorm(3, 3)):
        layer(_rand(rng, (2, 3, 2, 2)))
        with pytest.raises(ValueError, match="dy"):
            layer.backward(np.ones((2, 3, 2, 3), F32))
        with pytest.raises(TypeError, match="dy"):
            layer.backward(np.ones((2, 3, 2, 2)))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 3), 3), ((3, 4, 7), 4), ((1, 8, 2, 2), 1), ((5, 3), 1),
                                          # planes of whole 16-float vectors (the AVX-512 form for short groups):
                                          # one group per channel, four channels per group, the longest group
                                          # it takes (1024), more groups than its chunk, and one just too long
                                          ((2, 24, 8, 8), 24), ((1, 32, 4, 16), 8), ((1, 20, 32, 32), 20),
                                          ((3, 40, 4, 8), 40), ((1, 4, 32, 48), 4)])
def test_norm_infer_kernels_match_the_twins(shape, groups, relu, rng):
    """Inference forms (runtime): group norm / evaluation batch norm, optionally with the ReLU fused."""
    C = shape[1]
    x = (rng.normal(0, 2, shape) + 3).astype(np.float32)
    g, b = rng.normal(1, 0.3, C).astype(np.float32), rng.normal(0, 0.3, C).astype(np.float32)
    rm, rv = rng.normal(3, 0.5, C).astype(np.float32), rng.uniform(0.5, 4, C).astype(np.float32)
    act = (lambda v: np.maximum(v, 0)) if relu else (lambda v: v)
    want = act(ref.groupnorm_forward(x, g, b, groups)[0])
    np.testing.assert_allclose(_core.groupnorm_infer(x, g, b, groups, relu=relu), want, rtol=1e-5, atol=1e-5)
    want = act(ref.batchnorm_forward(x, g, b, rm, rv, training=False)[0])
    np.testing.assert_allclose(_core.batchnorm_infer(x, g, b, rm, rv, relu=relu), want, rtol=1e-5, atol=1e-5)
    # the training kernels' forward, to float rounding
    y = _core.groupnorm_forward(x, g, b, groups)[0]
    np.testing.assert_allclose(_core.groupnorm_infer(x, g, b, groups, relu=relu), act(y), rtol=1e-5, atol=1e-5)
    y = _core.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), training=False)[0]
    np.testing.assert_allclose(_core.batchnorm_infer(x, g, b, rm, rv, relu=relu), act(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,groups", [((1, 8, 130, 128), 8), ((1, 6, 160, 150), 2), ((2, 80, 4, 4), 80),
                                          ((3, 70, 5, 3), 35)])
def test_norm_infer_thread_counts(shape, groups, rng):
    """Inference norms on 1 to 3 threads: one large image split by rows (sums per band, added
    in thread order), and more groups than one statistics chunk; all agree with the twin."""
    C = shape[1]
    x = (rng.normal(0, 2, shape) + 1).astype(np.float32)
    g, b = rng.normal(1, 0.3, C).astype(np.float32), rng.normal(0, 0.3, C).astype(np.float32)
    rm, rv = rng.normal(1, 0.5, C).astype(np.float32), rng.uniform(0.5, 4, C).astype(np.float32)
    want_g = np.maximum(ref.groupnorm_forward(x, g, b, groups)[0], 0)
    want_b = ref.batchnorm_forward(x, g, b, rm, rv, training=False)[0]
    old = csub.get_num_threads()
    try:
        for t in (1, 2, 3):
            csub.set_num_threads(t)
            np.testing.assert_allclose(_core.groupnorm_infer(x, g, b, groups, relu=True), want_g, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(_core.batchnorm_infer(x, g, b, rm, rv), want_b, rtol=1e-5, atol=1e-5)
    finally:
        csub.set_num_threads(old)


def test_groupnorm_infer_large_mean_and_long_groups(rng):
    """Shifted sums: a mean far larger than the spread, and groups longer than one block."""
    x = (rng.normal(0, 1e-3, (2, 2, 5000)) + 1e3).astype(np.float32)
    g, b = np.ones(2, np.float32), np.zeros(2, np.float32)
    want = ref.groupnorm_forward(x, g, b, 1)[0]
    np.testing.assert_allclose(_core.groupnorm_infer(x, g, b, 1), want, rtol=1e-3, atol=2e-3)
    x = (rng.normal(0, 1e-3, (2, 6, 8, 8)) + 1e3).astype(np.float32)  # short groups: the AVX-512 form
    g6, b6 = np.ones(6, np.float32), np.zeros(6, np.float32)
    np.testing.assert_allclose(_core.groupnorm_infer(x, g6, b6, 6), ref.groupnorm_forward(x, g6, b6, 6)[0],
                               rtol=1e-3, atol=2e-3)
    x = rng.normal(0, 1, (1, 1, 100003)).astype(np.float32)
    np.testing.assert_allclose(_core.groupnorm_infer(x, g[:1], b[:1], 1), ref.groupnorm_forward(x, g[:1], b[:1], 1)[0],
                               rtol=1e-4, atol=1e-4)


def test_norm_infer_bad_arguments(rng):
    x = np.zeros((2, 4, 3), np.float32)
    g = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="num_groups"):
        _core.groupnorm_infer(x, g, g, 3)
    with pytest.raises(ValueError, match="running_var"):
        _core.batchnorm_infer(x, g, g, g, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="gamma"):
        _core.groupnorm_infer(x, g.astype(np.float64), g, 1)


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (1, 4, 5, 3)])  # the AVX-512 short-group form and the generic one
def test_groupnorm_infer_relu_keeps_nan(shape, rng):
    """A NaN in one group makes that group's outputs NaN (ReLU included); the other groups stay finite."""
    x = rng.normal(0, 1, shape).astype(np.float32)
    x[0, 1, 0, 0] = np.nan
    g, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    y = _core.groupnorm_infer(x, g, b, 4, relu=True)
    assert np.isnan(y[0, 1]).all()
    assert np.isfinite(y[0, [0, 2, 3]]).all()


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 3, 5, 3), (1, 2, 1, 17)])  # whole vectors, a masked tail
def test_batchnorm_infer_relu_nan_and_signed_zero(shape, rng):
    """relu(bn(x)) at inference as its definition computes it: a NaN stays NaN (only there), an input
    equal to the mean gives +0 (never -0), the rest ((x - mean) * gamma / sqrt(var + eps) + beta)."""
    C = shape[1]
    x = rng.normal(0, 1, shape).astype(np.float32)
    rm, rv = rng.normal(0, 1, C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
    g, b = rng.normal(1, 0.2, C).astype(np.float32), np.zeros(C, np.float32)
    x[0, 0, 0, 0] = np.nan
    x[-1, -1, -1, -1] = rm[-1]
    y = _core.batchnorm_infer(x, g, b, rm, rv, relu=True)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y).sum() == 1
    assert y[-1, -1, -1, -1] == 0 and not np.signbit(y[-1, -1, -1, -1])
    a = (g.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-5)).reshape(1, C, 1, 1)
    want = np.maximum((x - rm.reshape(1, C, 1, 1)) * a + b.reshape(1, C, 1, 1), 0)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(y[ok], want[ok], rtol=1e-5, atol=1e-6)
