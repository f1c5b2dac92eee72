"""Subspace-level operations over a whole network: the endpoint regulariser.

LCS-SPEC section 5: for a line, ``loss += beta * S01^2 / (S00 * S11)`` with
``S01 = sum w0 . w1``, ``S00 = sum |w0|^2``, ``S11 = sum |w1|^2``, the sums
running over all the tensor pairs that form the line (``line_pairs``).
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

from . import _core
from .nn.module import Module, Parameter


def line_pairs(model: Module, kind: str = "weights") -> list[tuple[Parameter, Parameter]]:
    """The (theta0, theta1) Parameter pairs of a network's line layers.

    kind: "weights" for conv/linear weights (unstructured and quantized
    regimes), "norms" for norm scale and shift (structured regime), "all".
    """
    from .nn.layers import _Weighted
    from .nn.norm import _AffineNorm

    if kind not in ("weights", "norms", "all"):
        raise ValueError(f"kind: expected 'weights', 'norms' or 'all', got {kind!r}")
    pairs = []
    for m in model.modules():
        if m.subspace != "line":
            continue
        if kind == "weights" and isinstance(m, _Weighted):
            pairs.append((m.weight, m.weight1))
        elif kind == "norms" and isinstance(m, _AffineNorm):
            pairs.extend(m.line_pairs())
        elif kind == "all":
            pairs.extend(m.line_pairs())
    return pairs


def line_regularizer(pairs: Iterable[tuple[Parameter, Parameter]], beta: float = 1.0,
                     backward: bool = True) -> float:
    """beta * S01^2 / (S00 S11) over the given Parameter pairs (a dimensionless float: the
    squared cosine of the angle between the two ends, times beta).

    Returns the value (a float); with ``backward`` its gradient is added to
    the pairs' ``.grad``. Returns 0.0 for no pairs.
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta: expected a real number, got {type(beta).__name__}")
    beta = float(beta)
    if not math.isfinite(beta):
        raise ValueError(f"beta: expected a finite number, got {beta}")
    pairs = list(pairs)
    if not pairs:
        return 0.0
    s = [0.0, 0.0, 0.0]
    for p0, p1 in pairs:
        d = _core.line_dots(p0.data, p1.data)
        s = [a + b for a, b in zip(s, d)]
    if s[1] <= 0.0 or s[2] <= 0.0:
        raise ValueError("pairs: an endpoint is all zero; the regulariser is undefined")
    value = beta * s[0] ** 2 / (s[1] * s[2])
    if backward and beta != 0.0:
        for p0, p1 in pairs:
            _core.line_reg_backward(p0.data, p1.data, tuple(s), beta, p0.grad, p1.grad)
    return value
