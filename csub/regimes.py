"""One table of compression regimes and training methods (LCS-SPEC sections 3, 4 and 9).

A regime says what an alpha in [0, 1] means for the network:

  unstructured  keep fraction ``topk = alpha`` of each compressible layer's weights;
  structured    width factor ``w = lo + (hi - lo) * alpha`` over ``width_range``;
  quantized     bit width from the K = hi - lo + 1 equal bins of [0, 1] over
                ``bit_range`` (``csub.nn.quant.bits_for_alpha``).

Each ``Regime`` also holds its evaluation grid and end alphas, its sampler,
the tensors that carry a line, its default learning rate and the name of
the curve's x axis. Each ``Method`` holds the subspace its model is built
with and the regimes it applies to. ``csub.models``, ``csub.train``,
``csub.cli`` and ``csub.runtime`` read these tables; a new regime is a new
entry here plus its layer behaviour in ``csub/nn/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

from .nn.quant import alpha_for_bits, bits_for_alpha

NS_WIDTHS = (1.0, 0.75, 0.5, 0.25)
STRUCTURED_WIDTHS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
UNSTRUCTURED_ALPHAS = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)


def _alpha_of_width(w: float, width_range: Sequence[float]) -> float:
    """The alpha of width factor ``w`` on ``width_range`` (1 when the range is one point)."""
    lo, hi = width_range
    return (w - lo) / (hi - lo) if hi > lo else 1.0


def _set_topk(model: Any, alpha: float, topk: Optional[float]) -> None:
    level = alpha if topk is None else float(topk)
    if not 0.0 < level <= 1.0:
        raise ValueError(f"topk: expected a keep fraction in (0, 1], got {level}"
                         + (" (alpha = 0 keeps nothing; use alpha > 0)" if topk is None else ""))
    model.topk = level
    for layer in model._compressible_layers:
        layer.topk = level


def _set_width(model: Any, alpha: float, topk: Optional[float]) -> None:
    model.set_width_factor(REGIMES["structured"].level(alpha, width_range=model.width_range))


def _set_bits(model: Any, alpha: float, topk: Optional[float]) -> None:
    model.num_bits = bits_for_alpha(alpha, *model.bit_range)
    for layer in model._compressible_layers:
        layer.num_bits = model.num_bits


@dataclass(frozen=True)
class Regime:
    """What alpha means in one regime, and how it is trained and evaluated.

    Attributes:
        name: the regime's name ("unstructured", "structured", "quantized").
        level: ``level(alpha, bit_range=, width_range=)`` -> keep fraction, width factor or bits.
        apply: ``apply(model, alpha, topk)`` moves a ``SubspaceNet``'s layers to the level of
            alpha (``topk`` overrides the keep fraction where the regime has one).
        grid: ``grid(bit_range, width_range)`` -> the evaluation alphas of the line methods.
        runtime_grid: ``runtime_grid(bit_range)`` -> the alphas a compressed model calibrates by default.
        ends: ``ends(lo, bit_range)`` -> the two end alphas of a subspace (``lo``: sampler's lower end).
        sampler: "biased" (endpoints favoured, LCS-SPEC 4), "sandwich" (several alphas per step,
            0, 1 and uniform ones) or "discrete" (one of the K bins).
        line: the tensors that form a line: "weights" or "norms" (conv/linear weights shared).
        lr: default learning rate of ``fit``.
        curve_x: the x axis of accuracy curves ("sparsity", "width", "bits").
        alpha_zero: whether alpha = 0 is a valid level.
    """
    name: str
    level: Callable
    apply: Callable
    grid: Callable
    runtime_grid: Callable
    ends: Callable
    sampler: str
    line: str
    lr: float
    curve_x: str
    alpha_zero: bool = True


@dataclass(frozen=True)
class Method:
    """A training method.

    Attributes:
        name: "standard", "lcs_l", "lcs_p", "target_topk", "target_bits", "ns" or "us".
        subspace: the subspace its model is built with (None, "point" or "line").
        regimes: the regimes it applies to (the model is built with that regime, except
            "standard", which trains a plain dense baseline).
        baseline: True where it trains one network (a model with a line is refused);
            False for the subspace methods, whose model must have exactly ``subspace``.
        fixed: None where it is evaluated on its regime's grid, else the one level it
            trains: "dense" (alpha 1), "topk" (``topk``) or "bits" (``num_bits``).
    """
    name: str
    subspace: Optional[str]
    regimes: Tuple[str, ...]
    baseline: bool
    fixed: Optional[str] = None


REGIMES = {r.name: r for r in (
    Regime("unstructured",
           level=lambda alpha, bit_range=None, width_range=None: float(alpha),
           apply=_set_topk,
           grid=lambda bit_range, width_range: list(UNSTRUCTURED_ALPHAS),
           runtime_grid=lambda bit_range: [0.05, 0.1, 0.25, 0.5, 0.75, 1.0],
           ends=lambda lo, bit_range: [lo, 1.0],
           sampler="biased", line="weights", lr=0.1, curve_x="sparsity", alpha_zero=False),
    Regime("quantized",
           level=lambda alpha, bit_range=(3, 8), width_range=None: bits_for_alpha(alpha, *bit_range),
           apply=_set_bits,
           grid=lambda bit_range, width_range: [alpha_for_bits(b, *bit_range)
                                                for b in range(bit_range[0], bit_range[1] + 1)],
           runtime_grid=lambda bit_range: [alpha_for_bits(b, *bit_range)
                                           for b in range(bit_range[0], bit_range[1] + 1)],
           ends=lambda lo, bit_range: [alpha_for_bits(bit_range[0], *bit_range), 1.0],
           sampler="discrete", line="weights", lr=0.025, curve_x="bits"),
    Regime("structured",
           level=lambda alpha, bit_range=None, width_range=(0.25, 1.0):
               width_range[0] + (width_range[1] - width_range[0]) * alpha,
           apply=_set_width,
           grid=lambda bit_range, width_range: [_alpha_of_width(w, width_range) for w in STRUCTURED_WIDTHS
                                                if width_range[0] <= w <= width_range[1]],
           runtime_grid=lambda bit_range: [0.0, 1 / 3, 2 / 3, 1.0],
           ends=lambda lo, bit_range: [0.0, 1.0],
           sampler="sandwich", line="norms", lr=0.1, curve_x="width"),
)}

_ALL = tuple(REGIMES)
METHODS = {m.name: m for m in (
    Method("standard", None, _ALL, baseline=True, fixed="dense"),
    Method("lcs_l", "line", _ALL, baseline=False),
    Method("lcs_p", "point", _ALL, baseline=False),
    Method("target_topk", None, ("unstructured",), baseline=True, fixed="topk"),
    Method("target_bits", None, ("quantized",), baseline=True, fixed="bits"),
    Method("ns", "point", ("structured",), baseline=True),
    Method("us", "point", ("structured",), baseline=True),
)}


def regime(name: str) -> Regime:
    """The ``Regime`` called ``name``; ValueError naming ``regime`` otherwise."""
    if name not in REGIMES:
        raise ValueError(f"regime: expected one of {tuple(REGIMES)}, got {name!r}")
    return REGIMES[name]


def method(name: str) -> Method:
    """The ``Method`` called ``name``; ValueError naming ``method`` otherwise."""
    if name not in METHODS:
        raise ValueError(f"method: expected one of {tuple(METHODS)}, got {name!r}")
    return METHODS[name]


def end_alphas(method_name: str, lo: Optional[float], topk: Optional[float], regime_name: str = "unstructured",
               bit_range: Sequence[int] = (3, 8), num_bits: Optional[int] = None) -> list[float]:
    """The alphas that end a method's training curve (its one level for the fixed methods).
    ``lo``: the sampler's lower end; ``topk``: the keep fraction of target_topk; ``num_bits``:
    the bit width of target_bits."""
    m = METHODS[method_name]
    if m.fixed == "dense":
        return [1.0]
    if regime_name == "structured":
        return REGIMES[regime_name].ends(lo, bit_range)
    if m.fixed == "topk":
        return [float(topk)]
    if m.fixed == "bits":
        return [alpha_for_bits(num_bits, *bit_range)]
    return REGIMES[regime_name].ends(lo, bit_range)


def default_alphas(method_name: str, topk: Optional[float] = None, regime_name: str = "unstructured",
                   bit_range: Sequence[int] = (3, 8), num_bits: Optional[int] = None,
                   width_range: Sequence[float] = (0.25, 1.0)) -> list[float]:
    """The evaluation grid of a method (LCS-SPEC section 9): alphas in [0, 1]."""
    if METHODS[method_name].fixed is not None:
        return end_alphas(method_name, None, topk, regime_name, bit_range, num_bits)
    return REGIMES[regime_name].grid(bit_range, width_range)
