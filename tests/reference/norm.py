"""NumPy float64 twins of the normalisation kernels (batch norm, group norm).

Everything is computed in float64 from the definitions, written independently
of the C kernels: statistics with ``np.mean``/``np.var``, the backward from the
chain rule through xhat = (x - mean) * invstd.

Layouts follow the kernels: x is (N, C, ...) with any number of trailing
spatial axes (none for a 2-D (N, C) input).
"""
import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _channel_shape(x):
    """Shape that broadcasts a per-channel vector against x (N, C, ...)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _reduce_axes(x):
    """Axes of batch-norm statistics: every axis but the channel axis."""
    return (0,) + tuple(range(2, x.ndim))


# ------------------------------------------------------------ batch norm

def batchnorm_forward(x, gamma, beta, running_mean=None, running_var=None,
                      momentum=0.1, eps=1e-5, training=True):
    """Returns (y, mean[C], invstd[C], new_running_mean, new_running_var).

    Training: batch statistics (biased variance for normalising); the running
    statistics, when given, become (1 - momentum) r + momentum stat with the
    UNBIASED variance. Evaluation: the running statistics normalise and
    mean/invstd are the running mean and 1 / sqrt(running_var + eps).
    The running arrays passed in are not modified (new ones are returned).
    """
    x, gamma, beta = _f64(x), _f64(gamma), _f64(beta)
    cs, axes = _channel_shape(x), _reduce_axes(x)
    rm = None if running_mean is None else _f64(running_mean).copy()
    rv = None if running_var is None else _f64(running_var).copy()
    if training:
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)  # biased
        m = x.size // x.shape[1]
        if rm is not None:
            rm = (1.0 - momentum) * rm + momentum * mean
            rv = (1.0 - momentum) * rv + momentum * var * m / (m - 1)
    else:
        mean, var = _f64(running_mean), _f64(running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(cs)) * invstd.reshape(cs)
    y = xhat * gamma.reshape(cs) + beta.reshape(cs)
    return y, mean, invstd, rm, rv


def batchnorm_backward(x, gamma, dy, running_mean=None, running_var=None, eps=1e-5, training=True):
    """Returns (dx, dgamma, dbeta) for batchnorm_forward with the same arguments.

    Training: the statistics depend on x, so
        dx = invstd / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)),
    with dxhat = dy * gamma and the sums over the m values of a channel.
    Evaluation: the statistics are constants, dx = gamma * invstd * dy.
    """
    x, gamma, dy = _f64(x), _f64(gamma), _f64(dy)
    cs, axes = _channel_shape(x), _reduce_axes(x)
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = _f64(running_mean), _f64(running_var)
    invstd = (1.0 / np.sqrt(var + eps)).reshape(cs)
    xhat = (x - mean.reshape(cs)) * invstd
    dgamma = np.sum(dy * xhat, axis=axes)
    dbeta = np.sum(dy, axis=axes)
    dxhat = dy * gamma.reshape(cs)
    if training:
        m = x.size // x.shape[1]
        s1 = np.sum(dxhat, axis=axes, keepdims=True)
        s2 = np.sum(dxhat * xhat, axis=axes, keepdims=True)
        dx = invstd / m * (m * dxhat - s1 - xhat * s2)
    else:
        dx = dxhat * invstd
    return dx, dgamma, dbeta


# ------------------------------------------------------------ group norm

def _grouped(x, num_groups):
    """View x (N, C, ...) as (N, G, C/G * rest): one row per (sample, group)."""
    N, C = x.shape[:2]
    return x.reshape(N, num_groups, -1)


def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5):
    """Returns (y, mean[N, G], invstd[N, G]): statistics per sample and group of
    C / G consecutive channels (biased variance), per-channel affine."""
    x, gamma, beta = _f64(x), _f64(gamma), _f64(beta)
    if x.shape[1] % num_groups:
        raise ValueError("num_groups must divide the channels")
    xg = _grouped(x, num_groups)
    mean = xg.mean(axis=2)
    invstd = 1.0 / np.sqrt(xg.var(axis=2) + eps)
    xhat = ((xg - mean[:, :, None]) * invstd[:, :, None]).reshape(x.shape)
    cs = _channel_shape(x)
    y = xhat * gamma.reshape(cs) + beta.reshape(cs)
    return y, mean, invstd


def groupnorm_backward(x, gamma, dy, num_groups, eps=1e-5):
    """Returns (dx, dgamma, dbeta) for groupnorm_forward(x, gamma, beta, num_groups, eps)."""
    x, gamma, dy = _f64(x), _f64(gamma), _f64(dy)
    cs = _channel_shape(x)
    xg = _grouped(x, num_groups)
    mean = xg.mean(axis=2, keepdims=True)
    invstd = 1.0 / np.sqrt(xg.var(axis=2, keepdims=True) + eps)
    xhat_g = (xg - mean) * invstd
    xhat = xhat_g.reshape(x.shape)
    axes = _reduce_axes(x)
    dgamma = np.sum(dy * xhat, axis=axes)
    dbeta = np.sum(dy, axis=axes)
    dxhat_g = _grouped(dy * gamma.reshape(cs), num_groups)
    m = xg.shape[2]
    s1 = dxhat_g.sum(axis=2, keepdims=True)
    s2 = (dxhat_g * xhat_g).sum(axis=2, keepdims=True)
    dx = invstd / m * (m * dxhat_g - s1 - xhat_g * s2)
    return dx.reshape(x.shape), dgamma, dbeta
