"""Training and evaluation of compressible subspaces (LCS-SPEC sections 3-7, 9).

``fit`` trains a model with one of the methods

  standard     a plain network, dense (alpha = 1);
  lcs_l        a line subspace (model built with subspace="line");
  lcs_p        a point subspace (subspace="point");
  target_topk  a plain network pruned to one keep fraction ``topk`` (unstructured);
  target_bits  a plain network quantized to one bit width ``num_bits`` (quantized);
  ns           slimmable: widths 1, 0.75, 0.5, 0.25 every step, losses summed (structured);
  us           universally slimmable: the sandwich rule on one point (structured);

for the "unstructured", "quantized" and "structured" regimes. Per step it samples alpha
(the method's sampler), anneals the keep fraction over the compression
warm-up (the first ``warmup`` fraction of all iterations; for quantization
the inputs stay float over the warm-up instead), adds the endpoint
regulariser for lines, and takes one SGD step with the cosine
learning-rate schedule. One checkpoint per epoch is written
atomically to ``out/checkpoint.safetensors``; ``fit(..., resume=True)``
continues from it and gives the same numbers as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import tempfile
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import checkpoint
from . import distributed as _distributed
from .data import DataLoader, channel_stats
from .nn import BatchNorm2d, CrossEntropyLoss
from . import regimes as _regimes
from .nn.quant import alpha_for_bits
from .optim import SGD, cosine_lr
from .random import Generator
from .subspace import line_pairs, line_regularizer

if TYPE_CHECKING:
    from .models import SubspaceNet

PathLike = Union[str, "os.PathLike[str]"]
Data = Union[Tuple[np.ndarray, np.ndarray], DataLoader]  # (images uint8 (N, C, H, W), labels (N,)) or a loader

METHODS = tuple(_regimes.METHODS)
REGIMES = tuple(_regimes.REGIMES)
DEFAULT_LR = {name: r.lr for name, r in _regimes.REGIMES.items()}
NS_WIDTHS = _regimes.NS_WIDTHS
STRUCTURED_WIDTHS = _regimes.STRUCTURED_WIDTHS
UNSTRUCTURED_ALPHAS = _regimes.UNSTRUCTURED_ALPHAS
CHECKPOINT = "checkpoint.safetensors"


def _check_data(data, name):
    if isinstance(data, DataLoader):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name}: expected an (images, labels) tuple or a csub.data.DataLoader")
    images, labels = data
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"{name}: images must be a uint8 array (N, C, H, W)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{name}: labels must be 1-D with one label per image")
    return images, labels


def _check_images_fit(model, images, name):
    """Refuse images (N, C, H, W) whose per-image shape the model cannot take (before any work)."""
    try:
        model._check_x(np.zeros((1,) + tuple(images.shape[1:]), np.float32))
    except ValueError as e:
        raise ValueError(f"{name}: images of shape {tuple(images.shape[1:])} per image do not fit the model "
                         f"({str(e).split(': ', 1)[1].split(', got')[0]})") from None


def _check_alphas(alphas, name, regime):
    """A non-empty sequence of alphas in [0, 1] (unstructured: > 0), as floats."""
    if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of alphas in [0, 1], got {type(alphas).__name__}")
    out = []
    for i, a in enumerate(alphas):
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name}[{i}]: expected a number in [0, 1], got {type(a).__name__}")
        zero = regime is None or _regimes.REGIMES[regime].alpha_zero
        if not 0.0 <= float(a) <= 1.0 or (not zero and float(a) == 0.0):
            raise ValueError(f"{name}[{i}]: expected a number in " + ("[0, 1]" if zero else "(0, 1]")
                             + f", got {a!r}")
        out.append(float(a))
    if not out:
        raise ValueError(f"{name}: expected at least one alpha")
    return out


def _real(v, name, lo=None, hi=None):
    """A finite real number in [lo, hi], else TypeError/ValueError naming ``name``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name}: expected a finite number in [{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}], got {v!r}")
    return v


