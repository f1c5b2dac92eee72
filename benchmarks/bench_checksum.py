"""Cost of verifying checksums on load: the same model file with and without its csub.crc32 entry.

    python benchmarks/bench_checksum.py [--model cpreresnet20] [--reps 31] [--rounds 5]

A file without the entry is read unverified (as one written before csub stored checksums), so the
difference is the verification alone. Readers: the C safetensors parser (_core.st_parse), the C model
loader (_core.model_load, what classify and CompressedNet use), the Python reader (checkpoint.read,
what csub.load and checkpoint.load use) and CompressedNet(path) whole. Medians over reps, rounds
interleaved; prints milliseconds per round and the median ratio verified / unverified.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from safetensors.numpy import save as st_save  # noqa: E402

import csub  # noqa: E402
from csub import _core, checkpoint, models, modelfile  # noqa: E402
from common import median_time  # noqa: E402


def median_ms(f, reps):
    return median_time(f, reps, warmup=0) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="cpreresnet20")
    p.add_argument("--reps", type=int, default=31)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    csub.manual_seed(0)
    m = models.build(a.model, regime="unstructured", subspace="line")
    new = modelfile.to_bytes(m)
    md, tensors = checkpoint.read(new)
    old = st_save(tensors, metadata={k: v for k, v in md.items() if k != checkpoint.CRC_KEY})
    d = tempfile.mkdtemp()
    paths = {"new": os.path.join(d, "new.safetensors"), "old": os.path.join(d, "old.safetensors")}
    for k, raw in (("new", new), ("old", old)):
        with open(paths[k], "wb") as f:
            f.write(raw)
    raws = {"new": new, "old": old}
    readers = {
        "C st_parse": lambda k: _core.st_parse(raws[k]),
        "C model_load": lambda k: _core.model_load(raws[k]),
        "Python checkpoint.read": lambda k: checkpoint.read(raws[k]),
        "CompressedNet(path)": lambda k: csub.CompressedNet(paths[k]),
    }
    print(f"{a.model} unstructured line: {len(new)} bytes, {len(tensors)} tensors")
    for name, f in readers.items():
        rows = [(median_ms(lambda: f("new"), a.reps), median_ms(lambda: f("old"), a.reps)) for _ in range(a.rounds)]
        ratio = statistics.median(v / u for v, u in rows)
        print(f"{name:24s} verified {' '.join(f'{v:6.2f}' for v, _ in rows)} ms | unverified "
              f"{' '.join(f'{u:6.2f}' for _, u in rows)} ms | ratio {ratio:.2f}, "
              f"+{statistics.median(v - u for v, u in rows):.2f} ms")


if __name__ == "__main__":
    main()
