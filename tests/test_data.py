"""Tests for csub.data: IDX / CIFAR readers, dataset lookup, DataLoader."""

import gzip
import hashlib
import io
import os
import pathlib
import pickle
import re
import shutil
import struct
import tarfile
import warnings

import numpy as np
import pytest

from csub import data

FULL_FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

_BE = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(arr, code=0x08, dims=None):
    """IDX encoding of ``arr`` written independently of csub.data."""
    arr = np.asarray(arr)
    dims = arr.shape if dims is None else dims
    header = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    return header + arr.astype(_BE[code]).tobytes()


def write_file(path, payload, gz=None):
    path = str(path)
    gz = path.endswith(".gz") if gz is None else gz
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if gz else payload)
    return path


def isolate_env(monkeypatch, tmp_path):
    """Empty CSUB_DATA, private HOME / XDG cache, no system dataset directories."""
    data_dir = tmp_path / "csub_data"
    data_dir.mkdir()
    monkeypatch.setenv("CSUB_DATA", str(data_dir))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data.datasets, "FASHION_MNIST_SYSTEM_DIR",
                        str(tmp_path / "no-system-fmnist"))
    monkeypatch.setattr(data.datasets, "MNIST_SYSTEM_DIR", str(tmp_path / "no-system-mnist"))
    return data_dir


def no_network(monkeypatch):
    def fail(url, dest, md5, timeout=None):
        raise data.DownloadError(f"network disabled in tests ({url})")
    monkeypatch.setattr(data.datasets, "_download_file", fail)


def md5_of(path):
    return hashlib.md5(pathlib.Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(_BE))
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_every_dtype(tmp_path, code, gz):
    rng = np.random.default_rng(code)
    arr = rng.integers(-100, 100, size=(4, 3, 5)).astype(np.dtype(_BE[code]).newbyteorder("="))
    if code == 0x08:
        arr = rng.integers(0, 256, size=(4, 3, 5)).astype(np.uint8)
    if code in (0x0D, 0x0E):
        arr = arr + 0.25
    path = write_file(tmp_path / ("a.idx.gz" if gz else "a.idx"), idx_bytes(arr, code))
    out = data.read_idx(path)
    assert out.dtype == arr.dtype and out.dtype.isnative
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["b.idx", "b.idx.gz"])
def test_write_idx_round_trip(tmp_path, dtype, name):
    arr = (np.arange(60).reshape(3, 4, 5) % 50).astype(dtype)
    data.write_idx(tmp_path / name, arr)
    raw = (tmp_path / name).read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    assert raw[:2] == b"\0\0" and raw[3] == 3
    np.testing.assert_array_equal(data.read_idx(tmp_path / name), arr)


def test_write_idx_gzip_is_reproducible(tmp_path):
    arr = np.arange(100, dtype=np.uint8)
    data.write_idx(tmp_path / "x.gz", arr)
    data.write_idx(tmp_path / "y.gz", arr)
    assert (tmp_path / "x.gz").read_bytes() == (tmp_path / "y.gz").read_bytes()


