"""File formats: IDX (MNIST / Fashion-MNIST) read and write, CIFAR-10 batch parsing.

Pure parsing of single files, with no knowledge of where datasets live:

* :func:`read_idx`, :func:`write_idx`, :func:`load_idx_pair` -- the IDX
  container (raw or gzip-compressed) and MNIST-style (images, labels) pairs.
* ``_read_cifar_pickle`` / ``_read_cifar_binary`` -- one CIFAR-10 batch of the
  "python" (pickle, read with a restricted unpickler) or "binary"
  distribution, as uint8 (N, 3, 32, 32) images and int64 (N,) labels.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from typing import Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["read_idx", "write_idx", "load_idx_pair"]

# --------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------

# IDX type code -> big-endian dtype as stored in the file.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("=").str: code for code, dt in _IDX_DTYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot expand data by more than ~1032:1; used to reject absurd
# declared sizes in gzipped files before allocating memory for them.
_MAX_DEFLATE_RATIO = 1100


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_exact_into(stream, buf):
    """Fill the C-contiguous array ``buf`` from ``stream``; returns the bytes read."""
    view = memoryview(buf.reshape(-1).view(np.uint8))
    total = 0
    while total < len(view):
        n = stream.readinto(view[total:])
        if not n:
            break
        total += n
    return total


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST container format).

    The file may be gzip-compressed (detected from the gzip magic bytes, so
    the name does not matter) or raw.  The header is validated: two zero
    bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64; stored big-endian), the number of dimensions
    (>= 1), one big-endian uint32 per dimension, and then exactly
    ``prod(dims) * itemsize`` bytes of data.

    Args:
        path: file name (str or os.PathLike).

    Returns:
        numpy.ndarray of shape ``dims`` in native byte order, writable and
        C-contiguous, with the dtype given by the type code.

    Raises:
        FileNotFoundError: the file does not exist (message names it).
        ValueError: the file is corrupt or truncated (message names the file
            and what is wrong).
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"IDX file not found: {name}")
    compressed = _is_gzip(name)
    try:
        if compressed:
            stream = gzip.open(name, "rb")
        else:
            stream = open(name, "rb")
        with stream:
            header = stream.read(4)
            if len(header) < 4:
                raise ValueError(f"{name}: truncated IDX header ({len(header)} of 4 magic bytes)")
            zero, code, ndim = struct.unpack(">HBB", header)
            if zero != 0:
                raise ValueError(
                    f"{name}: bad IDX magic {header.hex()} (first two bytes must be zero)")
            if code not in _IDX_DTYPES:
                raise ValueError(
                    f"{name}: unknown IDX data type code 0x{code:02x} (supported: "
                    + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES) + ")")
            if ndim == 0:
                raise ValueError(f"{name}: IDX header declares 0 dimensions")
            raw_dims = stream.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise ValueError(
                    f"{name}: truncated IDX header (expected {ndim} dimension sizes)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            dtype = _IDX_DTYPES[code]
            nbytes = math.prod(dims) * dtype.itemsize
            header_size = 4 + 4 * ndim
            file_size = os.path.getsize(name)
            if not compressed:
                if nbytes != file_size - header_size:
                    what = "truncated" if nbytes > file_size - header_size else "trailing bytes in"
                    raise ValueError(
                        f"{name}: {what} IDX data: dims {tuple(dims)} of {dtype.name} "
                        f"need {nbytes} bytes after the {header_size}-byte header, "
                        f"file has {file_size - header_size}")
            elif nbytes > _MAX_DEFLATE_RATIO * file_size + 4096:
                raise ValueError(
                    f"{name}: truncated or corrupt IDX data: dims {tuple(dims)} need "
                    f"{nbytes} bytes, more than a {file_size}-byte gzip file can hold")
            data = np.empty(dims, dtype=dtype)
            got = _read_exact_into(stream, data)
            if got != nbytes:
                raise ValueError(
                    f"{name}: truncated IDX data: dims {tuple(dims)} of {dtype.name} "
                    f"need {nbytes} bytes, only {got} present")
            if stream.read(1):
                raise ValueError(
                    f"{name}: trailing bytes in IDX data after the {nbytes} bytes "
                    f"declared by dims {tuple(dims)}")
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{name}: corrupt or truncated gzip stream ({exc})") from exc
    if dtype.itemsize > 1:
        data = data.astype(dtype.newbyteorder("="))
    else:
        data = data.view(dtype.newbyteorder("="))
    return data


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed if ``path`` ends in ``.gz``.

    Compressed output uses mtime 0 and no stored file name, so identical
    arrays give byte-identical files.

    Args:
        path: output file name.
        array: numpy array (at least 1-D) of dtype uint8, int8, int16, int32,
            float32 or float64.
    """
    arr = np.asarray(array)
    key = arr.dtype.newbyteorder("=").str
    if key not in _IDX_CODES:
        raise TypeError(f"array: dtype {arr.dtype} cannot be stored in an IDX file")
    if arr.ndim < 1 or arr.ndim > 255:
        raise ValueError(f"array: IDX needs 1..255 dimensions, got {arr.ndim}")
    code = _IDX_CODES[key]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes()
    name = os.fspath(path)
    with open(name, "wb") as raw:
        if name.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9,
                               mtime=0) as gz:
                gz.write(header)
                gz.write(payload)
        else:
            raw.write(header)
            raw.write(payload)


