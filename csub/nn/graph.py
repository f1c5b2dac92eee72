"""The inference graph a network emits for export (``csub.modelfile``) and the C runtime runs.

Each module appends its own operations with ``module.emit(g, x)``: it reads value id ``x``
(value 0 is the network's input), appends operations to ``g`` and returns the value id of
its output. The operations and their attributes are listed in ``csub.modelfile``.
"""
from __future__ import annotations

from typing import Any


class Graph:
    """Operations in order, plus the names the model gives its modules.

    Args:
        model: the network being described (a ``csub.models`` network): its module names
            name the tensors, and its ``compressible_layers()`` are marked ``compress``.
    """

    def __init__(self, model: Any) -> None:
        self.names = {id(m): name for name, m in model.named_modules()}
        self.compressible = set(map(id, model.compressible_layers()))
        self.ops: list[dict[str, Any]] = []
        self.n = 1  # value 0 is the input

    def add(self, op: str, x: int, **attrs: Any) -> int:
        """Append operation ``op`` reading value ``x`` (``attrs``: its attributes); return its output value."""
        y = self.n
        self.n += 1
        self.ops.append(dict(op=op, x=x, y=y, **attrs))
        return y

    def name(self, m: Any, pname: str) -> str:
        """The ``state_dict`` name of module ``m``'s tensor ``pname``."""
        prefix = self.names[id(m)]
        return f"{prefix}.{pname}" if prefix else pname