def test_idx_compression_detected_from_content(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = write_file(tmp_path / "plain-name", idx_bytes(arr), gz=True)
    raw_with_suffix = write_file(tmp_path / "raw.gz", idx_bytes(arr), gz=False)
    np.testing.assert_array_equal(data.read_idx(gz_without_suffix), arr)
    np.testing.assert_array_equal(data.read_idx(raw_with_suffix), arr)


def test_idx_missing_file(tmp_path):
    path = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        data.read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    payload = idx_bytes(np.arange(100, dtype=np.uint8).reshape(10, 10))[:-7]
    path = write_file(tmp_path / ("t.gz" if gz else "t"), payload, gz=gz)
    with pytest.raises(ValueError, match=re.escape(path) + ".*truncated"):
        data.read_idx(path)


def test_idx_truncated_gzip_stream(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint8)
    blob = gzip.compress(idx_bytes(values))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.read_idx(path)


def test_idx_truncated_header(tmp_path):
    path = write_file(tmp_path / "h", b"\0\0\x08\x03\0\0\0\x02")
    with pytest.raises(ValueError, match=re.escape(path) + ".*header"):
        data.read_idx(path)


@pytest.mark.parametrize("offset, value, name, message", [(0, 1, "m.gz", "magic"),
                                                       (2, 0x0A, "c", "type code 0x0a")])
def test_idx_bad_header_byte(tmp_path, offset, value, name, message):
    """A wrong magic (byte 0) or an unknown type code (byte 2) is an error naming the file."""
    payload = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    payload[offset] = value
    path = write_file(tmp_path / name, bytes(payload))
    with pytest.raises(ValueError, match=re.escape(path) + ".*" + message):
        data.read_idx(path)


def test_idx_zero_dims(tmp_path):
    path = write_file(tmp_path / "z", b"\0\0\x08\x00")
    with pytest.raises(ValueError, match=re.escape(path)):
        data.read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dims_disagree_with_data(tmp_path, gz):
    arr = np.zeros(24, np.uint8)
    too_big = write_file(tmp_path / ("big.gz" if gz else "big"), idx_bytes(arr, dims=(2, 3, 5)),
                         gz=gz)
    with pytest.raises(ValueError, match=re.escape(too_big)):
        data.read_idx(too_big)
    too_small = write_file(tmp_path / ("small.gz" if gz else "small"),
                           idx_bytes(arr, dims=(2, 3, 3)), gz=gz)
    with pytest.raises(ValueError, match=re.escape(too_small) + ".*trailing"):
        data.read_idx(too_small)


def test_idx_absurd_dims_rejected_without_allocating(tmp_path):
    path = write_file(tmp_path / "huge.gz", idx_bytes(np.zeros(8, np.uint8),
                                                      dims=(2**31, 2**31, 2**31)))
    with pytest.raises(ValueError, match=re.escape(path)):
        data.read_idx(path)


def _pair(tmp_path, n_images=5, n_labels=5, labels=None, h=28):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n_images, h, h)).astype(np.uint8)
    if labels is None:
        labels = rng.integers(0, 10, size=n_labels).astype(np.uint8)
    ipath = write_file(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(images))
    lpath = write_file(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(labels))
    return ipath, lpath, images, labels


def test_load_idx_pair(tmp_path):
    ipath, lpath, images, labels = _pair(tmp_path)
    x, y = data.load_idx_pair(ipath, lpath)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (5,) and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels)


