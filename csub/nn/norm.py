"""Normalisation layers: BatchNorm2d, GroupNorm, InstanceNorm2d (all affine).

The affine scale ``weight`` (gamma) and shift ``bias`` (beta) may form a
subspace like any other parameter (``subspace="line"`` adds ``weight1`` and
``bias1``); they start at 1 and 0 at both ends.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, TypeVar

import numpy as np

from .. import _core
from .activation import ReLU
from .graph import Graph
from .module import Module, Parameter, check_input, check_subspace

N = TypeVar("N", bound="_AffineNorm")
G = TypeVar("G", bound="GroupNorm")


def _is_real(v):
    """A real number that is not a bool (numpy scalars included)."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)


def _check_channels(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {n!r}")


class _AffineNorm(Module):
    """A norm over ``num_channels`` channels with an affine scale ``weight`` and shift ``bias``
    (C,), each a subspace tensor; ``eps`` is added to the variance."""

    _cache = ("_x", "_g")
    weight: Parameter
    bias: Parameter

    def __init__(self, num_channels: int, eps: float, subspace: Optional[str],
                 channels_name: str = "num_channels") -> None:
        super().__init__()
        _check_channels(num_channels, channels_name)
        if not (_is_real(eps) and 0 < eps < 1):
            raise ValueError(f"eps: expected a number in (0, 1), got {eps!r}")
        self.num_channels = int(num_channels)
        self.eps = float(eps)
        self.subspace = check_subspace(subspace)
        C = self.num_channels
        self._subspace_param("weight", lambda: np.ones(C, np.float32), subspace)
        self._subspace_param("bias", lambda: np.zeros(C, np.float32), subspace)

    @property
    def active_channels(self) -> int:
        """The channels normalised now (``set_width``): the first ``active_channels`` of C."""
        sl = self._active.get("weight")
        return self.num_channels if sl is None else sl[0].stop

    def set_width(self: N, channels: Optional[int] = None) -> N:
        """Structured width: normalise only the first ``channels`` channels with their own
        scale and shift (None: all)."""
        c = self.num_channels if channels is None else int(channels)
        if not 1 <= c <= self.num_channels:
            raise ValueError(f"channels: expected 1..{self.num_channels}, got {channels!r}")
        sl = None if c == self.num_channels else (slice(0, c),)
        self._set_active("weight", sl)
        self._set_active("bias", sl)
        return self

    def _grad_buffers(self):
        if self.subspace == "line" or self._active:
            c = self.active_channels
            return np.zeros(c, np.float32), np.zeros(c, np.float32)
        return self.weight.grad, self.bias.grad

    def _route(self, dg, db):
        if self.subspace == "line" or self._active:
            self._accumulate("weight", dg)
            self._accumulate("bias", db)


class BatchNorm2d(_AffineNorm):
    """Batch normalisation over (N, H, W) per channel, with running statistics.

    Training mode normalises with the batch statistics and updates
    ``running_mean``/``running_var`` (unbiased variance) with ``momentum``;
    evaluation mode uses the running statistics.
    Shapes: x (N, C, H, W) or (N, C) float32 -> y of x's shape; running_mean, running_var (C,).
    """

    running_mean: np.ndarray
    running_var: np.ndarray

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 subspace: Optional[str] = None) -> None:
        super().__init__(num_features, eps, subspace, "num_features")
        if not (_is_real(momentum) and 0 <= momentum <= 1):
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.register_buffer("running_mean", np.zeros(self.num_channels, np.float32))
        self.register_buffer("running_var", np.ones(self.num_channels, np.float32))

    def set_width(self: N, channels: Optional[int] = None) -> N:
        """Only the full width (None or C): running statistics hold at the width they were
        collected at; any other width is a ValueError."""
        if channels is not None and channels != self.num_channels:
            raise ValueError("channels: batch norm's running statistics are only valid at the width they were "
                             "collected at; use group or instance norm for structured subspaces")
        return super().set_width(channels)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) or (N, C) -> normalised, scaled and shifted, x's shape. Training mode:
        batch statistics, running statistics updated; evaluation: running statistics."""
        x = check_input(x, "x", (2, 4), self.num_channels)
        self._x = x
        self._g = self._value("weight")
        self._y = None
        y, self._mean, self._invstd = _core.batchnorm_forward(
            x, self._g, self._value("bias"), self.running_mean, self.running_var,
            self.momentum, self.eps, self.training)
        self._training_stats = self.training
        return y

    def forward_relu(self, x: np.ndarray, relu: ReLU) -> np.ndarray:
        """``relu(self(x))`` in one kernel (the same numbers), as ``GroupNorm.forward_relu``."""
        x = check_input(x, "x", (2, 4), self.num_channels)
        self._x = x
        self._g = self._value("weight")
        y, self._mean, self._invstd = _core.batchnorm_relu_forward(
            x, self._g, self._value("bias"), self.running_mean, self.running_var,
            self.momentum, self.eps, self.training)
        self._training_stats = self.training
        self._y = y
        relu._x = y
        return y

    def backward_relu(self, dy: np.ndarray, add: Optional[np.ndarray] = None) -> np.ndarray:
        """Backward of ``forward_relu`` (plus ``add`` when given), as ``GroupNorm.backward_relu``."""
        self.check_forward_cache()
        if self._y is None:
            raise RuntimeError("BatchNorm2d.backward_relu: the last forward was not forward_relu")
        dg, db = self._grad_buffers()
        dx = _core.batchnorm_relu_backward(self._x, self._y, self._g, dy, self._mean, self._invstd, dg, db,
                                           self._training_stats, add)
        self._route(dg, db)
        return dx

    def fold_scale(self) -> np.ndarray:
        """gamma / sqrt(running_var + eps) at the current alpha, (C,) float32 (batch-norm folding)."""
        return (self._value("weight") / np.sqrt(self.running_var + self.eps)).astype(np.float32)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dx of x's shape for dy of x's shape; adds d weight, d bias (C,) to the grads."""
        self.check_forward_cache()
        if self._y is not None:
            raise RuntimeError("BatchNorm2d.backward: the last forward was forward_relu; call backward_relu")
        dg, db = self._grad_buffers()
        dx = _core.batchnorm_backward(self._x, self._g, dy, self._mean, self._invstd, dg, db,
                                      self._training_stats)
        self._route(dg, db)
        return dx

    def emit(self, g: Graph, x: int) -> int:
        """A ``norm`` operation of kind "bn" with its running statistics."""
        return g.add("norm", x, kind="bn", groups=1, c=self.num_channels, eps=self.eps, w=g.name(self, "weight"),
                     b=g.name(self, "bias"), line=self.subspace == "line", mean=g.name(self, "running_mean"),
                     var=g.name(self, "running_var"))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, subspace={self.subspace!r}"