def check_out(out: PathLike, files: Sequence[str] = (CHECKPOINT, "history.json", "eval.json", "eval.csv"),
              create: bool = True) -> PathLike:
    """Make sure run files can be written into directory ``out`` before any work: create it
    (``create``; else check that it could be created), write and remove a probe file there
    (else in its nearest existing parent), and refuse a directory where one of ``files`` goes.
    Raises the OSError subclass that a later write would have raised, naming the path; returns ``out``."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a directory path, got {type(out).__name__}")
    try:
        where = os.path.abspath(out)
        if create:
            os.makedirs(where, exist_ok=True)
        elif os.path.exists(where) and not os.path.isdir(where):
            raise FileExistsError(errno.EEXIST, "File exists", where)
        while not os.path.exists(where):
            where = os.path.dirname(where)
        if not os.path.isdir(where):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", where)
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise type(e)(e.errno, f"out: cannot write run files into {os.fspath(out)!r}: {e.strerror}") from None
    for name in files:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, f"out: {path!r} is a directory where csub writes a file")
    return out


def check_method(model: SubspaceNet, method: str, regime: str, topk: Optional[float] = None,
                 num_bits: Optional[int] = None) -> None:
    """Raise ValueError (naming the argument) unless ``model`` can be trained with method and regime.

    ``topk`` (target_topk) is a keep fraction in (0, 1]; ``num_bits`` (target_bits) a bit width in the
    model's ``bit_range``. Warns where a subspace method meets batch norm."""
    m = _regimes.method(method)
    _regimes.regime(regime)
    if regime not in m.regimes:
        raise ValueError(f"method: {method!r} does not belong to regime {regime!r}")
    if not m.baseline and model.subspace != m.subspace:
        raise ValueError(f"model: method {method!r} needs a model built with subspace={m.subspace!r}, "
                         f"got subspace={model.subspace!r}")
    if m.baseline and model.subspace == "line":
        raise ValueError(f"model: method {method!r} trains one network; build it with subspace=None")
    if m.fixed != "dense" and model.regime != regime:
        raise ValueError(f"model: method {method!r} needs a model built with regime={regime!r}, "
                         f"got regime={model.regime!r}")
    if not m.baseline and any(isinstance(layer, BatchNorm2d) for layer in model.modules()):
        warnings.warn("model: batch norm keeps one set of running statistics for the whole subspace, which "
                      "is wrong at most alphas; the method uses group or instance norm for subspaces",
                      stacklevel=3)
    if m.fixed == "topk":
        if topk is None or not 0.0 < float(topk) <= 1.0:
            raise ValueError(f"topk: target_topk needs a keep fraction in (0, 1], got {topk!r}")
    if m.fixed == "bits":
        lo, hi = model.bit_range
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not lo <= num_bits <= hi:
            raise ValueError(f"num_bits: target_bits needs an int in the model's bit_range {model.bit_range}, "
                             f"got {num_bits!r}")


class AlphaSchedule:
    """Per-step alpha and keep fraction for a method and regime (LCS-SPEC sections 3 and 4).

    Unstructured: ``ramp(it) = max(1 - it / warmup_its, 0)`` anneals from dense,
    ``topk = alpha + (1 - alpha) * ramp``. Quantized: alpha is one of the K
    discrete values k / K (one per bit width); lcs_p stays at the largest
    bit width over the warm-up. The returned keep fraction is 1 there.
    """

    def __init__(self, method: str, warmup_its: float, generator: Generator, lo: float = 0.025, hi: float = 1.0,
                 p: float = 0.5, topk: Optional[float] = None, regime: str = "unstructured",
                 bit_range: Tuple[int, int] = (3, 8), num_bits: Optional[int] = None,
                 width_range: Tuple[float, float] = (0.25, 1.0), n: int = 4) -> None:
        self.method, self.warmup_its, self.gen = method, warmup_its, generator
        self.width_range, self.n = width_range, n
        self.lo, self.hi, self.p, self.target = lo, hi, p, topk
        self.regime, self.bit_range, self.num_bits = regime, bit_range, num_bits
        self.K = bit_range[1] - bit_range[0] + 1
        self.sampler = _regimes.REGIMES[regime].sampler if regime in _regimes.REGIMES else None

    def ramp(self, it: float) -> float:
        """The share of the warm-up still to go at iteration ``it``: 1 at 0, falling linearly to 0
        at ``warmup_its`` (0 throughout without a warm-up)."""
        return max(1.0 - it / self.warmup_its, 0.0) if self.warmup_its > 0 else 0.0

    def samples(self, it: int) -> List[Tuple[float, float]]:
        """The (alpha, topk) of each forward pass of iteration ``it``: the structured methods take
        several per step (sandwich rule: alphas 0, 1 and n - 2 uniform; ns: its fixed widths)."""
        if self.sampler == "sandwich" and self.method != "standard":
            if self.method == "ns":
                lo, hi = self.width_range
                return [((w - lo) / (hi - lo) if hi > lo else 1.0, 1.0) for w in NS_WIDTHS if w >= lo]
            return [(a, 1.0) for a in self.gen.alpha_sandwich(self.n)]
        return [self(it)]

    def __call__(self, it: int) -> Tuple[float, float]:
        """(alpha, topk) for iteration ``it`` (0-based)."""
        if self.method == "standard":
            return 1.0, 1.0
        if self.sampler == "discrete":
            if self.method == "target_bits":
                return alpha_for_bits(self.num_bits, *self.bit_range), 1.0
            if self.method == "lcs_p" and it < self.warmup_its:
                return 1.0, 1.0
            return self.gen.alpha_discrete(self.K), 1.0
        if self.method == "lcs_l":
            a = self.gen.alpha_biased(self.lo, self.hi, self.p)
            return a, a + (1.0 - a) * self.ramp(it)
        if self.method == "lcs_p":
            if it < self.warmup_its:
                return self.hi, self.hi
            a = self.lo + (self.hi - self.lo) * self.gen.random()
            return a, a
        t = float(self.target)  # target_topk
        return t, t + (1.0 - t) * self.ramp(it)


