"""Linear and Conv2d: the layers with weights, optionally a subspace, a top-k mask and fake quantization."""
from __future__ import annotations

from typing import Optional, Sequence, TypeVar

import numpy as np

from .. import _core
from .graph import Graph
from .module import Module, Parameter, check_input, check_subspace, kaiming_normal
from .quant import MinMaxObserver


# Keep fraction at or below which a masked Conv2d / Linear computes with its
# kept weights only (CSR, csub._core.*_sparse_*): the forward multiplies the
# kept weights, the input gradient uses them transposed and the weight gradient
# is computed at the kept positions only. Above it, the dense kernels run on the
# masked weight. Both give the same results (to float rounding).
# Measured, not guessed: `python benchmarks/bench_sparse.py --threads 1 2`
# times forward + backward of both paths at keep fractions 1 .. 0.02.
# conv: where cPreResNet20's convs summed over the network break even (0.53 ..
# 0.56 on one thread, 0.58 .. 0.67 on two, over three runs; single shapes
# 0.23 .. >= 1); linear: the Linear shapes' crossovers (0.18 .. 0.22, one
# thread). The run and the reasoning are in benchmarks/sparse_crossover.md.
SPARSE_CROSSOVER = {"conv": 0.5, "linear": 0.2}


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


W = TypeVar("W", bound="_Weighted")


class _Weighted(Module):
    """Shared weight handling: subspace interpolation, compression, gradient routing.

    ``topk`` (None or a keep fraction in (0, 1]) masks the weight at the
    current alpha to its largest-magnitude entries; the masked entries get no
    gradient. At a keep fraction <= ``SPARSE_CROSSOVER`` the layer computes
    with the kept weights only (sparse kernels), else with the dense kernels
    on the masked weight; the results agree to float rounding.

    ``num_bits`` (None or 2..16, after ``enable_quantization()``) fake-quantizes
    the weight at the current alpha from its own min/max and the layer's input
    from a running min/max (exponential average, momentum 0.1, initialised
    from the first batch it quantizes); in training the input is quantized
    only while ``quantize_input`` is true (the training loop keeps it false
    during the warm-up), in evaluation always. Backward is the straight-through
    estimator: gradients pass the quantizers unchanged. ``fold_norm`` (a
    BatchNorm2d following this layer) folds the norm's scale
    ``gamma / sqrt(running_var + eps)`` into the weight before quantizing and
    divides it out of the output (the scale is treated as a constant in backward).
    """

    _cache = ("_x", "_w")
    weight: Parameter
    bias: Optional[Parameter]

    def __init__(self, subspace: Optional[str]) -> None:
        super().__init__()
        self.subspace = check_subspace(subspace)
        self.topk = None
        self._mask = None
        self._csr = None
        self.num_bits = None
        self.quantize_input = True
        self.fold_norm = None
        self._fold = None

    def _init_params(self, shape: Sequence[int], fan: int, bias: bool) -> None:
        """``weight`` of ``shape`` ~ N(0, 2 / fan) (He) and, with ``bias``, a zero ``bias`` of
        (shape[0],), each with its line partner for a line (drawn in this order)."""
        self._subspace_param("weight", lambda: kaiming_normal(shape, fan), self.subspace)
        if bias:
            self._subspace_param("bias", lambda: np.zeros(shape[0], np.float32), self.subspace)
        else:
            self.bias = None

    def set_fold_norm(self: W, norm: Optional[Module]) -> W:
        """Fold this BatchNorm2d's scale into the weight before quantizing (None: no folding)."""
        if norm is not None and not hasattr(norm, "fold_scale"):
            raise TypeError(f"norm: expected a BatchNorm2d or None, got {type(norm).__name__}")
        object.__setattr__(self, "fold_norm", norm)  # a reference, not a child module
        return self

    def enable_quantization(self: W, momentum: float = 0.1) -> W:
        """Make the layer quantizable: an input observer whose state is the buffer ``act_range``
        = [running min, running max, initialised]."""
        self.observer = MinMaxObserver(momentum)
        self.register_buffer("act_range", self.observer.state)
        return self

    def _bits(self):
        bits = self.num_bits
        if bits is None:
            return None
        if "act_range" not in self._buffers:
            raise RuntimeError("num_bits: call enable_quantization() before setting num_bits")
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
            raise ValueError(f"num_bits: expected None or an int in [2, 16], got {bits!r}")
        return int(bits)

    def _weight_now(self):
        """(weight, mask, fold): the weight at the current alpha, interpolated, masked, (folded,)
        quantized; the top-k mask (uint8, the weight's shape, or None); the folded norm scale
        (K,) (or None). Reads the layer, changes nothing."""
        topk = _check_topk(self.topk)
        bits = self._bits()
        w = self._value("weight")
        mask = fold = None
        if topk is not None and topk < 1.0:
            mask = _core.topk_mask(w, topk)
            w = _core.apply_mask(w, mask)
        if bits is not None:
            if self.fold_norm is not None:
                fold = self.fold_norm.fold_scale()
                w = _core.channel_scale(w.reshape(1, w.shape[0], -1), fold).reshape(w.shape)
            mn, mx = _core.minmax(w)
            w = _core.fake_quantize(w, bits, mn, mx)
        return w, mask, fold

    def effective_weight(self) -> np.ndarray:
        """The weight this layer computes with now: interpolated, masked, (folded,) quantized.
        Read-only: what the last forward cached for backward stays as it was."""
        return self._weight_now()[0]

    def _sparse_weight(self, kind):
        """CSR (rowptr, colidx, values) of the masked weight self._w when the layer takes the
        sparse path (a top-k mask at a keep fraction <= SPARSE_CROSSOVER[kind], no
        quantization), else None."""
        if self._mask is None or self._fold is not None or self._bits() is not None:
            return None
        if _check_topk(self.topk) > SPARSE_CROSSOVER[kind]:
            return None
        return _core.csr_from_mask(self._w, self._mask)

    def quantize_input_array(self, x: np.ndarray) -> np.ndarray:
        """The layer's input after fake quantization (x itself when not quantizing)."""
        bits = self._bits()
        if bits is None or (self.training and not self.quantize_input):
            return x
        obs = self.observer
        if self.training:
            obs.update(x)
        elif not obs.initialized:  # never observed: use the batch's own range
            mn, mx = _core.minmax(x)
            return _core.fake_quantize(x, bits, mn, mx)
        return _core.fake_quantize(x, bits, obs.running_min, obs.running_max)

    def _unfold(self, a):
        """Divide the folded norm scale out of an output (or out of its gradient) (N, K, ...)."""
        if self._fold is None:
            return a
        return _core.channel_scale(np.ascontiguousarray(a), (1.0 / self._fold).astype(np.float32))

    def _grad_buffers(self):
        """(dw, db, routed): where the backward kernel writes the weight and bias gradients.
        ``.grad`` itself when nothing sits between the kernel and it (the kernel accumulates
        there), else a zeroed buffer of the active shape that ``_route_grads`` routes; ``routed``
        says which (weight, bias). db is None without a bias."""
        line = self.subspace == "line"
        if not line and self._mask is None and self._fold is None and "weight" not in self._active:
            dw, w_routed = self.weight.grad, False
        else:
            dw, w_routed = np.zeros(self._w.shape, np.float32), True
        if self.bias is None:
            db, b_routed = None, False
        elif not line and "bias" not in self._active:
            db, b_routed = self.bias.grad, False
        else:
            db, b_routed = np.zeros(self.active_out, np.float32), True
        return dw, db, (w_routed, b_routed)

    def _route_grads(self, dw, db, routed):
        """Add the gradients written into ``_grad_buffers``' own buffers to the parameters:
        the folded scale and the mask applied to dw, a line's share to each end."""
        if routed[0]:
            if self._fold is not None:
                dw = _core.channel_scale(dw.reshape(1, dw.shape[0], -1), self._fold).reshape(dw.shape)
            if self._mask is not None and self._csr is None:  # the sparse kernels write kept positions only
                _core.apply_mask(dw, self._mask, dw)
            self._accumulate("weight", dw)
        if routed[1]:
            self._accumulate("bias", db)

    def set_width(self: W, in_active: Optional[int] = None, out_active: Optional[int] = None) -> W:
        """Structured width: compute with the first ``in_active`` inputs and ``out_active`` outputs
        (None: all). The weight is used as the prefix ``weight[:out_active, :in_active]``."""
        full_in, full_out = self.weight.shape[1], self.weight.shape[0]
        i = full_in if in_active is None else _check_int(in_active, "in_active", 1)
        o = full_out if out_active is None else _check_int(out_active, "out_active", 1)
        if i > full_in or o > full_out:
            raise ValueError(f"in_active, out_active: ({i}, {o}) exceed the layer's ({full_in}, {full_out})")
        full = i == full_in and o == full_out
        self._set_active("weight", None if full else (slice(0, o), slice(0, i)))
        if self.bias is not None:
            self._set_active("bias", None if o == full_out else (slice(0, o),))
        return self

    @property
    def active_in(self) -> int:
        """The inputs (features or channels) used now (``set_width``)."""
        sl = self._active.get("weight")
        return self.weight.shape[1] if sl is None else sl[1].stop

    @property
    def active_out(self) -> int:
        """The outputs (features or channels) computed now (``set_width``)."""
        sl = self._active.get("weight")
        return self.weight.shape[0] if sl is None else sl[0].stop

    def _emit_attrs(self, g: Graph) -> dict:
        """The graph attributes of a weight layer: tensor names, line, compression, folding."""
        return dict(w=g.name(self, "weight"), b=None if self.bias is None else g.name(self, "bias"),
                    line=self.subspace == "line", compress=id(self) in g.compressible,
                    fold=None if self.fold_norm is None else g.names[id(self.fold_norm)],
                    act=g.name(self, "act_range") if "act_range" in self._buffers else None)


class Linear(_Weighted):
    """y = x W^T + b.

    Args:
        in_features, out_features: sizes I and O.
        bias: learn a bias of shape (O,).
        subspace: None, "point" or "line" (see ``csub.nn.module``).
    Shapes: x (N, I) float32 -> y (N, O) float32; weight (O, I).
    Initialisation: weight ~ N(0, 2 / I) (He), bias 0.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 subspace: Optional[str] = None) -> None:
        super().__init__(subspace)
        self.in_features = _check_int(in_features, "in_features", 1)
        self.out_features = _check_int(out_features, "out_features", 1)
        self._init_params((self.out_features, self.in_features), self.in_features, bias)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, I') -> x W'^T + b' (N, O') with the weight at the current alpha (masked,
        quantized) and I', O' the active sizes."""
        x = check_input(x, "x", 2, self.active_in)
        self._w, self._mask, self._fold = self._weight_now()
        self._csr = self._sparse_weight("linear")
        self._x = self.quantize_input_array(x)
        b = None if self.bias is None else self._value("bias")
        self.macs = self._w.size  # multiply-accumulates per sample
        if self._csr is not None:
            return _core.linear_sparse_forward(self._x, *self._csr, self._w.shape, b)
        return _core.linear_forward(self._x, self._w, b)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dx (N, I') for dy (N, O'); adds d weight, d bias to the grads (straight through the
        quantizers, only at kept positions under a mask, split between a line's ends)."""
        self.check_forward_cache()
        dw, db, routed = self._grad_buffers()
        if self._csr is not None:
            dx = _core.linear_sparse_backward(self._x, *self._csr, self._w.shape, dy, dw, db)
        else:
            dx = _core.linear_backward(self._x, self._w, dy, dw, db)
        self._route_grads(dw, db, routed)
        return dx

    def emit(self, g: Graph, x: int) -> int:
        """A ``linear`` operation."""
        return g.add("linear", x, cin=self.in_features, cout=self.out_features, **self._emit_attrs(g))

    def extra_repr(self) -> str:
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

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, subspace: Optional[str] = None) -> None:
        super().__init__(subspace)
        self.in_channels = _check_int(in_channels, "in_channels", 1)
        self.out_channels = _check_int(out_channels, "out_channels", 1)
        self.kernel_size = _check_int(kernel_size, "kernel_size", 1)
        self.stride = _check_int(stride, "stride", 1)
        self.padding = _check_int(padding, "padding", 0)
        k = self.kernel_size
        self._init_params((self.out_channels, self.in_channels, k, k), self.out_channels * k * k, bias)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C', H, W) -> y (N, K', P, Q) with the weight at the current alpha (masked,
        quantized, folded norm scale divided back out) and C', K' the active channels."""
        x = check_input(x, "x", 4, self.active_in)
        self._w, self._mask, self._fold = self._weight_now()
        self._x = self.quantize_input_array(x)
        if self._fold is not None and self.bias is not None:
            raise ValueError("fold_norm: folding a norm into a conv with a bias is not supported")
        b = None if self.bias is None else self._value("bias")
        self._csr = self._sparse_weight("conv")
        if self._csr is not None:
            y = _core.conv2d_sparse_forward(self._x, *self._csr, self._w.shape, b, self.stride, self.padding)
        else:
            y = _core.conv2d_forward(self._x, self._w, b, self.stride, self.padding)
        self.macs = self._w.size * y.shape[2] * y.shape[3]  # multiply-accumulates per sample
        return self._unfold(y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dx (N, C', H, W) for dy (N, K', P, Q); adds d weight, d bias to the grads as Linear does."""
        self.check_forward_cache()
        dy = self._unfold(dy)
        dw, db, routed = self._grad_buffers()
        if self._csr is not None:
            dx = _core.conv2d_sparse_backward(self._x, *self._csr, self._w.shape, dy, dw, db,
                                              self.stride, self.padding)
        else:
            dx = _core.conv2d_backward(self._x, self._w, dy, dw, db, self.stride, self.padding)
        self._route_grads(dw, db, routed)
        return dx

    def emit(self, g: Graph, x: int) -> int:
        """A ``conv`` operation."""
        return g.add("conv", x, cin=self.in_channels, cout=self.out_channels, k=self.kernel_size,
                     stride=self.stride, pad=self.padding, **self._emit_attrs(g))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
                f"subspace={self.subspace!r}")
