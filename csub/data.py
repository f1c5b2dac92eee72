"""Datasets and a fast NumPy data loader.

Everything here is pure Python + NumPy; nothing imports the compiled core.

Datasets
--------
* :func:`fashion_mnist` -- Fashion-MNIST (IDX files).  Falls back to a small
  bundled, class-stratified subset (600 train / 100 test images per class)
  when the full set is neither installed nor downloadable, so examples and
  tests always have real data to run on.
* :func:`mnist` -- MNIST (IDX files).
* :func:`cifar10` -- CIFAR-10 in either the "python" (pickle) or "binary"
  distribution format, from a folder or a ``.tar.gz`` archive.

All loaders return ``(images, labels)`` with ``images`` a C-contiguous
``uint8`` array of shape ``(N, C, H, W)`` holding raw pixel values 0..255 and
``labels`` an ``int64`` array of shape ``(N,)`` holding class indices 0..9.

Where data is looked for
------------------------
``root=`` always wins and is the only place looked at when given.  Otherwise
each loader searches, in order, ``$CSUB_DATA/<name>``, (for Fashion-MNIST and
CIFAR-10) ``$CSUB_DATA`` itself, the user cache
``$XDG_CACHE_HOME/csub/<name>`` (default ``~/.cache/csub/<name>``), and the
Debian system location ``/usr/share/datasets/<name>`` where one exists
(``apt-get install dataset-fashion-mnist``).  If nothing is found and
``download=True`` the canonical files are downloaded into the cache,
checked against their published MD5 sums, and written atomically.

Normalisation and batching
--------------------------
:class:`DataLoader` turns a uint8 array into normalised float32 batches,
``x = (pixel / 255 - mean) / std`` per channel, with optional deterministic
shuffling and the standard random-crop (zero padding) + horizontal-flip
augmentation, vectorised over the batch.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import numbers
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "read_idx",
    "write_idx",
    "load_idx_pair",
    "fashion_mnist",
    "mnist",
    "cifar10",
    "channel_stats",
    "cache_dir",
    "DataLoader",
    "DownloadError",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "CIFAR10_CLASSES",
]

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------


def _frozen(values):
    arr = np.asarray(values, dtype=np.float32)
    arr.setflags(write=False)
    return arr


#: Per-channel mean / std of the full Fashion-MNIST training set (60000
#: images), in units of [0, 1]-scaled pixels.  Shape (1,), float32, read-only.
FASHION_MNIST_MEAN = _frozen([0.28604060])
FASHION_MNIST_STD = _frozen([0.35302424])

#: Per-channel (R, G, B) mean / std of the full CIFAR-10 training set (50000
#: images), in units of [0, 1]-scaled pixels.  Shape (3,), float32, read-only.
CIFAR10_MEAN = _frozen([0.4914, 0.4822, 0.4465])
CIFAR10_STD = _frozen([0.2470, 0.2435, 0.2616])

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

#: Canonical download locations and MD5 sums of the gzipped files.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83fd310",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

#: System-wide install locations (Debian ``dataset-*`` packages).
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_SYSTEM_DIR = "/usr/share/datasets/mnist"

#: Per-operation network timeout for downloads, in seconds.
DOWNLOAD_TIMEOUT = 15.0

_BUNDLED_FASHION_MNIST_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "datasets", "fashion_mnist_subset")

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

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


def read_idx(path):
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


def write_idx(path, array):
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


def load_idx_pair(images_path, labels_path):
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
# Locations and downloads
# --------------------------------------------------------------------------


def cache_dir():
    """The user cache directory of csub: ``$XDG_CACHE_HOME/csub`` or ``~/.cache/csub``."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "csub")


def _csub_data():
    value = os.environ.get("CSUB_DATA")
    return value or None


