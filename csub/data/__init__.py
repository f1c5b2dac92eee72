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

Modules
-------
* :mod:`csub.data.formats` -- IDX read/write, CIFAR-10 batch parsing.
* :mod:`csub.data.datasets` -- the dataset loaders, file lookup, downloads and
  dataset constants.  The settings (``DOWNLOAD_TIMEOUT``, ``*_SYSTEM_DIR``,
  ``*_URL``, ``*_MD5``) are read from this module at call time: change them
  there, e.g. ``csub.data.datasets.DOWNLOAD_TIMEOUT = 60``.
* :mod:`csub.data.loader` -- :func:`channel_stats` and :class:`DataLoader`.
"""

from .datasets import (  # noqa: F401 (settings re-exported, not in __all__)
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    DOWNLOAD_TIMEOUT,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MD5,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FASHION_MNIST_SYSTEM_DIR,
    FASHION_MNIST_URL,
    MNIST_CLASSES,
    MNIST_MD5,
    MNIST_SYSTEM_DIR,
    MNIST_URL,
    DownloadError,
    cache_dir,
    cifar10,
    fashion_mnist,
    mnist,
)
from . import datasets, formats, loader
from .formats import load_idx_pair, read_idx, write_idx
from .loader import DataLoader, channel_stats

__all__ = formats.__all__ + datasets.__all__ + loader.__all__
