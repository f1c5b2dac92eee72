"""Networks of the method: an MLP, a small VGG-style CNN, cPreResNet20 and ResNet18.

Every constructor takes
  regime:   None (dense), "unstructured" (magnitude top-k on the layers
            inside the blocks) or "quantized" (fake quantization of those
            layers' weights and inputs at a bit width; with batch norm its
            scale is folded into the preceding conv's weight first); the
            first layer and the classifier always stay dense float32) or
            "structured" (every hidden layer runs with its first
            ``max(1, round(C * w))`` channels, width factor ``w`` from alpha;
            the input channels and the classes never change);
  subspace: None, "point" or "line" for every trainable tensor;
  norm:     "bn" (batch norm, running statistics), "gn" (group norm, one
            group per channel by default, as the method's reference), "in"
            (instance norm) or None (MLP only).
A model's ``set_alpha(alpha)`` moves every layer to alpha and sets the
compression level that alpha maps to (unstructured: keep fraction
``topk = alpha``; quantized: ``num_bits = bits_for_alpha(alpha)``, K equal
bins of [0, 1] over ``bit_range``); ``set_alpha(alpha, topk=...)`` overrides
the keep fraction, which the training loop uses for the warm-up annealing.
Structured: ``w = w_lo + (w_hi - w_lo) * alpha`` over ``width_range``;
a structured line interpolates only the norm parameters and shares the
conv/linear weights between its ends (the method's default), and norms must
keep no running statistics ("gn" with one group per channel, or "in").
"""
from __future__ import annotations

import functools
import inspect
import os
import threading
from typing import Any, Callable, Optional, Sequence, TypeVar, Union, overload

import numpy as np

from . import _core, checkpoint, modelfile, nn, runtime
from .nn.graph import Graph
from .nn.layers import _Weighted
from .nn.module import Module, check_alpha, check_input, check_subspace
from .nn.norm import norm_relu, norm_relu_backward
from .regimes import REGIMES as _REGIME_TABLE

REGIMES = (None,) + tuple(_REGIME_TABLE)
NORMS = ("bn", "gn", "in", None)

Pair = Sequence[float]  # (lo, hi)
Marker = Callable[[Any], Any]  # a network's _compressible: marks a layer and returns it
Folder = Callable[[Any, Any], None]  # a network's _fold: folds a norm into the conv before it
S = TypeVar("S", bound="SubspaceNet")


def _check_regime(regime):
    if regime not in REGIMES:
        raise ValueError(f"regime: expected one of {REGIMES}, got {regime!r}")
    return regime


@overload
def make_norm(norm: str, channels: int, subspace: Optional[str], groups: Optional[int] = None) -> Module: ...
@overload
def make_norm(norm: None, channels: int, subspace: Optional[str], groups: Optional[int] = None) -> None: ...


def make_norm(norm: Optional[str], channels: int, subspace: Optional[str],
              groups: Optional[int] = None) -> Optional[Module]:
    """A norm layer over ``channels`` channels (input (N, C, ...) -> same shape): "bn"
    BatchNorm2d, "gn" GroupNorm with ``groups`` groups (None: one per channel), "in"
    InstanceNorm2d; None for norm=None."""
    if norm == "bn":
        return nn.BatchNorm2d(channels, subspace=subspace)
    if norm == "gn":
        return nn.GroupNorm(groups or channels, channels, subspace=subspace)
    if norm == "in":
        return nn.InstanceNorm2d(channels, subspace=subspace)
    if norm is None:
        return None
    raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")


def _json_value(v, name):
    """``v`` as JSON-ready Python values: tuples as lists, NumPy scalars as int/float (TypeError otherwise)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, (tuple, list)):
        return [_json_value(e, name) for e in v]
    raise TypeError(f"{name}: expected numbers, strings or sequences of them, got {type(v).__name__}")


def _records_config(name):
    """Decorate a network's __init__ so the instance keeps ``config``: its name (a key of
    ``MODELS``) and the arguments of that very __init__ (tuples as lists). ``build(name,
    **args)`` calls the same __init__, so every recorded config builds the model again
    (``csub.load``)."""
    def deco(init):
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapped(self, *args, **kwargs):
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            init(self, *args, **kwargs)
            cfg = {k: _json_value(v, k) for k, v in bound.arguments.items() if k != "self"}
            object.__setattr__(self, "config", dict(model=name, **cfg))
        wrapped.config_name = name
        return wrapped
    return deco


def _check_count(v, name, lo=1):
    """An int >= lo (NumPy ints included, bools not), else TypeError/ValueError naming ``name``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {lo}, got {type(v).__name__} {v!r}")
    if v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return int(v)


def _check_counts(seq, name, allow_empty):
    """A sequence of ints >= 1 (a tuple), else TypeError/ValueError naming ``name``."""
    if isinstance(seq, (str, bytes)) or not isinstance(seq, (tuple, list, np.ndarray)):
        raise TypeError(f"{name}: expected a sequence of ints >= 1, got {type(seq).__name__} {seq!r}")
    if not allow_empty and len(seq) == 0:
        raise ValueError(f"{name}: expected at least one int >= 1, got {seq!r}")
    return tuple(_check_count(v, f"{name}[{i}]") for i, v in enumerate(seq))


