"""Linear and Conv2d: the layers with weights, optionally a subspace and a top-k mask."""
import numpy as np

from .. import _core
from .module import Module, check_input, check_subspace, kaiming_normal


def _check_topk(topk):
    """None (dense) or a keep fraction in (0, 1]; anything else raises, naming topk."""
    if topk is None:
        return None
    if isinstance(topk, bool) or not isinstance(topk, (int, float, np.integer, np.floating)):
        raise TypeError(f"topk: expected None or a keep fraction in (0, 1], got {type(topk).__name__}")
    topk = float(topk)
    if not 0.0 < topk <= 1.0:  # also rejects NaN
        raise ValueError(f"topk: expected a keep fraction in (0, 1], got {topk}")
    return topk


def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return int(v)


class _Weighted(Module):
    """Shared weight handling: subspace interpolation, magnitude top-k, gradient routing.

    ``topk`` (None or a keep fraction in (0, 1]) masks the weight at the
    current alpha to its largest-magnitude entries; the masked entries get no
    gradient.
    """

    def __init__(self, subspace):
        super().__init__()
        self.subspace = check_subspace(subspace)
        self.topk = None
        self._mask = None

    def effective_weight(self):
        """The weight this layer computes with now: interpolated, then masked."""
        topk = _check_topk(self.topk)
        w = self._value("weight")
        self._mask = None
        if topk is not None and topk < 1.0:
            self._mask = _core.topk_mask(w, topk)
            w = _core.apply_mask(w, self._mask)
        return w

    def _weight_grad_buffer(self):
        # Accumulate straight into .grad when nothing sits between the kernel and it.
        if self.subspace != "line" and self._mask is None:
            return self.weight.grad, False
        return np.zeros_like(self.weight.data), True

    def _route_weight_grad(self, dw):
        if self._mask is not None:
            _core.apply_mask(dw, self._mask, dw)
        self._accumulate("weight", dw)

    def _bias_grad_buffer(self):
        if self.bias is None:
            return None, False
        if self.subspace != "line":
            return self.bias.grad, False
        return np.zeros_like(self.bias.data), True


class Linear(_Weighted):
    """y = x W^T + b.

    Args:
        in_features, out_features: sizes I and O.
        bias: learn a bias of shape (O,).
        subspace: None, "point" or "line" (see ``csub.nn.module``).
    Shapes: x (N, I) float32 -> y (N, O) float32; weight (O, I).
    Initialisation: weight ~ N(0, 2 / I) (He), bias 0.
    """

    def __init__(self, in_features, out_features, bias=True, subspace=None):
        super().__init__(subspace)
        self.in_features = _check_int(in_features, "in_features", 1)
        self.out_features = _check_int(out_features, "out_features", 1)
        shape = (self.out_features, self.in_features)
        self._subspace_param("weight", lambda: kaiming_normal(shape, self.in_features), subspace)
        if bias:
            self._subspace_param("bias", lambda: np.zeros(self.out_features, np.float32), subspace)
        else:
            self.bias = None

    def forward(self, x):
        x = check_input(x, "x", 2, self.in_features)
        self._x = x
        self._w = self.effective_weight()
        b = None if self.bias is None else self._value("bias")
        return _core.linear_forward(x, self._w, b)

    def backward(self, dy):
        dw, routed = self._weight_grad_buffer()
        db, b_routed = self._bias_grad_buffer()
        dx = _core.linear_backward(self._x, self._w, dy, dw, db)
        if routed:
            self._route_weight_grad(dw)
        if b_routed:
            self._accumulate("bias", db)
        return dx

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"subspace={self.subspace!r}")


class Conv2d(_Weighted):
    """2-D convolution (cross-correlation), square kernel.

    Args:
        in_channels, out_channels: C and K.
        kernel_size: R = S.
        stride, padding: ints.
        bias: learn a bias of shape (K,).
        subspace: None, "point" or "line".
    Shapes: x (N, C, H, W) float32 -> y (N, K, P, Q) with
    P = (H + 2 padding - R) // stride + 1; weight (K, C, R, R).
    Initialisation: weight ~ N(0, 2 / (K R R)) (He, fan-out), bias 0.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False,
                 subspace=None):
        super().__init__(subspace)
        self.in_channels = _check_int(in_channels, "in_channels", 1)
        self.out_channels = _check_int(out_channels, "out_channels", 1)
        self.kernel_size = _check_int(kernel_size, "kernel_size", 1)
        self.stride = _check_int(stride, "stride", 1)
        self.padding = _check_int(padding, "padding", 0)
        k = self.kernel_size
        shape = (self.out_channels, self.in_channels, k, k)
        fan_out = self.out_channels * k * k
        self._subspace_param("weight", lambda: kaiming_normal(shape, fan_out), subspace)
        if bias:
            self._subspace_param("bias", lambda: np.zeros(self.out_channels, np.float32), subspace)
        else:
            self.bias = None

    def forward(self, x):
        x = check_input(x, "x", 4, self.in_channels)
        self._x = x
        self._w = self.effective_weight()
        b = None if self.bias is None else self._value("bias")
        return _core.conv2d_forward(x, self._w, b, self.stride, self.padding)

    def backward(self, dy):
        dw, routed = self._weight_grad_buffer()
        db, b_routed = self._bias_grad_buffer()
        dx = _core.conv2d_backward(self._x, self._w, dy, dw, db, self.stride, self.padding)
        if routed:
            self._route_weight_grad(dw)
        if b_routed:
            self._accumulate("bias", db)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
                f"subspace={self.subspace!r}")
