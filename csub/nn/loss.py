"""Softmax cross-entropy."""
from __future__ import annotations

import numbers

import numpy as np

from .. import _core
from .module import check_input


class CrossEntropyLoss:
    """Mean softmax cross-entropy over the batch.

    ``loss = crit(logits, labels)`` with logits (N, K) float32 and labels (N,)
    integers in [0, K) returns a Python float; ``crit.backward()`` returns
    d loss / d logits, (N, K) float32.
    """

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> float:
        logits = check_input(logits, "logits", 2)
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels: expected an integer array, got dtype {labels.dtype}")
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        loss, self._prob = _core.cross_entropy_forward(logits, self._labels)
        return loss

    forward = __call__

    def backward(self, scale: float = 1.0) -> np.ndarray:
        """d (scale * loss) / d logits of the last call: (N, K) float32."""
        if not hasattr(self, "_prob"):
            raise RuntimeError("CrossEntropyLoss.backward() called before the loss was computed")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")
        return _core.cross_entropy_backward(self._prob, self._labels, float(scale))

    @property
    def prob(self) -> np.ndarray:
        """softmax(logits) of the last call, (N, K)."""
        return self._prob