def _check_pair(v, name):
    if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list, np.ndarray)) or len(v) != 2:
        raise TypeError(f"{name}: expected a pair (lo, hi), got {v!r}")
    return tuple(v)


def _locked(fn):
    """Run method ``fn`` holding the model's lock (reentrant: locked methods call each other).
    ``forward`` also records its thread; ``backward`` on another thread is refused."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapped(self, *args, **kwargs):
        with self._lock:
            me = threading.get_ident()
            if name == "backward":
                owner = self.__dict__.get("_forward_thread")
                if owner is not None and owner != me:
                    raise RuntimeError(f"{type(self).__name__}.backward: the last forward ran on another thread; "
                                       "a forward/backward pair must run on one thread (use one model per "
                                       "training thread)")
            out = fn(self, *args, **kwargs)
            if name == "forward":
                object.__setattr__(self, "_forward_thread", me)
            return out
    wrapped._locked = True
    return wrapped


class SubspaceNet(Module):
    """Base of csub's networks: regime bookkeeping and compression measurement.

    Subclasses build their layers, mark the compressible ones with
    ``self._compressible(layer)`` and implement forward/backward.

    Thread safety: the methods in ``_LOCKED`` (forward, backward, set_alpha, mode and state
    changes, compress and the measurements) hold one reentrant lock per model, so calls
    from several threads run one at a time and each sees the model in one state (a forward
    runs at one alpha). A backward uses the caches of the model's last forward, so it must
    run on the thread that ran that forward; on another thread it raises RuntimeError.
    """

    _LOCKED = ("forward", "backward", "set_alpha", "set_width_factor", "set_quantize_inputs", "train",
               "load_state_dict", "state_dict", "zero_grad", "flops", "compress", "sparsity",
               "active_parameters", "model_bytes")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls._LOCKED:  # a subclass's own forward/backward/... take the lock too
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_locked", False):
                setattr(cls, name, _locked(fn))

    def __init__(self, regime: Optional[str], subspace: Optional[str], norm: Optional[str],
                 bit_range: Sequence[int] = (3, 8), width_range: Pair = (0.25, 1.0)) -> None:
        super().__init__()
        object.__setattr__(self, "_lock", threading.RLock())
        self.regime = _check_regime(regime)
        width_range = _check_pair(width_range, "width_range")
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                   for v in width_range):
            raise TypeError(f"width_range: expected two numbers, got {width_range!r}")
        wlo, whi = (float(v) for v in width_range)
        if not 0.0 < wlo <= whi <= 1.0:
            raise ValueError(f"width_range: expected (w_lo, w_hi) with 0 < w_lo <= w_hi <= 1, got {width_range!r}")
        self.width_range = (wlo, whi)
        self.width = 1.0
        if regime == "structured" and norm == "bn":
            raise ValueError("norm: batch norm keeps running statistics that are wrong at other widths; "
                             "structured subspaces need 'gn' (one group per channel) or 'in'")
        lo, hi = _check_pair(bit_range, "bit_range")
        if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi <= 16):
            raise ValueError(f"bit_range: expected (min_bits, max_bits) with 2 <= min <= max <= 16, got {bit_range!r}")
        self.bit_range = (lo, hi)
        self.num_bits = None
        self.subspace = check_subspace(subspace)
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        self.norm = norm
        # a line carried by the norms (structured) shares conv/linear weights between its ends
        self.wsub = "point" if regime and _REGIME_TABLE[regime].line == "norms" and subspace == "line" else subspace
        self.topk = 1.0
        object.__setattr__(self, "_compressible_layers", [])

    def _input_stats(self, in_channels):
        """Buffers for the per-channel input normalisation (set by ``fit`` from the training data)."""
        self.in_channels = in_channels
        self.register_buffer("input_mean", np.zeros(in_channels, np.float32))
        self.register_buffer("input_std", np.ones(in_channels, np.float32))

    def _expected_input(self):
        """(C, H, W) of one sample, None where any size goes (subclasses narrow it)."""
        return (self.in_channels, None, None)

    def _check_x(self, x):
        """Refuse an input that is not the network's (N, C, H, W) float32, naming what was expected:
        a channels-last batch of the right size would otherwise run with wrong results."""
        x = check_input(x, "x")
        c, h, w = self._expected_input()
        ok = x.ndim == 4 and x.shape[0] >= 1 and x.shape[1] == c and h in (None, x.shape[2]) and w in (None, x.shape[3])
        if not ok:
            want = ", ".join(str(v) for v in (c, "H" if h is None else h, "W" if w is None else w))
            raise ValueError(f"x: expected (N, {want}) with N >= 1 (channels first), got shape {x.shape}")
        return x

    def _compressible(self, layer):
        self._compressible_layers.append(layer)
        if self.regime == "quantized":
            layer.enable_quantization()
        return layer

    def _fold(self, conv, norm):
        """Quantized regime with batch norm: fold norm's scale into conv's weight before quantizing."""
        if self.regime == "quantized" and isinstance(norm, nn.BatchNorm2d) and conv in self._compressible_layers:
            conv.set_fold_norm(norm)

    def compressible_layers(self) -> list[_Weighted]:
        """The conv/linear layers whose weights the regime compresses."""
        return list(self._compressible_layers)

    def weight_layers(self) -> list[_Weighted]:
        """Every conv/linear layer, compressible or not."""
        return [m for m in self.modules() if isinstance(m, _Weighted)]

    def set_alpha(self: S, alpha: float, topk: Optional[float] = None) -> S:
        """Move every layer to alpha in [0, 1] (each module's own ``set_alpha``); the compression
        level follows (keep fraction, width factor or bits: ``csub.regimes``), unless ``topk``
        (a keep fraction in (0, 1]) overrides the unstructured level. Returns self."""
        alpha = check_alpha(alpha)
        super().set_alpha(alpha)
        if self.regime is not None:
            _REGIME_TABLE[self.regime].apply(self, alpha, topk)
        return self

    def set_width_factor(self: S, w: float) -> S:
        """Run every hidden layer with its first ``max(1, round(C * w))`` channels (w in (0, 1])."""
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, float, np.integer, np.floating)):
            raise TypeError(f"w: expected a width factor in (0, 1], got {type(w).__name__}")
        w = float(w)
        if not 0.0 < w <= 1.0:
            raise ValueError(f"w: expected a width factor in (0, 1], got {w}")
        self.width = w

        def c(n):
            return max(1, int(np.floor(n * w + 0.5)))

        layers = self.weight_layers()
        for i, layer in enumerate(layers):
            unit = getattr(layer, "in_unit", 1)  # a classifier over flattened (C, h, w) features
            full_in, full_out = layer.weight.shape[1], layer.weight.shape[0]
            layer.set_width(None if i == 0 else c(full_in // unit) * unit,
                            None if i == len(layers) - 1 else c(full_out))
        for m in self.modules():
            if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                m.set_width(c(m.num_channels))
        return self

    def flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs (2 per multiply-accumulate) of one forward pass of one sample of ``input_shape``
        (C, H, W) through the conv/linear layers at the current width; norms and activations
        are not counted (cPreResNet20 at width 1 on 32x32: 67.5 MFLOP). Runs one evaluation-mode
        forward and leaves the model as it was (mode, caches of the last forward)."""
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or len(input_shape) != 3 \
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in input_shape):
            raise ValueError(f"input_shape: expected (C, H, W) of ints >= 1, got {input_shape!r}")
        with self._restoring_state():
            self.eval()
            self.forward(np.zeros((1,) + tuple(input_shape), np.float32))
            return 2 * sum(layer.macs for layer in self.weight_layers())

    def active_parameters(self) -> int:
        """Number of parameter values the network at the current width uses (one per line pair)."""
        total = 0
        for m, name, p in self._network_parameters():
            sl = m._active.get(name)
            total += p.size if sl is None else int(np.prod([x.stop for x in sl])
                                                   * np.prod(p.shape[len(sl):], dtype=np.int64))
        return total

    def _network_parameters(self) -> Any:
        """(module, name, Parameter) of each tensor of the one network at the current alpha:
        the ``1`` end of a line is left out (a line's two ends collapse to one tensor)."""
        for m in self.modules():
            for name, p in m._parameters.items():
                if not (m.subspace == "line" and name.endswith("1") and name[:-1] in m._parameters):
                    yield m, name, p

    def compress(self, alpha: float, input_shape: Optional[Sequence[int]] = None) -> runtime.CompressedNet:
        """An inference-only copy of the network at alpha with real compressed kernels (sparse,
        narrower or integer: ``csub.runtime.CompressedNet``); this model is unchanged."""
        return runtime.compress(self, alpha, input_shape)

    def set_quantize_inputs(self, on: bool) -> None:
        """Quantized regime: quantize the compressible layers' inputs in training (off during warm-up)."""
        for layer in self._compressible_layers:
            layer.quantize_input = bool(on)

    def model_bytes(self) -> int:
        """Bytes of the network at the current alpha: quantized weights packed at num_bits (plus a
        float32 scale and an int32 zero point per tensor), everything else float32, one tensor per
        parameter (a line's two endpoints collapse to the one network at alpha)."""
        quantized: set[int] = set(map(id, self._compressible_layers)) if self.num_bits else set()
        total = 0
        for m, name, p in self._network_parameters():
            if name == "weight" and id(m) in quantized:
                total += (p.size * self.num_bits + 7) // 8 + 8
            else:
                total += 4 * p.size
        return total

    def sparsity(self) -> float:
        """Fraction of zeros over all conv/linear weights (dense layers included), at the current alpha.
        Read-only (the layers' masks of the last forward stay)."""
        zeros = total = 0
        for layer in self.weight_layers():
            w = layer.effective_weight()
            zeros += int(w.size - np.count_nonzero(w))
            total += w.size
        return zeros / total

    def num_weights(self) -> int:
        """The number of conv/linear weight values (one end of a line), compressible or not."""
        return sum(layer.weight.size for layer in self.weight_layers())


