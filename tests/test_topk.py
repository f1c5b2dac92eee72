"""Magnitude top-k: exact keep count and exact selection (LCS-SPEC section 3).

The reference is tests/reference/subspace.py: the count evaluated in Python
double exactly as the method writes it, and the mask from a full stable
argsort of -|w| (ties go to the lower flat index).
"""
import math

import numpy as np
import pytest

from reference import subspace as ref

from csub import _core
from csub import functional as F

SIZES = [1, 2, 7, 1000, 100003]
FRACTIONS = [1.0, 0.5, 0.1, 0.025, 1e-9]


def c_mask(w, topk):
    m = _core.topk_mask(w, topk)
    assert m.dtype == np.uint8 and m.shape == w.shape
    assert set(np.unique(m)) <= {0, 1}
    return m.astype(bool)


# ------------------------------------------------------------------- the count


@pytest.mark.parametrize("n, topk, want", [
    (10, 0.9, 10),      # 1 - 0.9 = 0.0999..., times 10 = 0.999... -> nothing zeroed
    (10, 0.7, 7),
    (10, 0.3, 3),
    (3, 0.3, 1),
    (100, 0.9, 91),     # 0.0999...*100 = 9.99... -> 9 zeroed
    (5, 0.4, 2),
    (1, 1e-9, 1),
    (1000, 1e-9, 1),
    (1000, 0.025, 25),
    (100003, 0.025, 2501),
    (7, 1.0, 7),
    (10, 1e-300, 0),    # 1 - 1e-300 == 1.0 in double: the formula zeroes everything
])
def test_topk_count_known(n, topk, want):
    assert n - math.floor((1.0 - topk) * n) == want  # the formula as written
    assert _core.topk_count(n, topk) == want
    assert F.topk_count(n, topk) == want


def test_topk_count_matches_python_double_formula(rng):
    ns = [1, 2, 3, 7, 10, 97, 1000, 100003, 2**31 + 11, 10**12 + 7]
    fracs = list(rng.random(300)) + [0.1 * k for k in range(1, 11)] + [1 - 1e-16, 2**-53, 2**-54, 5e-324]
    for n in ns:
        for t in fracs:
            if t <= 0.0:
                continue
            assert _core.topk_count(n, float(t)) == ref.topk_count(n, float(t)), (n, t)


@pytest.mark.parametrize("topk", [0.0, -0.5, 1.0 + 1e-12, 2.0, float("nan"), float("inf"), -float("inf")])
def test_topk_count_bad_topk(topk):
    with pytest.raises(ValueError, match="topk"):
        _core.topk_count(10, topk)
    with pytest.raises(ValueError, match="topk"):
        F.topk_count(10, topk)


@pytest.mark.parametrize("n", [0, -3])
def test_topk_count_bad_n(n):
    with pytest.raises(ValueError, match="n"):
        _core.topk_count(n, 0.5)


def test_topk_count_types():
    with pytest.raises(TypeError, match="topk"):
        F.topk_count(10, "0.5")
    with pytest.raises(TypeError, match="n"):
        F.topk_count(10.0, 0.5)


# ------------------------------------------------------------------- the mask


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("topk", FRACTIONS)
def test_mask_matches_argsort_random(rng, n, topk):
    w = rng.standard_normal(n).astype(np.float32)
    m = c_mask(w, topk)
    np.testing.assert_array_equal(m, ref.topk_mask(w, topk))
    assert m.sum() == ref.topk_count(n, topk)
    fm = F.topk_mask(w, topk)
    assert fm.dtype == np.bool_ and fm.shape == w.shape
    np.testing.assert_array_equal(fm, m)


@pytest.mark.parametrize("n", [7, 1000, 100003])
@pytest.mark.parametrize("topk", [0.5, 0.1, 0.025])
def test_mask_many_duplicates(rng, n, topk):
    w = rng.integers(-3, 4, n).astype(np.float32)
    np.testing.assert_array_equal(c_mask(w, topk), ref.topk_mask(w, topk))


@pytest.mark.parametrize("n", [2, 7, 1000])
@pytest.mark.parametrize("topk", [0.5, 0.1, 1e-9])
def test_mask_all_equal_keeps_lowest_indices(n, topk):
    w = np.full(n, -2.5, np.float32)
    m = c_mask(w, topk)
    keep = ref.topk_count(n, topk)
    want = np.zeros(n, bool)
    want[:keep] = True
    np.testing.assert_array_equal(m, want)


def test_mask_signed_zeros():
    w = np.array([0.0, -0.0, 0.0, -0.0, -0.0, 0.0], np.float32)
    np.testing.assert_array_equal(c_mask(w, 0.5), [1, 1, 1, 0, 0, 0])
    w = np.array([-0.0, 0.0, 1e-30, -0.0], np.float32)
    np.testing.assert_array_equal(c_mask(w, 0.5), [1, 0, 1, 0])


