"""Containers: Sequential and Residual."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .. import _core
from .graph import Graph
from .module import Module
from .norm import fusable, norm_relu, norm_relu_backward


class Sequential(Module):
    """Applies its modules in order; backward runs them in reverse.

    Children are named "0", "1", ... (``state_dict`` keys ``"0.weight"``, ...).
    Shapes: each module's output is the next one's input.
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i}]: expected a csub.nn.Module, got {type(m).__name__}")
            setattr(self, str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x through every module in order; a norm directly followed by a ReLU runs as one fused
        kernel where ``csub.nn.norm.fusable`` (``norm_relu``: the same numbers)."""
        mods = list(self._modules.values())
        i = 0
        while i < len(mods):
            if i + 1 < len(mods) and fusable(mods[i], mods[i + 1]):
                x = norm_relu(mods[i], mods[i + 1], x)
                i += 2
            else:
                x = mods[i](x)
                i += 1
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy through every module's backward in reverse order (fused pairs as in ``forward``)."""
        mods = list(self._modules.values())
        i = len(mods) - 1
        while i >= 0:
            if i > 0 and fusable(mods[i - 1], mods[i]):
                dy = norm_relu_backward(mods[i - 1], mods[i], dy)
                i -= 2
            else:
                dy = mods[i].backward(dy)
                i -= 1
        return dy

    def emit(self, g: Graph, x: int) -> int:
        """Every module's operations in order."""
        for m in self._modules.values():
            x = m.emit(g, x)
        return x


class Residual(Module):
    """y = body(x) + shortcut(x); the shortcut is the identity when None.

    Shapes: body and shortcut must map x to arrays of one shape.
    """

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        if not isinstance(body, Module):
            raise TypeError(f"body: expected a csub.nn.Module, got {type(body).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"shortcut: expected a csub.nn.Module or None, got {type(shortcut).__name__}")
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: np.ndarray) -> np.ndarray:
        """body(x) + shortcut(x); ValueError if their shapes differ."""
        s = x if self.shortcut is None else self.shortcut(x)
        y = self.body(x)
        if y.shape != s.shape:
            raise ValueError(f"Residual: body output {y.shape} and shortcut output {s.shape} differ")
        return _core.add(y, s)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """The sum of the body's and the shortcut's input gradients (x's shape)."""
        dx = self.body.backward(dy)
        ds = dy if self.shortcut is None else self.shortcut.backward(dy)
        return _core.add(dx, ds)

    def emit(self, g: Graph, x: int) -> int:
        """The body's and the shortcut's operations, then an ``add``."""
        s = x if self.shortcut is None else self.shortcut.emit(g, x)
        return g.add("add", self.body.emit(g, x), x2=s)