def test_load_idx_pair_count_mismatch_names_both_files(tmp_path):
    ipath, lpath, _, _ = _pair(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(ValueError, match=re.escape(ipath) + ".*" + re.escape(lpath)):
        data.load_idx_pair(ipath, lpath)


def test_load_idx_pair_bad_label_and_dtype(tmp_path):
    ipath, lpath, _, _ = _pair(tmp_path, labels=np.array([0, 1, 2, 10, 3], np.uint8))
    with pytest.raises(ValueError, match=re.escape(lpath) + ".*outside"):
        data.load_idx_pair(ipath, lpath)
    wrong = write_file(tmp_path / "w.gz", idx_bytes(np.zeros((5, 28, 28)), code=0x0B))
    with pytest.raises(ValueError, match=re.escape(wrong)):
        data.load_idx_pair(wrong, lpath)


# --------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------

TRAIN_SIZES = (3, 2, 4, 1, 2)
TEST_SIZE = 3


def cifar_rows(images):
    """(n, 3072) rows: 1024 R, 1024 G, 1024 B, each plane row-major 32x32."""
    n = images.shape[0]
    return np.concatenate([images[:, c].reshape(n, 1024) for c in range(3)], axis=1)


def make_cifar(base, fmt, protocol=2, seed=0):
    """Write a tiny CIFAR-10 in ``fmt`` ("py" / "bin"); returns folder, expected arrays."""
    rng = np.random.default_rng(seed)
    folder = base / ("cifar-10-batches-py" if fmt == "py" else "cifar-10-batches-bin")
    folder.mkdir(parents=True)
    expected = {}
    batches = [(f"data_batch_{i + 1}", n, "train") for i, n in enumerate(TRAIN_SIZES)]
    batches.append(("test_batch", TEST_SIZE, "test"))
    for name, n, split in batches:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        rows = cifar_rows(images)
        if fmt == "py":
            batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                     b"data": rows, b"filenames": [b"img%d.png" % i for i in range(n)]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        else:
            records = np.concatenate([labels.astype(np.uint8)[:, None], rows], axis=1)
            (folder / (name + ".bin")).write_bytes(records.tobytes())
        prev = expected.get(split)
        if prev is None:
            expected[split] = (images, labels)
        else:
            expected[split] = (np.concatenate([prev[0], images]),
                               np.concatenate([prev[1], labels]))
    return folder, expected


def make_tar(folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def check_cifar(result, expected):
    images, labels = result
    assert images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.dtype == np.int64
    assert images.shape == (len(expected[1]), 3, 32, 32)
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "csub"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_batches(tmp_path, cache, protocol):
    folder, expected = make_cifar(tmp_path / "d", "py", protocol=protocol)
    for root in (folder, folder.parent, str(folder)):
        check_cifar(data.cifar10("train", root=root, download=False), expected["train"])
        check_cifar(data.cifar10("test", root=root, download=False), expected["test"])


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_pickle_numpy_labels_and_str_keys(tmp_path, cache, protocol):
    folder, expected = make_cifar(tmp_path / "d", "py")
    images, labels = expected["test"]
    as_scalars = {b"data": cifar_rows(images), b"labels": list(labels.astype(np.int64))}
    (folder / "test_batch").write_bytes(pickle.dumps(as_scalars, protocol=protocol))
    check_cifar(data.cifar10("test", root=folder), expected["test"])
    str_keys = {"data": cifar_rows(images), "labels": labels.astype(np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(str_keys, protocol=protocol))
    check_cifar(data.cifar10("test", root=folder), expected["test"])


def test_cifar_binary_batches(tmp_path, cache):
    folder, expected = make_cifar(tmp_path / "d", "bin")
    for root in (folder, folder.parent):
        check_cifar(data.cifar10("train", root=root), expected["train"])
        check_cifar(data.cifar10("test", root=root), expected["test"])


def test_cifar_exact_pixel_layout(tmp_path, cache):
    folder, _ = make_cifar(tmp_path / "d", "bin")
    raw = (folder / "test_batch.bin").read_bytes()
    images, labels = data.cifar10("test", root=folder)
    for j in range(TEST_SIZE):
        record = raw[j * 3073:(j + 1) * 3073]
        assert labels[j] == record[0]
        for c, h, w in [(0, 0, 0), (0, 0, 31), (1, 5, 7), (2, 31, 0), (2, 31, 31), (1, 17, 2)]:
            assert images[j, c, h, w] == record[1 + 1024 * c + 32 * h + w]


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar_tar_gz(tmp_path, cache, fmt):
    folder, expected = make_cifar(tmp_path / "d", fmt)
    archive = make_tar(folder, tmp_path / ("cifar-10-python.tar.gz" if fmt == "py"
                                           else "cifar-10-binary.tar.gz"))
    shutil.rmtree(folder)
    check_cifar(data.cifar10("train", root=archive), expected["train"])
    check_cifar(data.cifar10("test", root=str(archive)), expected["test"])
    # extracted into the cache; a folder holding only the archive works too
    assert (cache / "cifar10" / folder.name / "test_batch").exists() or \
        (cache / "cifar10" / folder.name / "test_batch.bin").exists()
    check_cifar(data.cifar10("test", root=tmp_path), expected["test"])


def test_cifar_new_archive_replaces_stale_extraction(tmp_path, cache):
    folder_a, _ = make_cifar(tmp_path / "a", "py", seed=1)
    folder_b, expected_b = make_cifar(tmp_path / "b", "py", seed=2)
    archive_a = make_tar(folder_a, tmp_path / "a.tar.gz")
    archive_b = make_tar(folder_b, tmp_path / "b.tar.gz")
    data.cifar10("test", root=archive_a)
    check_cifar(data.cifar10("test", root=archive_b), expected_b["test"])


def test_cifar_archive_members_outside_batches_are_ignored(tmp_path, cache):
    folder, expected = make_cifar(tmp_path / "d", "py")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        for name in ("../escaped", "cifar-10-batches-py/../../escaped2", "/tmp/abs-escape"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    check_cifar(data.cifar10("test", root=archive), expected["test"])
    assert not (cache / "escaped").exists() and not (cache.parent / "escaped2").exists()
    assert not list(tmp_path.rglob("escaped*"))


def test_cifar_corrupt_archive(tmp_path, cache):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(ValueError, match=re.escape(str(archive))):
        data.cifar10("train", root=archive)


def test_cifar_truncated_binary(tmp_path, cache):
    folder, _ = make_cifar(tmp_path / "d", "bin")
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.cifar10("train", root=folder)


def test_cifar_truncated_pickle(tmp_path, cache):
    folder, _ = make_cifar(tmp_path / "d", "py")
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.cifar10("test", root=folder)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_pickle_with_forbidden_global_is_refused(tmp_path, cache):
    folder, _ = make_cifar(tmp_path / "d", "py")
    marker = tmp_path / "pwned"
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*forbidden global"):
        data.cifar10("test", root=folder)
    assert not marker.exists()
    mkdir_pickle = pickle.dumps({b"data": _Evil("x"), b"labels": []}, protocol=4)
    system = mkdir_pickle.replace(b"\x8c\x05mkdir", b"\x8c\x06system")
    assert system != mkdir_pickle
    path.write_bytes(system)
    with pytest.raises(ValueError, match="forbidden global"):
        data.cifar10("test", root=folder)


def test_cifar_bad_contents(tmp_path, cache):
    folder, _ = make_cifar(tmp_path / "d", "py")
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*3072"):
        data.cifar10("test", root=folder)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.cifar10("test", root=folder)


def offline_and_empty(monkeypatch, tmp_path, load, split, named):
    """No data anywhere and no network: ``load(split)`` fails naming ``named`` (the file to get),
    ``load("test", download=False)`` names download=False. Returns the isolated data directory."""
    data_dir = isolate_env(monkeypatch, tmp_path)
    no_network(monkeypatch)
    with pytest.raises(FileNotFoundError, match=named):
        load(split)
    with pytest.raises(FileNotFoundError, match="download=False"):
        load("test", download=False)
    return data_dir


def test_cifar_search_and_not_found(tmp_path, monkeypatch, cache):
    data_dir = offline_and_empty(monkeypatch, tmp_path, data.cifar10, "test", "cifar-10-python.tar.gz")
    _, expected = make_cifar(data_dir / "cifar10", "bin")
    check_cifar(data.cifar10("test", download=False), expected["test"])
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        data.cifar10("test", root=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.cifar10("test", root=empty)
    with pytest.raises(ValueError, match="split"):
        data.cifar10("valid", root=empty)


# --------------------------------------------------------------------------
# Fashion-MNIST / MNIST
# --------------------------------------------------------------------------


@pytest.mark.parametrize("split,n", [("train", 600), ("test", 100)])
def test_fashion_mnist_bundled(split, n):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels = data.fashion_mnist(split, bundled=True)
    assert images.shape == (10 * n, 1, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10 * n,) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n] * 10)
    assert images.max() > 200 and images.std() > 20  # real images, not blank


@pytest.mark.skipif(not os.path.isdir(FULL_FASHION_DIR), reason="full Fashion-MNIST not installed")
def test_fashion_mnist_full_set():
    train_x, train_y = data.fashion_mnist("train", root=FULL_FASHION_DIR)
    test_x, test_y = data.fashion_mnist("test", root=FULL_FASHION_DIR)
    assert train_x.shape == (60000, 1, 28, 28) and train_y.shape == (60000,)
    assert test_x.shape == (10000, 1, 28, 28) and test_y.shape == (10000,)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(train_y), [6000] * 10)
    mean, std = data.channel_stats(train_x)
    np.testing.assert_allclose(mean, data.FASHION_MNIST_MEAN, atol=1e-6)
    np.testing.assert_allclose(std, data.FASHION_MNIST_STD, atol=1e-6)
    # the bundled subset is made of images of the full set
    sub_x, sub_y = data.fashion_mnist("test", bundled=True)
    full = {row.tobytes(): label for row, label in zip(test_x.reshape(10000, -1), test_y)}
    assert all(full.get(row.tobytes()) == label
               for row, label in zip(sub_x.reshape(1000, -1), sub_y))


def test_fashion_mnist_falls_back_to_bundled(tmp_path, monkeypatch):
    isolate_env(monkeypatch, tmp_path)
    no_network(monkeypatch)
    bundled = data.fashion_mnist("test", bundled=True)
    with pytest.warns(UserWarning, match="apt-get install dataset-fashion-mnist") as record:
        images, labels = data.fashion_mnist("test")
    assert "CSUB_DATA" in str(record[0].message)
    np.testing.assert_array_equal(images, bundled[0])
    np.testing.assert_array_equal(labels, bundled[1])
    with pytest.warns(UserWarning, match="download=False"):
        images, _ = data.fashion_mnist("train", download=False)
    assert images.shape == (6000, 1, 28, 28)


def _bundled_file(name):
    return os.path.join(data.datasets._BUNDLED_FASHION_MNIST_DIR, name)


def test_fashion_mnist_search_order(tmp_path, monkeypatch):
    data_dir = isolate_env(monkeypatch, tmp_path)
    no_network(monkeypatch)
    expected = data.fashion_mnist("test", bundled=True)
    # un-gzipped files directly in $CSUB_DATA
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(_bundled_file(name + ".gz")) as src:
            (data_dir / name).write_bytes(src.read())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels = data.fashion_mnist("test")
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])
    # $CSUB_DATA/fashion-mnist comes first: a corrupt file there is reported
    sub = data_dir / "fashion-mnist"
    sub.mkdir()
    (sub / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    shutil.copy(_bundled_file("t10k-labels-idx1-ubyte.gz"), sub)
    with pytest.raises(ValueError, match=re.escape(str(sub / "t10k-images-idx3-ubyte.gz"))):
        data.fashion_mnist("test")


def test_fashion_mnist_download(tmp_path, monkeypatch):
    isolate_env(monkeypatch, tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5s = {}
    for name in data.FASHION_MNIST_MD5:
        shutil.copy(_bundled_file(name), mirror)
        md5s[name] = md5_of(mirror / name)
    monkeypatch.setattr(data.datasets, "FASHION_MNIST_URL", mirror.as_uri() + "/")
    monkeypatch.setattr(data.datasets, "FASHION_MNIST_MD5", md5s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels = data.fashion_mnist("test")
    expected = data.fashion_mnist("test", bundled=True)
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])
    cached = tmp_path / "cache" / "csub" / "fashion-mnist"
    assert sorted(os.listdir(cached)) == sorted(md5s)


def test_fashion_mnist_download_checksum_mismatch(tmp_path, monkeypatch):
    isolate_env(monkeypatch, tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in data.FASHION_MNIST_MD5:
        shutil.copy(_bundled_file(name), mirror)
    monkeypatch.setattr(data.datasets, "FASHION_MNIST_URL", mirror.as_uri() + "/")
    with pytest.warns(UserWarning, match="MD5"):
        images, _ = data.fashion_mnist("test")
    assert images.shape == (1000, 1, 28, 28)
    cached = tmp_path / "cache" / "csub" / "fashion-mnist"
    assert not cached.exists() or os.listdir(cached) == []


def test_download_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello world" * 1000)
    dest = tmp_path / "out" / "dest.bin"
    data.datasets._download_file(src.as_uri(), str(dest), md5_of(src))
    assert dest.read_bytes() == src.read_bytes()
    bad = tmp_path / "out" / "bad.bin"
    with pytest.raises(data.DownloadError, match="MD5"):
        data.datasets._download_file(src.as_uri(), str(bad), "0" * 32)
    with pytest.raises(data.DownloadError):
        data.datasets._download_file((tmp_path / "absent").as_uri(), str(bad), None)
    assert sorted(os.listdir(tmp_path / "out")) == ["dest.bin"]


def test_fashion_mnist_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        data.fashion_mnist("validation")
    with pytest.raises(ValueError, match="split"):
        data.fashion_mnist("val", bundled=True)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        data.fashion_mnist("train", root=missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        data.fashion_mnist("train", root=tmp_path)


def test_mnist(tmp_path, monkeypatch):
    data_dir = offline_and_empty(monkeypatch, tmp_path, data.mnist, "train", "ossci-datasets")
    with pytest.raises(ValueError, match="split"):
        data.mnist("dev")
    (data_dir / "mnist").mkdir()
    ipath, lpath, images, labels = _pair(data_dir / "mnist", n_images=7, n_labels=7)
    x, y = data.mnist("train")
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels)
    x2, _ = data.mnist("train", root=data_dir / "mnist")
    np.testing.assert_array_equal(x2, x)


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


def test_channel_stats():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(20, 3, 7, 5), dtype=np.uint8)
    images[:, 1] //= 3
    mean, std = data.channel_stats(images)
    assert mean.shape == (3,) and std.shape == (3,)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    ref = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        data.channel_stats(images.astype(np.float32))
    with pytest.raises(ValueError, match="4-D"):
        data.channel_stats(images[0])


def test_normalisation_constants():
    assert data.FASHION_MNIST_MEAN.shape == (1,) and data.CIFAR10_MEAN.shape == (3,)
    for arr in (data.FASHION_MNIST_MEAN, data.FASHION_MNIST_STD, data.CIFAR10_MEAN,
                data.CIFAR10_STD):
        assert arr.dtype == np.float32 and not arr.flags.writeable
    np.testing.assert_allclose(data.FASHION_MNIST_MEAN, [0.2860], atol=5e-5)
    np.testing.assert_allclose(data.FASHION_MNIST_STD, [0.3530], atol=5e-5)
    np.testing.assert_allclose(data.CIFAR10_MEAN, [0.4914, 0.4822, 0.4465], atol=5e-5)
    np.testing.assert_allclose(data.CIFAR10_STD, [0.2470, 0.2435, 0.2616], atol=5e-5)


# --------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------


def random_set(n=50, c=3, h=8, w=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8), np.arange(n)


def collect(loader):
    batches = list(loader)
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def normalised(images, mean, std):
    m = np.asarray(mean, np.float64)[None, :, None, None]
    s = np.asarray(std, np.float64)[None, :, None, None]
    return ((images / 255.0 - m) / s).astype(np.float32)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_shapes_dtypes(augment, shuffle):
    images, labels = random_set(n=23, c=3, h=6, w=9)
    loader = data.DataLoader(images, labels, batch_size=5, shuffle=shuffle, augment=augment,
                             pad=2)
    assert len(loader) == 5
    batches = list(loader)
    assert len(batches) == 5
    for i, (x, y) in enumerate(batches):
        b = 3 if i == 4 else 5
        assert x.shape == (b, 3, 6, 9) and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.shape == (b,) and y.dtype == np.int64 and y.flags.c_contiguous


def test_loader_drop_last():
    images, labels = random_set(n=23)
    loader = data.DataLoader(images, labels, batch_size=5, shuffle=True, drop_last=True)
    assert len(loader) == 4
    _, y = collect(loader)
    assert len(y) == 20 and len(np.unique(y)) == 20
    assert len(data.DataLoader(images, labels, batch_size=30, drop_last=True)) == 0
    assert list(data.DataLoader(images, labels, batch_size=30, drop_last=True)) == []
    assert len(data.DataLoader(images, labels, batch_size=30)) == 1


def test_loader_normalisation():
    images, labels = random_set(n=10, c=3)
    loader = data.DataLoader(images, labels, batch_size=4)
    mean, std = data.channel_stats(images)
    np.testing.assert_array_equal(loader.mean, mean)
    np.testing.assert_array_equal(loader.std, std)
    x, y = collect(loader)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(x, normalised(images, mean, std))
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-5)
    fixed = data.DataLoader(images, labels, batch_size=4, mean=data.CIFAR10_MEAN,
                            std=data.CIFAR10_STD)
    np.testing.assert_allclose(collect(fixed)[0],
                               normalised(images, data.CIFAR10_MEAN, data.CIFAR10_STD),
                               rtol=1e-6, atol=1e-6)
    scalar = data.DataLoader(images[:, :1], labels, mean=0.5, std=0.25)
    np.testing.assert_allclose(collect(scalar)[0], (images[:, :1] / 255.0 - 0.5) / 0.25,
                               rtol=1e-6, atol=1e-6)