def _progress(iterable, enabled, desc, total):
    """``iterable`` behind a tqdm bar when ``enabled``, else as it is."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


@dataclasses.dataclass
class _Settings:
    """The arguments of one ``fit`` call (their meaning is in its docstring), checked by ``checked``."""

    method: str
    regime: str
    epochs: int
    batch_size: int
    lr: Optional[float]
    momentum: float
    weight_decay: float
    warmup: float
    lr_warmup_epochs: Optional[int]
    seed: int
    out: Optional[PathLike]
    progress: bool
    resume: bool
    topk: Optional[float]
    beta: float
    alpha_sampling: Sequence[float]
    augment: bool
    eval_alphas: Optional[Sequence[float]]
    num_bits: Optional[int]
    distributed: Optional[bool]
    alpha_per_rank: bool
    sync_batchnorm: bool

    @classmethod
    def checked(cls, model, **kwargs):
        """The settings with ``lr`` defaulted to the regime's, ``warmup`` and ``beta`` as floats,
        ``alpha_sampling`` as a (lo, hi, p) tuple of floats and ``eval_alphas`` as a list; a bad
        value is a TypeError/ValueError naming the argument (the data are checked after)."""
        s = cls(**kwargs)
        if s.lr is None:
            s.lr = _regimes.REGIMES[s.regime].lr
        if isinstance(s.epochs, bool) or not isinstance(s.epochs, int) or s.epochs < 1:
            raise ValueError(f"epochs: expected an int >= 1, got {s.epochs!r}")
        s.warmup = _real(s.warmup, "warmup", 0.0, 1.0)
        if s.lr_warmup_epochs is not None and (isinstance(s.lr_warmup_epochs, bool) or
                                               not isinstance(s.lr_warmup_epochs, (int, np.integer)) or
                                               s.lr_warmup_epochs < 0):
            raise ValueError(f"lr_warmup_epochs: expected None or an int >= 0, got {s.lr_warmup_epochs!r}")
        s.beta = _real(s.beta, "beta", 0.0)
        sampling = s.alpha_sampling
        if isinstance(sampling, (str, bytes)) or not hasattr(sampling, "__len__") or len(sampling) != 3:
            raise TypeError(f"alpha_sampling: expected (lo, hi, p), got {sampling!r}")
        lo, hi, p = (_real(v, f"alpha_sampling[{i}]") for i, v in enumerate(sampling))
        if not (0.0 < lo <= hi <= 1.0 and 0.0 <= p <= 1.0):
            raise ValueError(f"alpha_sampling: expected (lo, hi, p) with 0 < lo <= hi <= 1, 0 <= p <= 1, "
                             f"got {sampling!r}")
        s.alpha_sampling = (lo, hi, p)
        if s.eval_alphas is not None:
            s.eval_alphas = _check_alphas(s.eval_alphas, "eval_alphas", model.regime)
        if not isinstance(s.resume, bool):
            raise TypeError(f"resume: expected True or False, got {type(s.resume).__name__}")
        if s.resume and s.out is None:
            raise ValueError("resume: needs out= (the directory holding the checkpoint)")
        return s

    def config(self, batch_size, alpha_per_rank):
        """The run's configuration as its checkpoint records it (a resumed run must have the same)."""
        config = dict(method=self.method, regime=self.regime, epochs=self.epochs, batch_size=batch_size,
                      lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, warmup=self.warmup,
                      lr_warmup_epochs=self.lr_warmup_epochs, seed=self.seed, topk=self.topk, beta=self.beta,
                      alpha_sampling=list(self.alpha_sampling), augment=bool(self.augment),
                      num_bits=self.num_bits)
        if alpha_per_rank:
            config["alpha_per_rank"] = True
        return config


