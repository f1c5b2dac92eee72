"""Line subspace kernels and the endpoint regulariser (LCS-SPEC section 5).

Checked against the float64 twins in tests/reference/subspace.py, against
central differences of the twins, and against PyTorch autograd.
"""
import numpy as np
import pytest

from gradcheck import assert_close, numerical_grad
from reference import subspace as ref

import csub
from csub import _core
from csub import functional as F
from csub import nn
from csub.nn import Parameter
from csub.subspace import line_pairs, line_regularizer

SHAPES = [(1,), (7,), (3, 5), (13, 3, 3, 3), (2, 5, 1, 7)]
ALPHAS = [0.0, 0.3, 0.5, 1.0]
# several tensor pairs of odd sizes, as the layers of one network would give
PAIR_SHAPES = [[(5,)], [(3, 4), (7,)], [(2, 3, 3, 3), (5, 2), (1,)]]


def randn(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def make_pairs(rng, shapes, correlate=0.5):
    """Pairs whose endpoints are correlated, so S01 is well away from zero."""
    out = []
    for s in shapes:
        w0 = randn(rng, s)
        w1 = (correlate * w0 + randn(rng, s)).astype(np.float32)
        out.append((w0, w1))
    return out


# ------------------------------------------------------------ twin self-checks


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_twin_line_backward_matches_numerical(rng, alpha):
    w0, w1, g = rng.standard_normal((3, 4, 5))
    g0, g1 = ref.line_backward(g, alpha)
    assert_close(g0, numerical_grad(lambda x: ref.line_forward(x, w1, alpha), w0, g), rtol=1e-7, atol=1e-8)
    assert_close(g1, numerical_grad(lambda x: ref.line_forward(w0, x, alpha), w1, g), rtol=1e-7, atol=1e-8)


def _numerical_reg_grads(pairs, beta):
    """Central differences of the twin regulariser w.r.t. every tensor of every pair."""
    pairs = [(np.array(a, np.float64), np.array(b, np.float64)) for a, b in pairs]
    grads = []
    for k in range(len(pairs)):
        gk = []
        for side in (0, 1):
            def f(x, k=k, side=side):
                ps = [list(p) for p in pairs]
                ps[k][side] = x
                return np.array(ref.regularizer(ps, beta))
            gk.append(numerical_grad(f, pairs[k][side], np.array(1.0)))
        grads.append(tuple(gk))
    return grads


@pytest.mark.parametrize("shapes", PAIR_SHAPES)
def test_twin_regularizer_backward_matches_numerical(rng, shapes):
    pairs = [(rng.standard_normal(s), rng.standard_normal(s) + 0.5) for s in shapes]
    ana = ref.regularizer_backward(pairs, 1.7)
    num = _numerical_reg_grads(pairs, 1.7)
    for (a0, a1), (n0, n1) in zip(ana, num):
        assert_close(a0, n0, rtol=1e-6, atol=1e-8)
        assert_close(a1, n1, rtol=1e-6, atol=1e-8)


def test_twin_regularizer_is_cosine_squared(rng):
    # one pair: R = cos^2 of the angle between w0 and w1; parallel -> 1, orthogonal -> 0
    w = rng.standard_normal(9)
    assert ref.regularizer([(w, -3.0 * w)]) == pytest.approx(1.0)
    e0, e1 = np.eye(2)
    assert ref.regularizer([(e0, e1)]) == 0.0


# ---------------------------------------------------------------- line kernels


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_line_forward_matches_twin(rng, shape, alpha):
    w0, w1 = randn(rng, shape), randn(rng, shape)
    out = _core.line_forward(w0, w1, alpha)
    assert out.dtype == np.float32 and out.shape == shape
    assert_close(out, ref.line_forward(w0, w1, alpha), rtol=1e-6, atol=1e-7)
    # the out= form writes into the given array and returns it
    buf = np.full(shape, np.nan, np.float32)
    res = _core.line_forward(w0, w1, alpha, out=buf)
    assert res is buf
    np.testing.assert_array_equal(buf, out)


def test_line_forward_endpoints_exact(rng):
    w0, w1 = randn(rng, (5, 13)), randn(rng, (5, 13))
    np.testing.assert_array_equal(_core.line_forward(w0, w1, 0.0), w0)
    np.testing.assert_array_equal(_core.line_forward(w0, w1, 1.0), w1)


def test_line_forward_large_parallel_path(rng):
    # above the kernel's OpenMP threshold (65536)
    n = 70001
    w0, w1 = randn(rng, n), randn(rng, n)
    assert_close(_core.line_forward(w0, w1, 0.37), ref.line_forward(w0, w1, 0.37), rtol=1e-6, atol=1e-7)
    g = randn(rng, n)
    g0, g1 = np.ones(n, np.float32), np.zeros(n, np.float32)
    _core.line_backward(g, 0.37, g0, g1)
    e0, e1 = ref.line_backward(g, 0.37)
    assert_close(g0, 1.0 + e0, rtol=1e-6, atol=1e-7)
    assert_close(g1, e1, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_line_backward_accumulates_and_matches(rng, shape, alpha):
    w0, w1, g = randn(rng, shape), randn(rng, shape), randn(rng, shape)
    init0, init1 = randn(rng, shape), randn(rng, shape)
    g0, g1 = init0.copy(), init1.copy()
    _core.line_backward(g, alpha, g0, g1)
    e0, e1 = ref.line_backward(g, alpha)
    assert_close(g0 - init0, e0, rtol=1e-5, atol=1e-6, name="g0")
    assert_close(g1 - init1, e1, rtol=1e-5, atol=1e-6, name="g1")
    # directly against central differences of the twin's forward
    w0d, w1d = w0.astype(np.float64), w1.astype(np.float64)
    n0 = numerical_grad(lambda x: ref.line_forward(x, w1d, alpha), w0d, g)
    n1 = numerical_grad(lambda x: ref.line_forward(w0d, x, alpha), w1d, g)
    assert_close(g0 - init0, n0, rtol=1e-4, atol=1e-5, name="g0 vs numerical")
    assert_close(g1 - init1, n1, rtol=1e-4, atol=1e-5, name="g1 vs numerical")
    # a second call adds again
    _core.line_backward(g, alpha, g0, g1)
    assert_close(g0 - init0, 2 * e0, rtol=1e-5, atol=1e-6)
    assert_close(g1 - init1, 2 * e1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_line_against_torch(torch, rng, alpha):
    shape = (3, 5, 2)
    w0, w1, g = randn(rng, shape), randn(rng, shape), randn(rng, shape)
    t0 = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor(w1, dtype=torch.float64, requires_grad=True)
    y = torch.lerp(t0, t1, alpha)
    y.backward(torch.tensor(g, dtype=torch.float64))
    assert_close(_core.line_forward(w0, w1, alpha), y.detach().numpy(), rtol=1e-6, atol=1e-7)
    g0, g1 = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    _core.line_backward(g, alpha, g0, g1)
    assert_close(g0, t0.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert_close(g1, t1.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_functional_line_converts_and_matches(rng):
    w0, w1 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))  # float64 in
    out = F.line(w0, w1, 0.6)
    assert out.dtype == np.float32
    assert_close(out, ref.line_forward(w0.astype(np.float32), w1.astype(np.float32), 0.6), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------- line_dots


@pytest.mark.parametrize("shape", SHAPES + [(100003,)])
def test_line_dots_matches_twin(rng, shape):
    w0, w1 = randn(rng, shape), randn(rng, shape)
    got = _core.line_dots(w0, w1)
    want = ref.line_dots(w0, w1)
    assert isinstance(got, tuple) and len(got) == 3
    # products of floats are exact in double; only the double summation order differs
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_line_dots_known_values():
    w0 = np.array([1, 2, 3], np.float32)
    w1 = np.array([4, -5, 6], np.float32)
    assert _core.line_dots(w0, w1) == (12.0, 14.0, 77.0)


# ---------------------------------------------------------- line_reg_backward


@pytest.mark.parametrize("shapes", PAIR_SHAPES)
@pytest.mark.parametrize("beta", [1.0, 0.37])
def test_line_reg_backward_sums_over_all_pairs(rng, shapes, beta):
    pairs = make_pairs(rng, shapes)
    s = (0.0, 0.0, 0.0)
    for w0, w1 in pairs:
        s = tuple(a + b for a, b in zip(s, _core.line_dots(w0, w1)))
    assert_close(np.array(s), np.array(ref.line_sums(pairs)), rtol=1e-10, atol=1e-12)
    want = ref.regularizer_backward(pairs, beta)
    num = _numerical_reg_grads(pairs, beta)
    for (w0, w1), (e0, e1), (n0, n1) in zip(pairs, want, num):
        init0, init1 = randn(rng, w0.shape), randn(rng, w0.shape)
        g0, g1 = init0.copy(), init1.copy()
        _core.line_reg_backward(w0, w1, s, beta, g0, g1)
        d0, d1 = g0.astype(np.float64) - init0, g1.astype(np.float64) - init1
        assert_close(d0, e0, rtol=1e-5, atol=1e-6, name="g0")
        assert_close(d1, e1, rtol=1e-5, atol=1e-6, name="g1")
        assert_close(d0, n0, rtol=1e-4, atol=1e-5, name="g0 vs numerical")
        assert_close(d1, n1, rtol=1e-4, atol=1e-5, name="g1 vs numerical")


def test_line_reg_backward_single_pair_sums_differ_from_all_pairs(rng):
    # the gradient of one pair depends on the other pairs through the sums
    pairs = make_pairs(rng, [(6,), (6,)])
    s_one = _core.line_dots(*pairs[0])
    s_all = tuple(a + b for a, b in zip(s_one, _core.line_dots(*pairs[1])))
    ga, gb = np.zeros(6, np.float32), np.zeros(6, np.float32)
    _core.line_reg_backward(*pairs[0], s_one, 1.0, ga, np.zeros(6, np.float32))
    _core.line_reg_backward(*pairs[0], s_all, 1.0, gb, np.zeros(6, np.float32))
    assert np.max(np.abs(ga - gb)) > 1e-3


@pytest.mark.parametrize("scale", [1e-20, 1e-8, 1e18])
def test_line_reg_backward_extreme_scales(rng, scale):
    # R is scale free and its gradient scales like 1/|w|; all must stay finite and accurate
    w0 = (rng.standard_normal(10) * scale).astype(np.float32)
    w1 = (rng.standard_normal(10) * scale + 0.3 * w0).astype(np.float32)
    s = _core.line_dots(w0, w1)
    g0, g1 = np.zeros(10, np.float32), np.zeros(10, np.float32)
    _core.line_reg_backward(w0, w1, s, 1.0, g0, g1)
    (e0, e1), = ref.regularizer_backward([(w0, w1)])
    assert np.isfinite(g0).all() and np.isfinite(g1).all()
    np.testing.assert_allclose(g0, e0, rtol=1e-4, atol=1e-5 * np.max(np.abs(e0)))
    np.testing.assert_allclose(g1, e1, rtol=1e-4, atol=1e-5 * np.max(np.abs(e1)))


# ----------------------------------------------------- csub.subspace.line_regularizer


def as_params(pairs, rng=None):
    out = []
    for w0, w1 in pairs:
        p0, p1 = Parameter(w0.copy()), Parameter(w1.copy())
        if rng is not None:
            p0.grad[...] = randn(rng, w0.shape)
            p1.grad[...] = randn(rng, w1.shape)
        out.append((p0, p1))
    return out


@pytest.mark.parametrize("shapes", PAIR_SHAPES)
@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_line_regularizer_value_and_grads(rng, shapes, beta):
    pairs = make_pairs(rng, shapes)
    params = as_params(pairs, rng)
    init = [(p0.grad.copy(), p1.grad.copy()) for p0, p1 in params]
    value = line_regularizer(params, beta)
    assert isinstance(value, float)
    assert value == pytest.approx(ref.regularizer(pairs, beta), rel=1e-9)
    num = _numerical_reg_grads(pairs, beta)
    for (p0, p1), (i0, i1), (e0, e1), (n0, n1) in zip(params, init, ref.regularizer_backward(pairs, beta), num):
        assert_close(p0.grad - i0, e0, rtol=1e-5, atol=1e-6)
        assert_close(p1.grad - i1, e1, rtol=1e-5, atol=1e-6)
        assert_close(p0.grad - i0, n0, rtol=1e-4, atol=1e-5)
        assert_close(p1.grad - i1, n1, rtol=1e-4, atol=1e-5)
    # the data is untouched
    for (p0, p1), (w0, w1) in zip(params, pairs):
        np.testing.assert_array_equal(p0.data, w0)
        np.testing.assert_array_equal(p1.data, w1)


def test_line_regularizer_against_torch(torch, rng):
    pairs = make_pairs(rng, [(2, 3, 3, 3), (5, 4), (3,)])
    params = as_params(pairs)
    value = line_regularizer(params, 0.8)
    ts = [(torch.tensor(a, dtype=torch.float64, requires_grad=True),
           torch.tensor(b, dtype=torch.float64, requires_grad=True)) for a, b in pairs]
    s01 = sum((a * b).sum() for a, b in ts)
    s00 = sum((a * a).sum() for a, _ in ts)
    s11 = sum((b * b).sum() for _, b in ts)
    r = 0.8 * s01 ** 2 / (s00 * s11)
    r.backward()
    assert value == pytest.approx(r.item(), rel=1e-9)
    for (p0, p1), (t0, t1) in zip(params, ts):
        assert_close(p0.grad, t0.grad.numpy(), rtol=1e-5, atol=1e-6)
        assert_close(p1.grad, t1.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_line_regularizer_beta_scaling(rng):
    pairs = make_pairs(rng, [(4, 3), (5,)])
    base = as_params(pairs)
    v1 = line_regularizer(base, 1.0)
    for beta in (0.5, 3.0):
        ps = as_params(pairs)
        v = line_regularizer(ps, beta)
        assert v == pytest.approx(beta * v1, rel=1e-12)
        for (a0, a1), (b0, b1) in zip(ps, base):
            assert_close(a0.grad, beta * b0.grad, rtol=1e-5, atol=1e-7)
            assert_close(a1.grad, beta * b1.grad, rtol=1e-5, atol=1e-7)


def test_line_regularizer_beta_zero_and_no_backward(rng):
    pairs = make_pairs(rng, [(4, 3)])
    ps = as_params(pairs, rng)
    g0, g1 = ps[0][0].grad.copy(), ps[0][1].grad.copy()
    assert line_regularizer(ps, 0.0) == 0.0
    v = line_regularizer(ps, 1.0, backward=False)
    assert v == pytest.approx(ref.regularizer(pairs), rel=1e-9)
    np.testing.assert_array_equal(ps[0][0].grad, g0)
    np.testing.assert_array_equal(ps[0][1].grad, g1)


def test_line_regularizer_no_pairs():
    assert line_regularizer([], 1.0) == 0.0


def test_line_regularizer_all_zero_endpoint_rejected(rng):
    w = randn(rng, (3, 4))
    for pair in ((np.zeros_like(w), w), (w, np.zeros_like(w))):
        ps = as_params([pair])
        with pytest.raises(ValueError, match="pairs"):
            line_regularizer(ps, 1.0)
        # nothing was accumulated
        assert not ps[0][0].grad.any() and not ps[0][1].grad.any()
    # a zero tensor in one pair is fine when the sums over all pairs are not zero
    ps = as_params([(np.zeros_like(w), w), (w, w)])
    assert line_regularizer(ps, 1.0) == pytest.approx(ref.regularizer([(np.zeros_like(w), w), (w, w)]))


@pytest.mark.parametrize("beta", [float("nan"), float("inf")])
def test_line_regularizer_bad_beta(rng, beta):
    ps = as_params(make_pairs(rng, [(3,)]))
    with pytest.raises(ValueError, match="beta"):
        line_regularizer(ps, beta)


@pytest.mark.parametrize("beta", ["1", None, True])
def test_line_regularizer_beta_type(rng, beta):
    ps = as_params(make_pairs(rng, [(3,)]))
    with pytest.raises(TypeError, match="beta"):
        line_regularizer(ps, beta)


def test_line_regularizer_mismatched_pair(rng):
    ps = [(Parameter(randn(rng, (3, 4))), Parameter(randn(rng, (4, 3))))]
    with pytest.raises(ValueError, match="w1"):
        line_regularizer(ps, 1.0)


# ----------------------------------------------------------------- line_pairs


def small_model():
    csub.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True, subspace="line")
    norm = nn.GroupNorm(1, 5, subspace="line")
    lin = nn.Linear(5, 3, subspace="line")
    plain = nn.Linear(3, 2)
    point = nn.Conv2d(5, 5, 1, subspace="point")
    model = nn.Sequential(conv, norm, nn.ReLU(), point, nn.GlobalAvgPool2d(), lin, plain)
    return model, conv, norm, lin


def _same(pairs, want):
    return len(pairs) == len(want) and all(a is c and b is d for (a, b), (c, d) in zip(pairs, want))


def test_line_pairs_kinds():
    model, conv, norm, lin = small_model()
    w = line_pairs(model, "weights")
    assert _same(w, [(conv.weight, conv.weight1), (lin.weight, lin.weight1)])
    n = line_pairs(model, "norms")
    assert _same(n, [(norm.weight, norm.weight1), (norm.bias, norm.bias1)])
    a = line_pairs(model, "all")
    assert _same(a, [(conv.weight, conv.weight1), (conv.bias, conv.bias1),
                     (norm.weight, norm.weight1), (norm.bias, norm.bias1),
                     (lin.weight, lin.weight1), (lin.bias, lin.bias1)])
    assert _same(line_pairs(model), w)  # default kind is "weights"


def test_line_pairs_none_for_plain_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2, subspace="point"))
    for kind in ("weights", "norms", "all"):
        assert line_pairs(model, kind) == []


@pytest.mark.parametrize("kind", ["weight", "bias", None, "ALL"])
def test_line_pairs_bad_kind(kind):
    model, *_ = small_model()
    with pytest.raises(ValueError, match="kind"):
        line_pairs(model, kind)


def test_regularizer_on_model_weights():
    model, conv, norm, lin = small_model()
    pairs = line_pairs(model, "weights")
    arrays = [(p0.data.copy(), p1.data.copy()) for p0, p1 in pairs]
    value = line_regularizer(pairs, 1.0)
    assert value == pytest.approx(ref.regularizer(arrays), rel=1e-9)
    for (p0, p1), (e0, e1) in zip(pairs, ref.regularizer_backward(arrays)):
        assert_close(p0.grad, e0, rtol=1e-5, atol=1e-6)
        assert_close(p1.grad, e1, rtol=1e-5, atol=1e-6)
    # the norm parameters are not part of the weights regulariser
    assert not norm.weight.grad.any() and not norm.weight1.grad.any()
    # norm pairs: gamma starts at 1 at both ends, beta at 0, so R = 1 and the gradient vanishes
    norm_pairs = line_pairs(model, "norms")
    assert line_regularizer(norm_pairs, 1.0) == pytest.approx(1.0)
    assert np.abs(norm.weight.grad).max() < 1e-6


# ----------------------------------------------------------------- bad input


def f32(*shape):
    return np.ones(shape, np.float32)


@pytest.mark.parametrize("args, exc, name", [
    ((f32(3).astype(np.float64), f32(3), 0.5), TypeError, "w0"),
    ((f32(3), f32(3).astype(np.int32), 0.5), TypeError, "w1"),
    (([1.0, 2.0], f32(2), 0.5), TypeError, "w0"),
    ((f32(3), f32(4), 0.5), ValueError, "w1"),
    ((f32(3, 4), f32(4, 3), 0.5), ValueError, "w1"),
    ((f32(4, 4)[:, ::2], f32(4, 2), 0.5), ValueError, "w0"),
    ((f32(3), f32(3), -0.1), ValueError, "alpha"),
    ((f32(3), f32(3), 1.5), ValueError, "alpha"),
    ((f32(3), f32(3), float("nan")), ValueError, "alpha"),
])
def test_line_forward_bad_input(args, exc, name):
    with pytest.raises(exc, match=name):
        _core.line_forward(*args)


def test_line_forward_bad_out():
    with pytest.raises(ValueError, match="out"):
        _core.line_forward(f32(3), f32(3), 0.5, out=f32(4))
    with pytest.raises(TypeError, match="out"):
        _core.line_forward(f32(3), f32(3), 0.5, out=np.ones(3))
    ro = f32(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        _core.line_forward(f32(3), f32(3), 0.5, out=ro)


def test_line_backward_bad_input():
    g = f32(3, 2)
    with pytest.raises(TypeError, match="g0"):
        _core.line_backward(g, 0.5, np.zeros((3, 2)), f32(3, 2))
    with pytest.raises(ValueError, match="g1"):
        _core.line_backward(g, 0.5, f32(3, 2), f32(2, 3))
    with pytest.raises(TypeError, match="^g:"):
        _core.line_backward([[1.0]], 0.5, f32(1, 1), f32(1, 1))
    with pytest.raises(ValueError, match="alpha"):
        _core.line_backward(g, 2.0, f32(3, 2), f32(3, 2))
    ro = f32(3, 2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="g0"):
        _core.line_backward(g, 0.5, ro, f32(3, 2))
    with pytest.raises(ValueError, match="g1"):
        _core.line_backward(g, 0.5, f32(3, 2), f32(6, 2)[::2])


def test_line_dots_bad_input():
    with pytest.raises(ValueError, match="w1"):
        _core.line_dots(f32(3), f32(2))
    with pytest.raises(TypeError, match="w0"):
        _core.line_dots(np.ones(3), f32(3))
    with pytest.raises(TypeError, match="w1"):
        _core.line_dots(f32(3), [1, 2, 3])


def test_line_reg_backward_bad_input():
    w = f32(3)
    good = (1.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="sums"):
        _core.line_reg_backward(w, w, (1.0, 0.0, 3.0), 1.0, f32(3), f32(3))
    with pytest.raises(ValueError, match="sums"):
        _core.line_reg_backward(w, w, (1.0, 3.0, float("nan")), 1.0, f32(3), f32(3))
    with pytest.raises(ValueError, match="beta"):
        _core.line_reg_backward(w, w, good, float("inf"), f32(3), f32(3))
    with pytest.raises(ValueError, match="g1"):
        _core.line_reg_backward(w, w, good, 1.0, f32(3), f32(4))
    with pytest.raises(TypeError, match="g0"):
        _core.line_reg_backward(w, w, good, 1.0, np.zeros(3, np.int32), f32(3))
    with pytest.raises(ValueError, match="w1"):
        _core.line_reg_backward(w, f32(3, 1), good, 1.0, f32(3), f32(3))
    with pytest.raises(TypeError):
        _core.line_reg_backward(w, w, (1.0, 2.0), 1.0, f32(3), f32(3))