for _name in SubspaceNet._LOCKED:  # SubspaceNet's own and those it inherits from Module
    setattr(SubspaceNet, _name, _locked(getattr(SubspaceNet, _name)))
del _name


class _Chain(SubspaceNet):
    """A network whose layers are one ``nn.Sequential`` called ``body`` (the MLP and the CNN):
    forward checks the input and runs the body, backward and emit run it as it is."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) float32 of a batch x (the class docstring's shape)."""
        return self.body(self._check_x(x))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """d loss / d x (x's shape) for dy = d loss / d logits (N, num_classes); adds every
        parameter's gradient to its ``.grad``."""
        return self.check_forward_cache().body.backward(dy)

    def emit(self, g: Graph, x: int) -> int:
        """The network's inference operations (``csub.modelfile``)."""
        return self.body.emit(g, x)


class MLP(_Chain):
    """Multilayer perceptron: Flatten -> [Linear -> norm -> ReLU] * len(hidden) -> Linear.

    Shapes: x (N, ...) with prod(...) = in_features -> logits (N, num_classes).
    The first and last Linear stay dense; the hidden-to-hidden ones are compressible.
    Norms on (N, C) features: "bn" batch norm, "gn"/"in" group norm with one group.
    """

    @_records_config("mlp")
    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10,
                 regime: Optional[str] = None, subspace: Optional[str] = None, norm: Optional[str] = None,
                 in_channels: int = 1, bit_range: Sequence[int] = (3, 8), width_range: Pair = (0.25, 1.0)) -> None:
        super().__init__(regime, subspace, norm, bit_range, width_range)
        in_features = _check_count(in_features, "in_features")
        hidden = _check_counts(hidden, "hidden", allow_empty=True)
        num_classes = _check_count(num_classes, "num_classes")
        in_channels = _check_count(in_channels, "in_channels")
        if in_features % in_channels:
            raise ValueError(f"in_channels: {in_channels} does not divide in_features={in_features}")
        self.in_features = in_features
        self._input_stats(in_channels)
        layers: list[Module] = [nn.Flatten()]
        prev = in_features
        for i, h in enumerate(hidden):
            lin = nn.Linear(prev, h, bias=norm is None, subspace=self.wsub)
            if i > 0:
                self._compressible(lin)
            layers.append(lin)
            if norm is not None:
                layers.append(make_norm(norm if norm == "bn" else "gn", h, subspace, groups=1))
            layers.append(nn.ReLU())
            prev = h
        layers.append(nn.Linear(prev, num_classes, subspace=self.wsub))
        self.body = nn.Sequential(*layers)

    def _check_x(self, x):
        """(N, in_features) features or (N, in_channels, H, W) images of in_features values."""
        x = check_input(x, "x")
        f, c = self.in_features, self.in_channels
        if x.shape[0:1] and x.shape[0] >= 1 and (x.ndim == 2 and x.shape[1] == f or x.ndim == 4 and x.shape[1] == c
                                                  and x.shape[2] * x.shape[3] * c == f):
            return x
        raise ValueError(f"x: expected (N, {f}) or (N, {c}, H, W) with {c} * H * W = {f} and N >= 1 "
                         f"(channels first), got shape {x.shape}")