def _checked_data(model, data, name):
    """``data`` (a tuple or DataLoader) checked by ``_check_data`` and against the model's input shape."""
    data = _check_data(data, name)
    _check_images_fit(model, data.images if isinstance(data, DataLoader) else data[0], name)
    return data


def _check_fit_data(model, train, test, batch_size):
    """fit's checked ``(train, test)``: a training set that gives at least one batch, both sets
    (images uint8 (N, C, H, W), labels (N,)) or DataLoaders whose images fit the model."""
    if isinstance(train, DataLoader):
        if len(train) == 0:
            raise ValueError(f"train: the DataLoader yields no batches ({train.num_samples} images, batch_size "
                             f"{train.batch_size}, drop_last={train.drop_last})")
    elif isinstance(train, (tuple, list)) and len(train) == 2 and hasattr(train[0], "__len__"):
        if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) and \
                0 < len(train[0]) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is more than the {len(train[0])} training images; training "
                             "drops the last incomplete batch, so no step would run")
    train = _checked_data(model, train, "train")
    if test is not None:
        test = _checked_data(model, test, "test")
    return train, test


class _Run:
    """One ``fit`` call in progress: its loader, optimizer, alpha schedule, generator and history,
    and on N ranks the ``csub.distributed.Trainer``. ``fit`` drives it epoch by epoch."""

    def __init__(self, model, train, test, s):
        self.model, self.test, self.s = model, test, s
        if isinstance(train, DataLoader):
            loader = train
        else:  # the training images' channel statistics normalise every input of the model
            mean, std = channel_stats(train[0])
            loader = DataLoader(train[0], train[1], batch_size=s.batch_size, shuffle=True, augment=s.augment,
                                mean=mean, std=std, drop_last=True, seed=s.seed)
            model.input_mean[...] = mean
            model.input_std[...] = std
        self.ddp = _distributed.Trainer.create(s.distributed)  # None on one process
        self.progress, self.evaluate = s.progress, evaluate
        if self.ddp:
            loader = self.ddp.prepare(model, loader, s.sync_batchnorm)
            self.progress, self.evaluate = s.progress and self.ddp.is_root, _distributed.evaluate
        self.loader = loader
        self.config = s.config(loader.batch_size, bool(self.ddp and s.alpha_per_rank))
        self.its_per_epoch = len(loader)
        total_its = self.its_per_epoch * s.epochs
        self.gen = Generator(s.seed)
        self.schedule = AlphaSchedule(s.method, s.warmup * total_its, self.gen, *s.alpha_sampling, s.topk,
                                      s.regime, model.bit_range, s.num_bits, model.width_range)
        self.opt = SGD(model.parameters(), s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        self.crit = CrossEntropyLoss()
        # the regulariser runs over the tensors that form the line: norms for structured, weights otherwise
        self.pairs = line_pairs(model, _regimes.REGIMES[s.regime].line) if s.method == "lcs_l" else []
        self.lr_warm = min(5, s.epochs // 10) if s.lr_warmup_epochs is None else \
            min(int(s.lr_warmup_epochs), s.epochs - 1)
        self.history, self.start = [], 0
        self.path = os.path.join(s.out, CHECKPOINT) if s.out else None
        if s.out:
            os.makedirs(s.out, exist_ok=True)

    def state(self):
        """The tensors of a checkpoint: ``{"model": ..., "optim": ..., "rng": {"state": ...}}``."""
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict(),
                "rng": {"state": self.gen.get_state()}}

    def resume(self):
        """Continue from ``out/checkpoint.safetensors`` (with resume=True, where it exists); on N ranks
        rank 0's parameters, optimizer, generator and position on every rank."""
        if self.s.resume and os.path.exists(self.path):
            state = checkpoint.load_training(self.path, self.state(), json.loads(json.dumps(self.config)),
                                             upgrade={"model": self.model._upgrade_keys})
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.gen.set_state(state["rng"]["state"])
            self.history = state["meta"]["history"]
            self.start = state["meta"]["epoch"]
        if self.ddp:
            self.history, self.start = self.ddp.sync_state(self.model, self.opt, self.gen, self.history,
                                                           self.start)

    def step(self, x, y, it):
        """One SGD step on a batch x (B, C, H, W) float32 with labels y (B,) at iteration ``it``
        (0-based over all epochs). Returns (loss, logits (B, classes) at the step's largest alpha):
        the mean cross-entropy (nats) over the step's forward passes plus the line regulariser."""
        model, schedule, opt, crit = self.model, self.schedule, self.opt, self.crit
        samples = schedule.samples(it)  # one (alpha, keep) per forward; the losses add up
        if model.regime == "quantized":  # activation quantization starts after the warm-up
            model.set_quantize_inputs(it >= schedule.warmup_its)
        opt.zero_grad()
        loss = 0.0
        for alpha, keep in samples:
            model.set_alpha(alpha, topk=keep if model.regime == "unstructured" else None)
            z = model(x)
            loss += crit(z, y)
            model.backward(crit.backward())
            if alpha == max(a for a, _ in samples):
                logits = z  # training accuracy is tracked at the step's largest alpha
        loss /= len(samples)
        if self.ddp:
            self.ddp.reduce_gradients()  # the mean gradient of the global batch, on every rank
        if self.pairs and self.s.beta:
            loss += line_regularizer(self.pairs, self.s.beta)
        opt.step()
        return loss, logits

    def train_epoch(self, epoch):
        """One pass over the training data (``epoch`` 0-based); returns the epoch's record: epoch
        (1-based), lr, train_loss (mean cross-entropy, nats), train_accuracy (a fraction), seconds."""
        s, model, opt, loader = self.s, self.model, self.opt, self.loader
        opt.lr = cosine_lr(s.lr, epoch, s.epochs, self.lr_warm)
        if self.ddp:
            self.schedule.gen = self.ddp.alpha_generator(self.gen, s.seed, epoch, s.alpha_per_rank)
        loader.set_epoch(epoch)
        model.train()
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        bar = _progress(loader, self.progress, f"{s.method} epoch {epoch + 1}/{s.epochs}", self.its_per_epoch)
        for i, (x, y) in enumerate(bar):
            loss, logits = self.step(x, y, epoch * self.its_per_epoch + i)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged at epoch {epoch + 1}, iteration {i}: loss {loss}")
            seen += len(y)
            correct += int(np.sum(np.argmax(logits, 1) == y))
            loss_sum += loss * len(y)
            if self.progress and i % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        if self.ddp:
            seen, correct, loss_sum = self.ddp.reduce_stats(seen, correct, loss_sum)
            self.ddp.end_epoch(model, opt)
        return dict(epoch=epoch + 1, lr=opt.lr, train_loss=loss_sum / seen, train_accuracy=correct / seen,
                    seconds=time.perf_counter() - t0)

    def test_ends(self, record):
        """Add ``test_accuracy@<alpha>`` (a fraction) at the method's end alphas to ``record``."""
        s, model = self.s, self.model
        ends = _end_alphas(s.method, s.alpha_sampling[0], s.topk, s.regime, model.bit_range, s.num_bits,
                           model.width_range)
        for a, r in zip(ends, self.evaluate(model, self.test, ends)):
            record[f"test_accuracy@{a:g}"] = r["accuracy"]

    def end_epoch(self, epoch, record):
        """Append ``record`` to the history, print it (progress) and, with ``out``, write the
        checkpoint and history.json (rank 0)."""
        self.history.append(record)
        if self.progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)
        if self.s.out and (not self.ddp or self.ddp.is_root):
            checkpoint.save(self.path, self.state(), {"epoch": epoch + 1, "config": self.config,
                                                      "history": self.history})
            _write_json(os.path.join(self.s.out, "history.json"), self.history)

    def finish(self):
        """Evaluate the grid into out/eval.json and eval.csv (with test data and ``out``), undo the
        distributed set-up; returns the history."""
        s, model = self.s, self.model
        if self.test is not None and s.out:
            alphas = s.eval_alphas or default_alphas(s.method, s.topk, s.regime, model.bit_range, s.num_bits,
                                                     model.width_range)
            results = self.evaluate(model, self.test, alphas)
            if not self.ddp or self.ddp.is_root:
                save_results(s.out, results)
        if self.ddp:
            self.ddp.close()
            _distributed.barrier()  # every rank returns once rank 0's files are written
        return self.history


