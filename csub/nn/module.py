"""Module, Parameter and the machinery for subspace parameters.

A ``Module`` computes ``forward(x)`` and, given the gradient of the loss with
respect to its output, ``backward(dy)`` returns the gradient with respect to
its input and *accumulates* the gradients of its parameters into
``Parameter.grad``. Each module caches what its backward needs during
forward, so call ``backward`` once after each ``forward``.

Subspace parameters: a layer built with ``subspace="line"`` holds each
trainable tensor twice, ``weight`` (the alpha = 0 end) and ``weight1`` (the
alpha = 1 end); its forward uses ``(1 - alpha) * weight + alpha * weight1``
and its backward splits the gradient as ``(1 - alpha) * g`` and ``alpha * g``.
``subspace="point"`` and ``None`` hold one tensor.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np

from .. import _core
from ..random import default_generator
from .graph import Graph

SUBSPACES = (None, "point", "line")

M = TypeVar("M", bound="Module")


class Parameter:
    """A trainable float32 tensor and its gradient (same shape, C-contiguous)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Any) -> None:
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape."""
        return self.data.shape

    @property
    def size(self) -> int:
        """The number of values in the tensor."""
        return self.data.size

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape})"


def check_subspace(subspace: Optional[str]) -> Optional[str]:
    """``subspace`` itself if it is None, "point" or "line"; ValueError naming ``subspace`` otherwise."""
    if subspace not in SUBSPACES:
        raise ValueError(f"subspace: expected None, 'point' or 'line', got {subspace!r}")
    return subspace


def check_alpha(alpha: float) -> float:
    """alpha as a Python float in [0, 1]: TypeError unless a real number (bools refused),
    ValueError outside [0, 1] (NaN included), naming ``alpha``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"alpha: expected a number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha}")
    return alpha


