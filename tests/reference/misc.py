"""NumPy float64 twins of the parameter-free kernels, the loss and the optimiser step.

Written from the definitions (csrc/include/csub.h), loop by loop where that is
clearest, independent of the C code.
"""
import numpy as np


# ------------------------------------------------------------------ relu, add

def relu_forward(x):
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, 0.0)


def relu_backward(x, dy):
    x = np.asarray(x, np.float64)
    return np.where(x > 0, np.asarray(dy, np.float64), 0.0)


def add_forward(a, b):
    return np.asarray(a, np.float64) + np.asarray(b, np.float64)


def add_backward(dy):
    """(da, db): both are dy."""
    dy = np.asarray(dy, np.float64)
    return dy.copy(), dy.copy()


# ---------------------------------------------------------------------- pools

def pool_out(size, k, s):
    return (size - k) // s + 1


def maxpool2d_forward(x, k, s):
    """y[N,C,P,Q] and argmax[N,C,P,Q] (flat index into the H*W plane; the first maximum wins)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    P, Q = pool_out(H, k, s), pool_out(W, k, s)
    y = np.empty((N, C, P, Q))
    am = np.empty((N, C, P, Q), np.int64)
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    best, bi = None, None
                    for i in range(k):
                        for j in range(k):
                            h, w = p * s + i, q * s + j
                            v = x[n, c, h, w]
                            if best is None or v > best:
                                best, bi = v, h * W + w
                    y[n, c, p, q] = best
                    am[n, c, p, q] = bi
    return y, am


def maxpool2d_backward(x, dy, k, s):
    """Each output's gradient goes to the first maximum of its window."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    _, am = maxpool2d_forward(x, k, s)
    dx = np.zeros((N, C, H * W))
    dy = np.asarray(dy, np.float64)
    for n in range(N):
        for c in range(C):
            for idx, g in zip(am[n, c].ravel(), dy[n, c].ravel()):
                dx[n, c, idx] += g
    return dx.reshape(N, C, H, W)


def avgpool2d_forward(x, k, s):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    P, Q = pool_out(H, k, s), pool_out(W, k, s)
    y = np.zeros((N, C, P, Q))
    for p in range(P):
        for q in range(Q):
            y[:, :, p, q] = x[:, :, p * s:p * s + k, q * s:q * s + k].mean(axis=(2, 3))
    return y


def avgpool2d_backward(input_shape, dy, k, s):
    N, C, H, W = input_shape
    dy = np.asarray(dy, np.float64)
    P, Q = dy.shape[2], dy.shape[3]
    dx = np.zeros((N, C, H, W))
    for p in range(P):
        for q in range(Q):
            dx[:, :, p * s:p * s + k, q * s:q * s + k] += dy[:, :, p, q][:, :, None, None] / (k * k)
    return dx


def gap_forward(x):
    return np.asarray(x, np.float64).mean(axis=(2, 3))


def gap_backward(input_shape, dy):
    N, C, H, W = input_shape
    dy = np.asarray(dy, np.float64)
    return np.broadcast_to(dy[:, :, None, None] / (H * W), (N, C, H, W)).copy()


# ----------------------------------------------------------------------- loss

def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def cross_entropy_forward(logits, labels):
    """Mean over the batch of -log softmax(logits)[label]."""
    lp = log_softmax(logits)
    labels = np.asarray(labels)
    return float(-lp[np.arange(lp.shape[0]), labels].mean())


def cross_entropy_backward(logits, labels, scale=1.0):
    """d (scale * loss) / d logits = scale * (softmax - onehot) / N."""
    p = np.exp(log_softmax(logits))
    N = p.shape[0]
    p[np.arange(N), np.asarray(labels)] -= 1.0
    return p * (scale / N)


# ------------------------------------------------------------------ optimiser

def sgd_step(w, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False, first_step=False):
    """One SGD step (torch.optim.SGD with dampening 0); returns (new w, new velocity)."""
    w = np.asarray(w, np.float64)
    g = np.asarray(grad, np.float64) + weight_decay * w
    v = None
    if momentum != 0.0:
        v = g.copy() if first_step else momentum * np.asarray(velocity, np.float64) + g
        g = g + momentum * v if nesterov else v
    return w - lr * g, v
