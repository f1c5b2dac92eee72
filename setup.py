"""Build the C core `csub._core` (C11 + OpenMP) against the OpenBLAS of scipy-openblas32."""
import glob
import os

import numpy
import scipy_openblas32
from setuptools import Extension, setup

sources = sorted(glob.glob("csrc/*.c")) + sorted(glob.glob("csrc/python/*.c"))
flags = ["-std=c11", "-ffp-contract=off", "-O3", "-fopenmp", "-fno-math-errno", "-fvisibility=hidden", "-Wall", "-Wextra",
         "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
if os.environ.get("CSUB_DEBUG"):
    flags += ["-O0", "-g", "-fsanitize=address,undefined"]

ext = Extension(
    "csub._core",
    sources=sources,
    include_dirs=["csrc/include", numpy.get_include(), scipy_openblas32.get_include_dir()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=flags,
    extra_link_args=["-fopenmp"],
    # The library is found at run time: csub/__init__.py loads it from the
    # installed scipy_openblas32 package before importing _core.
    library_dirs=[scipy_openblas32.get_lib_dir()],
    libraries=[scipy_openblas32.get_library()],
    depends=glob.glob("csrc/include/*.h") + glob.glob("csrc/*.h") + glob.glob("csrc/python/*.h"),
)

setup(ext_modules=[ext])