def check_input(x: np.ndarray, name: str = "x", ndim: Union[int, Sequence[int], None] = None,
                channels: Optional[int] = None, channel_axis: int = 1) -> np.ndarray:
    """Validate a layer input: a float32 numpy array of rank ``ndim`` (an int or the allowed
    ranks; None: any) with ``channels`` entries on ``channel_axis`` (None: any). Returns it
    C-contiguous (a copy only if it was not); TypeError/ValueError naming ``name`` otherwise."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype float32, got {x.dtype}")
    if ndim is not None and x.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {x.shape}")
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(f"{name}: expected {channels} channels on axis {channel_axis}, got shape {x.shape}")
    return np.ascontiguousarray(x)


class Module:
    """Base class of every layer and network.

    Attributes:
        training: True in training mode (``train()``), False after ``eval()``.
        alpha: the position in the subspace, in [0, 1] (``set_alpha``).
        subspace: how this module's own trainable tensors form the subspace: None (one
            tensor), "point" (one tensor, trained at every alpha) or "line" (``weight`` and
            ``weight1`` ends). Set when built by the layers that hold subspace tensors
            (``Linear``, ``Conv2d``, the norms); a network of ``csub.models`` holds the
            model's subspace. None for modules without their own (activations, pools,
            containers, blocks). Fixed at construction: the tensors follow it.
    """

    subspace: Optional[str] = None  # class default; the layers with subspace tensors set their own
    training: bool
    alpha: float
    _parameters: OrderedDict[str, Parameter]
    _modules: OrderedDict[str, Module]
    _buffers: list[str]
    _active: dict[str, tuple[slice, ...]]

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", [])
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "alpha", 1.0)
        object.__setattr__(self, "_active", {})  # parameter name -> slices in use (structured width)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError("Module.__init__() must be called before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    if TYPE_CHECKING:  # children, parameters and buffers are attributes set at run time
        def __getattr__(self, name: str) -> Any: ...

    def register_buffer(self, name: str, array: np.ndarray) -> None:
        """A float32/int array saved in ``state_dict`` but not trained (e.g. running statistics)."""
        if name not in self._buffers:
            self._buffers.append(name)
        object.__setattr__(self, name, array)

    # -- computation --

    def forward(self, *args: Any) -> Any:
        """The module's output for its input (float32 arrays; shapes: the subclass's docstring).
        Caches what ``backward`` needs."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """d loss / d input (the input's shape) for ``dy`` = d loss / d output (the output's
        shape) of the last ``forward``; adds the parameters' gradients to their ``.grad``."""
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def emit(self, g: Graph, x: int) -> int:
        """Append this module applied to value ``x`` to the inference graph ``g`` (a
        ``csub.nn.graph.Graph``); return the output value. Modules without an inference form
        raise TypeError."""
        raise TypeError(f"model: cannot export a {type(self).__name__} (csub exports the networks of csub.models)")

    # Attributes forward stores for backward (layers that cache set this); see check_forward_cache.
    _cache: tuple[str, ...] = ()

    def check_forward_cache(self: M) -> M:
        """RuntimeError unless every module of this one holds what its backward needs, i.e.
        forward has run since the module was built (backward before forward used to be an
        AttributeError deep inside a layer)."""
        for name, m in self.named_modules():
            if any(c not in m.__dict__ for c in m._cache):
                where = f" ({name or type(m).__name__} has no forward cache)" if m is not self else ""
                raise RuntimeError(f"{type(self).__name__}.backward: called before forward{where}; "
                                   "run forward on a batch first")
        return self

    def __call__(self, *args: Any) -> Any:
        return self.forward(*args)

    # -- traversal --

    def children(self) -> Iterator[Module]:
        """The direct submodules, in the order they were assigned."""
        return iter(self._modules.values())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted name, module) of this module (named ``prefix``) and every submodule, depth first."""
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        """This module and every submodule, depth first."""
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(``state_dict`` name, Parameter) of every trainable tensor of this module and its submodules."""
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> list[Parameter]:
        """Every Parameter of this module and its submodules (``named_parameters``' order)."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        """(``state_dict`` name, array) of every buffer (running statistics, activation ranges)."""
        for mname, m in self.named_modules():
            for b in m._buffers:
                yield (f"{mname}.{b}" if mname else b), getattr(m, b)

    # -- state --

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to 0 (in place)."""
        for p in self.parameters():
            p.grad.fill(0.0)

    def train(self: M, mode: bool = True) -> M:
        """Set training mode (``mode=True``) or evaluation mode on this module, then call each
        child's own ``train(mode)`` (so a submodule's override runs, as in PyTorch). Returns self."""
        object.__setattr__(self, "training", bool(mode))
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self: M) -> M:
        """Evaluation mode: ``train(False)``. Returns self."""
        return self.train(False)

    @contextlib.contextmanager
    def _restoring_state(self):
        """Context: on exit every module of this one is back as it was on entry: mode, alpha,
        compression level, width and the caches of its last forward. Parameters and buffers
        are not copied (what runs inside must not change them: evaluation-mode forwards).
        Holds the module's lock, where it has one (csub.models), for the whole block."""
        with self.__dict__.get("_lock") or contextlib.nullcontext():
            saved = [(m, dict(m.__dict__), dict(m._active)) for m in self.modules()]
            try:
                yield self
            finally:
                for m, attrs, active in saved:
                    m.__dict__.clear()
                    m.__dict__.update(attrs)
                    m._active.clear()
                    m._active.update(active)

    def set_alpha(self: M, alpha: float) -> M:
        """Move this module to the point alpha in [0, 1] of the subspace, then call each child's
        own ``set_alpha(alpha)`` (so a submodule's override runs, as ``train`` does). Returns self."""
        alpha = check_alpha(alpha)
        object.__setattr__(self, "alpha", alpha)
        for m in self._modules.values():
            m.set_alpha(alpha)
        return self

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Ordered name -> array copies of all parameters and buffers (float32; shapes as held)."""
        sd = OrderedDict((n, p.data.copy()) for n, p in self.named_parameters())
        sd.update((n, np.array(b, copy=True)) for n, b in self.named_buffers())
        return sd

    # Children renamed since older csub wrote state: {old name: new name} (a subclass sets its
    # own). load_state_dict reads the keys under a child's old name as under its new one.
    _renamed: dict[str, str] = {}

    def _upgrade_keys(self, state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
        """``state_dict``'s keys with each renamed child's old prefix (``_renamed`` of every module
        of this one) replaced by its new one; the mapping itself where no module renames."""
        renames = [(f"{p}.{old}." if p else f"{old}.", f"{p}.{new}." if p else f"{new}.")
                   for p, m in self.named_modules() for old, new in m._renamed.items()]
        if not renames:
            return state_dict
        out = OrderedDict()
        for k, v in state_dict.items():
            key = next((new + k[len(old):] for old, new in renames if k.startswith(old)), k)
            if key != k and key in state_dict:
                raise ValueError(f"state_dict: holds both {k!r} (the name older csub wrote) and {key!r}")
            out[key] = v
        return out

    def load_state_dict(self: M, state_dict: Mapping[str, Any], strict: bool = True) -> M:
        """Copy arrays into the parameters and buffers, in place, checking names and shapes.

        Args:
            state_dict: name -> array (``state_dict()``'s names); keys under a child's name of
                older csub (``_renamed``, e.g. ResNet18's ``short`` -> ``shortcut``) are read
                under the current name.
            strict: refuse missing and unexpected keys (KeyError).
        Returns self; on any error the module is unchanged.
        """
        state_dict = self._upgrade_keys(state_dict)
        own = OrderedDict((n, p.data) for n, p in self.named_parameters())
        own.update(self.named_buffers())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        # Check every entry before copying any, so a failed load leaves the module unchanged.
        pairs = []
        for k, dst in own.items():
            if k not in state_dict:
                continue
            src = np.asarray(state_dict[k])
            if src.shape != dst.shape:
                raise ValueError(f"state_dict[{k!r}]: expected shape {dst.shape}, got {src.shape}")
            if not np.can_cast(src.dtype, dst.dtype, casting="same_kind"):
                raise TypeError(f"state_dict[{k!r}]: cannot load dtype {src.dtype} into {dst.dtype}")
            pairs.append((dst, src))
        for dst, src in pairs:
            np.copyto(dst, src, casting="same_kind")
        return self

    def num_parameters(self) -> int:
        """The number of parameter values (both ends of a line counted)."""
        return sum(p.size for p in self.parameters())

    def extra_repr(self) -> str:
        """The arguments shown in ``repr`` after the class name (subclasses fill it in)."""
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")

    # -- subspace parameters (used by layers with trainable tensors) --

    def _subspace_param(self, name: str, init: Callable[[], np.ndarray], subspace: Optional[str]) -> None:
        """Create ``name`` (and ``name + '1'`` for a line), each from its own call of init()."""
        setattr(self, name, Parameter(init()))
        if subspace == "line":
            setattr(self, name + "1", Parameter(init()))

    def _set_active(self, name, slices):
        """Use only ``param[slices]`` of parameter ``name`` (and its line partner); None: all of it."""
        if slices is None:
            self._active.pop(name, None)
        else:
            self._active[name] = tuple(slices)

    def _value(self, name):
        """The tensor at the current alpha (its active slice, contiguous): a fresh array for a line or
        a slice, the parameter's own data otherwise."""
        p0 = getattr(self, name)
        sl = self._active.get(name)
        if self.subspace == "line":
            v = _core.line_forward(p0.data, getattr(self, name + "1").data, self.alpha)
            return v if sl is None else np.ascontiguousarray(v[sl])
        return p0.data if sl is None else np.ascontiguousarray(p0.data[sl])

    def _accumulate(self, name, g):
        """Add g, the gradient of the tensor at the current alpha (of its active slice), to the grads."""
        p0 = getattr(self, name)
        sl = self._active.get(name)
        if sl is None:
            if self.subspace == "line":
                _core.line_backward(g, self.alpha, p0.grad, getattr(self, name + "1").grad)
            else:
                p0.grad += g
        elif self.subspace == "line":
            p0.grad[sl] += (1.0 - self.alpha) * g
            getattr(self, name + "1").grad[sl] += self.alpha * g
        else:
            p0.grad[sl] += g

    def line_pairs(self) -> list[tuple[Parameter, Parameter]]:
        """(theta0, theta1) Parameter pairs of this module itself (not its children)."""
        if self.subspace != "line":
            return []
        return [(p, self._parameters[n + "1"]) for n, p in self._parameters.items()
                if n + "1" in self._parameters]


def kaiming_normal(shape: Sequence[int], fan: int, generator: Any = None) -> np.ndarray:
    """A float32 array of ``shape`` drawn from N(0, 2 / fan) (He initialisation for ReLU
    networks) by ``generator`` (a ``csub.random.Generator``; default: csub's global one)."""
    gen = generator or default_generator
    return gen.normal(shape, 0.0, float(np.sqrt(2.0 / fan)))