class DownloadError(OSError):
    """A download failed (network error, HTTP error or checksum mismatch)."""


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_file(url, dest, md5, timeout=None):
    """Download ``url`` to ``dest`` atomically, verifying its MD5 sum.

    The data go to a temporary file next to ``dest`` that is renamed into
    place only once complete and verified.  Raises :class:`DownloadError`
    on any failure, leaving no partial file behind.
    """
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    directory = os.path.dirname(os.path.abspath(dest))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=directory)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise DownloadError(f"downloading {url} failed: {exc}") from exc
        if md5 is not None and h.hexdigest() != md5:
            raise DownloadError(
                f"downloading {url} failed: MD5 {h.hexdigest()} does not match the "
                f"expected {md5}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _download_idx_set(base_url, md5s, directory):
    """Fetch every file of ``md5s`` missing (or failing its checksum) in ``directory``."""
    for fname, md5 in md5s.items():
        dest = os.path.join(directory, fname)
        if os.path.isfile(dest) and _md5(dest) == md5:
            continue
        _download_file(base_url + fname, dest, md5)


def _idx_pair_in(directory, prefix):
    """Paths of the (images, labels) IDX files of a split in ``directory``, or None."""
    found = []
    for kind, nd in (("images", 3), ("labels", 1)):
        stem = os.path.join(directory, f"{prefix}-{kind}-idx{nd}-ubyte")
        for candidate in (stem + ".gz", stem):
            if os.path.isfile(candidate):
                found.append(candidate)
                break
        else:
            return None
    return tuple(found)


def _check_split(split):
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _SPLIT_PREFIX[split]


def _load_28x28(pair, what):
    images, labels = load_idx_pair(*pair)
    if images.shape[2:] != (28, 28):
        raise ValueError(
            f"{pair[0]}: expected 28x28 {what} images, got {images.shape[2]}x{images.shape[3]}")
    return images, labels


def _load_idx_from_root(root, prefix, what):
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} directory not found: {root}")
    pair = _idx_pair_in(root, prefix)
    if pair is None:
        raise FileNotFoundError(
            f"{what} files not found in {root}: expected {prefix}-images-idx3-ubyte[.gz] "
            f"and {prefix}-labels-idx1-ubyte[.gz]")
    return _load_28x28(pair, what)


def _dedupe(paths):
    seen, out = set(), []
    for p in paths:
        if p and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _fashion_mnist_dirs():
    data = _csub_data()
    dirs = []
    if data:
        dirs += [os.path.join(data, "fashion-mnist"), data]
    dirs += [os.path.join(cache_dir(), "fashion-mnist"), FASHION_MNIST_SYSTEM_DIR]
    return _dedupe(dirs)


def _mnist_dirs():
    data = _csub_data()
    dirs = [os.path.join(data, "mnist")] if data else []
    dirs += [os.path.join(cache_dir(), "mnist"), MNIST_SYSTEM_DIR]
    return _dedupe(dirs)


def _search_idx(dirs, prefix):
    for d in dirs:
        pair = _idx_pair_in(d, prefix)
        if pair is not None:
            return pair
    return None


# --------------------------------------------------------------------------
# Fashion-MNIST and MNIST
# --------------------------------------------------------------------------


