"""Shared by the benchmarks: the machine header every one prints first, a timer, conv shapes."""
import os
import platform
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
