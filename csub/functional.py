"""Stateless functions over numpy arrays, backed by the C kernels."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _core


def _as_f32(x, name):
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _fraction(topk):
    if isinstance(topk, bool) or not isinstance(topk, (int, float, np.integer, np.floating)):
        raise TypeError(f"topk: expected a real number, got {type(topk).__name__}")
    return float(topk)


def topk_count(n: int, topk: float) -> int:
    """Number of entries magnitude top-k keeps out of n: ``n - floor((1 - topk) * n)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    return _core.topk_count(int(n), _fraction(topk))


def topk_mask(w: ArrayLike, topk: float) -> np.ndarray:
    """Boolean mask of the ``n - floor((1 - topk) * n)`` entries of largest ``|w|``.

    Exact (ties go to the lower flat index), O(n) by radix selection.

    Args:
        w: array of any shape (converted to float32).
        topk: keep fraction in (0, 1].
    Returns:
        bool array of w's shape.
    """
    return _core.topk_mask(_as_f32(w, "w"), _fraction(topk)).view(bool)


def line(w0: ArrayLike, w1: ArrayLike, alpha: float) -> np.ndarray:
    """``(1 - alpha) * w0 + alpha * w1`` for float32 arrays of one shape (the result: float32, that shape)."""
    return _core.line_forward(_as_f32(w0, "w0"), _as_f32(w1, "w1"), float(alpha))


def _real(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    return float(v)


def fake_quantize(x: ArrayLike, num_bits: int, rmin: Optional[float] = None,
                  rmax: Optional[float] = None) -> np.ndarray:
    """Affine per-tensor fake quantization to ``num_bits`` signed bits (LCS-SPEC section 3).

    The range ``[rmin, rmax]`` (widened to include 0) defaults to x's own
    min/max. With ``qmin = -2^(b-1)``, ``qmax = 2^(b-1) - 1``::

        scale = (rmax - rmin) / (qmax - qmin)
        zero_point = clip(round(qmin - rmin / scale), qmin, qmax)
        q = clip(round(x / scale) + zero_point, qmin, qmax)
        y = (q - zero_point) * scale

    rounding half to even; an all-zero range gives y = 0. The backward of
    fake quantization is the straight-through estimator: the gradient passes
    unchanged.

    Args:
        x: array of any shape (converted to float32, C-contiguous); no NaN.
        num_bits: int in [2, 16].
        rmin, rmax: finite reals with rmin <= rmax, or None for x's min / max.
    Returns:
        float32 array of x's shape.
    """
    x = _as_f32(x, "x")
    if isinstance(num_bits, bool) or not isinstance(num_bits, (int, np.integer)):
        raise TypeError(f"num_bits: expected an int, got {type(num_bits).__name__}")
    rmin = None if rmin is None else _real(rmin, "rmin")
    rmax = None if rmax is None else _real(rmax, "rmax")
    if rmin is None or rmax is None:
        mn, mx = _core.minmax(x)
        if np.isnan(mn):
            raise ValueError("x: contains NaN; fake quantization is undefined for NaN")
        if not (np.isfinite(mn) and np.isfinite(mx)):
            raise ValueError("x: contains inf; pass a finite rmin and rmax to quantize it")
        rmin = mn if rmin is None else rmin
        rmax = mx if rmax is None else rmax
    return _core.fake_quantize(x, int(num_bits), rmin, rmax)


def quant_params(rmin: float, rmax: float, num_bits: int) -> Tuple[float, int]:
    """``(scale, zero_point)`` of ``num_bits``-bit affine quantization of ``[rmin, rmax]`` (see fake_quantize)."""
    if isinstance(num_bits, bool) or not isinstance(num_bits, (int, np.integer)):
        raise TypeError(f"num_bits: expected an int, got {type(num_bits).__name__}")
    return _core.quant_params(_real(rmin, "rmin"), _real(rmax, "rmax"), int(num_bits))
