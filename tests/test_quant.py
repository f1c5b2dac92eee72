"""Fake quantization, min/max, per-channel scaling, the observer and the alpha <-> bits map.

References: tests/reference/quant.py (quantization parameters in exact
rational arithmetic, everything else in float64), numpy.round (half to even),
and PyTorch's ``fake_quantize_per_tensor_affine`` and MinMaxObserver.

The C kernel computes x / scale in float32, the float64 twin in float64 and
PyTorch as x * (1 / scale): the three can round differently only where
x / scale lies within a few float32 ulps of a half-integer. Those entries
("the tie zone", counted and few) may differ by one grid step; every other
entry must agree exactly. Exact ties are tested separately with power-of-two
scales, where every one of these computations is exact.
"""
import math
from fractions import Fraction

import numpy as np
import pytest

from gradcheck import assert_close, numerical_grad
from reference import quant as ref

import csub
from csub import _core
from csub import functional as F
from csub.nn.quant import MinMaxObserver, alpha_for_bits, bits_for_alpha

RANGES = {
    "positive": (0.5, 3.0),         # widened to [0, 3]: zero point qmin
    "negative": (-5.0, -0.25),      # widened to [-5, 0]: zero point qmax
    "mixed": (-1.3, 2.7),
    "symmetric": (-1.0, 1.0),       # the zero point is exactly a tie
    "tiny": (-1e-8, 3e-8),
    "large": (-3e4, 1e5),
}


def qrange(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def tie_zone(x, scale):
    """Entries whose x / scale is within a few float32 ulps of a half-integer."""
    v = np.asarray(x, np.float64) / scale
    return np.abs(v - np.floor(v) - 0.5) <= 2.0 ** -20 * np.maximum(1.0, np.abs(v))


def sample(rng, rmin, rmax, n=2000):
    """float32 values over the widened range and a quarter beyond each end, plus 0 and the ends."""
    lo, hi = min(rmin, 0.0), max(rmax, 0.0)
    w = hi - lo
    x = rng.uniform(lo - 0.25 * w, hi + 0.25 * w, n)
    x[:3] = (0.0, rmin, rmax)
    return x.astype(np.float32)


def assert_on_grid(y, scale, zp, bits):
    """y = float32((q - zp) * scale) with q an integer in [qmin, qmax]; returns q."""
    qmin, qmax = qrange(bits)
    k = np.round(np.asarray(y, np.float64) / scale)
    assert np.array_equal(y, (k * scale).astype(np.float32)), "y is not on the grid"
    q = k + zp
    assert q.min() >= qmin and q.max() <= qmax
    return q


# ----------------------------------------------------------- quantization parameters


@pytest.mark.parametrize("kind", list(RANGES))
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_quant_params_match_exact_twin(kind, bits):
    rmin, rmax = RANGES[kind]
    scale, zp = _core.quant_params(rmin, rmax, bits)
    rscale, rzp = ref.quant_params(float(np.float32(rmin)), float(np.float32(rmax)), bits)
    assert scale == rscale and zp == rzp
    assert isinstance(zp, int)
    assert F.quant_params(rmin, rmax, bits) == (scale, zp)


def test_quant_params_random_ranges_match_exact_twin(rng):
    for _ in range(400):
        bits = int(rng.integers(2, 17))
        e = rng.uniform(-30, 30)
        a, b = np.sort(rng.standard_normal(2) * 10.0 ** e).astype(np.float32)
        if rng.random() < 0.2:
            a, b = -abs(b), abs(b)  # symmetric: the zero point is a tie
        scale, zp = _core.quant_params(float(a), float(b), bits)
        assert (scale, zp) == ref.quant_params(float(a), float(b), bits), (a, b, bits)


@pytest.mark.parametrize("bits", range(2, 17))
def test_quant_params_structure(bits):
    qmin, qmax = qrange(bits)
    # all-positive range: 0 is the lower end, the zero point qmin
    s, z = _core.quant_params(0.5, 3.0, bits)
    assert z == qmin and s == np.float32(3.0 / (qmax - qmin))
    # all-negative: 0 is the upper end
    s, z = _core.quant_params(-5.0, -0.25, bits)
    assert z == qmax and s == np.float32(5.0 / (qmax - qmin))
    # symmetric: qmin + (2^b - 1) / 2 = -1/2 exactly, half to even -> 0
    assert _core.quant_params(-1.0, 1.0, bits)[1] == 0
    assert _core.quant_params(-3.7, 3.7, bits)[1] == 0
    # empty range
    assert _core.quant_params(0.0, 0.0, bits) == (0.0, 0)


def test_quant_params_underflowing_scale_is_zero():
    # (2e-44) / 255 is below the smallest float32 subnormal
    assert _core.quant_params(-1e-44, 1e-44, 8) == (0.0, 0)
    x = np.array([1e-44, -1e-44, 0.0, 3.0], np.float32)
    assert np.array_equal(_core.fake_quantize(x, 8, -1e-44, 1e-44), np.zeros(4, np.float32))


def test_quant_params_extreme_range():
    big = float(np.finfo(np.float32).max)
    s, z = _core.quant_params(-big, big, 8)
    assert math.isfinite(s) and s > 0 and z == 0
    assert (s, z) == ref.quant_params(-big, big, 8)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quant_params_vs_torch_observer(torch, rng, bits):
    """torch's MinMaxObserver uses the same formulas in float32 (scale floored at
    float32 eps): identical zero points wherever the float32 scale does not move
    qmin - rmin / scale across a rounding boundary."""
    from torch.ao.quantization.observer import MinMaxObserver as TorchObserver

    qmin, qmax = qrange(bits)
    compared = 0
    for _ in range(50):
        a, b = np.sort(rng.uniform(-4, 4, 2)).astype(np.float32)
        lo, hi = Fraction(min(float(a), 0.0)), Fraction(max(float(b), 0.0))
        t = qmin - lo * (qmax - qmin) / (hi - lo)
        if abs(t - math.floor(t) - Fraction(1, 2)) < Fraction(1, 10 ** 4):
            continue  # near a tie: float32 arithmetic may round either way
        obs = TorchObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine,
                            quant_min=qmin, quant_max=qmax, reduce_range=False)
        obs(torch.tensor([float(a), float(b)]))
        ts, tz = obs.calculate_qparams()
        s, z = _core.quant_params(float(a), float(b), bits)
        assert z == int(tz[0])
        assert abs(s - float(ts[0])) <= 2e-7 * s
        compared += 1
    assert compared > 40