def load_idx_pair(images_path: PathLike, labels_path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Load an MNIST-style (images, labels) pair of IDX files.

    Args:
        images_path: IDX file of uint8 images, shape (N, H, W).
        labels_path: IDX file of uint8 labels, shape (N,), values 0..9.

    Returns:
        ``(images, labels)``: uint8 array (N, 1, H, W) of pixel values 0..255
        and int64 array (N,) of class indices.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is corrupt, has the wrong dtype or rank, the counts
            differ (message names both files), or a label is outside 0..9.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    iname, lname = os.fspath(images_path), os.fspath(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{iname}: expected uint8 images of shape (N, H, W), got {images.dtype} "
            f"{images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{lname}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image/label count mismatch: {iname} has {images.shape[0]} images but "
            f"{lname} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lname}: label {int(labels.max())} outside 0..9")
    return images[:, None, :, :], labels.astype(np.int64)


# --------------------------------------------------------------------------
# CIFAR-10 batches
# --------------------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    # Python 3 pickles of bytes at protocol <= 2 go through _codecs.encode(s, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("forbidden use of _codecs.encode")
    return obj.encode("latin1", errors)


# The only globals a CIFAR-10 batch (a dict of bytes / lists / ndarrays) needs:
# ndarray, dtype and numpy-scalar reconstruction, under the module names numpy
# has used over the years (numpy.core before 2.0, numpy._core since) for
# pickle protocols <= 4 (``_reconstruct``) and 5 (``_frombuffer``).
_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_NP_SCALAR = np.int64(0).__reduce__()[0]
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _mod in ("numpy.core", "numpy._core"):
    _PICKLE_ALLOWED[(_mod + ".multiarray", "_reconstruct")] = _NP_RECONSTRUCT
    _PICKLE_ALLOWED[(_mod + ".multiarray", "scalar")] = _NP_SCALAR
    _PICKLE_ALLOWED[(_mod + ".numeric", "_frombuffer")] = _NP_FROMBUFFER
del _mod


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals needed for array data."""

    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} (only numpy array data is allowed)"
            ) from None


def _read_cifar_pickle(path):
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except Exception as exc:  # any decoding failure means a corrupt file
        raise ValueError(f"{path}: cannot unpickle CIFAR-10 batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: CIFAR-10 batch is a {type(obj).__name__}, expected a dict")

    def get(key):
        for k in (key.encode(), key):
            if k in obj:
                return obj[k]
        raise ValueError(f"{path}: CIFAR-10 batch has no {key!r} entry")

    data = get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: CIFAR-10 'data' must be uint8 (N, 3072), got {desc}")
    try:
        labels = np.asarray(get("labels"), dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: CIFAR-10 'labels' are not integers ({exc})") from exc
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_binary(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise ValueError(
            f"{path}: truncated or corrupt CIFAR-10 binary batch: {len(raw)} bytes is not a "
            f"positive multiple of the {_CIFAR_RECORD}-byte record size")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)