class GroupNorm(_AffineNorm):
    """Group normalisation: statistics per sample over each group of C / G channels.

    No running statistics: training and evaluation compute the same thing, at
    any batch size. ``GroupNorm(C, C)`` is instance norm; ``GroupNorm(1, C)``
    normalises each sample as a whole.
    Shapes: x (N, C, ...) float32 -> y of x's shape.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 subspace: Optional[str] = None) -> None:
        super().__init__(num_channels, eps, subspace)
        if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) \
                or num_groups < 1 or self.num_channels % num_groups:
            raise ValueError(f"num_groups: expected an int >= 1 dividing num_channels={self.num_channels}, "
                             f"got {num_groups!r}")
        self.num_groups = int(num_groups)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C', ...) with C' the active channels -> normalised per sample and group,
        scaled and shifted, x's shape."""
        c = self.active_channels
        x = check_input(x, "x", (2, 3, 4), c)
        self._x = x
        self._g = self._value("weight")
        self._y = None
        y, self._mean, self._invstd = _core.groupnorm_forward(x, self._g, self._value("bias"),
                                                              self._active_groups(c), self.eps)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dx of x's shape for dy of x's shape; adds d weight, d bias (C',) to the grads."""
        self.check_forward_cache()
        if self._y is not None:
            raise RuntimeError("GroupNorm.backward: the last forward was forward_relu; call backward_relu")
        dg, db = self._grad_buffers()
        dx = _core.groupnorm_backward(self._x, self._g, dy, self._mean, self._invstd, dg, db)
        self._route(dg, db)
        return dx

    def forward_relu(self, x: np.ndarray, relu: ReLU) -> np.ndarray:
        """``relu(self(x))`` in one kernel (the same numbers), for the ReLU module ``relu`` that
        follows this norm; its cache gets the output (whose sign is its input's), so either
        ``backward_relu(dy)`` or ``self.backward(relu.backward(dy))`` undoes it.
        Shapes: x (N, C, ...) float32 -> y of x's shape."""
        c = self.active_channels
        x = check_input(x, "x", (2, 3, 4), c)
        self._x = x
        self._g = self._value("weight")
        y, self._mean, self._invstd = _core.groupnorm_relu_forward(x, self._g, self._value("bias"),
                                                                   self._active_groups(c), self.eps)
        self._y = y
        relu._x = y
        return y

    def backward_relu(self, dy: np.ndarray, add: Optional[np.ndarray] = None) -> np.ndarray:
        """Backward of ``forward_relu``: dy is the gradient of its output; returns the input's,
        plus ``add`` (x's shape, e.g. a residual branch's gradient) when given, in the same pass."""
        self.check_forward_cache()
        if self._y is None:
            raise RuntimeError("GroupNorm.backward_relu: the last forward was not forward_relu")
        dg, db = self._grad_buffers()
        dx = _core.groupnorm_relu_backward(self._x, self._y, self._g, dy, self._mean, self._invstd, dg, db, add)
        self._route(dg, db)
        return dx

    def _active_groups(self, c):
        if c == self.num_channels:
            return self.num_groups
        if self.num_groups == self.num_channels:
            return c  # one group per channel at any width
        if self.num_groups == 1:
            return 1
        raise ValueError(f"channels: group norm with {self.num_groups} groups of {self.num_channels} channels "
                         "has no consistent grouping at other widths; use one group or one per channel")

    def set_width(self: G, channels: Optional[int] = None) -> G:
        """Normalise the first ``channels`` channels (None: all); one group or one group per
        channel keep their grouping at any width, other groupings raise ValueError."""
        super().set_width(channels)
        self._active_groups(self.active_channels)  # reject inconsistent groupings now
        return self

    def emit(self, g: Graph, x: int) -> int:
        """A ``norm`` operation of kind "gn" with its group count."""
        return g.add("norm", x, kind="gn", groups=self.num_groups, c=self.num_channels, eps=self.eps,
                     w=g.name(self, "weight"), b=g.name(self, "bias"), line=self.subspace == "line",
                     mean=None, var=None)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, subspace={self.subspace!r}"


class InstanceNorm2d(GroupNorm):
    """Instance normalisation (affine): group norm with one group per channel.

    Shapes: x (N, C, ...) float32 -> y of x's shape.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, subspace: Optional[str] = None) -> None:
        _check_channels(num_features, "num_features")
        super().__init__(num_features, num_features, eps, subspace)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, subspace={self.subspace!r}"


def fusable(norm: Module, relu: Module) -> bool:
    """True when ``relu(norm(x))`` may run as one fused kernel: ``norm`` a BatchNorm2d, GroupNorm
    or InstanceNorm2d and ``relu`` a ReLU (those classes exactly), neither with its forward or
    backward replaced on the instance (e.g. synchronised batch norm in ``csub.distributed``)."""
    return (type(relu) is ReLU and type(norm) in (BatchNorm2d, GroupNorm, InstanceNorm2d)
            and not any(k in m.__dict__ for m in (norm, relu) for k in ("forward", "backward")))


def norm_relu(norm: Module, relu: Module, x: np.ndarray) -> np.ndarray:
    """``relu(norm(x))``: one fused kernel where ``fusable(norm, relu)``, else the two modules
    in turn; undo it with ``norm_relu_backward``."""
    if fusable(norm, relu):
        return norm.forward_relu(x, relu)
    return relu(norm(x))


def norm_relu_backward(norm: Module, relu: Module, dy: np.ndarray,
                       add: Optional[np.ndarray] = None) -> np.ndarray:
    """Backward of ``norm_relu(norm, relu, x)``: dy is the gradient of its output; returns the
    gradient of x, plus ``add`` (x's shape) when given (fused into the norm's last pass)."""
    if fusable(norm, relu) and getattr(norm, "_y", None) is not None:
        return norm.backward_relu(dy, add)
    dx = norm.backward(relu.backward(dy))
    return dx if add is None else _core.add(dx, add, out=dx)