class CNN(_Chain):
    """Small VGG-style CNN for 28x28 or 32x32 images.

    conv3x3(in -> w0) -> norm -> ReLU, then per stage i: conv3x3 -> norm -> ReLU
    (twice in stages after the first) with 2x2 max pooling between stages,
    then 2x2 average pooling -> Flatten -> Linear(classes) over that small map
    (not a global average: after an instance/group norm per channel the
    channel means carry little information). The first conv and the classifier stay dense.
    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, num_classes).
    """

    @_records_config("cnn")
    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                 regime: Optional[str] = None, subspace: Optional[str] = None, norm: Optional[str] = "gn",
                 image_size: int = 28, bit_range: Sequence[int] = (3, 8), width_range: Pair = (0.25, 1.0)) -> None:
        super().__init__(regime, subspace, norm, bit_range, width_range)
        if norm is None:
            raise ValueError("norm: the CNN needs a norm ('bn', 'gn' or 'in')")
        in_channels = _check_count(in_channels, "in_channels")
        num_classes = _check_count(num_classes, "num_classes")
        widths = _check_counts(widths, "widths", allow_empty=False)
        image_size = _check_count(image_size, "image_size")
        self.image_size = image_size
        self._input_stats(in_channels)
        layers = [nn.Conv2d(in_channels, widths[0], 3, padding=1, subspace=self.wsub),
                  make_norm(norm, widths[0], subspace), nn.ReLU()]
        prev, size = widths[0], image_size
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            for _ in range(1 if i == 0 else 2):
                conv = self._compressible(nn.Conv2d(prev, w, 3, padding=1, subspace=self.wsub))
                layers += [conv, make_norm(norm, w, subspace), nn.ReLU()]
                self._fold(conv, layers[-2])
                prev = w
        if size < 2:
            raise ValueError(f"image_size: {image_size} is too small for {len(widths)} stages")
        size //= 2
        fc = nn.Linear(prev * size * size, num_classes, subspace=self.wsub)
        fc.in_unit = size * size  # flattened (channels, size, size) features: a width keeps whole channels
        layers += [nn.AvgPool2d(2), nn.Flatten(), fc]
        self.body = nn.Sequential(*layers)

    def _expected_input(self):
        return (self.in_channels, self.image_size, self.image_size)