def test_loader_sees_every_sample_once_per_epoch():
    images, labels = random_set(n=37)
    loader = data.DataLoader(images, labels, batch_size=8, shuffle=True, augment=True)
    reference = normalised(images, loader.mean, loader.std)
    for _ in range(3):
        x, y = collect(loader)
        np.testing.assert_array_equal(np.sort(y), labels)
        assert not np.array_equal(y, labels)  # actually shuffled
    plain = data.DataLoader(images, labels, batch_size=8, shuffle=True)
    x, y = collect(plain)
    np.testing.assert_array_equal(x, reference[y])  # images stay paired with labels


def test_loader_determinism_and_epochs():
    images, labels = random_set(n=40)

    def run(seed, epochs=3):
        loader = data.DataLoader(images, labels, batch_size=6, shuffle=True, augment=True,
                                 seed=seed)
        return [collect(loader) for _ in range(epochs)]

    a, b, c = run(0), run(0), run(1)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][1], c[0][1])
    assert not np.array_equal(a[0][1], a[1][1]) and not np.array_equal(a[1][1], a[2][1])
    # epoch 0 is the first permutation of Generator(PCG64(seed))
    expected = np.random.Generator(np.random.PCG64(0)).permutation(40)
    np.testing.assert_array_equal(a[0][1], expected)
    # a resumed run reproduces epoch 2 exactly
    resumed = data.DataLoader(images, labels, batch_size=6, shuffle=True, augment=True, seed=0)
    resumed.set_epoch(2)
    xr, yr = collect(resumed)
    np.testing.assert_array_equal(xr, a[2][0])
    np.testing.assert_array_equal(yr, a[2][1])
    assert resumed.epoch == 3
    resumed.set_epoch(0)
    np.testing.assert_array_equal(collect(resumed)[0], a[0][0])


