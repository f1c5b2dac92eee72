"""Twins of the quantization kernels, written from LCS-SPEC section 3.

Quantization parameters are computed in exact rational arithmetic
(fractions.Fraction), so ties are ties; fake quantization, min/max and the
per-channel scaling in NumPy float64. Independent of the C code.
"""
import math
from fractions import Fraction

import numpy as np


def qrange(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def round_half_even(f):
    """Nearest integer to a Fraction, ties to even (Python's round)."""
    return round(f)


def quant_params_exact(rmin, rmax, bits):
    """(scale as a Fraction, zero_point) of the spec's formulas, exactly."""
    qmin, qmax = qrange(bits)
    lo = min(Fraction(rmin), Fraction(0))
    hi = max(Fraction(rmax), Fraction(0))
    if lo == hi:
        return Fraction(0), 0
    scale = (hi - lo) / (qmax - qmin)
    zp = round_half_even(qmin - lo / scale)
    return scale, min(max(zp, qmin), qmax)


def quant_params(rmin, rmax, bits):
    """(scale, zero_point): the exact scale rounded to float32, the exact zero point.

    A scale that rounds to 0 in float32 (a range below ~1e-43) counts as the
    empty range: (0, 0).
    """
    scale, zp = quant_params_exact(rmin, rmax, bits)
    s32 = float(np.float32(float(scale)))
    if s32 == 0.0:  # underflows in float32: treated as the empty range
        return 0.0, 0
    return s32, zp


def fake_quant_forward(x, scale, zero_point, bits):
    """q = clip(round(x / scale) + zp, qmin, qmax), y = (q - zp) scale, in float64; scale 0 -> 0."""
    x = np.asarray(x, np.float64)
    if scale == 0:
        return np.zeros_like(x)
    qmin, qmax = qrange(bits)
    q = np.clip(np.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def fake_quant_codes(x, scale, zero_point, bits):
    """The integer codes q of fake_quant_forward."""
    qmin, qmax = qrange(bits)
    return np.clip(np.round(np.asarray(x, np.float64) / scale) + zero_point, qmin, qmax)


def fake_quant_backward(x, dy):
    """Straight-through estimator: the gradient passes unchanged, everywhere."""
    return np.array(dy, np.float64, copy=True)


def minmax(x):
    """(min, max) in Python, element by element; NaN if any element is NaN."""
    vals = [float(v) for v in np.asarray(x).reshape(-1)]
    if any(math.isnan(v) for v in vals):
        return math.nan, math.nan
    mn = mx = vals[0]
    for v in vals[1:]:
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    return mn, mx


def channel_scale_forward(x, s):
    """y[n, c, ...] = x[n, c, ...] * s[c]."""
    x = np.asarray(x, np.float64)
    s = np.asarray(s, np.float64)
    return x * s.reshape((1, -1) + (1,) * (x.ndim - 2))


def channel_scale_backward(x, s, dy):
    """(dx, ds): dx = dy * s[c], ds[c] = sum over n and the rest of dy * x."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    return channel_scale_forward(dy, s), np.sum(dy * x, axis=axes)


def ema(values, momentum):
    """Running statistic of MinMaxObserver in float64: the first value, then (1 - m) r + m v."""
    r = None
    out = []
    for v in values:
        r = float(v) if r is None else (1.0 - momentum) * r + momentum * float(v)
        out.append(r)
    return out


def bits_for_alpha_exact(alpha, min_bits, max_bits):
    """min_bits + k - 1 for alpha in ((k - 1)/K, k/K] (alpha = 0 -> min_bits), alpha a Fraction."""
    K = max_bits - min_bits + 1
    k = max(1, math.ceil(Fraction(alpha) * K))
    return min_bits + k - 1