class PreActBottleneck(Module):
    """norm -> relu -> conv1x1 -> norm -> relu -> conv3x3(stride) -> norm -> relu -> conv1x1, plus shortcut.

    The shortcut is the identity, or where the shape changes a 1x1 conv with the
    block's stride (no norm) applied to the first pre-activation, as in
    pre-activation ResNets (``input_shortcut``: applied to the block's input
    instead, as the method's PyTorch reference code does). Output channels: planes * 4.
    ``groups``: group norm's group count for a channel count (None: one per channel).
    ``mark`` marks a layer the regime compresses (and returns it), ``fold`` folds a norm into
    the conv before it (quantized regime with batch norm), ``wsub`` is the conv weights'
    subspace where it differs from the norms' (a structured line).
    Shapes: x (N, in_planes, H, W) -> (N, planes * 4, P, Q), P = (H - 1) // stride + 1 (Q alike).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, subspace: Optional[str],
                 mark: Marker, fold: Optional[Folder] = None, wsub: Optional[str] = None,
                 input_shortcut: bool = False, groups: Optional[Callable[[int], Optional[int]]] = None) -> None:
        super().__init__()
        wsub = subspace if wsub is None else wsub
        out = planes * self.expansion
        self.input_shortcut = bool(input_shortcut)
        g = groups or (lambda c: None)
        self.n1 = make_norm(norm, in_planes, subspace, g(in_planes))
        self.r1 = nn.ReLU()
        self.conv1 = mark(nn.Conv2d(in_planes, planes, 1, subspace=wsub))
        self.n2 = make_norm(norm, planes, subspace, g(planes))
        self.r2 = nn.ReLU()
        self.conv2 = mark(nn.Conv2d(planes, planes, 3, stride=stride, padding=1, subspace=wsub))
        self.n3 = make_norm(norm, planes, subspace, g(planes))
        self.r3 = nn.ReLU()
        self.conv3 = mark(nn.Conv2d(planes, out, 1, subspace=wsub))
        self.shortcut = None
        if stride != 1 or in_planes != out:
            self.shortcut = mark(nn.Conv2d(in_planes, out, 1, stride=stride, subspace=wsub))
        if fold is not None:
            fold(self.conv1, self.n2)
            fold(self.conv2, self.n3)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The block's output for x (shapes: the class docstring); norm -> ReLU pairs run fused
        where the norm allows (``nn.norm.norm_relu``: the same numbers)."""
        a = norm_relu(self.n1, self.r1, x)
        s = x if self.shortcut is None else self.shortcut(x if self.input_shortcut else a)
        h = self.conv1(a)
        h = self.conv2(norm_relu(self.n2, self.r2, h))
        h = self.conv3(norm_relu(self.n3, self.r3, h))
        return _core.add(h, s, out=h)  # h is this block's own temporary: add in place

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """d loss / d x (x's shape) for dy of the output's shape; adds the parameters' gradients."""
        dh = self.conv3.backward(dy)                    # d/d relu3 output
        dh = self.conv2.backward(norm_relu_backward(self.n3, self.r3, dh))
        da = self.conv1.backward(norm_relu_backward(self.n2, self.r2, dh))
        if self.shortcut is not None and not self.input_shortcut:
            da = _core.add(da, self.shortcut.backward(dy), out=da)
            return norm_relu_backward(self.n1, self.r1, da)
        return norm_relu_backward(self.n1, self.r1, da, dy if self.shortcut is None else self.shortcut.backward(dy))

    def emit(self, g: Graph, x: int) -> int:
        """The block's inference operations (``csub.modelfile``)."""
        a = self.r1.emit(g, self.n1.emit(g, x))
        s = x if self.shortcut is None else self.shortcut.emit(g, x if self.input_shortcut else a)
        h = self.conv1.emit(g, a)
        h = self.conv2.emit(g, self.r2.emit(g, self.n2.emit(g, h)))
        h = self.conv3.emit(g, self.r3.emit(g, self.n3.emit(g, h)))
        return g.add("add", h, x2=s)


