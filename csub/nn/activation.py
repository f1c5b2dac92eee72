"""Parameter-free layers: ReLU, pools, Flatten."""
import numpy as np

from .. import _core
from .module import Module, check_input


class ReLU(Module):
    """y = max(x, 0), any shape, float32."""

    _cache = ("_x",)

    def forward(self, x):
        self._x = check_input(x)
        return _core.relu_forward(self._x)

    def backward(self, dy):
        self.check_forward_cache()
        return _core.relu_backward(self._x, dy)

    def emit(self, g, x):
        return g.add("relu", x)


def _pool_args(kernel_size, stride):
    for v, name in ((kernel_size, "kernel_size"), (stride, "stride")):
        if v is None and name == "stride":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    return int(kernel_size), int(stride if stride is not None else kernel_size)


class MaxPool2d(Module):
    """Max over k x k windows (stride defaults to k, no padding). x (N, C, H, W) -> (N, C, P, Q)."""

    _cache = ("_shape", "_argmax")

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = _pool_args(kernel_size, stride)

    def forward(self, x):
        x = check_input(x, "x", 4)
        self._shape = x.shape
        y, self._argmax = _core.maxpool2d_forward(x, self.kernel_size, self.stride)
        return y

    def backward(self, dy):
        self.check_forward_cache()
        return _core.maxpool2d_backward(dy, self._argmax, self._shape, self.kernel_size, self.stride)

    def emit(self, g, x):
        return g.add("maxpool", x, k=self.kernel_size, s=self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class AvgPool2d(Module):
    """Mean over k x k windows (stride defaults to k, no padding). x (N, C, H, W) -> (N, C, P, Q)."""

    _cache = ("_shape",)

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = _pool_args(kernel_size, stride)

    def forward(self, x):
        x = check_input(x, "x", 4)
        self._shape = x.shape
        return _core.avgpool2d_forward(x, self.kernel_size, self.stride)

    def backward(self, dy):
        self.check_forward_cache()
        return _core.avgpool2d_backward(dy, self._shape, self.kernel_size, self.stride)

    def emit(self, g, x):
        return g.add("avgpool", x, k=self.kernel_size, s=self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalAvgPool2d(Module):
    """Mean over H and W: x (N, C, H, W) -> (N, C)."""

    _cache = ("_shape",)

    def forward(self, x):
        x = check_input(x, "x", 4)
        self._shape = x.shape
        return _core.gap_forward(x)

    def backward(self, dy):
        self.check_forward_cache()
        return _core.gap_backward(dy, self._shape)

    def emit(self, g, x):
        return g.add("gap", x)


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), a view."""

    _cache = ("_shape",)

    def forward(self, x):
        x = check_input(x)
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        self.check_forward_cache()
        return np.ascontiguousarray(dy).reshape(self._shape)

    def emit(self, g, x):
        return g.add("flatten", x)