def fit(model: SubspaceNet, train: Data, test: Optional[Data] = None, method: str = "lcs_l",
        regime: str = "unstructured", epochs: int = 10, batch_size: int = 128, lr: Optional[float] = None,
        momentum: float = 0.9, weight_decay: float = 5e-4, warmup: float = 0.8,
        lr_warmup_epochs: Optional[int] = None, seed: int = 0, out: Optional[PathLike] = None,
        progress: bool = True, resume: bool = False, topk: Optional[float] = None, beta: float = 1.0,
        alpha_sampling: Sequence[float] = (0.025, 1.0, 0.5), augment: bool = True,
        eval_alphas: Optional[Sequence[float]] = None, num_bits: Optional[int] = None,
        distributed: Optional[bool] = None, alpha_per_rank: bool = False,
        sync_batchnorm: bool = False) -> List[Dict[str, Any]]:
    """Train ``model`` with ``method``; returns the history, one dict per epoch with keys epoch
    (1-based), lr (the epoch's learning rate), train_loss (each step's loss, cross-entropy in nats
    at the sampled alphas plus the line regulariser, averaged over the epoch's images),
    train_accuracy (a fraction, at each step's largest alpha), seconds (wall-clock time of the
    training pass) and, with ``test``, ``test_accuracy@<alpha>`` (a fraction) at the method's end alphas.

    Args:
        model: a ``csub.models`` network built with the method's subspace and regime.
        train, test: ``(images uint8 (N, C, H, W), labels (N,))`` tuples, or DataLoaders.
        method: "standard", "lcs_l", "lcs_p", "target_topk" (with ``topk``), "target_bits"
            (with ``num_bits``), "ns" or "us".
        regime: "unstructured", "quantized" or "structured" (the model must be built with the same).
        epochs, batch_size: training length; the schedule counts iterations over all epochs.
        lr: base learning rate (default 0.1 for sparsity, 0.025 for quantization), cosine
            schedule after ``lr_warmup_epochs`` of linear warm-up (default
            ``min(5, epochs // 10)``: the spec's 5 epochs from 50 epochs on, a proportional
            share of shorter runs, none below 10 epochs).
        momentum, weight_decay: SGD settings (weight decay on all parameters).
        warmup: fraction of all iterations over which compression is annealed from dense.
        seed: seeds data order, augmentation and alpha sampling.
        out: directory for checkpoints, history.json and eval.json/csv (None: nothing saved).
        resume: continue from ``out/checkpoint.safetensors`` if it exists.
        beta: weight of the line regulariser (lcs_l).
        alpha_sampling: (lo, hi, p) of the biased endpoint sampler (unstructured).
        augment: random crop (padding 4) and horizontal flip.
        eval_alphas: alphas evaluated on ``test`` at the end (default: the method's grid).
        num_bits: the bit width of target_bits.
        distributed: train data-parallel on the ranks of an ``mpiexec`` job (``csub.distributed``);
            None (default): whenever the process was started by mpiexec. ``batch_size`` stays the
            global batch; progress, history and checkpoints come from rank 0.
        alpha_per_rank: (distributed) each rank samples its own alpha per step, so a step averages
            the gradients of several points of the subspace; default: one alpha per step, as on one rank.
        sync_batchnorm: (distributed) batch-norm statistics over the global batch instead of per rank.
    """
    check_method(model, method, regime, topk, num_bits)
    s = _Settings.checked(model, method=method, regime=regime, epochs=epochs, batch_size=batch_size, lr=lr,
                          momentum=momentum, weight_decay=weight_decay, warmup=warmup,
                          lr_warmup_epochs=lr_warmup_epochs, seed=seed, out=out, progress=progress,
                          resume=resume, topk=topk, beta=beta, alpha_sampling=alpha_sampling, augment=augment,
                          eval_alphas=eval_alphas, num_bits=num_bits, distributed=distributed,
                          alpha_per_rank=alpha_per_rank, sync_batchnorm=sync_batchnorm)
    train, test = _check_fit_data(model, train, test, batch_size)
    if out is not None:
        check_out(out)  # before any work: a run that cannot save fails now, not after an epoch
    run = _Run(model, train, test, s)
    run.resume()
    for epoch in range(run.start, s.epochs):
        record = run.train_epoch(epoch)
        if test is not None:
            run.test_ends(record)
        run.end_epoch(epoch, record)
    return run.finish()


