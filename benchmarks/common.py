"""Shared by the benchmarks: the machine header every one prints first, timers, an argument
parser, conv shapes, another checkout's extension module."""
import argparse
import glob
import importlib.machinery
import importlib.util
import os
import platform
import statistics
import time

import numpy as np


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_step(model, opt, crit, x, y, alpha=None):
    """A function running one training step of csub's ``model`` on (x, y): set_alpha(alpha)
    (unless None), zero the gradients, forward, loss ``crit``, backward, ``opt.step()``; it
    returns the loss. Any package's model, optimiser and loss (the benchmarks load two builds)."""
    def step():
        if alpha is not None:
            model.set_alpha(alpha)
        opt.zero_grad()
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        return loss
    return step


def print_machine():
    """Print the CPU, its cores (and how many this process may use) and the load average."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    print(f"machine : {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), "
          f"{platform.system()} {platform.machine()}")
    try:
        la = os.getloadavg()
        print(f"load    : {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min average at start)")
    except OSError:
        pass


def best_time(fn, repeat):
    """The fastest of ``repeat`` calls of fn(), in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def median_time(fn, repeat, warmup=1):
    """The median of ``repeat`` timed calls of fn() after ``warmup`` untimed ones, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def arg_parser(doc, repeat):
    """An ArgumentParser described by the first line of doc, with --repeat (timed calls, default repeat)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=repeat)
    return ap


def out_size(h, r, stride, pad):
    """Output size of a convolution along one axis."""
    return (h + 2 * pad - r) // stride + 1


def conv_key(m):
    """(C, K, R, stride, padding, H, W) of a Conv2d after a forward (it keeps its input as _x)."""
    _, C, H, W = m._x.shape
    return (C, m.out_channels, m.kernel_size, m.stride, m.padding, H, W)


def conv_shapes(model, layers, image):
    """Distinct conv_key of ``layers`` (callable: model -> Conv2d modules) after one forward of two
    image x image inputs through ``model``, with their counts, in order."""
    model.train()
    model(np.zeros((2, model.in_channels, image, image), np.float32))
    shapes = {}
    for m in layers(model):
        key = conv_key(m)
        shapes[key] = shapes.get(key, 0) + 1
    return shapes


def mirror_conv(c, torch):
    """A csub Conv2d at its current alpha as a torch Conv2d (the effective, masked weight; no bias)."""
    t = torch.nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    t.weight.data = torch.from_numpy(np.array(c.effective_weight(), np.float32))
    return t


def mirror_norm(n, torch):
    """A csub BatchNorm2d or GroupNorm as torch's, with the same affine parameters and statistics."""
    tnn = torch.nn
    if n.__class__.__name__ == "BatchNorm2d":
        t = tnn.BatchNorm2d(n.num_channels, eps=n.eps)
        t.running_mean.data = torch.from_numpy(n.running_mean.copy())
        t.running_var.data = torch.from_numpy(n.running_var.copy())
    else:
        t = tnn.GroupNorm(n.num_groups, n.num_channels, eps=n.eps)
    t.weight.data = torch.from_numpy(np.array(n.weight.data, np.float32))
    t.bias.data = torch.from_numpy(np.array(n.bias.data, np.float32))
    return t


def torch_mirror(model, torch):
    """The network at its current alpha in PyTorch: the effective (masked) weights, the same norms."""
    tnn = torch.nn

    def conv(c):
        return mirror_conv(c, torch)

    def norm(n):
        return mirror_norm(n, torch)

    class Block(tnn.Module):
        def __init__(self, b):
            super().__init__()
            self.n1, self.n2, self.n3 = norm(b.n1), norm(b.n2), norm(b.n3)
            self.c1, self.c2, self.c3 = conv(b.conv1), conv(b.conv2), conv(b.conv3)
            self.sc = None if b.shortcut is None else conv(b.shortcut)

        def forward(self, x):
            a = torch.relu(self.n1(x))
            s = x if self.sc is None else self.sc(a)
            h = self.c1(a)
            h = self.c2(torch.relu(self.n2(h)))
            h = self.c3(torch.relu(self.n3(h)))
            return h + s

    fc = tnn.Linear(model.fc.in_features, model.fc.out_features, bias=False)
    fc.weight.data = torch.from_numpy(np.array(model.fc.effective_weight(), np.float32))
    net = tnn.Sequential(conv(model.stem), *[Block(b) for b in model.blocks], norm(model.head[0]), tnn.ReLU(),
                         tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), fc)
    return net.eval()


def load_core(root):
    """The extension module built in checkout `root`, under its own name (beside this csub), for
    --base comparisons in one process."""
    paths = glob.glob(os.path.join(root, "csub", "_core*.so"))
    if not paths:
        raise SystemExit(f"--base: no csub/_core*.so under {root!r} (build it there first)")
    loader = importlib.machinery.ExtensionFileLoader("base_csub._core", paths[0])
    spec = importlib.util.spec_from_file_location("base_csub._core", paths[0], loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod
