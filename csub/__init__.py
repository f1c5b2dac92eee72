"""csub: compressible subspaces of neural networks.

Train one subspace of networks indexed by alpha in [0, 1] whose compression
level (unstructured sparsity, width, bit width) follows alpha, then run any
alpha compressed for real. The kernels are C (``csub._core``); this package
is a thin layer over them.
"""
import ctypes as _ctypes
import os as _os

import numpy as _np


def _load_blas():
    # _core links against scipy-openblas32's libscipy_openblas.so; load it by
    # its full path first so the dynamic linker finds it wherever pip put it.
    import scipy_openblas32

    libdir = scipy_openblas32.get_lib_dir()
    name = scipy_openblas32.get_library(fullname=True)
    _ctypes.CDLL(_os.path.join(libdir, name), mode=_ctypes.RTLD_GLOBAL)


_load_blas()

from . import _core  # noqa: E402
from ._core import BudgetError, FormatError, UnsupportedError  # noqa: E402
from . import data, functional, models, modelfile, nn, optim, random, runtime, subspace, train  # noqa: E402
from .modelfile import export  # noqa: E402
from .models import load  # noqa: E402

modelfile.load = load  # the reader lives with the networks; its old name stays
from .random import manual_seed  # noqa: E402
from .runtime import CompressedNet  # noqa: E402

__version__ = "0.1.0"


# The most threads set_num_threads accepts. OpenMP (libgomp) keeps one start record per
# thread of a team on the stack of the thread that opens it: 100000 threads overflowed
# an 8 MiB stack and crashed. A fixed cap (not a multiple of this machine's cores) keeps a
# thread count, and with it the reduction order and the results, valid on every machine;
# 1024 threads need about 100 KiB of that stack, and no CPU csub runs on has more cores.
MAX_NUM_THREADS = _core.MAX_NUM_THREADS  # CSUB_MAX_THREADS of csub.h


def set_num_threads(n: int) -> None:
    """Set the number of threads csub's kernels use: an int in [1, MAX_NUM_THREADS] (1024).

    Results are deterministic for a given thread count. More threads than cores only adds
    switching; every count in range is tested to run."""
    if isinstance(n, bool) or not isinstance(n, (int, _np.integer)):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_NUM_THREADS:
        raise ValueError(f"n: expected a thread count in [1, {MAX_NUM_THREADS}], got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Number of threads csub's kernels use."""
    return _core.get_num_threads()


def empty_cache() -> int:
    """Free the memory csub keeps for reuse and return how many bytes that was.

    The arrays csub's kernels return from 1 MiB up take their memory from the blocks of earlier
    ones that are no longer referenced, when the byte size matches (a training step allocates the
    same activations every step; fresh memory would be faulted in and zeroed by the system each
    time). The cache holds at most ``CSUB_ARRAY_CACHE_MB`` MiB (read at import; default 2048,
    0 turns it off), dropping its oldest blocks first."""
    return _core.empty_cache()


__all__ = ["data", "functional", "models", "modelfile", "nn", "optim", "random", "runtime", "subspace", "train",
           "export", "load", "CompressedNet", "manual_seed", "FormatError", "UnsupportedError", "BudgetError",
           "set_num_threads", "get_num_threads", "empty_cache", "MAX_NUM_THREADS", "__version__"]
