"""Checks of csub.distributed's pieces on the ranks of an mpiexec job (tests/test_distributed.py).

    mpiexec -n N python tests/mpi/run_units.py units      # prints "units ok" on rank 0
    mpiexec -n N python tests/mpi/run_units.py raise      # rank 0 raises; the job must end, not hang
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import csub  # noqa: E402
from csub import distributed as dist  # noqa: E402
from csub import nn  # noqa: E402
from csub.nn.quant import MinMaxObserver  # noqa: E402


def close(a, b, tol, what):
    err = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    assert err <= tol, f"{what}: max difference {err} > {tol}"


def units():
    r, n = dist.init(threads=1)
    assert dist.is_initialized() and (dist.rank(), dist.world_size()) == (r, n)

    # all_reduce in place, sum / max / min, float and int
    a = np.arange(6, dtype=np.float32) + r
    dist.all_reduce(a)
    close(a, n * np.arange(6) + n * (n - 1) / 2, 0, "all_reduce sum")
    b = np.array([r, -r], np.int64)
    dist.all_reduce(b, "max")
    assert b.tolist() == [n - 1, 0], b
    dist.all_reduce(b, "min")
    assert b.tolist() == [n - 1, 0], b
    for bad, kind in ((np.zeros(4, np.float32)[::2], ValueError), ([1.0], TypeError)):
        try:
            dist.all_reduce(bad)
        except kind:
            pass
        else:
            raise AssertionError(f"all_reduce accepted {bad!r}")

    # broadcast of arrays, objects and parameters from rank 0
    c = np.full(3, float(r))
    dist.broadcast(c)
    close(c, 0, 0, "broadcast")
    assert dist.broadcast_object({"rank": r}) == {"rank": 0}
    csub.manual_seed(100 + r)  # different initial weights on every rank
    model = csub.models.mlp(in_features=12, hidden=(5,), norm="bn")
    dist.broadcast_parameters(model)
    csub.manual_seed(100)
    ref = csub.models.mlp(in_features=12, hidden=(5,), norm="bn")
    for (k, v), w in zip(model.state_dict().items(), ref.state_dict().values()):
        close(v, w, 0, f"broadcast_parameters {k}")

    # the global batch: 8 samples per rank, rank r holding rows [8r, 8r + 8)
    rng = np.random.default_rng(7)
    x_all = rng.standard_normal((8 * n, 4, 3, 3)).astype(np.float32)
    dy_all = rng.standard_normal((8 * n, 4, 3, 3)).astype(np.float32)
    x, dy = x_all[8 * r:8 * r + 8], dy_all[8 * r:8 * r + 8]

    # activation observer: the range of the global batch on every rank
    obs = dist._SyncMinMaxObserver(MinMaxObserver())
    obs.update(x)
    assert (obs.running_min, obs.running_max) == (float(x_all.min()), float(x_all.max())), obs.inner

    # synchronised batch norm against one batch norm over the global batch (its C kernels)
    bn_ref = nn.BatchNorm2d(4)
    bn_ref.weight.data[...] = [1.0, 2.0, 0.5, -1.0]
    bn_ref.bias.data[...] = [0.1, 0.0, -0.2, 0.3]
    y_ref = bn_ref(x_all)
    dx_ref = bn_ref.backward(dy_all * (1.0 / (8 * n)))
    bn = nn.BatchNorm2d(4)
    bn.weight.data[...], bn.bias.data[...] = bn_ref.weight.data, bn_ref.bias.data
    object.__setattr__(bn, "forward", dist._sync_bn_forward.__get__(bn))
    object.__setattr__(bn, "backward", dist._sync_bn_backward.__get__(bn))
    y = bn(x)
    close(y, y_ref[8 * r:8 * r + 8], 2e-6, "sync batch norm forward")
    close(bn.running_mean, bn_ref.running_mean, 1e-6, "sync batch norm running_mean")
    close(bn.running_var, bn_ref.running_var, 1e-6, "sync batch norm running_var")
    dx = bn.backward(dy * (1.0 / 8))  # this rank's loss is the mean over its own 8 samples
    close(dx / n, dx_ref[8 * r:8 * r + 8], 1e-6, "sync batch norm dx")
    red = dist.GradientReducer([bn.weight, bn.bias])
    red.reduce()
    close(bn.weight.grad, bn_ref.weight.grad, 1e-6, "sync batch norm dgamma")
    close(bn.bias.grad, bn_ref.bias.grad, 1e-6, "sync batch norm dbeta")
    assert len(red.buckets) == 1 and red.nbytes == 32

    # gradient buckets: several calls for a buffer over the bucket size, the mean on every rank
    ps = [nn.module.Parameter(np.zeros(s, np.float32)) for s in ((3, 5), (7,), (11, 2))]
    for p in ps:
        p.grad[...] = r + 1.0
    red = dist.GradientReducer(ps, bucket_bytes=40)
    assert len(red.buckets) == 5, len(red.buckets)
    red.reduce()
    for p in ps:
        close(p.grad, (n + 1) / 2, 0, "gradient mean")
        p.grad += 1.0  # still a view of the flat buffer
    close(red.flat, (n + 1) / 2 + 1, 0, "gradient views")

    # sharded evaluation equals the evaluation of the whole set on one process
    csub.manual_seed(1)
    model = csub.models.cnn(widths=(4, 8, 8))
    images = np.random.default_rng(2).integers(0, 256, (37, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(37) % 10
    got = dist.evaluate(model, (images, labels), [1.0], batch_size=10)
    want = csub.train.evaluate(model, (images, labels), [1.0], batch_size=10)
    assert got[0]["accuracy"] == want[0]["accuracy"], (got, want)
    close(got[0]["loss"], want[0]["loss"], 1e-6, "sharded evaluation loss")
    dist.barrier()
    if r == 0:
        print("units ok", flush=True)


def raise_on_root():
    dist.init(threads=1)
    if dist.rank() == 0:
        raise RuntimeError("rank 0 fails alone")
    dist.barrier()  # the other ranks would wait here forever


if __name__ == "__main__":
    {"units": units, "raise": raise_on_root}[sys.argv[1]]()