def fashion_mnist(split="train", root=None, bundled=False, download=True):
    """Load Fashion-MNIST.

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        root: directory holding the IDX files (``train-images-idx3-ubyte[.gz]``,
            ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``); when given it is
            the only place looked at.
        bundled: return the bundled subset (6000 train / 1000 test images,
            600 / 100 per class) without looking for the full set.
        download: if the full set is not found locally, download it into the
            user cache (``~/.cache/csub/fashion-mnist``).

    Returns:
        ``(images, labels)``: uint8 (N, 1, 28, 28) pixel values 0..255 and
        int64 (N,) class indices 0..9 (see :data:`FASHION_MNIST_CLASSES`).

    Without ``root``, looks in ``$CSUB_DATA/fashion-mnist``, ``$CSUB_DATA``,
    the user cache and ``/usr/share/datasets/fashion-mnist``, then downloads
    (if allowed); if all of that fails, the bundled subset is returned with a
    :class:`UserWarning` explaining how to get the full set.
    """
    prefix = _check_split(split)
    if bundled:
        return _load_28x28(_idx_pair_in(_BUNDLED_FASHION_MNIST_DIR, prefix)
                           or _missing_bundled(), "Fashion-MNIST")
    if root is not None:
        return _load_idx_from_root(root, prefix, "Fashion-MNIST")
    dirs = _fashion_mnist_dirs()
    pair = _search_idx(dirs, prefix)
    if pair is not None:
        return _load_28x28(pair, "Fashion-MNIST")
    if download:
        target = os.path.join(cache_dir(), "fashion-mnist")
        try:
            _download_idx_set(FASHION_MNIST_URL, FASHION_MNIST_MD5, target)
        except OSError as exc:
            reason = f"download failed ({exc})"
        else:
            return _load_idx_from_root(target, prefix, "Fashion-MNIST")
    else:
        reason = "download=False"
    warnings.warn(
        f"Full Fashion-MNIST not found (searched {', '.join(dirs)}; {reason}); using the "
        f"bundled subset of 600 train / 100 test images per class. To get the full set, "
        f"run `apt-get install dataset-fashion-mnist`, or set CSUB_DATA to a directory "
        f"holding fashion-mnist/train-images-idx3-ubyte.gz and the other three files "
        f"from {FASHION_MNIST_URL}.",
        UserWarning, stacklevel=2)
    return _load_28x28(_idx_pair_in(_BUNDLED_FASHION_MNIST_DIR, prefix)
                       or _missing_bundled(), "Fashion-MNIST")


def _missing_bundled():
    raise FileNotFoundError(
        f"bundled Fashion-MNIST subset missing from {_BUNDLED_FASHION_MNIST_DIR} "
        f"(broken installation?)")


def mnist(split="train", root=None, download=True):
    """Load MNIST.

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        root: directory holding the IDX files; when given, the only place
            looked at.
        download: if not found locally, download into ``~/.cache/csub/mnist``.

    Returns:
        ``(images, labels)``: uint8 (N, 1, 28, 28) pixel values 0..255 and
        int64 (N,) digit labels 0..9.

    Without ``root``, looks in ``$CSUB_DATA/mnist``, the user cache and
    ``/usr/share/datasets/mnist``, then downloads (if allowed).

    Raises:
        FileNotFoundError: not found and not downloadable (the message says
            where to put the files).
    """
    prefix = _check_split(split)
    if root is not None:
        return _load_idx_from_root(root, prefix, "MNIST")
    dirs = _mnist_dirs()
    pair = _search_idx(dirs, prefix)
    if pair is not None:
        return _load_28x28(pair, "MNIST")
    target = os.path.join(cache_dir(), "mnist")
    if download:
        try:
            _download_idx_set(MNIST_URL, MNIST_MD5, target)
        except OSError as exc:
            reason = f"download failed ({exc})"
        else:
            return _load_idx_from_root(target, prefix, "MNIST")
    else:
        reason = "download=False"
    raise FileNotFoundError(
        f"MNIST not found (searched {', '.join(dirs)}; {reason}). Put the four files "
        f"{', '.join(MNIST_MD5)} from {MNIST_URL} into {target} (or into "
        f"$CSUB_DATA/mnist), or pass root=<directory holding them>.")


# --------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------

_CIFAR_FOLDERS = ("cifar-10-batches-py", "cifar-10-batches-bin")
_CIFAR_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz")
_CIFAR_FILES = {
    ("py", "train"): tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("py", "test"): ("test_batch",),
    ("bin", "train"): tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    ("bin", "test"): ("test_batch.bin",),
}
_CIFAR_RECORD = 1 + 3 * 32 * 32
_STAMP = ".csub-source"


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