# ----------------------------------------------------------- fake quantization forward


@pytest.mark.parametrize("kind", list(RANGES))
@pytest.mark.parametrize("bits", range(2, 9))
def test_fake_quantize_matches_twin(rng, kind, bits):
    rmin, rmax = RANGES[kind]
    x = sample(rng, rmin, rmax)
    scale, zp = _core.quant_params(rmin, rmax, bits)
    y = _core.fake_quantize(x, bits, rmin, rmax)
    assert y.dtype == np.float32 and y.shape == x.shape
    want = ref.fake_quant_forward(x, scale, zp, bits)
    tie = tie_zone(x, scale)
    assert tie.sum() <= 5
    assert np.array_equal(y[~tie], want[~tie].astype(np.float32))
    assert np.all(np.abs(y[tie] - want[tie]) <= scale * (1 + 1e-6))
    q = assert_on_grid(y, scale, zp, bits)
    assert np.array_equal(q[~tie], ref.fake_quant_codes(x, scale, zp, bits)[~tie])
    assert y[0] == 0.0  # x = 0 is exactly representable


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_fake_quantize_many_bits(rng, bits):
    rmin, rmax = -2.5, 6.0
    x = sample(rng, rmin, rmax, 20000)
    scale, zp = _core.quant_params(rmin, rmax, bits)
    y = _core.fake_quantize(x, bits, rmin, rmax)
    want = ref.fake_quant_forward(x, scale, zp, bits)
    tie = tie_zone(x, scale)
    assert np.array_equal(y[~tie], want[~tie].astype(np.float32))
    assert_on_grid(y, scale, zp, bits)


@pytest.mark.parametrize("kind", ["positive", "negative", "mixed", "tiny", "large"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_fake_quantize_matches_torch(torch, rng, kind, bits):
    rmin, rmax = RANGES[kind]
    x = sample(rng, rmin, rmax)
    scale, zp = _core.quant_params(rmin, rmax, bits)
    qmin, qmax = qrange(bits)
    y = _core.fake_quantize(x, bits, rmin, rmax)
    for dtype in (torch.float32, torch.float64):
        t = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x).to(dtype), scale, zp, qmin, qmax)
        t = t.double().numpy()
        tie = tie_zone(x, scale)
        assert np.array_equal(y[~tie].astype(np.float64), t[~tie].astype(np.float32).astype(np.float64))
        assert np.all(np.abs(y[tie] - t[tie]) <= scale * (1 + 1e-6))


