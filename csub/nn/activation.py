"""Parameter-free layers: ReLU, pools, Flatten."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from .graph import Graph
from .module import Module, check_input


class ReLU(Module):
    """y = max(x, 0), any shape, float32."""

    _cache = ("_x",)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """max(x, 0), a new array of x's shape."""
        self._x = check_input(x)
        return _core.relu_forward(self._x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy where the last input was > 0, else 0 (x's shape)."""
        self.check_forward_cache()
        return _core.relu_backward(self._x, dy)

    def emit(self, g: Graph, x: int) -> int:
        """A ``relu`` operation."""
        return g.add("relu", x)


class _Pool2d(Module):
    """k x k windows moved by ``stride`` (default k), no padding: x (N, C, H, W) -> (N, C, P, Q)
    with P = (H - k) // stride + 1, Q = (W - k) // stride + 1. Subclasses name their graph
    operation (``_op``) and compute forward/backward."""

    _op: str = ""

    def __init__(self, kernel_size: int, stride: Optional[int] = None) -> None:
        super().__init__()
        for v, name in ((kernel_size, "kernel_size"), (stride, "stride")):
            if v is None and name == "stride":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        self.kernel_size = int(kernel_size)
        self.stride = int(stride if stride is not None else kernel_size)

    def emit(self, g: Graph, x: int) -> int:
        """A ``maxpool`` or ``avgpool`` operation with ``k`` and ``s``."""
        return g.add(self._op, x, k=self.kernel_size, s=self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool2d(_Pool2d):
    """Max over k x k windows (stride defaults to k, no padding). x (N, C, H, W) -> (N, C, P, Q)."""

    _cache = ("_shape", "_argmax")
    _op = "maxpool"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> the max of each window (N, C, P, Q); caches where each max came from."""
        x = check_input(x, "x", 4)
        self._shape = x.shape
        y, self._argmax = _core.maxpool2d_forward(x, self.kernel_size, self.stride)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (N, C, P, Q) routed to each window's max -> (N, C, H, W)."""
        self.check_forward_cache()
        return _core.maxpool2d_backward(dy, self._argmax, self._shape, self.kernel_size, self.stride)


class AvgPool2d(_Pool2d):
    """Mean over k x k windows (stride defaults to k, no padding). x (N, C, H, W) -> (N, C, P, Q)."""

    _cache = ("_shape",)
    _op = "avgpool"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> the mean of each window (N, C, P, Q)."""
        x = check_input(x, "x", 4)
        self._shape = x.shape
        return _core.avgpool2d_forward(x, self.kernel_size, self.stride)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (N, C, P, Q) spread evenly over each window -> (N, C, H, W)."""
        self.check_forward_cache()
        return _core.avgpool2d_backward(dy, self._shape, self.kernel_size, self.stride)


class GlobalAvgPool2d(Module):
    """Mean over H and W: x (N, C, H, W) -> (N, C)."""

    _cache = ("_shape",)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> the mean of each plane (N, C)."""
        x = check_input(x, "x", 4)
        self._shape = x.shape
        return _core.gap_forward(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (N, C) spread evenly over each plane -> (N, C, H, W)."""
        self.check_forward_cache()
        return _core.gap_backward(dy, self._shape)

    def emit(self, g: Graph, x: int) -> int:
        """A ``gap`` operation."""
        return g.add("gap", x)


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), a view."""

    _cache = ("_shape",)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, ...) -> a view (N, prod(...))."""
        x = check_input(x)
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (N, prod(...)) reshaped to the last input's shape (N, ...)."""
        self.check_forward_cache()
        return np.ascontiguousarray(dy).reshape(self._shape)

    def emit(self, g: Graph, x: int) -> int:
        """A ``flatten`` operation."""
        return g.add("flatten", x)