def _cifar_batches_in(directory, split):
    """(format, folder) if ``directory`` directly holds all batches of ``split``."""
    for fmt in ("py", "bin"):
        names = _CIFAR_FILES[(fmt, split)]
        if all(os.path.isfile(os.path.join(directory, n)) for n in names):
            return fmt, directory
    return None


def _safe_member_path(member):
    """Relative (folder, file) of a tar member inside a CIFAR batches folder, or None."""
    if not member.isfile():
        return None
    parts = [p for p in member.name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) != 2 or parts[0] not in _CIFAR_FOLDERS or parts[1] == "..":
        return None
    return parts[0], parts[1]


def _archive_stamp(archive):
    st = os.stat(archive)
    return f"{os.path.realpath(archive)}\n{st.st_size}\n{st.st_mtime_ns}\n"


def _extract_cifar_archive(archive):
    """Extract the batches folder of a CIFAR-10 archive into the cache.

    Only regular files directly inside ``cifar-10-batches-py/`` or
    ``cifar-10-batches-bin/`` are written (no links, no paths outside).  An
    earlier extraction of the same archive (same path, size and mtime) is
    reused.  Returns the extracted folder.
    """
    archive = os.fspath(archive)
    stamp = _archive_stamp(archive)
    dest_root = os.path.join(cache_dir(), "cifar10")
    for folder in _CIFAR_FOLDERS:
        stamp_file = os.path.join(dest_root, folder, _STAMP)
        if os.path.isfile(stamp_file):
            with open(stamp_file) as f:
                if f.read() == stamp:
                    return os.path.join(dest_root, folder)
    os.makedirs(dest_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=dest_root)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    rel = _safe_member_path(member)
                    if rel is None:
                        continue
                    os.makedirs(os.path.join(tmp, rel[0]), exist_ok=True)
                    src = tar.extractfile(member)
                    with src, open(os.path.join(tmp, *rel), "wb") as out:
                        shutil.copyfileobj(src, out)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"{archive}: corrupt or truncated CIFAR-10 archive ({exc})") from exc
        folders = [f for f in _CIFAR_FOLDERS if os.path.isdir(os.path.join(tmp, f))]
        if not folders:
            raise ValueError(
                f"{archive}: no {' or '.join(_CIFAR_FOLDERS)} folder in the archive")
        folder = folders[0]
        with open(os.path.join(tmp, folder, _STAMP), "w") as f:
            f.write(stamp)
        final = os.path.join(dest_root, folder)
        if os.path.exists(final):
            os.rename(final, os.path.join(tmp, ".old"))
        os.rename(os.path.join(tmp, folder), final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_archive(path):
    return path.endswith((".tar.gz", ".tgz", ".tar"))


def _resolve_cifar(path, split):
    """Find the batches of ``split`` at ``path`` (folder, parent folder or archive)."""
    if os.path.isfile(path):
        if not _is_archive(path):
            raise ValueError(f"{path}: not a CIFAR-10 .tar.gz archive or batches folder")
        return _cifar_batches_in(_extract_cifar_archive(path), split)
    if not os.path.isdir(path):
        return None
    found = _cifar_batches_in(path, split)
    if found:
        return found
    for folder in _CIFAR_FOLDERS:
        sub = os.path.join(path, folder)
        if os.path.isdir(sub):
            found = _cifar_batches_in(sub, split)
            if found:
                return found
    for name in _CIFAR_ARCHIVES:
        archive = os.path.join(path, name)
        if os.path.isfile(archive):
            found = _cifar_batches_in(_extract_cifar_archive(archive), split)
            if found:
                return found
    return None


def _load_cifar_batches(fmt, folder, split):
    reader = _read_cifar_pickle if fmt == "py" else _read_cifar_binary
    parts = [reader(os.path.join(folder, n)) for n in _CIFAR_FILES[(fmt, split)]]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{folder}: CIFAR-10 label outside 0..9")
    return images, labels


def cifar10(split="train", root=None, download=True):
    """Load CIFAR-10.

    Both distribution formats are read: the python version
    (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``; pickled dicts with
    ``b"data"``, uint8 (N, 3072), and ``b"labels"``) and the binary version
    (``cifar-10-batches-bin/data_batch_1..5.bin``, ``test_batch.bin``; records
    of 1 label byte + 3072 pixel bytes).  A 3072-byte image row is 1024 red,
    then 1024 green, then 1024 blue values, each a row-major 32x32 plane.
    Pickles are read with a restricted unpickler that accepts no globals
    except numpy array reconstruction.

    Args:
        split: ``"train"`` (50000 images) or ``"test"`` (10000 images).
        root: a folder holding the batches, a folder containing
            ``cifar-10-batches-py``/``-bin`` or the ``.tar.gz`` archives, or a
            ``cifar-10-python.tar.gz`` / ``cifar-10-binary.tar.gz`` archive
            (extracted into ``~/.cache/csub/cifar10``).  When given, the only
            place looked at.
        download: if not found locally, download the python version into
            ``~/.cache/csub/cifar10`` (MD5-checked) and extract it.

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) RGB pixel values 0..255
        and int64 (N,) class indices 0..9 (see :data:`CIFAR10_CLASSES`).

    Raises:
        FileNotFoundError: not found (and not downloadable).
        ValueError: a batch or archive is corrupt (message names the file).
    """
    _check_split(split)
    if root is not None:
        root = os.fspath(root)
        if not os.path.exists(root):
            raise FileNotFoundError(f"CIFAR-10 location not found: {root}")
        found = _resolve_cifar(root, split)
        if found is None:
            raise FileNotFoundError(
                f"no complete CIFAR-10 {split} batches in {root}: expected "
                f"{', '.join(_CIFAR_FILES[('py', split)])} (python version) or "
                f"{', '.join(_CIFAR_FILES[('bin', split)])} (binary version), directly or "
                f"in {' / '.join(_CIFAR_FOLDERS)}, or a {' / '.join(_CIFAR_ARCHIVES)} archive")
        return _load_cifar_batches(*found, split)
    data = _csub_data()
    target = os.path.join(cache_dir(), "cifar10")
    dirs = _dedupe(([os.path.join(data, "cifar10"), data] if data else []) + [target])
    for d in dirs:
        found = _resolve_cifar(d, split)
        if found is not None:
            return _load_cifar_batches(*found, split)
    if download:
        archive = os.path.join(target, _CIFAR_ARCHIVES[0])
        try:
            _download_file(CIFAR10_URL, archive, CIFAR10_MD5)
        except OSError as exc:
            reason = f"download failed ({exc})"
        else:
            found = _resolve_cifar(archive, split)
            if found is not None:
                return _load_cifar_batches(*found, split)
            reason = f"downloaded archive {archive} lacks the {split} batches"
    else:
        reason = "download=False"
    raise FileNotFoundError(
        f"CIFAR-10 not found (searched {', '.join(dirs)}; {reason}). Download {CIFAR10_URL} "
        f"and pass root=<path of the archive>, or put the archive or its extracted "
        f"cifar-10-batches-py folder into {target} (or $CSUB_DATA/cifar10).")


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


def _check_images(images, name="images"):
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {images.shape}")
    if min(images.shape) < 1:
        raise ValueError(f"{name} must be non-empty in every dimension, got shape {images.shape}")


def channel_stats(images):
    """Per-channel mean and standard deviation of uint8 images.

    Exact integer sums of pixels and squared pixels (computed in chunks, so
    memory stays small), population std, in units of [0, 1]-scaled pixels
    (pixel / 255).

    Args:
        images: uint8 array (N, C, H, W).

    Returns:
        ``(mean, std)``: float32 arrays of shape (C,).
    """
    _check_images(images)
    n_img, channels = images.shape[:2]
    count = n_img * images.shape[2] * images.shape[3]
    s1 = np.zeros(channels, np.uint64)
    s2 = np.zeros(channels, np.uint64)
    chunk = max(1, (1 << 22) // (channels * images.shape[2] * images.shape[3]))
    for start in range(0, n_img, chunk):
        block = images[start:start + chunk].astype(np.uint16)
        s1 += block.sum(axis=(0, 2, 3), dtype=np.uint64)
        block *= block  # 255**2 fits in uint16
        s2 += block.sum(axis=(0, 2, 3), dtype=np.uint64)
    mean = np.empty(channels, np.float64)
    std = np.empty(channels, np.float64)
    for c in range(channels):
        t1, t2 = int(s1[c]), int(s2[c])
        mean[c] = t1 / count / 255.0
        std[c] = math.sqrt((count * t2 - t1 * t1) / count**2) / 255.0
    return mean.astype(np.float32), std.astype(np.float32)


# --------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------


def _check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _check_channel_vector(value, name, channels):
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number or a sequence of {channels} numbers") from exc
    if arr.ndim == 0:
        arr = np.full(channels, float(arr))
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    return arr.astype(np.float32)


class DataLoader:
    """Mini-batches of normalised float32 images from a uint8 array.

    Iterating yields ``(x, y)``: ``x`` float32 C-contiguous (B, C, H, W) with
    ``x = (pixel / 255 - mean[c]) / std[c]`` (computed in float64, rounded to
    float32), ``y`` int64 (B,).  The last batch is smaller unless
    ``drop_last``.

    Randomness: epoch ``e`` uses its own generator
    ``numpy.random.Generator(numpy.random.PCG64(seed).jumped(e))`` -- for
    epoch 0 exactly ``Generator(PCG64(seed))``.  Each ``iter(loader)`` runs
    epoch :attr:`epoch` and then advances it by one; :meth:`set_epoch` picks
    the epoch explicitly, so a resumed run reproduces the same batches.  Per
    epoch, draws happen in this order: the permutation (if ``shuffle``), then
    for every batch of size B: ``flip = rng.random(B) < 0.5``,
    ``dy = rng.integers(0, 2 * pad + 1, B)``, ``dx = rng.integers(0, 2 * pad + 1, B)``
    (if ``augment``).

    Augmentation (``augment=True``), per image: flip horizontally when
    ``flip``; zero-pad the *normalised* image by ``pad`` pixels on every side
    (0 after normalisation, i.e. the channel mean, not black); take the
    H x W window whose top-left corner is at row ``dy``, column ``dx`` of
    the padded image.  Vectorised over the batch (no per-image Python loop).

    Args:
        images: uint8 array (N, C, H, W), pixel values 0..255.  Not copied.
        labels: integer array-like (N,).
        batch_size: images per batch, >= 1.
        shuffle: draw a fresh permutation every epoch.
        augment: random crop with zero padding + random horizontal flip.
        mean, std: per-channel normalisation, in [0, 1]-pixel units (scalar
            or shape (C,)); default: :func:`channel_stats` of ``images``.
        drop_last: drop the final incomplete batch.
        seed: non-negative int seeding the loader's generators.
        pad: padding (pixels) for the random crop, >= 0.
    """

    def __init__(self, images, labels, batch_size=128, shuffle=False, augment=False,
                 mean=None, std=None, drop_last=False, seed=0, pad=4):
        _check_images(images)
        try:
            labels = np.asarray(labels)
        except Exception as exc:
            raise TypeError("labels must be an integer array") from exc
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels has {labels.shape[0]} entries but images has {images.shape[0]}")
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.shuffle = _check_bool(shuffle, "shuffle")
        self.augment = _check_bool(augment, "augment")
        self.drop_last = _check_bool(drop_last, "drop_last")
        self.seed = _check_int(seed, "seed", 0)
        self.pad = _check_int(pad, "pad", 0)
        channels = images.shape[1]
        if mean is None or std is None:
            stats = channel_stats(images)
        mean = stats[0] if mean is None else _check_channel_vector(mean, "mean", channels)
        std = stats[1] if std is None else _check_channel_vector(std, "std", channels)
        if np.any(std <= 0):
            raise ValueError(f"std must be > 0, got {std}")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.mean = mean
        self.std = std
        self.epoch = 0
        # Lookup table: entry 257 * c + v is the normalised value of pixel v in
        # channel c; entry 257 * c + 256 is 0.0, the value of padding.
        table = (np.arange(256.0)[None, :] / 255.0 - mean.astype(np.float64)[:, None]) \
            / std.astype(np.float64)[:, None]
        table = np.concatenate([table, np.zeros((channels, 1))], axis=1)
        self._lut = table.astype(np.float32).ravel()
        self._base = (np.arange(channels, dtype=np.uint16) * 257)[None, :, None, None]

    @property
    def num_samples(self):
        """Number of images N."""
        return self.images.shape[0]

    def __len__(self):
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch):
        """Make the next iteration run epoch ``epoch`` (an int >= 0)."""
        self.epoch = _check_int(epoch, "epoch", 0)

    def generator(self, epoch):
        """A fresh copy of the random generator epoch ``epoch`` uses."""
        return np.random.Generator(np.random.PCG64(self.seed).jumped(epoch))

    def __iter__(self):
        # A generator: the epoch is taken (and advanced) when iteration starts,
        # so an iterator made and dropped unused (as progress bars may do)
        # does not skip an epoch.
        rng = self.generator(self.epoch)
        self.epoch += 1
        n = self.num_samples
        order = rng.permutation(n) if self.shuffle else None
        yield from self._batches(rng, order, len(self))

    def _normalise(self, img):
        if img.shape[1] == 1:
            return np.take(self._lut, img)
        return np.take(self._lut, np.add(img, self._base, dtype=np.uint16))

    def _batches(self, rng, order, nbatches):
        bs = self.batch_size
        if self.augment:
            _, c, h, w = self.images.shape
            p = self.pad
            k = 2 * p + 1
            # Padded uint16 scratch batch holding LUT indices; the border keeps
            # the per-channel "padding" index 257 * c + 256 for the whole epoch.
            buf = np.empty((bs, c, h + 2 * p, w + 2 * p), np.uint16)
            buf[...] = self._base + 256
            windows = sliding_window_view(buf, (h, w), axis=(2, 3))
            windows_flipped = sliding_window_view(buf[..., ::-1], (h, w), axis=(2, 3))
            interior = buf[:, :, p:p + h, p:p + w]
        for i in range(nbatches):
            start, stop = i * bs, min((i + 1) * bs, self.num_samples)
            if order is None:
                img = self.images[start:stop]
                y = self.labels[start:stop].copy()
            else:
                idx = order[start:stop]
                img = self.images[idx]
                y = self.labels[idx]
            if not self.augment:
                yield self._normalise(img), y
                continue
            b = stop - start
            flip = rng.random(b) < 0.5
            dy = rng.integers(0, k, b)
            dx = rng.integers(0, k, b)
            np.add(img, self._base, out=interior[:b])
            crop = np.empty((b, c, h, w), np.uint16)
            keep, flipped = np.flatnonzero(~flip), np.flatnonzero(flip)
            crop[keep] = windows[keep, :, dy[keep], dx[keep]]
            crop[flipped] = windows_flipped[flipped, :, dy[flipped], dx[flipped]]
            yield np.take(self._lut, crop), y

    def __repr__(self):
        return (f"DataLoader(images={self.images.shape}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, drop_last={self.drop_last}, "
                f"seed={self.seed}, pad={self.pad}, epoch={self.epoch})")
