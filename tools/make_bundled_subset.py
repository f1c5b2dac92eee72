#!/usr/bin/env python3
"""Regenerate the bundled Fashion-MNIST subset in csub/datasets/fashion_mnist_subset/.

From the full Fashion-MNIST (standard IDX files, gzipped or raw; default the
Debian location /usr/share/datasets/fashion-mnist) this picks, per split and
per class, a fixed number of images uniformly at random without replacement:

    rng = numpy.random.default_rng(seed)          # Generator(PCG64(seed))
    for split in ("train", "test"):               # in this order
        for c in range(10):                       # in this order
            picked += rng.choice(flatnonzero(labels == c), size=k, replace=False)
    indices = sorted(picked)                      # original order is kept

and writes the chosen images and labels as gzipped IDX files (compression
level 9, mtime 0, no stored name, so the output is byte-reproducible), plus
LICENSE and README.md.

Usage:
    python tools/make_bundled_subset.py                # (re)write the subset
    python tools/make_bundled_subset.py --check        # verify it is reproduced exactly
"""

import argparse
import filecmp
import hashlib
import importlib.util
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "csub", "datasets", "fashion_mnist_subset")
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

LICENSE = """\
The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README = """\
# Bundled Fashion-MNIST subset

A small, class-stratified subset of [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist)
(Xiao, Rasul and Vollgraf, 2017: 28x28 grayscale images of Zalando articles in
10 classes).  `csub.data.fashion_mnist(bundled=True)` returns it, and
`csub.data.fashion_mnist()` falls back to it (with a warning) when the full
set is neither installed nor downloadable, so examples and tests always run
on real data.  For real experiments use the full set:
`apt-get install dataset-fashion-mnist`, or set `CSUB_DATA`.

| split | images | per class | drawn from                |
|-------|--------|-----------|---------------------------|
| train | {n_train:>6} | {k_train:>9} | the 60000 training images |
| test  | {n_test:>6} | {k_test:>9} | the 10000 test images     |

## Files

Standard gzipped IDX files, the same names and format as the full dataset:
images are uint8 `(N, 28, 28)`, labels uint8 `(N,)` with values 0..9
(T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag,
Ankle boot).

| file | SHA-256 |
|------|---------|
{sha_table}

## How it was made

`tools/make_bundled_subset.py --seed {seed} --train-per-class {k_train} --test-per-class {k_test}`
read the full dataset from `/usr/share/datasets/fashion-mnist` (Debian package
`dataset-fashion-mnist`, packaged from the upstream repository) and, with
`rng = numpy.random.default_rng({seed})`, for the train split and then the test
split, for classes 0 to 9 in order, picked the given number of images of that
class uniformly at random without replacement
(`rng.choice(indices_of_class, size=k, replace=False)`).  The chosen indices
are sorted, so images keep their original relative order.  Files are written
with gzip level 9 and mtime 0, so regenerating gives byte-identical files
(`tools/make_bundled_subset.py --check` verifies this).

## Licence

Fashion-MNIST is released under the MIT licence, Copyright (c) 2017 Zalando
SE; see `LICENSE`.
"""


def _load_data_module():
    # Load csub/data/formats.py (the IDX reader and writer, no other csub import)
    # directly, without importing the csub package (whose __init__ may need the
    # compiled core).
    path = os.path.join(REPO, "csub", "data", "formats.py")
    spec = importlib.util.spec_from_file_location("_csub_data_for_tools", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _find(source, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(source, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {source}")


def select(labels, per_class, rng):
    """Sorted indices of ``per_class`` images of each class 0..9, drawn with ``rng``."""
    picked = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise ValueError(f"class {c} has only {members.size} images, need {per_class}")
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def build(source, out, seed, per_class):
    data = _load_data_module()
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for split in ("train", "test"):
        img_stem, lab_stem = FILES[split]
        images, labels = data.load_idx_pair(_find(source, img_stem), _find(source, lab_stem))
        idx = select(labels, per_class[split], rng)
        for stem, arr in ((img_stem, images[idx, 0]), (lab_stem, labels[idx].astype(np.uint8))):
            path = os.path.join(out, stem + ".gz")
            data.write_idx(path, arr)
            written.append(path)
    rows = []
    for path in written:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        rows.append(f"| `{os.path.basename(path)}` | `{digest}` |")
    with open(os.path.join(out, "LICENSE"), "w") as f:
        f.write(LICENSE)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(README.format(
            n_train=10 * per_class["train"], n_test=10 * per_class["test"],
            k_train=per_class["train"], k_test=per_class["test"], seed=seed,
            sha_table="\n".join(rows)))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="directory with the full Fashion-MNIST IDX files")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary directory and compare with --out")
    args = parser.parse_args(argv)
    per_class = {"train": args.train_per_class, "test": args.test_per_class}
    if not args.check:
        for path in build(args.source, args.out, args.seed, per_class):
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(args.source, tmp, args.seed, per_class)
        names = sorted(os.listdir(tmp))
        match, mismatch, errors = filecmp.cmpfiles(tmp, args.out, names, shallow=False)
    for name in mismatch + errors:
        print(f"DIFFERS: {os.path.join(args.out, name)}")
    if mismatch or errors:
        return 1
    print(f"{args.out}: all {len(match)} files reproduced byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
