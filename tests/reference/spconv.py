"""NumPy float64 twins of the masked sparse kernels, computed from the CSR itself.

A kept weight (k, j) with j = (c * R + r) * S + s contributes value * the
window of input channel c that kernel tap (r, s) sees to output channel k;
its gradient is the sum of dy[:, k] times that window; the input gradient
scatters value * dy[:, k] back through the window. One kept weight at a
time, no dense weight, no im2col, no phase planes.
"""
import numpy as np

from .conv import _f64, _window, conv_out_size


def csr_from_mask(w, mask):
    """(rowptr, colidx, values) of w[K, ...] kept where mask != 0, by Python loops."""
    w = np.asarray(w).reshape(w.shape[0], -1)
    mask = np.asarray(mask).reshape(w.shape)
    rowptr, colidx, values = [0], [], []
    for k in range(w.shape[0]):
        for j in range(w.shape[1]):
            if mask[k, j]:
                colidx.append(j)
                values.append(w[k, j])
        rowptr.append(len(colidx))
    return (np.array(rowptr, np.int64), np.array(colidx, np.int32), np.array(values, np.float32))


def _kept(rowptr, colidx, R, S):
    """(t, k, c, r, s) of every kept weight t."""
    for k in range(len(rowptr) - 1):
        for t in range(rowptr[k], rowptr[k + 1]):
            j = int(colidx[t])
            yield t, k, j // (R * S), (j // S) % R, j % S


def conv2d_forward(x, rowptr, colidx, values, weight_shape, b=None, stride=1, padding=0):
    x, values = _f64(x), _f64(values)
    N, C, H, W = x.shape
    K, _, R, S = weight_shape
    P, Q = conv_out_size(H, R, stride, padding), conv_out_size(W, S, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((N, K, P, Q))
    for t, k, c, r, s in _kept(rowptr, colidx, R, S):
        y[:, k] += values[t] * _window(xp, r, s, stride, P, Q)[:, c]
    if b is not None:
        y += _f64(b)[None, :, None, None]
    return y


def conv2d_backward(x, rowptr, colidx, values, weight_shape, dy, stride=1, padding=0):
    """(dx, dvalues, db) of <conv2d_forward(...), dy>."""
    x, values, dy = _f64(x), _f64(values), _f64(dy)
    N, C, H, W = x.shape
    K, _, R, S = weight_shape
    P, Q = dy.shape[2], dy.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp = np.zeros_like(xp)
    dv = np.zeros(len(values))
    for t, k, c, r, s in _kept(rowptr, colidx, R, S):
        dv[t] = np.sum(dy[:, k] * _window(xp, r, s, stride, P, Q)[:, c])
        _window(dxp, r, s, stride, P, Q)[:, c] += values[t] * dy[:, k]
    return dxp[:, :, padding:padding + H, padding:padding + W].copy(), dv, dy.sum(axis=(0, 2, 3))


def linear_forward(x, rowptr, colidx, values, b=None):
    x, values = _f64(x), _f64(values)
    y = np.zeros((x.shape[0], len(rowptr) - 1))
    for t, k, c, _, _ in _kept(rowptr, colidx, 1, 1):
        y[:, k] += values[t] * x[:, c]
    return y if b is None else y + _f64(b)[None, :]


def linear_backward(x, rowptr, colidx, values, dy):
    x, values, dy = _f64(x), _f64(values), _f64(dy)
    dx = np.zeros_like(x)
    dv = np.zeros(len(values))
    for t, k, c, _, _ in _kept(rowptr, colidx, 1, 1):
        dv[t] = np.dot(dy[:, k], x[:, c])
        dx[:, c] += values[t] * dy[:, k]
    return dx, dv, dy.sum(axis=0)
