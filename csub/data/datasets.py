"""Datasets: Fashion-MNIST (with its bundled subset), MNIST and CIFAR-10.

Where files are looked up, downloads into the user cache (MD5-checked,
atomic), safe extraction of CIFAR-10 archives, and the per-dataset constants
(class names, channel statistics, canonical URLs and checksums).  The search
order is described in the :mod:`csub.data` docstring.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from typing import Optional, Tuple

import numpy as np

from .formats import PathLike, _read_cifar_binary, _read_cifar_pickle, load_idx_pair

__all__ = [
    "fashion_mnist",
    "mnist",
    "cifar10",
    "cache_dir",
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

# The bundled subset is package data of ``csub``: csub/datasets/fashion_mnist_subset.
_BUNDLED_FASHION_MNIST_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets",
    "fashion_mnist_subset")

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# --------------------------------------------------------------------------
# Locations and downloads
# --------------------------------------------------------------------------


def cache_dir() -> str:
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


def _find_idx(dirs, prefix, what, download, url, md5s, target):
    """A split's 28x28 IDX pair from the first of ``dirs`` that holds it, else (``download``) from
    the files fetched from ``url`` into ``target``. Returns ``((images, labels), None)``, or
    ``(None, reason)`` where neither worked."""
    pair = _search_idx(dirs, prefix)
    if pair is not None:
        return _load_28x28(pair, what), None
    if not download:
        return None, "download=False"
    try:
        _download_idx_set(url, md5s, target)
    except OSError as exc:
        return None, f"download failed ({exc})"
    return _load_idx_from_root(target, prefix, what), None


# --------------------------------------------------------------------------
# Fashion-MNIST and MNIST
# --------------------------------------------------------------------------


def fashion_mnist(split: str = "train", root: Optional[PathLike] = None, bundled: bool = False,
                  download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
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
        return _bundled_fashion_mnist(prefix)
    if root is not None:
        return _load_idx_from_root(root, prefix, "Fashion-MNIST")
    dirs = _fashion_mnist_dirs()
    found, reason = _find_idx(dirs, prefix, "Fashion-MNIST", download, FASHION_MNIST_URL, FASHION_MNIST_MD5,
                              os.path.join(cache_dir(), "fashion-mnist"))
    if found is not None:
        return found
    warnings.warn(
        f"Full Fashion-MNIST not found (searched {', '.join(dirs)}; {reason}); using the "
        f"bundled subset of 600 train / 100 test images per class. To get the full set, "
        f"run `apt-get install dataset-fashion-mnist`, or set CSUB_DATA to a directory "
        f"holding fashion-mnist/train-images-idx3-ubyte.gz and the other three files "
        f"from {FASHION_MNIST_URL}.",
        UserWarning, stacklevel=2)
    return _bundled_fashion_mnist(prefix)


def _bundled_fashion_mnist(prefix):
    """The bundled subset's split ``prefix`` ("train" or "t10k"): uint8 (N, 1, 28, 28), int64 (N,)."""
    pair = _idx_pair_in(_BUNDLED_FASHION_MNIST_DIR, prefix)
    if pair is None:
        raise FileNotFoundError(
            f"bundled Fashion-MNIST subset missing from {_BUNDLED_FASHION_MNIST_DIR} "
            f"(broken installation?)")
    return _load_28x28(pair, "Fashion-MNIST")


def mnist(split: str = "train", root: Optional[PathLike] = None,
          download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
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
    target = os.path.join(cache_dir(), "mnist")
    found, reason = _find_idx(dirs, prefix, "MNIST", download, MNIST_URL, MNIST_MD5, target)
    if found is not None:
        return found
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
_STAMP = ".csub-source"


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


def cifar10(split: str = "train", root: Optional[PathLike] = None,
            download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
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
