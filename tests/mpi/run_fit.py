"""One small fit() run, on one process or on the ranks of an mpiexec job (tests/test_distributed.py).

    [mpiexec -n N] python tests/mpi/run_fit.py CASE OUT [--epochs E] [--resume] [--pause-after-epoch K]
        [--alpha-per-rank] [--sync-batchnorm] [--batch-size B] [--train-size N] [--rank-data]

Writes OUT/result.npz (rank 0): the loss of every forward pass of training (the mean over the
ranks of each rank's share, i.e. the loss of the global batch), the final parameters and
buffers, and history.json's epochs. --pause-after-epoch K: after rank 0 has written the
checkpoint of epoch K it writes OUT/paused and sleeps (the test then kills a rank).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import csub  # noqa: E402
from csub import checkpoint, data, models, train  # noqa: E402
from csub import distributed as dist  # noqa: E402

CASES = {  # name: (method, regime, model kwargs, fit kwargs)
    "unstructured": ("lcs_l", "unstructured", dict(regime="unstructured", subspace="line"), {}),
    "structured": ("lcs_l", "structured", dict(regime="structured", subspace="line"), {}),
    "quantized": ("lcs_l", "quantized", dict(regime="quantized", subspace="line"), dict(warmup=0.3)),
    "batchnorm": ("standard", "unstructured", dict(norm="bn"), {}),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-size", type=int, default=384)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--pause-after-epoch", type=int, default=0)
    ap.add_argument("--alpha-per-rank", action="store_true")
    ap.add_argument("--sync-batchnorm", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=None)
    ap.add_argument("--rank-data", action="store_true", help="each rank drops rank images (bad input)")
    ap.add_argument("--distributed", choices=["auto", "true", "false"], default="auto")
    args = ap.parse_args()

    method, regime, mkw, fkw = CASES[args.case]
    if args.warmup is not None:
        fkw = dict(fkw, warmup=args.warmup)
    csub.set_num_threads(args.threads)
    csub.manual_seed(0)
    tr = data.fashion_mnist("train", bundled=True)
    te = data.fashion_mnist("test", bundled=True)
    n = args.train_size
    if args.rank_data and dist.launched():
        n -= int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    tr, te = (tr[0][:n], tr[1][:n]), (te[0][:150], te[1][:150])
    model = models.cnn(widths=(8, 16, 16), **mkw)

    losses = []

    class Recording(train.CrossEntropyLoss):  # training losses: the forwards followed by a backward
        def __call__(self, z, y):
            self._last = super().__call__(z, y)
            return self._last

        def backward(self):
            losses.append(self._last)
            return super().backward()

    train.CrossEntropyLoss = Recording
    if args.pause_after_epoch:
        save = checkpoint.save

        def pausing_save(path, groups, meta):
            save(path, groups, meta)
            if meta["epoch"] == args.pause_after_epoch:
                with open(os.path.join(args.out, "paused"), "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(120)

        checkpoint.save = pausing_save
    with open(os.path.join(args.out, f"pid.{os.environ.get('OMPI_COMM_WORLD_RANK', '0')}"), "w") as f:
        f.write(str(os.getpid()))

    distributed = {"auto": None, "true": True, "false": False}[args.distributed]
    history = train.fit(model, tr, te, method=method, regime=regime, epochs=args.epochs,
                        batch_size=args.batch_size, lr=0.05, seed=3, out=args.out, progress=False,
                        resume=args.resume, eval_alphas=[0.5, 1.0], distributed=distributed,
                        alpha_per_rank=args.alpha_per_rank, sync_batchnorm=args.sync_batchnorm, **fkw)
    losses = np.array(losses, np.float64)
    dist.all_reduce(losses)
    losses /= dist.world_size()
    if dist.rank() == 0:
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        np.savez(os.path.join(args.out, "result.npz"), losses=losses, **state)
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump({"history": history, "world_size": dist.world_size(),
                       "threads": csub.get_num_threads()}, f)


if __name__ == "__main__":
    main()