@pytest.mark.parametrize("bits, s_exp, zp", [(8, -4, 0), (8, -4, -28), (8, 3, 100), (2, -1, -1),
                                             (4, 0, 3), (16, -8, 0), (16, -8, 1000)])
def test_fake_quantize_exact_ties_half_to_even(torch, bits, s_exp, zp):
    """Power-of-two scales: x = (m + 1/2) scale is exactly a tie in every
    arithmetic; the result must be numpy.round's (half to even) and torch's."""
    qmin, qmax = qrange(bits)
    s = 2.0 ** s_exp
    rmin, rmax = (qmin - zp) * s, (qmax - zp) * s
    assert _core.quant_params(rmin, rmax, bits) == (s, zp)
    m = np.arange(qmin - zp - 3, qmax - zp + 3, dtype=np.float64)
    x = np.concatenate([(m + 0.5) * s, m * s, (m + 0.25) * s, (m + 0.75) * s]).astype(np.float32)
    assert np.array_equal(x.astype(np.float64) / s,
                          np.concatenate([m + 0.5, m, m + 0.25, m + 0.75]))  # the ties are exact
    y = _core.fake_quantize(x, bits, rmin, rmax)
    want = (np.clip(np.round(x.astype(np.float64) / s) + zp, qmin, qmax) - zp) * s
    assert np.array_equal(y, want.astype(np.float32))
    # half to even, not half away from zero: (m + 1/2) goes to the even neighbour
    t = (np.round(m + 0.5) - (m + 0.5))
    assert set(np.unique(t)) == {-0.5, 0.5}
    tq = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), s, zp, qmin, qmax).numpy()
    assert np.array_equal(y, tq)


@pytest.mark.parametrize("bits", range(2, 9))
def test_fake_quantize_clips_and_hits_every_code(rng, bits):
    rmin, rmax = -0.7, 1.9
    scale, zp = _core.quant_params(rmin, rmax, bits)
    qmin, qmax = qrange(bits)
    x = np.concatenate([np.linspace(-5, 5, 4001), [1e30, -1e30, np.inf, -np.inf]]).astype(np.float32)
    y = _core.fake_quantize(x, bits, rmin, rmax)
    lo, hi = np.float32((qmin - zp) * scale), np.float32((qmax - zp) * scale)
    assert np.all(y[x <= rmin - scale] == lo) and np.all(y[x >= rmax + scale] == hi)
    assert y[-4] == hi and y[-3] == lo and y[-2] == hi and y[-1] == lo
    assert y.min() == lo and y.max() == hi
    q = assert_on_grid(y, scale, zp, bits)
    # dense x over more than the range: every one of the 2^bits codes, and no more
    assert len(np.unique(y)) == 2 ** bits
    assert set(np.unique(q)) == set(range(qmin, qmax + 1))


@pytest.mark.parametrize("bits", range(2, 9))
def test_fake_quantize_distinct_values_and_zero(rng, bits):
    for _ in range(20):
        a, b = np.sort(rng.standard_normal(2) * 10.0 ** rng.uniform(-6, 6))
        x = (rng.standard_normal(3000) * max(abs(a), abs(b))).astype(np.float32)
        x[17] = 0.0
        y = _core.fake_quantize(x, bits, float(a), float(b))
        assert len(np.unique(y)) <= 2 ** bits
        assert y[17] == 0.0


def test_fake_quantize_zero_range_gives_zero():
    x = np.zeros((3, 5), np.float32)
    assert np.array_equal(F.fake_quantize(x, 8), x)
    y = _core.fake_quantize(np.array([1.0, -2.0, np.inf], np.float32), 4, 0.0, 0.0)
    assert np.array_equal(y, np.zeros(3, np.float32))


def test_fake_quantize_out_and_in_place(rng):
    x = rng.standard_normal((4, 7)).astype(np.float32)
    want = _core.fake_quantize(x, 5, -1.0, 2.0)
    out = np.full_like(x, 7.0)
    assert _core.fake_quantize(x, 5, -1.0, 2.0, out=out) is out
    assert np.array_equal(out, want)
    x2 = x.copy()
    _core.fake_quantize(x2, 5, -1.0, 2.0, out=x2)
    assert np.array_equal(x2, want)