class PostNormBottleneck(Module):
    """The bottleneck of the PyTorch reference code's quantized cPreResNet20, where each
    conv carries its own norm after it and the block's leading norms are no-ops:
    ``a = relu(x)``; conv1x1 -> norm -> relu -> conv3x3(stride) -> norm -> relu ->
    conv1x1 -> norm on ``a``, plus the shortcut: ``a`` itself, or where the shape
    changes a 1x1 conv with the block's stride followed by a norm, applied to ``a``.
    With batch norm each conv's norm is the one folded into it before quantizing.
    Arguments as ``PreActBottleneck``'s.
    Shapes: x (N, in_planes, H, W) -> (N, planes * 4, P, Q), P = (H - 1) // stride + 1 (Q alike).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, subspace: Optional[str],
                 mark: Marker, fold: Optional[Folder] = None, wsub: Optional[str] = None,
                 groups: Optional[Callable[[int], Optional[int]]] = None) -> None:
        super().__init__()
        wsub = subspace if wsub is None else wsub
        out = planes * self.expansion
        g = groups or (lambda c: None)
        self.r0 = nn.ReLU()
        self.conv1 = mark(nn.Conv2d(in_planes, planes, 1, subspace=wsub))
        self.n1 = make_norm(norm, planes, subspace, g(planes))
        self.r1 = nn.ReLU()
        self.conv2 = mark(nn.Conv2d(planes, planes, 3, stride=stride, padding=1, subspace=wsub))
        self.n2 = make_norm(norm, planes, subspace, g(planes))
        self.r2 = nn.ReLU()
        self.conv3 = mark(nn.Conv2d(planes, out, 1, subspace=wsub))
        self.n3 = make_norm(norm, out, subspace, g(out))
        self.shortcut: Optional[nn.Conv2d] = None
        self.nshort: Any = None  # the shortcut's norm: set exactly when the shortcut is
        if stride != 1 or in_planes != out:
            self.shortcut = mark(nn.Conv2d(in_planes, out, 1, stride=stride, subspace=wsub))
            self.nshort = make_norm(norm, out, subspace, g(out))
        if fold is not None:
            for conv, n in ((self.conv1, self.n1), (self.conv2, self.n2), (self.conv3, self.n3),
                            (self.shortcut, self.nshort)):
                if conv is not None:
                    fold(conv, n)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The block's output for x (shapes: the class docstring)."""
        a = self.r0(x)
        h = self.r1(self.n1(self.conv1(a)))
        h = self.r2(self.n2(self.conv2(h)))
        h = self.n3(self.conv3(h))
        s = a if self.shortcut is None else self.nshort(self.shortcut(a))
        return _core.add(h, s, out=h)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """d loss / d x (x's shape) for dy of the output's shape; adds the parameters' gradients."""
        dh = self.conv3.backward(self.n3.backward(dy))
        dh = self.conv2.backward(self.n2.backward(self.r2.backward(dh)))
        da = self.conv1.backward(self.n1.backward(self.r1.backward(dh)))
        ds = dy if self.shortcut is None else self.shortcut.backward(self.nshort.backward(dy))
        da = _core.add(da, ds, out=da)
        return self.r0.backward(da)

    def emit(self, g: Graph, x: int) -> int:
        """The block's inference operations (``csub.modelfile``)."""
        a = self.r0.emit(g, x)
        h = self.r1.emit(g, self.n1.emit(g, self.conv1.emit(g, a)))
        h = self.r2.emit(g, self.n2.emit(g, self.conv2.emit(g, h)))
        h = self.n3.emit(g, self.conv3.emit(g, h))
        s = a if self.shortcut is None else self.nshort.emit(g, self.shortcut.emit(g, a))
        return g.add("add", h, x2=s)


class BasicBlock(Module):
    """ResNet18's block: conv3x3(stride) -> norm -> relu -> conv3x3 -> norm, plus shortcut, then relu.

    The shortcut is the identity or a 1x1 conv (stride) followed by a norm (``shortcut``, a
    Sequential, as in the other blocks; older csub named it ``short``, and ``load_state_dict``
    still reads state under that name). Arguments as ``PreActBottleneck``'s.
    Shapes: x (N, in_planes, H, W) -> (N, planes, P, Q), P = (H - 1) // stride + 1 (Q alike).
    """

    _renamed = {"short": "shortcut"}

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, subspace: Optional[str],
                 mark: Marker, wsub: Optional[str] = None) -> None:
        super().__init__()
        wsub = subspace if wsub is None else wsub
        self.conv1 = mark(nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, subspace=wsub))
        self.n1 = make_norm(norm, planes, subspace)
        self.r1 = nn.ReLU()
        self.conv2 = mark(nn.Conv2d(planes, planes, 3, padding=1, subspace=wsub))
        self.n2 = make_norm(norm, planes, subspace)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(mark(nn.Conv2d(in_planes, planes, 1, stride=stride, subspace=wsub)),
                                       make_norm(norm, planes, subspace))
        self.out = nn.ReLU()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The block's output for x (shapes: the class docstring)."""
        h = self.n2(self.conv2(self.r1(self.n1(self.conv1(x)))))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.out(_core.add(h, s, out=h))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """d loss / d x (x's shape) for dy of the output's shape; adds the parameters' gradients."""
        dy = self.out.backward(dy)
        dx = self.conv1.backward(self.n1.backward(self.r1.backward(self.conv2.backward(self.n2.backward(dy)))))
        return _core.add(dx, dy if self.shortcut is None else self.shortcut.backward(dy), out=dx)

    def emit(self, g: Graph, x: int) -> int:
        """The block's inference operations (``csub.modelfile``)."""
        h = self.n2.emit(g, self.conv2.emit(g, self.r1.emit(g, self.n1.emit(g, self.conv1.emit(g, x)))))
        s = x if self.shortcut is None else self.shortcut.emit(g, x)
        return self.out.emit(g, g.add("add", h, x2=s))


