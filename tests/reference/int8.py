"""Twin of the integer kernels, written from csub.h ("integer kernels").

Weight and input are turned into integer codes on their b-bit grids
(q = clip(round(v / scale) + zero_point, qmin, qmax), v / scale rounded to
float32 as a float32 division, round half to even), the convolution is an
integer sum over the codes minus their zero points (int64, one kernel tap at
a time on the input padded with its zero point), then scaled in float64.
Independent of the C code.
"""
import numpy as np

from . import quant


def codes(v, scale, zero_point, bits):
    """Integer codes (int64) of v on the grid (scale, zero_point, bits); scale 0 -> zero_point."""
    qmin, qmax = quant.qrange(bits)
    v = np.asarray(v, np.float32)
    if scale == 0:
        return np.full(v.shape, zero_point, np.int64)
    ratio = (v / np.float32(scale)).astype(np.float32)  # one float32 division, as the spec says
    return np.clip(np.round(ratio.astype(np.float64)) + zero_point, qmin, qmax).astype(np.int64)


def weight_grid(w, bits):
    """(scale, zero_point) of a weight from its own min/max (csub_quant_params, exact twin)."""
    w = np.asarray(w, np.float32)
    return quant.quant_params(float(w.min()), float(w.max()), bits)


def conv2d_int8_acc(qx, xzp, qw, wzp, stride, padding):
    """acc[n, k, p, q] = sum (qw - wzp)(qx - xzp) over c, r, s; the padding is the code xzp (int64)."""
    dx = np.pad(qx - xzp, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dw = qw - wzp
    N, C, Hp, Wp = dx.shape
    K, _, R, S = dw.shape
    P, Q = (Hp - R) // stride + 1, (Wp - S) // stride + 1
    acc = np.zeros((N, K, P, Q), np.int64)
    for r in range(R):
        for s in range(S):
            win = dx[:, :, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride]
            acc += np.einsum("ncpq,kc->nkpq", win, dw[:, :, r, s])
    return acc


def conv2d_int8_forward(x, w, bits, xscale, xzero_point, oscale=None, b=None, stride=1, padding=0):
    """y = acc * xscale * wscale * oscale[k] + b[k] in float64; xscale 0 -> y = b."""
    K = w.shape[0]
    wscale, wzp = weight_grid(w, bits)
    qw = codes(w, wscale, wzp, bits)
    qx = codes(x, xscale, xzero_point, bits)
    acc = conv2d_int8_acc(qx, xzero_point, qw, wzp, stride, padding)
    os_ = np.ones(K) if oscale is None else np.asarray(oscale, np.float64)
    y = acc * (float(xscale) * float(wscale)) * os_[None, :, None, None]
    if xscale == 0:
        y = np.zeros_like(y)
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :, None, None]
    return y


def linear_int8_forward(x, w, bits, xscale, xzero_point, oscale=None, b=None):
    """The linear layer: x[N, I], w[O, I] -> y[N, O]."""
    x = np.asarray(x)
    w = np.asarray(w)
    y = conv2d_int8_forward(x[:, :, None, None], w[:, :, None, None], bits, xscale, xzero_point, oscale, b)
    return y[:, :, 0, 0]
