"""Shared by the benchmarks: the machine header every one prints first, and a timer."""
import os
import platform
import time


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
