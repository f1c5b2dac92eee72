"""DeepSparse's side of ``bench_peers.py``: one network, timed in this process.

    benchmarks/.venv-deepsparse/bin/python benchmarks/peers_deepsparse.py SPEC_JSON

Runs under DeepSparse's own interpreter (DeepSparse 1.8 pins numpy 1.26, so it has
its own virtual environment; see ``bench_peers.py``), hence it imports neither csub
nor anything else of the benchmarks. SPEC_JSON is the object ``bench_peers.py``
gives every runtime: ``onnx`` (the ONNX file), ``batches``, ``threads`` (DeepSparse's
``num_cores``), ``reps`` and ``data`` (inputs in data + ".x{batch}.npy", csub's
training-forward logits in data + ".y{batch}.npy"). Prints one JSON line:
{"ms": {batch: median ms per forward}, "err": max relative logit error, "version"}.
"""
import json
import statistics
import sys
import time

import numpy as np


def median_ms(fn, reps):
    """Median ms of `reps` calls of fn after two warm-up calls (bench_peers.median_ms, which this
    interpreter cannot import)."""
    fn(), fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1e3


def run(spec):
    import deepsparse
    from deepsparse import compile_model
    xs = {b: np.load(spec["data"] + f".x{b}.npy") for b in spec["batches"]}
    ref = {b: np.load(spec["data"] + f".y{b}.npy") for b in spec["batches"]}
    engines = {b: compile_model(spec["onnx"], batch_size=b, num_cores=spec["threads"]) for b in xs}
    fns = {b: (lambda x=xs[b], e=engines[b]: e.run([x])[0]) for b in xs}
    err = max(float(np.max(np.abs(fns[b]() - ref[b])) / np.max(np.abs(ref[b]))) for b in xs)
    return {"ms": {b: median_ms(fns[b], spec["reps"]) for b in xs}, "err": err, "version": deepsparse.__version__}


def main():
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} SPEC_JSON")
    print(json.dumps(run(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
