"""The one seeded generator behind all of csub's randomness.

``Generator`` is xoshiro256** in C with its 256-bit state held here as a
``uint64`` array, so it can be saved in a checkpoint and restored exactly.
``manual_seed(seed)`` reseeds the default generator that layer initialisation
and the alpha samplers use when no generator is given.
"""
from __future__ import annotations

from typing import List, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _core

Shape = Union[int, Tuple[int, ...]]


def _int_arg(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return int(v)


def _real_arg(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    return float(v)


class Generator:
    """A seeded random number generator.

    Args:
        seed: non-negative int.
    """

    def __init__(self, seed: int = 0) -> None:
        self.state = np.zeros(4, dtype=np.uint64)
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "Generator":
        """Reseed from a non-negative int below 2**64; returns self."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        if seed < 0 or seed >= 2**64:
            raise ValueError(f"seed: expected 0 <= seed < 2**64, got {seed}")
        _core.rng_seed(self.state, int(seed))
        return self

    def get_state(self) -> np.ndarray:
        """Copy of the 4 x uint64 state."""
        return self.state.copy()

    def set_state(self, state: ArrayLike) -> None:
        """Restore a state from ``get_state`` (uint64, shape (4,), not all zero)."""
        state = np.asarray(state)
        if state.shape != (4,) or state.dtype != np.uint64:
            raise ValueError(f"state: expected a uint64 array of shape (4,), got {state.dtype} {state.shape}")
        if not state.any():
            raise ValueError("state: the all-zero state is invalid")
        self.state[...] = state

    def random(self) -> float:
        """One float uniform in [0, 1)."""
        return _core.rng_uniform(self.state)

    def normal(self, shape: Shape, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """float32 array of the given shape, N(mean, std^2)."""
        out = np.empty(shape, dtype=np.float32)
        _core.rng_normal(self.state, out, _real_arg(mean, "mean"), _real_arg(std, "std"))
        return out

    def uniform(self, shape: Shape, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        """float32 array of the given shape, U[low, high)."""
        out = np.empty(shape, dtype=np.float32)
        _core.rng_uniform_fill(self.state, out, _real_arg(low, "low"), _real_arg(high, "high"))
        return out

    # -- the alpha samplers of the method (LCS-SPEC section 4) --

    def alpha_biased(self, lo: float = 0.025, hi: float = 1.0, p: float = 0.5) -> float:
        """With probability p an endpoint (lo or hi, 1/2 each), else U[lo, hi].

        Requires 0 <= lo <= hi <= 1 and p in [0, 1].
        """
        lo, hi, p = _real_arg(lo, "lo"), _real_arg(hi, "hi"), _real_arg(p, "p")
        if lo > hi:
            raise ValueError(f"lo: expected lo <= hi, got lo={lo}, hi={hi}")
        return _core.sample_alpha_biased(self.state, lo, hi, p)

    def alpha_discrete(self, K: int) -> float:
        """k / K with k uniform in 1..K (K an int >= 1)."""
        return _core.sample_alpha_discrete(self.state, _int_arg(K, "K"))

    def alpha_sandwich(self, n: int = 4) -> List[float]:
        """[0, 1, U, ..., U]: the sandwich rule's n alphas for one step (2 <= n <= 1024)."""
        return _core.sample_alpha_sandwich(self.state, _int_arg(n, "n"))


default_generator = Generator(0)


def manual_seed(seed: int) -> Generator:
    """Reseed the default generator; returns it."""
    return default_generator.manual_seed(seed)