def reference_augment(loader, epoch):
    """Slow per-image reference of the documented augmentation and draw order."""
    rng = loader.generator(epoch)
    n = loader.num_samples
    order = rng.permutation(n) if loader.shuffle else np.arange(n)
    base = normalised(loader.images, loader.mean, loader.std)
    p = loader.pad
    out_x, out_y = [], []
    for start in range(0, n, loader.batch_size):
        idx = order[start:start + loader.batch_size]
        b = len(idx)
        flip = rng.random(b) < 0.5
        dy = rng.integers(0, 2 * p + 1, b)
        dx = rng.integers(0, 2 * p + 1, b)
        for j, i in enumerate(idx):
            img = base[i]
            if flip[j]:
                img = img[:, :, ::-1]
            padded = np.pad(img, ((0, 0), (p, p), (p, p)), constant_values=0.0)
            h, w = img.shape[1:]
            out_x.append(padded[:, dy[j]:dy[j] + h, dx[j]:dx[j] + w])
            out_y.append(loader.labels[i])
    return np.stack(out_x), np.array(out_y)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("shape,pad", [((3, 8, 8), 4), ((1, 5, 7), 2), ((2, 6, 6), 0)])
def test_augmentation_matches_per_image_reference(shuffle, shape, pad):
    images, labels = random_set(n=45, c=shape[0], h=shape[1], w=shape[2])
    loader = data.DataLoader(images, labels, batch_size=16, shuffle=shuffle, augment=True,
                             pad=pad, seed=7)
    for epoch in range(2):
        x, y = collect(loader)
        ref_x, ref_y = reference_augment(loader, epoch)
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_array_equal(x, ref_x)


