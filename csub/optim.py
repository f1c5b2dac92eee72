"""Optimiser and learning-rate schedule."""
from __future__ import annotations

import math
import numbers

from typing import Dict, Iterable, Mapping

import numpy as np

from . import _core
from .nn.module import Parameter


class SGD:
    """Stochastic gradient descent with momentum, weight decay and Nesterov (as torch.optim.SGD).

    ``g = grad + weight_decay * w``; ``v = momentum * v + g`` (``v = g`` on the
    first step); ``w -= lr * (g + momentum * v if nesterov else v)``.
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        self.params = list(params)
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}]: expected a csub.nn.Parameter, got {type(p).__name__}")
        for v, name in ((lr, "lr"), (momentum, "momentum"), (weight_decay, "weight_decay")):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if momentum > 1:
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum}")
        if nesterov and momentum <= 0:
            raise ValueError("nesterov: requires momentum > 0")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.velocity = [np.zeros_like(p.data) for p in self.params] if momentum > 0 else None
        self.steps = 0

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (in place)."""
        for p in self.params:
            p.grad.fill(0.0)

    def step(self) -> None:
        """One update of every parameter from its accumulated gradient (the rule in the class docstring)."""
        for i, p in enumerate(self.params):
            v = self.velocity[i] if self.velocity is not None else None
            _core.sgd_step(p.data, p.grad, v, self.lr, self.momentum, self.weight_decay,
                           self.nesterov, self.steps == 0)
        self.steps += 1

    def state_dict(self) -> Dict[str, np.ndarray]:
        """``steps`` (int64), ``lr`` (float64) and ``velocity.<i>`` (each parameter's shape) as arrays."""
        sd = {"steps": np.array(self.steps, dtype=np.int64), "lr": np.array(self.lr, dtype=np.float64)}
        if self.velocity is not None:
            sd.update({f"velocity.{i}": v.copy() for i, v in enumerate(self.velocity)})
        return sd

    def load_state_dict(self, sd: Mapping[str, np.ndarray]) -> None:
        """Restore ``state_dict``'s arrays (velocity shapes checked: ValueError)."""
        self.steps = int(np.asarray(sd["steps"]).reshape(-1)[0])
        self.lr = float(np.asarray(sd["lr"]).reshape(-1)[0])
        if self.velocity is not None:
            for i, v in enumerate(self.velocity):
                src = np.asarray(sd[f"velocity.{i}"])
                if src.shape != v.shape:
                    raise ValueError(f"velocity.{i}: expected shape {v.shape}, got {src.shape}")
                v[...] = src


def cosine_lr(base_lr: float, epoch: int, epochs: int, warmup_epochs: int = 5) -> float:
    """Learning rate of epoch ``epoch`` (0-based) out of ``epochs``.

    Linear warm-up ``base * (e + 1) / warmup`` for e < warmup, then
    ``0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup))) * base``.
    """
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch: expected 0 <= epoch < epochs={epochs}, got {epoch}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs: expected >= 0, got {warmup_epochs}")
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    span = epochs - warmup_epochs
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span)) * base_lr