@pytest.mark.parametrize("n", [1, 3, 17, 8192, 8193, 65537, 300001])
def test_fake_quantize_sizes_and_threads(rng, n):
    """Every block boundary and both the serial and the parallel path give the same values."""
    x = (rng.standard_normal(n) * 2).astype(np.float32)
    scale, zp = _core.quant_params(-3.0, 5.0, 6)
    want = ref.fake_quant_forward(x, scale, zp, 6)
    tie = tie_zone(x, scale)
    old = csub.get_num_threads()
    try:
        for t in (1, 2, 3):
            csub.set_num_threads(t)
            y = _core.fake_quantize(x, 6, -3.0, 5.0)
            assert np.array_equal(y[~tie], want[~tie].astype(np.float32))
    finally:
        csub.set_num_threads(old)


def test_functional_fake_quantize(rng):
    x64 = rng.standard_normal((3, 4, 5)) * 3
    y = F.fake_quantize(x64, 4)
    x = x64.astype(np.float32)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.array_equal(y, _core.fake_quantize(x, 4, float(x.min()), float(x.max())))
    # the range of a non-contiguous view is its own, and lists work
    v = x[:, ::2, 1:]
    assert np.array_equal(F.fake_quantize(v, 3), _core.fake_quantize(np.ascontiguousarray(v), 3,
                                                                      float(v.min()), float(v.max())))
    assert np.array_equal(F.fake_quantize([[0.5, -1.0], [2.0, 0.0]], 8),
                          F.fake_quantize(np.array([[0.5, -1.0], [2.0, 0.0]], np.float32), 8))
    # one end given, the other from x
    assert np.array_equal(F.fake_quantize(x, 5, rmin=-1.0), _core.fake_quantize(x, 5, -1.0, float(x.max())))
    assert np.array_equal(F.fake_quantize(x, 5, rmax=1.0), _core.fake_quantize(x, 5, float(x.min()), 1.0))
    assert np.array_equal(F.fake_quantize(x, np.int64(6), -2, 2), _core.fake_quantize(x, 6, -2.0, 2.0))
    # the x's own range: both ends are on the grid's span
    scale, zp = F.quant_params(float(x.min()), float(x.max()), 4)
    assert_on_grid(y, scale, zp, 4)


# ----------------------------------------------------------- straight-through estimator


def test_ste_twin_passes_gradient_unchanged(rng):
    x = rng.uniform(-3, 3, 50)
    dy = rng.standard_normal(50)
    g = ref.fake_quant_backward(x, dy)
    assert np.array_equal(g, dy) and g is not dy
    # why a surrogate: the true derivative of fake quantization is 0 inside
    # every grid cell (piecewise constant), so without the STE nothing trains
    scale, zp = ref.quant_params(-1.0, 1.0, 4)
    xi = (np.round(x / scale) + 0.3) * scale  # 0.2 scale from every rounding boundary
    num = numerical_grad(lambda t: ref.fake_quant_forward(t, scale, zp, 4), xi, dy, eps=1e-4)
    assert np.array_equal(num, np.zeros_like(num))


def test_ste_matches_torch_inside_the_range(torch, rng):
    """torch's fake-quantize gradient is the upstream gradient inside the
    range (and 0 for clipped entries); the twin's STE passes it everywhere,
    so the two agree inside the range."""
    bits, rmin, rmax = 4, -1.0, 2.0
    scale, zp = _core.quant_params(rmin, rmax, bits)
    qmin, qmax = qrange(bits)
    x = rng.uniform(-2, 3, 400)
    dy = rng.standard_normal(400)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.fake_quantize_per_tensor_affine(xt, scale, zp, qmin, qmax).backward(torch.tensor(dy))
    g = xt.grad.numpy()
    q = np.round(x / scale) + zp
    inside = (q >= qmin) & (q <= qmax) & ~tie_zone(x, scale)
    assert inside.sum() > 200 and (~inside).sum() > 50
    mine = ref.fake_quant_backward(x, dy)
    assert np.array_equal(g[inside], mine[inside])
    assert np.all(g[(q < qmin - 1) | (q > qmax + 1)] == 0.0)  # torch masks clipped entries; the STE does not