def _end_alphas(method, lo, topk, regime="unstructured", bit_range=(3, 8), num_bits=None,
                width_range=(0.25, 1.0)):
    return _regimes.end_alphas(method, lo, topk, regime, bit_range, num_bits)


def default_alphas(method: str, topk: Optional[float] = None, regime: str = "unstructured",
                   bit_range: Tuple[int, int] = (3, 8), num_bits: Optional[int] = None,
                   width_range: Tuple[float, float] = (0.25, 1.0)) -> List[float]:
    """The evaluation grid of a method (LCS-SPEC section 9): a list of alphas in [0, 1].

    ``topk`` (target_topk) is the keep fraction, ``num_bits`` (target_bits) the bit width of the
    baselines, each evaluated at its one point; ``bit_range`` and ``width_range`` are the model's."""
    return _regimes.default_alphas(method, topk, regime, bit_range, num_bits, width_range)


def evaluate(model: SubspaceNet, data: Data, alphas: Iterable[float], batch_size: int = 500) -> List[Dict[str, Any]]:
    """Accuracy and loss of ``model`` at each alpha.

    Args:
        data: ``(images uint8, labels)`` (normalised with the model's input
            statistics) or a DataLoader.
        alphas: iterable of alphas in [0, 1] (unstructured: alpha > 0).
        batch_size: images per forward pass where ``data`` is a tuple.
    Returns:
        list of dicts, one per alpha, with keys alpha, then for the unstructured
        regime (and dense models) topk (keep fraction) and sparsity (zeros over
        all conv/linear weights), for the quantized regime bits and model_bytes
        (the network at that alpha, quantized weights packed), for the structured
        regime width, params (parameter values in use) and flops (per sample,
        2 per multiply-accumulate), then accuracy (a fraction in [0, 1]) and loss.
    """
    alphas = _check_alphas(alphas, "alphas", model.regime)
    data = _checked_data(model, data, "data")
    if not isinstance(data, DataLoader):
        data = DataLoader(data[0], data[1], batch_size=batch_size, shuffle=False, augment=False,
                          mean=model.input_mean, std=model.input_std)
    crit = CrossEntropyLoss()
    with model._restoring_state():  # the model's alpha, mode and caches are left as they were
        return _evaluate(model, data, alphas, crit)