class _Stages(SubspaceNet):
    """stem -> blocks -> head (optional norm -> relu) -> global average pool -> linear classifier."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) float32 of images x (N, in_channels, H, W)."""
        h = self.stem(self._check_x(x))
        for b in self.blocks:
            h = b(h)
        return self.fc(self.pool(self.head(h)))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """d loss / d x (N, in_channels, H, W) for dy = d loss / d logits (N, num_classes);
        adds every parameter's gradient to its ``.grad``."""
        self.check_forward_cache()
        dh = self.head.backward(self.pool.backward(self.fc.backward(dy)))
        for b in reversed(list(self.blocks)):
            dh = b.backward(dh)
        return self.stem.backward(dh)

    def emit(self, g: Graph, x: int) -> int:
        """The network's inference operations (``csub.modelfile``)."""
        h = self.blocks.emit(g, self.stem.emit(g, x))
        return self.fc.emit(g, self.pool.emit(g, self.head.emit(g, h)))


class CPreResNet20(_Stages):
    """cPreResNet20 of LCS-SPEC section 8: pre-activation bottleneck ResNet, depth 9n + 2 with n = 2.

    conv3x3(in -> 16); stages of n bottleneck blocks with planes 16, 32, 64
    (outputs 64, 128, 256), stride 2 at the first block of stages 2 and 3;
    norm -> relu -> global average pool -> classifier (256 -> classes, the
    1x1 conv written as a bias-free Linear on the pooled features). No biases.
    ``layout="reference"`` wires the network as the method's PyTorch reference
    code does (``csub.interop.from_reference``): the projection shortcut reads
    the block's input, group norm has ``min(C, 32)`` groups, and in the
    quantized regime the blocks are ``PostNormBottleneck``.
    Shapes: x (N, in_channels, H, W) -> logits (N, num_classes).
    """

    LAYOUTS = ("csub", "reference")

    @_records_config("cpreresnet20")
    def __init__(self, in_channels: int = 3, num_classes: int = 10, regime: Optional[str] = None,
                 subspace: Optional[str] = None, norm: Optional[str] = "gn", n: int = 2,
                 bit_range: Sequence[int] = (3, 8), width_range: Pair = (0.25, 1.0), layout: str = "csub") -> None:
        super().__init__(regime, subspace, norm, bit_range, width_range)
        if norm is None:
            raise ValueError("norm: cPreResNet20 needs a norm ('bn', 'gn' or 'in')")
        in_channels = _check_count(in_channels, "in_channels")
        num_classes = _check_count(num_classes, "num_classes")
        n = _check_count(n, "n")
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout: expected one of {self.LAYOUTS}, got {layout!r}")
        self.layout = layout
        ref = layout == "reference"
        groups = (lambda c: min(c, 32)) if ref else None
        self._input_stats(in_channels)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, subspace=self.wsub)
        blocks, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                block: Module
                if ref and regime == "quantized":
                    block = PostNormBottleneck(in_planes, planes, stride, norm, subspace, self._compressible,
                                               self._fold, self.wsub, groups=groups)
                else:
                    block = PreActBottleneck(in_planes, planes, stride, norm, subspace, self._compressible,
                                             self._fold, self.wsub, input_shortcut=ref, groups=groups)
                blocks.append(block)
                in_planes = planes * PreActBottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(make_norm(norm, in_planes, subspace, groups and groups(in_planes)), nn.ReLU())
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(in_planes, num_classes, bias=False, subspace=self.wsub)


class ResNet18(_Stages):
    """ResNet18 (ImageNet layout): conv7x7/2 -> norm -> relu -> maxpool 3/2 (unpadded) -> 4 stages of
    2 basic blocks (64, 128, 256, 512) -> global average pool -> Linear(classes).

    Shapes: x (N, in_channels, H, W) -> logits (N, num_classes). Built and
    shape-tested; at 224x224 the unpadded max pool gives 55x55 after the stem.
    """

    @_records_config("resnet18")
    def __init__(self, in_channels: int = 3, num_classes: int = 1000, regime: Optional[str] = None,
                 subspace: Optional[str] = None, norm: Optional[str] = "bn", bit_range: Sequence[int] = (3, 8),
                 width_range: Pair = (0.25, 1.0)) -> None:
        super().__init__(regime, subspace, norm, bit_range, width_range)
        if norm is None:
            raise ValueError("norm: ResNet18 needs a norm ('bn', 'gn' or 'in')")
        in_channels = _check_count(in_channels, "in_channels")
        num_classes = _check_count(num_classes, "num_classes")
        self._input_stats(in_channels)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, subspace=self.wsub),
                                  make_norm(norm, 64, subspace), nn.ReLU(), nn.MaxPool2d(3, 2))
        blocks, in_planes = [], 64
        for stage, planes in enumerate((64, 128, 256, 512)):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, norm, subspace, self._compressible, self.wsub))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential()
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(in_planes, num_classes, subspace=self.wsub)


def mlp(in_features: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10,
        regime: Optional[str] = None, subspace: Optional[str] = None, norm: Optional[str] = None,
        in_channels: int = 1, bit_range: Sequence[int] = (3, 8), width_range: Pair = (0.25, 1.0)) -> MLP:
    """MLP (see ``MLP``): x (N, in_features) or (N, in_channels, H, W) -> logits (N, num_classes)."""
    return MLP(in_features, hidden, num_classes, regime, subspace, norm, in_channels, bit_range, width_range)


def cnn(in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
        regime: Optional[str] = None, subspace: Optional[str] = None, norm: Optional[str] = "gn",
        image_size: int = 28, bit_range: Sequence[int] = (3, 8), width_range: Pair = (0.25, 1.0)) -> CNN:
    """Small VGG-style CNN (see ``CNN``): x (N, in_channels, image_size, image_size) -> logits
    (N, num_classes)."""
    return CNN(in_channels, num_classes, widths, regime, subspace, norm, image_size, bit_range, width_range)


def cpreresnet20(in_channels: int = 3, num_classes: int = 10, regime: Optional[str] = None,
                 subspace: Optional[str] = None, norm: Optional[str] = "gn", bit_range: Sequence[int] = (3, 8),
                 width_range: Pair = (0.25, 1.0), layout: str = "csub", n: int = 2) -> CPreResNet20:
    """cPreResNet20 (see ``CPreResNet20``): x (N, in_channels, H, W) -> logits (N, num_classes)."""
    return CPreResNet20(in_channels, num_classes, regime, subspace, norm, n=n, bit_range=bit_range,
                        width_range=width_range, layout=layout)


def resnet18(in_channels: int = 3, num_classes: int = 1000, regime: Optional[str] = None,
             subspace: Optional[str] = None, norm: Optional[str] = "bn", bit_range: Sequence[int] = (3, 8),
             width_range: Pair = (0.25, 1.0)) -> ResNet18:
    """ResNet18 (see ``ResNet18``): x (N, in_channels, H, W) -> logits (N, num_classes)."""
    return ResNet18(in_channels, num_classes, regime, subspace, norm, bit_range, width_range)


MODELS = {"mlp": mlp, "cnn": cnn, "cpreresnet20": cpreresnet20, "resnet18": resnet18}
# The class behind each name: its __init__ records ``config`` and ``build`` calls it, so a
# recorded config always builds (the factories take a subset of its arguments, same defaults).
CLASSES = {"mlp": MLP, "cnn": CNN, "cpreresnet20": CPreResNet20, "resnet18": ResNet18}


def build(name: str, **kwargs: Any) -> SubspaceNet:
    """Build a model by name ("mlp", "cnn", "cpreresnet20", "resnet18") from the arguments of its
    class (those of the factory of that name, plus any the class adds, e.g. cPreResNet20's ``n``);
    ``build(**model.config)`` (less ``model``) rebuilds ``model``."""
    if name not in CLASSES:
        raise ValueError(f"model: expected one of {sorted(CLASSES)}, got {name!r}")
    cls = CLASSES[name]
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in params or k == "self")
    if unknown:
        raise TypeError(f"{name}: unexpected arguments {unknown}; it takes {[p for p in params if p != 'self']}")
    return cls(**kwargs)


def load(path: Union[str, os.PathLike]) -> SubspaceNet:
    """Rebuild the model exported to ``path`` (``csub.export``): the same class, configuration
    and state, in evaluation mode at alpha 1 (``set_alpha``, ``compress``, forward as the
    original). ``model.levels`` holds the exported accuracy levels (or None)."""
    with open(path, "rb") as f:
        data = f.read()
    _, tensors = checkpoint.read(data, os.fspath(path))
    meta = modelfile.read_meta(data, os.fspath(path))
    cfg = dict(meta["config"])
    name = cfg.pop("model")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    model = build(name, **cfg)
    model.load_state_dict(tensors)
    model.eval()
    model.set_alpha(1.0)
    object.__setattr__(model, "levels", meta.get("levels"))
    return model