# ----------------------------------------------------------- min / max


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 63, 8191, 8192, 8193, 100003, 1000007])
def test_minmax_matches_numpy_and_twin(rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    old = csub.get_num_threads()
    try:
        for t in (1, 2):
            csub.set_num_threads(t)
            assert _core.minmax(x) == (float(x.min()), float(x.max()))
            for pos in {0, n // 2, n - 1}:  # the extreme in the head, the SIMD body, the tail
                z = x.copy()
                z[pos] = -1e6
                z[(pos + 1) % n if n > 1 else 0] = 1e6 if n > 1 else z[pos]
                assert _core.minmax(z) == (float(z.min()), float(z.max()))
    finally:
        csub.set_num_threads(old)
    if n <= 8193:
        assert _core.minmax(x) == ref.minmax(x)


def test_minmax_shapes_and_special_values():
    assert _core.minmax(np.array([3.5], np.float32)) == (3.5, 3.5)
    assert _core.minmax(np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)) == (-2.0, 4.0)
    assert _core.minmax(np.full((5, 3), -7.0, np.float32)) == (-7.0, -7.0)
    x = np.array([1.0, np.inf, -np.inf, 0.0], np.float32)
    assert _core.minmax(x) == (-np.inf, np.inf)
    assert _core.minmax(np.array([-0.0, 0.0], np.float32)) == (0.0, 0.0)


@pytest.mark.parametrize("n", [1, 5, 16, 33, 8193, 200003])
def test_minmax_nan_propagates(n):
    base = np.linspace(-1, 1, n).astype(np.float32)
    for pos in sorted({0, n // 3, n - 1}):
        x = base.copy()
        x[pos] = np.nan
        mn, mx = _core.minmax(x)
        assert math.isnan(mn) and math.isnan(mx), pos
        if n <= 8193:
            assert all(math.isnan(v) for v in ref.minmax(x))
        assert math.isnan(float(np.min(x)))  # numpy's convention, which minmax follows


# ----------------------------------------------------------- per-channel scaling


@pytest.mark.parametrize("shape", [(1, 3, 5), (2, 5, 3, 3), (1, 13, 1), (3, 1, 7), (4, 16, 7, 7),
                                   (1, 5, 40000), (2, 3)])
def test_channel_scale_matches_twin(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    s = rng.uniform(-2, 2, shape[1]).astype(np.float32)
    y = _core.channel_scale(x, s)
    assert y.shape == x.shape and y.dtype == np.float32
    want = ref.channel_scale_forward(x, s)
    assert np.array_equal(y, want.astype(np.float32))  # one float32 product each: exact
    out = np.empty_like(x)
    assert _core.channel_scale(x, s, out=out) is out and np.array_equal(out, y)
    _core.channel_scale(x, s, out=x)  # in place
    assert np.array_equal(x, y)


def test_channel_scale_gradients(rng):
    """dx = channel_scale(dy, s), the twin's (dx, ds) against finite differences."""
    x = rng.standard_normal((2, 3, 2, 2))
    s = rng.uniform(0.5, 2, 3)
    dy = rng.standard_normal(x.shape)
    dx, ds = ref.channel_scale_backward(x, s, dy)
    assert_close(dx, numerical_grad(lambda t: ref.channel_scale_forward(t, s), x, dy), rtol=1e-7, atol=1e-8)
    assert_close(ds, numerical_grad(lambda t: ref.channel_scale_forward(x, t), s, dy), rtol=1e-7, atol=1e-8)
    dx_c = _core.channel_scale(dy.astype(np.float32), s.astype(np.float32))
    assert_close(dx_c, numerical_grad(lambda t: ref.channel_scale_forward(t, s), x, dy), rtol=1e-5)


def test_channel_scale_matches_torch(torch, rng):
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    s = rng.uniform(-2, 2, 5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = xt * torch.tensor(s, dtype=torch.float64)[None, :, None, None]
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(_core.channel_scale(x, s), yt.detach().numpy(), rtol=1e-6, atol=0)
    assert_close(_core.channel_scale(dy, s), xt.grad.numpy(), rtol=1e-6, atol=0)


def test_channel_scale_folds_batch_norm_into_a_conv(rng):
    """Scaling the weight's output channels then dividing the conv output by
    the same scale gives the plain conv (the folding identity)."""
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    wf = _core.channel_scale(w.reshape(1, 5, -1), scale).reshape(w.shape)
    assert np.array_equal(wf, (w * scale[:, None, None, None]).astype(np.float32))
    y = _core.conv2d_forward(x, wf, None, 1, 1)
    back = _core.channel_scale(y, (1.0 / scale).astype(np.float32))
    assert_close(back, _core.conv2d_forward(x, w, None, 1, 1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------- MinMaxObserver


def test_observer_ema_over_batches(rng):
    obs = MinMaxObserver()
    assert obs.momentum == 0.1 and not obs.initialized
    batches = [rng.standard_normal(50).astype(np.float32) * (1 + i) + i for i in range(6)]
    mins = [float(b.min()) for b in batches]
    maxs = [float(b.max()) for b in batches]
    r_min = r_max = None
    for i, b in enumerate(batches):
        got = obs.update(b)
        # float32 after every step, like a float32 buffer
        r_min = mins[0] if i == 0 else float(np.float32(0.9 * r_min + 0.1 * mins[i]))
        r_max = maxs[0] if i == 0 else float(np.float32(0.9 * r_max + 0.1 * maxs[i]))
        assert got == (r_min, r_max) == (obs.running_min, obs.running_max)
        assert obs.initialized
    # the float64 twin agrees to float32 precision
    assert obs.running_min == pytest.approx(ref.ema(mins, 0.1)[-1], rel=1e-6)
    assert obs.running_max == pytest.approx(ref.ema(maxs, 0.1)[-1], rel=1e-6)


def test_observer_first_batch_initialises_and_momentum(rng):
    obs = MinMaxObserver(momentum=0.5)
    assert obs.update([[-3.0, 1.0], [2.0, 0.5]]) == (-3.0, 2.0)  # not 0.5 * 0 + 0.5 * stat
    assert obs.update(np.array([-1.0, 4.0])) == (-2.0, 3.0)
    obs.reset()
    assert not obs.initialized
    assert obs.update(np.array([5.0, 6.0], np.float32)) == (5.0, 6.0)
    frozen = MinMaxObserver(momentum=0)
    frozen.update(np.array([-1.0, 1.0]))
    assert frozen.update(np.array([-9.0, 9.0])) == (-1.0, 1.0)
    assert obs.quant_params(8) == _core.quant_params(5.0, 6.0, 8)


def test_observer_state_round_trip(rng):
    obs = MinMaxObserver()
    for i in range(3):
        obs.update(rng.standard_normal(20) * 3)
    sd = obs.state_dict()
    assert set(sd) == {"running_min", "running_max", "initialized"}
    for v in sd.values():
        assert v.dtype == np.float32 and v.shape == (1,)
    assert sd["initialized"][0] == 1.0
    other = MinMaxObserver().load_state_dict(sd)
    assert (other.running_min, other.running_max, other.initialized) == \
        (obs.running_min, obs.running_max, True)
    b = rng.standard_normal(20)
    assert other.update(b) == obs.update(b)
    fresh = MinMaxObserver().state_dict()
    assert fresh["initialized"][0] == 0.0
    assert not MinMaxObserver().load_state_dict(fresh).initialized
    # usable as module buffers
    m = csub.nn.Module()
    for k, v in sd.items():
        m.register_buffer(k, v)
    assert set(m.state_dict()) == set(sd)
    assert MinMaxObserver().load_state_dict(m.state_dict()).running_max == float(sd["running_max"][0])


def test_observer_bad_input():
    obs = MinMaxObserver()
    with pytest.raises(ValueError, match="x"):
        obs.update(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="x"):
        obs.update(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="x"):
        obs.update(np.zeros(0))
    with pytest.raises(TypeError, match="x"):
        obs.update(np.array(["a"]))
    assert not obs.initialized  # failed updates change nothing
    with pytest.raises(RuntimeError, match="no batch"):
        obs.quant_params(8)
    for m in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="momentum"):
            MinMaxObserver(momentum=m)
    with pytest.raises(TypeError, match="momentum"):
        MinMaxObserver(momentum="0.1")
    good = {"running_min": np.array([-1.0], np.float32), "running_max": np.array([1.0], np.float32),
            "initialized": np.array([1.0], np.float32)}
    with pytest.raises(KeyError, match="running_max"):
        obs.load_state_dict({k: v for k, v in good.items() if k != "running_max"})
    with pytest.raises(ValueError, match="initialized"):
        obs.load_state_dict({**good, "initialized": np.array([0.5], np.float32)})
    with pytest.raises(ValueError, match="running_min"):
        obs.load_state_dict({**good, "running_min": np.array([2.0], np.float32)})
    with pytest.raises(ValueError, match="running_min"):
        obs.load_state_dict({**good, "running_min": np.zeros(2, np.float32)})
    assert not obs.initialized  # failed loads change nothing


# ----------------------------------------------------------- alpha <-> bits


@pytest.mark.parametrize("lo, hi", [(3, 8), (2, 16), (4, 4), (2, 3), (5, 9), (8, 16)])
def test_alpha_bits_round_trip_and_bins(lo, hi):
    K = hi - lo + 1
    assert bits_for_alpha(0.0, lo, hi) == lo
    assert bits_for_alpha(1.0, lo, hi) == hi
    for k in range(1, K + 1):
        b = lo + k - 1
        a = alpha_for_bits(b, lo, hi)
        assert a == k / K
        assert bits_for_alpha(a, lo, hi) == b
        assert bits_for_alpha(float(np.float32(a)), lo, hi) == b  # a float32 alpha, just off k/K
        assert bits_for_alpha(np.float32(a), lo, hi) == b
        # inside the bin ((k-1)/K, k/K]
        assert bits_for_alpha((k - 0.5) / K, lo, hi) == b
        assert bits_for_alpha((k - 1) / K + 1e-4, lo, hi) == b
        if k < K:
            assert bits_for_alpha(k / K + 1e-4, lo, hi) == b + 1


def test_bits_for_alpha_defaults_and_known_values():
    assert [bits_for_alpha(k / 6) for k in range(7)] == [3, 3, 4, 5, 6, 7, 8]
    assert bits_for_alpha(5 / 6) == 7          # 5/6 * 6 rounds to 5.000000000000001 in float
    assert bits_for_alpha(0.5) == 5
    assert bits_for_alpha(0.51) == 6
    assert [alpha_for_bits(b) for b in range(3, 9)] == [k / 6 for k in range(1, 7)]
    assert bits_for_alpha(1) == 8 and bits_for_alpha(0) == 3


def test_bits_for_alpha_against_exact_bins(rng):
    for lo, hi in [(3, 8), (2, 16), (4, 7)]:
        K = hi - lo + 1
        for a in rng.random(500):
            a = float(a)
            if abs(a * K - round(a * K)) < 1e-5:
                continue  # within the documented snapping distance of a boundary
            assert bits_for_alpha(a, lo, hi) == ref.bits_for_alpha_exact(Fraction(a), lo, hi)


def test_discrete_alpha_sampler_hits_every_bit_width():
    g = csub.random.Generator(5)
    seen = {bits_for_alpha(g.alpha_discrete(6)) for _ in range(300)}
    assert seen == set(range(3, 9))


@pytest.mark.parametrize("alpha", [-0.1, 1.0 + 1e-9, 2.0, float("nan"), float("inf"), -float("inf")])
def test_bits_for_alpha_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        bits_for_alpha(alpha)


def test_alpha_bits_bad_arguments():
    with pytest.raises(TypeError, match="alpha"):
        bits_for_alpha("0.5")
    with pytest.raises(TypeError, match="alpha"):
        bits_for_alpha(None)
    with pytest.raises(ValueError, match="bits"):
        alpha_for_bits(2)
    with pytest.raises(ValueError, match="bits"):
        alpha_for_bits(9)
    with pytest.raises(TypeError, match="bits"):
        alpha_for_bits(8.0)
    with pytest.raises(ValueError, match="min_bits"):
        bits_for_alpha(0.5, 8, 3)
    with pytest.raises(ValueError, match="min_bits"):
        bits_for_alpha(0.5, 1, 8)
    with pytest.raises(ValueError, match="max_bits"):
        alpha_for_bits(8, 3, 17)
    with pytest.raises(TypeError, match="min_bits"):
        alpha_for_bits(4, True, 8)


# ----------------------------------------------------------- bad input names the argument


X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


@pytest.mark.parametrize("bits", [1, 0, -3, 17, 64])
def test_bad_num_bits_value(bits):
    with pytest.raises(ValueError, match="num_bits"):
        _core.fake_quantize(X, bits, -1.0, 1.0)
    with pytest.raises(ValueError, match="num_bits"):
        _core.quant_params(-1.0, 1.0, bits)
    with pytest.raises(ValueError, match="num_bits"):
        F.fake_quantize(X, bits)


@pytest.mark.parametrize("bits", [8.0, "8", None, 2 ** 70])
def test_bad_num_bits_type(bits):
    err = ValueError if isinstance(bits, int) else TypeError  # 2**70: out of range
    with pytest.raises(err, match="num_bits"):
        _core.fake_quantize(X, bits, -1.0, 1.0)
    with pytest.raises(err, match="num_bits"):
        _core.quant_params(-1.0, 1.0, bits)
    with pytest.raises((TypeError, ValueError), match="num_bits"):
        F.fake_quantize(X, bits)


def test_bad_num_bits_bool():
    with pytest.raises(TypeError, match="num_bits"):
        F.fake_quantize(X, True)


@pytest.mark.parametrize("rmin, rmax, name", [
    (1.0, -1.0, "rmin"), (0.5, 0.25, "rmin"),
    (float("nan"), 1.0, "rmin"), (-float("inf"), 1.0, "rmin"), (-1e39, 1.0, "rmin"),
    (-1.0, float("nan"), "rmax"), (-1.0, float("inf"), "rmax"), (-1.0, 1e39, "rmax"),
])
def test_bad_range(rmin, rmax, name):
    with pytest.raises(ValueError, match=name):
        _core.fake_quantize(X, 8, rmin, rmax)
    with pytest.raises(ValueError, match=name):
        _core.quant_params(rmin, rmax, 8)
    with pytest.raises(ValueError, match=name):
        F.fake_quantize(X, 8, rmin, rmax)


def test_bad_range_types():
    with pytest.raises(TypeError, match="rmin"):
        _core.fake_quantize(X, 8, "a", 1.0)
    with pytest.raises(TypeError, match="rmax"):
        _core.quant_params(-1.0, [1.0], 8)
    with pytest.raises(TypeError, match="rmin"):
        F.fake_quantize(X, 8, rmin="0")


def test_nan_in_x_names_x():
    x = X.copy()
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x: 1 NaN"):
        _core.fake_quantize(x, 8, -1.0, 1.0)
    with pytest.raises(ValueError, match="x"):
        F.fake_quantize(x, 8)
    with pytest.raises(ValueError, match="x"):
        F.fake_quantize(x, 8, -1.0, 1.0)
    with pytest.raises(ValueError, match="x"):  # the zero-range path checks too
        _core.fake_quantize(x, 8, 0.0, 0.0)
    big = np.zeros(200001, np.float32)
    big[[5, 123456, 200000]] = np.nan
    with pytest.raises(ValueError, match="x: 3 NaN"):
        _core.fake_quantize(big, 4, -1.0, 1.0)
    with pytest.raises(ValueError, match="x"):
        F.fake_quantize(np.array([1.0, np.inf], np.float32), 8)  # no finite range of its own


@pytest.mark.parametrize("bad, err", [
    (X.astype(np.float64), TypeError), (X.astype(np.int32), TypeError), (X.tolist(), TypeError),
    (np.asfortranarray(np.ones((3, 4), np.float32)), ValueError), (X[:, ::2], ValueError),
])
def test_bad_x_arrays(bad, err):
    with pytest.raises(err, match="x"):
        _core.fake_quantize(bad, 8, -1.0, 1.0)
    with pytest.raises(err, match="x"):
        _core.minmax(bad)
    with pytest.raises(err, match="x"):
        _core.channel_scale(bad, np.ones(3, np.float32))


def test_bad_out():
    with pytest.raises(ValueError, match="out"):
        _core.fake_quantize(X, 8, -1.0, 1.0, out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match="out"):
        _core.fake_quantize(X, 8, -1.0, 1.0, out=np.empty((3, 4)))
    ro = np.empty((3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        _core.fake_quantize(X, 8, -1.0, 1.0, out=ro)
    with pytest.raises(ValueError, match="out"):
        _core.channel_scale(X, np.ones(4, np.float32), out=np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="out"):
        _core.channel_scale(X, np.ones(4, np.float32), out=ro)


def test_bad_minmax_and_channel_scale():
    with pytest.raises(ValueError, match="x"):
        _core.minmax(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="x"):
        F.fake_quantize(np.zeros(0), 8)
    x = np.ones((2, 3, 4), np.float32)
    for s in (np.ones(4, np.float32), np.ones(2, np.float32), np.ones(0, np.float32)):
        with pytest.raises(ValueError, match="s"):
            _core.channel_scale(x, s)
    with pytest.raises(ValueError, match="s"):
        _core.channel_scale(x, np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="s"):
        _core.channel_scale(x, np.ones(3))
    with pytest.raises(TypeError, match="s"):
        _core.channel_scale(x, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="x"):
        _core.channel_scale(np.ones(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="x"):
        _core.channel_scale(np.ones((2, 0, 3), np.float32), np.ones(0, np.float32))
    with pytest.raises(TypeError, match="x"):
        F.fake_quantize(np.array(["a", "b"]), 8)
