"""What every benchmark prints first: the machine it ran on and how loaded it was."""
import os
import platform


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