def test_mask_equal_magnitude_opposite_sign():
    w = np.array([0.5, -1.0, 1.0, -1.0, 1.0], np.float32)
    # keep = 5 - floor(0.6 * 5) = 2: the two lowest indices of magnitude 1
    np.testing.assert_array_equal(c_mask(w, 0.4), [0, 1, 1, 0, 0])
    w = np.array([3.0, -3.0], np.float32)
    np.testing.assert_array_equal(c_mask(w, 0.5), [1, 0])
    np.testing.assert_array_equal(c_mask(w[::-1].copy(), 0.5), [1, 0])


def test_mask_infinities():
    w = np.array([1.0, np.inf, -3e38, -np.inf, 2.0, 0.0], np.float32)
    np.testing.assert_array_equal(c_mask(w, 1 / 3), [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(c_mask(w, 0.5), [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(c_mask(w, 0.1), [0, 1, 0, 0, 0, 0])  # keep 1: +inf, the lower index
    for t in (0.1, 0.2, 1 / 3, 0.5, 0.9):
        np.testing.assert_array_equal(c_mask(w, t), ref.topk_mask(w, t))


def test_mask_denormals():
    tiny = np.float32(1e-45)  # smallest positive denormal
    w = np.array([3 * tiny, -tiny, 0.0, 1e-40, -2 * tiny, 1.1754942e-38, -0.0, 2 * tiny], np.float32)
    assert (np.abs(w[w != 0]) < np.finfo(np.float32).tiny).all()
    for t in (0.125, 0.25, 0.5, 0.75, 1.0):
        np.testing.assert_array_equal(c_mask(w, t), ref.topk_mask(w, t))
    np.testing.assert_array_equal(c_mask(w, 0.25), [0, 0, 0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(c_mask(w, 0.5), [1, 0, 0, 1, 1, 1, 0, 0])  # 2t at 4 before 2t at 7


@pytest.mark.parametrize("topk", [1.0, 0.5, 1e-9])
def test_mask_single_element(topk):
    for v in (0.0, -7.0, np.inf, 1e-45):
        w = np.array([v], np.float32)
        np.testing.assert_array_equal(c_mask(w, topk), [True])


def test_mask_below_resolution_of_one_minus_topk():
    # the formula as written keeps nothing when 1 - topk rounds to 1
    w = np.arange(1, 9, dtype=np.float32)
    np.testing.assert_array_equal(c_mask(w, 1e-300), np.zeros(8, bool))
    np.testing.assert_array_equal(F.topk_mask(w, 2.0**-54), np.zeros(8, bool))
    m = c_mask(w, 2.0**-53)  # 1 - 2^-53 < 1: one entry survives
    np.testing.assert_array_equal(m, ref.topk_mask(w, 2.0**-53))
    assert m.sum() == 1 and m[-1]


def test_mask_topk_one_keeps_all(rng):
    w = np.concatenate([rng.standard_normal(50), [0.0, -0.0, np.inf, -np.inf, 1e-45]]).astype(np.float32)
    assert c_mask(w, 1.0).all()
    assert F.topk_mask(w, 1).all()


def test_mask_random_bit_patterns(rng):
    # every exponent and mantissa bit pattern: stresses each radix pass and its boundaries
    bits = rng.integers(0, 2**32, 20011, dtype=np.uint64).astype(np.uint32)
    w = bits.view(np.float32)
    w = w[~np.isnan(w)].copy()
    for t in (0.9, 0.5, 0.3, 0.01, 1e-4):
        np.testing.assert_array_equal(c_mask(w, t), ref.topk_mask(w, t))


def test_mask_close_values_low_bits(rng):
    # magnitudes sharing all of the top 22 bits: the last pass decides
    base = np.array([1.5], np.float32).view(np.uint32)[0]
    low = rng.integers(0, 512, 3001).astype(np.uint32)
    w = (base + low).astype(np.uint32).view(np.float32) * rng.choice([-1, 1], 3001).astype(np.float32)
    for t in (0.5, 0.1, 0.003):
        np.testing.assert_array_equal(c_mask(w, t), ref.topk_mask(w, t))


def test_mask_threshold_at_bucket_edges():
    # magnitudes straddling the boundaries of the 11/11/9-bit digits
    pats = np.array([0x3f800000, 0x3f7fffff, 0x3f8001ff, 0x3f800200, 0x3f8fffff, 0x3f900000,
                     0x000001ff, 0x00000200, 0x000fffff, 0x00100000, 0x7f7fffff, 0x7f800000,
                     0x3f800000, 0x3f7fffff], np.uint32)
    signs = np.array([0, 1] * 7, np.uint32) << 31
    w = (pats | signs).view(np.float32)
    for keep in range(1, w.size + 1):
        t = keep / w.size
        np.testing.assert_array_equal(c_mask(w, t), ref.topk_mask(w, t), err_msg=f"keep={keep}")


@pytest.mark.parametrize("shape", [(13, 3, 3, 3), (5, 1, 1, 2), (2, 7)])
@pytest.mark.parametrize("topk", [0.5, 0.1])
def test_mask_keeps_shape_and_flat_order(rng, shape, topk):
    w = rng.standard_normal(shape).astype(np.float32)
    w.reshape(-1)[::3] = 0.25  # ties across the flattened order
    m = c_mask(w, topk)
    assert m.shape == shape
    np.testing.assert_array_equal(m, ref.topk_mask(w, topk))
    np.testing.assert_array_equal(c_mask(w.reshape(-1).copy(), topk), m.reshape(-1))
    fm = F.topk_mask(w, topk)
    assert fm.shape == shape and fm.dtype == np.bool_


def test_mask_kept_dominate_dropped(rng):
    w = rng.standard_normal(4099).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 4099)
    w = w.astype(np.float32)
    for t in (0.7, 0.2, 0.05):
        m = c_mask(w, t)
        assert np.abs(w[m]).min() >= np.abs(w[~m]).max()
        assert m.sum() == ref.topk_count(w.size, t)


def test_functional_converts_input(rng):
    w = rng.standard_normal((6, 5))  # float64, converted to float32
    np.testing.assert_array_equal(F.topk_mask(w, 0.3), ref.topk_mask(w.astype(np.float32), 0.3))
    np.testing.assert_array_equal(F.topk_mask([3, -4, 1], 0.5), [True, True, False])  # keep 3 - floor(1.5) = 2
    nc = rng.standard_normal((8, 8)).astype(np.float32)[:, ::2]
    np.testing.assert_array_equal(F.topk_mask(nc, 0.5), ref.topk_mask(nc, 0.5))


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("pos", [0, 4, 99])
def test_mask_nan_rejected(pos):
    w = np.ones(100, np.float32)
    w[pos] = np.nan
    with pytest.raises(ValueError, match="w"):
        _core.topk_mask(w, 0.5)
    with pytest.raises(ValueError, match="w"):
        F.topk_mask(w.astype(np.float64), 0.5)
    with pytest.raises(ValueError, match="w"):
        _core.topk_mask(w, 1.0)  # even when everything would be kept


@pytest.mark.parametrize("topk", [0.0, -0.1, 1.0000001, float("nan"), float("inf")])
def test_mask_bad_topk(topk):
    w = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="topk"):
        _core.topk_mask(w, topk)
    with pytest.raises(ValueError, match="topk"):
        F.topk_mask(w, topk)


@pytest.mark.parametrize("topk", ["0.5", None, [0.5]])
def test_mask_topk_type(topk):
    with pytest.raises(TypeError, match="topk"):
        F.topk_mask(np.ones(4, np.float32), topk)


def test_mask_bad_w():
    with pytest.raises(TypeError, match="w"):
        _core.topk_mask(np.ones(4), 0.5)
    with pytest.raises(TypeError, match="w"):
        _core.topk_mask(np.ones(4, np.int32), 0.5)
    with pytest.raises(TypeError, match="w"):
        _core.topk_mask([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="w"):
        _core.topk_mask(np.ones((4, 4), np.float32)[:, ::2], 0.5)
    with pytest.raises(ValueError, match="w"):
        _core.topk_mask(np.ones(0, np.float32), 0.5)
    with pytest.raises(ValueError, match="w"):
        F.topk_mask(np.ones((3, 0)), 0.5)
    with pytest.raises(TypeError, match="w"):
        F.topk_mask(np.array(["a", "b"]), 0.5)
    with pytest.raises(TypeError, match="w"):
        F.topk_mask(np.ones(3, np.complex64), 0.5)


# ------------------------------------------------------------------ apply_mask


def test_apply_mask(rng):
    w = rng.standard_normal((5, 3, 3)).astype(np.float32)
    m = _core.topk_mask(w, 0.3)
    out = _core.apply_mask(w, m)
    np.testing.assert_array_equal(out, np.where(m.astype(bool), w, 0.0).astype(np.float32))
    buf = w.copy()
    assert _core.apply_mask(buf, m, buf) is buf  # in place, as the layers use it for gradients
    np.testing.assert_array_equal(buf, out)
    with pytest.raises(ValueError, match="mask"):
        _core.apply_mask(w, m.reshape(-1))
    with pytest.raises(TypeError, match="mask"):
        _core.apply_mask(w, m.astype(bool))
    with pytest.raises(ValueError, match="out"):
        _core.apply_mask(w, m, np.zeros(3, np.float32))
