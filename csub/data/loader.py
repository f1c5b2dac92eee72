"""Normalisation and batching: :func:`channel_stats` and the augmenting :class:`DataLoader`."""

from __future__ import annotations

import math
import numbers
from typing import Iterator, Optional, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["channel_stats", "DataLoader"]

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


def channel_stats(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
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

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 128, shuffle: bool = False,
                 augment: bool = False, mean: Optional[Union[float, np.ndarray]] = None,
                 std: Optional[Union[float, np.ndarray]] = None, drop_last: bool = False, seed: int = 0,
                 pad: int = 4) -> None:
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
    def num_samples(self) -> int:
        """Number of images N."""
        return self.images.shape[0]

    def __len__(self) -> int:
        """Batches per epoch: N / batch_size rounded down with ``drop_last``, else up."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch`` (an int >= 0)."""
        self.epoch = _check_int(epoch, "epoch", 0)

    def generator(self, epoch: int) -> np.random.Generator:
        """A fresh copy of the random generator epoch ``epoch`` uses."""
        return np.random.Generator(np.random.PCG64(self.seed).jumped(epoch))

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """One epoch of batches (x (B, C, H, W) float32 normalised, y (B,) int64); see the class."""
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

    def __repr__(self) -> str:
        return (f"DataLoader(images={self.images.shape}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, drop_last={self.drop_last}, "
                f"seed={self.seed}, pad={self.pad}, epoch={self.epoch})")
