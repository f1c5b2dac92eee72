"""NumPy float64 twins of the subspace kernels and of magnitude top-k.

Written straight from the definitions (csrc/include/csub.h, LCS-SPEC sections
3 and 5), with no shared code with the C core:

- line:        out = (1 - alpha) w0 + alpha w1; backward g0 = (1 - alpha) g,
               g1 = alpha g.
- regulariser: R = beta S01^2 / (S00 S11), the sums running over *all* the
               tensor pairs of the line.
- top-k:       keep the n - floor((1 - topk) n) entries of largest |w|, found
               by a full stable argsort (ties go to the lower flat index).
"""
import math

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------ line


def line_forward(w0, w1, alpha):
    """(1 - alpha) * w0 + alpha * w1 in float64."""
    return (1.0 - alpha) * _f64(w0) + alpha * _f64(w1)


def line_backward(g, alpha):
    """Gradients (g0, g1) of <line_forward(w0, w1, alpha), g> w.r.t. w0 and w1."""
    g = _f64(g)
    return (1.0 - alpha) * g, alpha * g


# ----------------------------------------------------------- regulariser


def line_dots(w0, w1):
    """(w0 . w1, |w0|^2, |w1|^2) of one tensor pair, float64."""
    a, b = _f64(w0).ravel(), _f64(w1).ravel()
    return float(a @ b), float(a @ a), float(b @ b)


def line_sums(pairs):
    """(S01, S00, S11) summed over all pairs [(w0, w1), ...]."""
    s = np.zeros(3)
    for w0, w1 in pairs:
        s += line_dots(w0, w1)
    return tuple(float(v) for v in s)


def regularizer(pairs, beta=1.0):
    """beta * S01^2 / (S00 * S11) over all pairs (LCS-SPEC section 5)."""
    s01, s00, s11 = line_sums(pairs)
    if s00 <= 0.0 or s11 <= 0.0:
        raise ValueError("an endpoint is all zero")
    return beta * s01 * s01 / (s00 * s11)


def regularizer_backward(pairs, beta=1.0):
    """[(dR/dw0, dR/dw1), ...] for every pair, float64.

    With R = beta S01^2 / (S00 S11):
        dR/dw0 = beta * (2 S01 / (S00 S11) * w1 - 2 S01^2 / (S00^2 S11) * w0)
        dR/dw1 = beta * (2 S01 / (S00 S11) * w0 - 2 S01^2 / (S00 S11^2) * w1)
    """
    s01, s00, s11 = line_sums(pairs)
    out = []
    for w0, w1 in pairs:
        a, b = _f64(w0), _f64(w1)
        g0 = beta * (2.0 * s01 / (s00 * s11) * b - 2.0 * s01 ** 2 / (s00 ** 2 * s11) * a)
        g1 = beta * (2.0 * s01 / (s00 * s11) * a - 2.0 * s01 ** 2 / (s00 * s11 ** 2) * b)
        out.append((g0, g1))
    return out


# ----------------------------------------------------------------- top-k


def topk_count(n, topk):
    """n - floor((1 - topk) * n), evaluated in Python double exactly as written."""
    return n - math.floor((1.0 - topk) * n)


def topk_mask(w, topk):
    """Bool mask of w's shape keeping the topk_count entries of largest |w|.

    A full stable argsort on -|w| (float64), so among equal magnitudes the
    lower flat index comes first.
    """
    w = _f64(w)
    if np.isnan(w).any():
        raise ValueError("NaN in w")
    a = np.abs(w).ravel()
    keep = topk_count(a.size, topk)
    order = np.argsort(-a, kind="stable")
    mask = np.zeros(a.size, dtype=bool)
    mask[order[:keep]] = True
    return mask.reshape(w.shape)