def test_augmentation_is_a_shift_or_mirror_of_the_padded_image():
    # Independent of the draw order: every output is one of the (2p+1)^2 crops
    # of the zero-padded normalised image, or of its mirror; flips and several
    # offsets all occur.
    images, labels = random_set(n=64, c=3, h=8, w=8, seed=5)
    p = 2
    loader = data.DataLoader(images, labels, batch_size=64, augment=True, pad=p, seed=3)
    x, y = collect(loader)
    base = normalised(images, loader.mean, loader.std)
    seen = set()
    for out, i in zip(x, y):
        matches = []
        for flip in (False, True):
            img = base[i][:, :, ::-1] if flip else base[i]
            padded = np.pad(img, ((0, 0), (p, p), (p, p)))
            for dy in range(2 * p + 1):
                for dx in range(2 * p + 1):
                    if np.array_equal(out, padded[:, dy:dy + 8, dx:dx + 8]):
                        matches.append((flip, dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert {m[0] for m in seen} == {False, True}
    assert len({m[1:] for m in seen}) > 10


def test_loader_accepts_read_only_and_non_contiguous_images():
    images, labels = random_set(n=12)
    ro = images.copy()
    ro.setflags(write=False)
    a = collect(data.DataLoader(ro, labels, batch_size=5, shuffle=True, augment=True))
    b = collect(data.DataLoader(images, labels, batch_size=5, shuffle=True, augment=True))
    np.testing.assert_array_equal(a[0], b[0])
    strided = np.ascontiguousarray(np.repeat(images, 2, axis=0))[::2]
    c = collect(data.DataLoader(strided, labels, batch_size=5, shuffle=True, augment=True))
    np.testing.assert_array_equal(c[0], b[0])


def test_loader_argument_validation():
    images, labels = random_set(n=10)
    cases = [
        (dict(images=images.tolist()), TypeError, "images"),
        (dict(images=images.astype(np.float32)), TypeError, "images"),
        (dict(images=images[0]), ValueError, "images"),
        (dict(images=images[:0], labels=labels[:0]), ValueError, "images"),
        (dict(labels=labels[:, None]), ValueError, "labels"),
        (dict(labels=labels.astype(np.float64)), TypeError, "labels"),
        (dict(labels=labels[:9]), ValueError, "labels"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=2.0), TypeError, "batch_size"),
        (dict(batch_size=True), TypeError, "batch_size"),
        (dict(shuffle="yes"), TypeError, "shuffle"),
        (dict(augment=1), TypeError, "augment"),
        (dict(drop_last=None), TypeError, "drop_last"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(pad=-1), ValueError, "pad"),
        (dict(mean=[0.1, 0.2]), ValueError, "mean"),
        (dict(mean="abc"), TypeError, "mean"),
        (dict(std=[0.1, 0.0, 0.2]), ValueError, "std"),
        (dict(std=float("nan")), ValueError, "std"),
    ]
    for overrides, exc, name in cases:
        kwargs = dict(images=images, labels=labels)
        kwargs.update(overrides)
        with pytest.raises(exc, match=name):
            data.DataLoader(**kwargs)
    loader = data.DataLoader(images, labels)
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)
    with pytest.raises(TypeError, match="epoch"):
        loader.set_epoch("1")


def test_an_unused_iterator_does_not_skip_an_epoch():
    images = np.arange(8 * 4, dtype=np.uint8).reshape(8, 1, 2, 2)
    labels = np.arange(8, dtype=np.int64)
    a = data.DataLoader(images, labels, batch_size=8, shuffle=True, seed=3)
    b = data.DataLoader(images, labels, batch_size=8, shuffle=True, seed=3)
    iter(b)  # made and dropped, as a progress bar may do
    np.testing.assert_array_equal(next(iter(a))[1], next(iter(b))[1])
    b.set_epoch(0)
    it = iter(b)
    iter(b)
    np.testing.assert_array_equal(next(it)[1], data.DataLoader(images, labels, batch_size=8, shuffle=True,
                                                               seed=3).__iter__().__next__()[1])
