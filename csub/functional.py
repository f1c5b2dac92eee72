"""Stateless functions over numpy arrays, backed by the C kernels."""
import numpy as np

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


def topk_count(n, topk):
    """Number of entries magnitude top-k keeps out of n: ``n - floor((1 - topk) * n)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    return _core.topk_count(int(n), _fraction(topk))


def topk_mask(w, topk):
    """Boolean mask of the ``n - floor((1 - topk) * n)`` entries of largest ``|w|``.

    Exact (ties go to the lower flat index), O(n) by radix selection.

    Args:
        w: array of any shape (converted to float32).
        topk: keep fraction in (0, 1].
    Returns:
        bool array of w's shape.
    """
    return _core.topk_mask(_as_f32(w, "w"), _fraction(topk)).view(bool)


def line(w0, w1, alpha):
    """``(1 - alpha) * w0 + alpha * w1`` for float32 arrays of one shape."""
    return _core.line_forward(_as_f32(w0, "w0"), _as_f32(w1, "w1"), float(alpha))
