"""NumPy float64 twins of the dense kernels: gemm, linear, conv2d, and the layer helpers.

The convolution twin works directly on the zero-padded input, one kernel tap
(r, s) at a time: the strided window of the padded input that tap sees is
contracted with w[:, :, r, s]. Its backward scatters through the same
windows. It never forms an im2col matrix, so it shares no structure with the
C implementation.
"""
import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------- gemm

def gemm(a, b, transa=False, transb=False):
    """op(a) @ op(b) in float64, op = transpose when the flag is set."""
    a, b = _f64(a), _f64(b)
    if transa:
        a = a.T
    if transb:
        b = b.T
    m, k = a.shape
    k2, n = b.shape
    assert k == k2
    out = np.zeros((m, n))
    for j in range(k):  # sum of rank-one updates: independent of numpy's matmul
        out += np.outer(a[:, j], b[j, :])
    return out


# ------------------------------------------------------------------- linear

def linear_forward(x, w, b=None):
    """x[N, I], w[O, I], b[O] -> y[N, O] = x w^T + b."""
    y = np.einsum("ni,oi->no", _f64(x), _f64(w))
    if b is not None:
        y = y + _f64(b)[None, :]
    return y


def linear_backward(x, w, dy):
    """Gradients (dx, dw, db) of <linear_forward(x, w, b), dy>."""
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    dx = np.einsum("no,oi->ni", dy, w)
    dw = np.einsum("no,ni->oi", dy, x)
    db = dy.sum(axis=0)
    return dx, dw, db


# ------------------------------------------------------------------- conv2d

def conv_out_size(h, r, stride, pad):
    return (h + 2 * pad - r) // stride + 1


def _window(xp, r, s, stride, P, Q):
    """The view of the padded input that kernel tap (r, s) multiplies: [N, C, P, Q]."""
    return xp[:, :, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride]


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """Cross-correlation x[N, C, H, W] * w[K, C, R, S] (+ b[K]) -> y[N, K, P, Q]."""
    x, w = _f64(x), _f64(w)
    N, C, H, W = x.shape
    K, C2, R, S = w.shape
    assert C == C2
    P, Q = conv_out_size(H, R, stride, padding), conv_out_size(W, S, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((N, K, P, Q))
    for r in range(R):
        for s in range(S):
            y += np.einsum("ncpq,kc->nkpq", _window(xp, r, s, stride, P, Q), w[:, :, r, s])
    if b is not None:
        y += _f64(b)[None, :, None, None]
    return y


def conv2d_backward(x, w, dy, stride=1, padding=0):
    """Gradients (dx, dw, db) of <conv2d_forward(x, w, b, stride, padding), dy>."""
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2], dy.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for r in range(R):
        for s in range(S):
            dw[:, :, r, s] = np.einsum("nkpq,ncpq->kc", dy, _window(xp, r, s, stride, P, Q))
            _window(dxp, r, s, stride, P, Q)[...] += np.einsum("nkpq,kc->ncpq", dy, w[:, :, r, s])
    dx = dxp[:, :, padding:padding + H, padding:padding + W].copy()
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def conv2d_forward_loops(x, w, b=None, stride=1, padding=0):
    """The same convolution as scalar loops over every index (tiny shapes only)."""
    x, w = _f64(x), _f64(w)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = conv_out_size(H, R, stride, padding), conv_out_size(W, S, stride, padding)
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                h, v = p * stride - padding + r, q * stride - padding + s
                                if 0 <= h < H and 0 <= v < W:
                                    acc += x[n, c, h, v] * w[k, c, r, s]
                    y[n, k, p, q] = acc
    return y


# ------------------------------------------------------------ layer helpers

def line(w0, w1, alpha):
    """The point alpha of the line from w0 to w1."""
    return (1.0 - alpha) * _f64(w0) + alpha * _f64(w1)


def topk_keep(n, topk):
    """Entries magnitude top-k keeps: n - floor((1 - topk) n)."""
    return n - int(np.floor((1.0 - topk) * n))


def topk_mask(w, topk):
    """Boolean mask of the topk_keep largest |w| (ties: lower flat index first), by a full sort."""
    flat = np.abs(_f64(w)).reshape(-1)
    keep = topk_keep(flat.size, topk)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:keep]] = True
    return mask.reshape(np.shape(w))
