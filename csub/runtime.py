"""Compressed inference from an exported subspace, and the budget controller.

``CompressedNet`` runs the C runtime (``csrc/runtime.c``, the same code as
the standalone library) on a model file's bytes: ``set_alpha`` materialises
the network at alpha with real compressed kernels (CSR sparse products for
unstructured sparsity, smaller dense layers for width, integer products for
bit width), ``forward`` runs a batch. ``calibrate`` measures latency and
memory over an alpha grid on this machine; ``Calibration.pick_alpha`` returns
the most accurate alpha that fits a budget.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _core
from . import modelfile
from .nn.module import check_alpha
from .regimes import REGIMES


class CompressedNet:
    """An inference-only network at one alpha of an exported subspace.

    Args:
        data: the bytes of a model file (``csub.export``), or a path to one.
        alpha: where to start, in [0, 1] (unstructured: > 0).
        sparse_crossover: unstructured regime: keep fraction at or below which layers run
            their CSR kernels, or a pair (whole images per thread, an image split across
            threads); default (0.6, 0.4), measured by ``benchmarks/bench_deploy.py --crossover``:
            at batch 1 the dense products split across threads and the CSR ones do not.
    Shapes: x (N, C, H, W) float32, normalised as in training -> logits (N, num_classes).
    Outputs equal the training-mode network's at the same alpha (evaluation
    mode) to float rounding (2e-4 of the logits' scale; measured under 1e-6).
    Quantized: both quantize every layer input on the same grid, but a layer
    input that the two summation orders (exact int32 products here, float
    ones in training) put within float rounding of a half-step gets
    neighbouring codes, and the difference grows through the later quantized
    layers: logits then agree to about 3e-2 of their scale (measured: 39 of
    600 networks x seeds x bit widths 3..8 met such a tie, worst 3.0e-2).
    Above 8 bits the products are float as in training, but a batch norm
    folded into a layer changes their rounding too: the same bound applies.
    """

    def __init__(self, data: Union[bytes, bytearray, memoryview, str, os.PathLike], alpha: float = 1.0,
                 sparse_crossover: Union[float, Sequence[float], None] = None) -> None:
        path = None
        if isinstance(data, str) or hasattr(data, "__fspath__"):
            path = os.fspath(data)
            with open(path, "rb") as f:
                data = f.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected the bytes of a model file or a path, got {type(data).__name__}")
        data = bytes(data)
        self.meta = modelfile.read_meta(data, path)
        self._chw = tuple(int(v) for v in self.meta["input_shape"])  # what _input checks, on every call
        self._flat = bool(self.meta["graph"]) and self.meta["graph"][0]["op"] == "flatten"
        try:  # the C loader verifies the layout and checksums, then the graph
            self._m = _core.model_load(data)
        except ValueError as e:
            if path is None:
                raise
            raise ValueError(f"{path}: {e}") from None
        self._stats = modelfile.input_stats(data)
        if sparse_crossover is not None:
            pair = (sparse_crossover,) * 2 if np.isscalar(sparse_crossover) else tuple(sparse_crossover)
            if len(pair) != 2 or not all(isinstance(v, (int, float, np.integer, np.floating))
                                         and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in pair):
                raise ValueError(f"sparse_crossover: expected a keep fraction in [0, 1] or a pair of them "
                                 f"(whole images, split image), got {sparse_crossover!r}")
            _core.model_set_sparse_crossover(self._m, float(pair[0]), float(pair[1]))
        self.set_alpha(alpha)

    def set_alpha(self, alpha: float) -> CompressedNet:
        """Materialise the network at alpha (milliseconds; see ``calibrate`` for the time)."""
        _core.model_set_alpha(self._m, check_alpha(alpha))
        return self

    @property
    def alpha(self) -> float:
        """The alpha the network is materialised at."""
        return _core.model_info(self._m)["alpha"]

    @property
    def regime(self) -> Optional[str]:
        """The exported model's regime (None, "unstructured", "structured", "quantized")."""
        return self.meta["regime"]

    def info(self) -> dict[str, Any]:
        """dict: regime, input_shape, num_classes, alpha, keep, width, bits, weight_bytes (the
        network at alpha), subspace_bytes (the stored subspace), flops (per sample, 2 per
        multiply-accumulate), int8_kernel (the integer kernel this CPU runs)."""
        return _core.model_info(self._m)

    def _input(self, x: Any) -> np.ndarray:
        """x as a C-contiguous float32 (N, C, H, W) batch; an MLP's graph also takes (N, C*H*W).
        Any other shape is refused, even one of the right size per image: a channels-last
        (N, H, W, C) batch would run with its values in the wrong places."""
        try:
            a = np.ascontiguousarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise TypeError(f"x: expected a float32 array (N, C, H, W), got {type(x).__name__} ({e})") from None
        (c, h, w), flat = self._chw, self._flat
        if (a.ndim == 4 and a.shape[1:] == (c, h, w) or flat and a.ndim == 2 and a.shape[1] == c * h * w) \
                and a.shape[0] >= 1:
            return a
        also = f" or (N, {c * h * w})" if flat else ""
        raise ValueError(f"x: expected (N, {c}, {h}, {w}){also} with N >= 1 (channels first, the shape the "
                         f"model was exported for), got shape {a.shape}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) float32 of x (N, C, H, W) at the current alpha."""
        return _core.model_forward(self._m, self._input(x))

    __call__ = forward

    def profile(self, x: np.ndarray) -> dict[str, float]:
        """Milliseconds per operation of one forward of x (N, C, H, W), summed by operation name
        ("conv/sparse", "gn+relu", "add", ...): where the time goes at this alpha."""
        x = self._input(x)
        out: dict[str, float] = {}
        for name, ms in _core.model_profile(self._m, x):
            out[name] = out.get(name, 0.0) + ms
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class index per sample of x (N, C, H, W): (N,) int64."""
        return np.argmax(self.forward(x), axis=1)

    def meta_input_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per input channel, float32: inputs are (pixel / 255 - mean) / std."""
        st = self._stats
        return st["input_mean"], st["input_std"]

    def memory_bytes(self, batch_size: int = 1) -> int:
        """Bytes to run a batch at the current alpha: subspace, weights at alpha, activations."""
        return _core.model_memory(self._m, _count(batch_size, "batch_size"))

    def plan(self, batch_size: int = 1) -> str:
        """How a forward of ``batch_size`` images runs at the current alpha and thread count
        (``csub.set_num_threads``): ``"images"`` (each thread whole images), ``"bands"`` (one image,
        each thread a band of its rows through the whole network, where every layer allows it),
        ``"layers"`` (each layer split across the threads) or ``"serial"`` (one thread)."""
        return _core.model_plan(self._m, _count(batch_size, "batch_size"))

    def default_alphas(self) -> list[float]:
        """The alphas of the stored accuracy levels, else a grid of the regime's levels."""
        if self.meta.get("levels"):
            return [lv["alpha"] for lv in self.meta["levels"]]
        regime = REGIMES.get(self.meta["regime"])
        if regime is None:
            return [1.0]
        return regime.runtime_grid(self.meta.get("bit_range"))

    def calibrate(self, alphas: Optional[Sequence[float]] = None, batch_size: int = 1, reps: int = 5) -> Calibration:
        """Measure each alpha on this machine (see ``Calibration``); the model stays at its alpha."""
        if alphas is None:
            alphas = self.default_alphas()
        else:
            if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__iter__"):
                raise TypeError(f"alphas: expected a sequence of alphas in [0, 1], got {type(alphas).__name__}")
            alphas = list(alphas)
            for i, a in enumerate(alphas):
                try:
                    alphas[i] = check_alpha(a)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"alphas[{i}]: {str(e).split(': ', 1)[1]}") from None
            if not alphas:
                raise ValueError("alphas: expected at least one alpha")
        rows = _core.model_calibrate(self._m, np.asarray(alphas, np.float64), _count(batch_size, "batch_size"),
                                     _count(reps, "reps"))
        return Calibration(rows, batch_size)


def _count(v: int, name: str) -> int:
    """An int >= 1 (NumPy ints included, bools and floats not)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= 1, got {type(v).__name__} {v!r}")
    if v < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    return int(v)


class Calibration:
    """Latency and memory of a deployed subspace over an alpha grid, measured on this machine.

    ``levels``: one dict per alpha with alpha, latency_ms (median forward time of
    one batch), set_alpha_ms, memory_bytes and accuracy (stored at export, NaN
    where unknown); ``batch_size``: the batch every latency was measured at.
    """

    def __init__(self, levels: Sequence[dict[str, float]], batch_size: int) -> None:
        self.levels = list(levels)
        self.batch_size = batch_size

    def _arrays(self):
        lv = self.levels
        return (np.array([r["alpha"] for r in lv], np.float64), np.array([r["latency_ms"] for r in lv], np.float64),
                np.array([r["memory_bytes"] for r in lv], np.int64), np.array([r["accuracy"] for r in lv], np.float64))

    def pick_alpha(self, latency_ms: Optional[float] = None, memory_bytes: Optional[int] = None,
                   strict: bool = False) -> Optional[float]:
        """The most accurate alpha whose latency and memory fit (None: no limit), by stored accuracy
        when every level has one, else the largest alpha (the least compressed). None if nothing
        fits, or with ``strict=True`` a ``csub.BudgetError`` naming the budget."""
        for v, name in ((latency_ms, "latency_ms"), (memory_bytes, "memory_bytes")):
            if v is not None and not (isinstance(v, (int, float, np.integer, np.floating)) and v > 0):
                raise ValueError(f"{name}: expected a positive number or None, got {v!r}")
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict: expected a bool, got {type(strict).__name__}")
        alpha = _core.pick_alpha(*self._arrays(), float(latency_ms or 0.0), int(memory_bytes or 0))
        if alpha is None and strict:
            fastest = min(self.levels, key=lambda r: r["latency_ms"])
            smallest = min(self.levels, key=lambda r: r["memory_bytes"])
            raise _core.BudgetError(
                f"no level fits latency_ms={latency_ms}, memory_bytes={memory_bytes} (fastest level: "
                f"{fastest['latency_ms']:.3f} ms at alpha {fastest['alpha']}; smallest: "
                f"{smallest['memory_bytes']} bytes at alpha {smallest['alpha']})")
        return alpha

    def table(self) -> str:
        """The levels as a text table: alpha, latency (ms), set_alpha (ms), memory (MB, 1e6 bytes), accuracy."""
        lines = [f"{'alpha':>7} {'latency ms':>11} {'set_alpha ms':>13} {'memory MB':>10} {'accuracy':>9}"]
        for r in self.levels:
            lines.append(f"{r['alpha']:7.4f} {r['latency_ms']:11.3f} {r['set_alpha_ms']:13.3f} "
                         f"{r['memory_bytes'] / 1e6:10.3f} {r['accuracy']:9.4f}")
        return "\n".join(lines)


def compress(model: Any, alpha: float, input_shape: Optional[Sequence[int]] = None) -> CompressedNet:
    """The network ``model`` (a subspace of csub.models) at alpha, compressed for real
    (``CompressedNet``, run by the C runtime)."""
    return CompressedNet(modelfile.to_bytes(model, input_shape), alpha)
