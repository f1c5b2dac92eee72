"""Quantization helpers: the activation range observer and the alpha <-> bit-width map.

LCS-SPEC section 3 (quantization): with K = max_bits - min_bits + 1 equal
bins over [0, 1], ``alpha = k / K`` maps to ``min_bits + k - 1`` bits; bin k
is the half-open interval ``((k - 1) / K, k / K]`` and alpha = 0 belongs to
the first bin. Activations are quantized from a running min/max: an
exponential average with momentum 0.1, initialised from the first batch.

Fake quantization itself is ``csub.functional.fake_quantize`` (the C kernel);
its backward is the straight-through estimator (the gradient passes
unchanged), so layers need no quantization kernel in backward.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .. import _core

MIN_BITS, MAX_BITS = 2, 16  # what the kernels accept

# An alpha within this distance of a bin boundary k/K, measured in bins,
# counts as exactly k/K: k/K computed in float (5/6, or float32(5/6)) may
# land just above the boundary and must not fall into the next bin.
_SNAP = 1e-6


def _int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return int(v)


def _bit_range(min_bits, max_bits):
    lo, hi = _int(min_bits, "min_bits"), _int(max_bits, "max_bits")
    if not MIN_BITS <= lo <= MAX_BITS:
        raise ValueError(f"min_bits: expected an int in [{MIN_BITS}, {MAX_BITS}], got {lo}")
    if not MIN_BITS <= hi <= MAX_BITS:
        raise ValueError(f"max_bits: expected an int in [{MIN_BITS}, {MAX_BITS}], got {hi}")
    if lo > hi:
        raise ValueError(f"min_bits: expected min_bits <= max_bits, got {lo} > {hi}")
    return lo, hi


def bits_for_alpha(alpha: float, min_bits: int = 3, max_bits: int = 8) -> int:
    """Bit width for alpha in [0, 1]: ``min_bits + k - 1`` for alpha in ``((k - 1)/K, k/K]``.

    K = max_bits - min_bits + 1; alpha = 0 gives min_bits, alpha = 1 max_bits.
    Boundaries are robust to float rounding: 5/6 (3..8 bits) gives 7, as
    exact arithmetic would.
    """
    lo, hi = _bit_range(min_bits, max_bits)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha: expected a real number, got {type(alpha).__name__}")
    a = float(alpha)
    if not 0.0 <= a <= 1.0:  # also NaN
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    K = hi - lo + 1
    r = a * K
    k = round(r)
    if abs(r - k) > _SNAP:
        k = math.ceil(r)
    k = min(max(k, 1), K)
    return lo + k - 1


def alpha_for_bits(bits: int, min_bits: int = 3, max_bits: int = 8) -> float:
    """The alpha ``k / K`` (the top of its bin) for a bit width in [min_bits, max_bits]."""
    lo, hi = _bit_range(min_bits, max_bits)
    b = _int(bits, "bits")
    if not lo <= b <= hi:
        raise ValueError(f"bits: expected an int in [{lo}, {hi}] (min_bits, max_bits), got {b}")
    return (b - lo + 1) / (hi - lo + 1)


class MinMaxObserver:
    """Running min/max of a tensor stream, for activation quantization ranges.

    The first batch sets ``running_min``/``running_max`` to its own min/max;
    each later batch updates them with the exponential average
    ``r = (1 - momentum) * r + momentum * batch_stat``. Values are kept in
    float32 precision (as the buffers that hold them), so a
    ``state_dict()`` / ``load_state_dict()`` round trip is exact.

    Not a Module: its whole state is the float32 array ``state`` =
    [running_min, running_max, initialized], which a layer registers as a
    buffer (updated in place, so checkpoints see it).
    """

    def __init__(self, momentum: float = 0.1) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.integer, np.floating)):
            raise TypeError(f"momentum: expected a real number, got {type(momentum).__name__}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.state = np.zeros(3, np.float32)  # [running_min, running_max, initialized]

    @property
    def running_min(self) -> float:
        """The running minimum (the input's units)."""
        return float(self.state[0])

    @property
    def running_max(self) -> float:
        """The running maximum (the input's units)."""
        return float(self.state[1])

    @property
    def initialized(self) -> bool:
        """Whether a batch has been observed."""
        return bool(self.state[2])

    def update(self, x: np.ndarray) -> tuple[float, float]:
        """Fold one batch's min/max into the running range; returns (running_min, running_max)."""
        a = np.asarray(x)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"x: expected a real numeric array, got dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.size == 0:
            raise ValueError("x: expected at least one element")
        mn, mx = _core.minmax(a)
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise ValueError(f"x: batch range ({mn}, {mx}) is not finite (NaN or inf in x)")
        if self.initialized:
            m = self.momentum
            mn = (1.0 - m) * self.running_min + m * mn
            mx = (1.0 - m) * self.running_max + m * mx
        self.state[:] = (mn, mx, 1.0)
        return self.running_min, self.running_max

    def quant_params(self, num_bits: int) -> tuple[float, int]:
        """(scale, zero_point) of the running range at num_bits; requires an observed batch."""
        if not self.initialized:
            raise RuntimeError("MinMaxObserver: no batch observed yet")
        return _core.quant_params(self.running_min, self.running_max, _int(num_bits, "num_bits"))

    def state_dict(self) -> dict[str, np.ndarray]:
        """``running_min``, ``running_max``, ``initialized`` (0/1) as float32 arrays of shape (1,)."""
        return {
            "running_min": np.array([self.running_min], np.float32),
            "running_max": np.array([self.running_max], np.float32),
            "initialized": np.array([1.0 if self.initialized else 0.0], np.float32),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> MinMaxObserver:
        """Restore from ``state_dict()``'s arrays; checks every entry before changing anything."""
        vals = {}
        for k in ("running_min", "running_max", "initialized"):
            if k not in state:
                raise KeyError(f"state: missing key {k!r}")
            a = np.asarray(state[k])
            if a.size != 1 or a.dtype.kind not in "fiub":
                raise ValueError(f"state[{k!r}]: expected one real number, got shape {a.shape} dtype {a.dtype}")
            vals[k] = float(a.reshape(-1)[0])
        init = vals["initialized"]
        if init not in (0.0, 1.0):
            raise ValueError(f"state['initialized']: expected 0 or 1, got {init}")
        rmin, rmax = vals["running_min"], vals["running_max"]
        if not (math.isfinite(rmin) and math.isfinite(rmax)) or rmin > rmax:
            raise ValueError(f"state['running_min']: expected finite running_min <= running_max, got {rmin}, {rmax}")
        self.state[:] = (rmin, rmax, init)
        return self

    def __repr__(self) -> str:
        return (f"MinMaxObserver(momentum={self.momentum}, running_min={self.running_min}, "
                f"running_max={self.running_max}, initialized={self.initialized})")