def _evaluate(model, data, alphas, crit):
    model.eval()
    results = []
    for a in alphas:
        model.set_alpha(a)
        n = correct = 0
        loss_sum = 0.0
        for x, y in data:
            logits = model(x)
            loss_sum += crit(logits, y) * len(y)
            correct += int(np.sum(np.argmax(logits, 1) == y))
            n += len(y)
        r = dict(alpha=float(a))
        if model.regime == "structured":
            r.update(width=model.width, params=int(model.active_parameters()),
                     flops=int(model.flops(data.images.shape[1:])))
        elif model.regime == "quantized":
            r.update(bits=int(model.num_bits), model_bytes=int(model.model_bytes()))
        else:
            r.update(topk=float(model.topk), sparsity=model.sparsity())
        r.update(accuracy=correct / n, loss=loss_sum / n)
        results.append(r)
    return results


def _write_json(path, obj):
    checkpoint.atomic_write(path, json.dumps(obj, indent=1).encode())


def save_results(out: PathLike, results: Sequence[Dict[str, Any]], name: str = "eval") -> None:
    """Write results (``evaluate``'s list of dicts, one per alpha) as ``out/<name>.json`` and
    ``out/<name>.csv`` (one row per alpha, floats to 6 significant digits), each atomically."""
    _write_json(os.path.join(out, f"{name}.json"), results)
    keys = list(results[0])
    lines = [",".join(keys)] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                                for r in results]
    checkpoint.atomic_write(os.path.join(out, f"{name}.csv"), ("\n".join(lines) + "\n").encode())


def format_table(results: Sequence[Dict[str, Any]]) -> str:
    """Results (``evaluate``'s list of dicts) as an aligned text table: a header of their keys, then
    one row per alpha, floats to 4 decimals."""
    keys = list(results[0])
    rows = [[f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in results]
    widths = [max(len(k), *(len(row[i]) for row in rows)) for i, k in enumerate(keys)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*keys)] + [fmt.format(*row) for row in rows])
