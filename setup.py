"""Build peftcore._C: the C engine (csrc/) plus its CPython/NumPy glue, linked to BLIS."""
import glob
import os
import sys

import numpy
from setuptools import Extension, setup

DEBIAN_MULTIARCH = "x86_64-linux-gnu" if os.uname().machine == "x86_64" else "aarch64-linux-gnu"
BLIS_HINT = (
    "peftcore needs BLIS with its pthread variant. On Debian/Ubuntu:\n"
    "    sudo apt-get install libblis-dev libblis-pthread-dev\n"
    "or point BLIS_INCLUDE_DIR (folder of blis.h) and BLIS_LIB_DIR (folder of libblis.so) "
    "at another installation."
)


def find_blis():
    include = os.environ.get("BLIS_INCLUDE_DIR") or f"/usr/include/{DEBIAN_MULTIARCH}/blis-pthread"
    lib = os.environ.get("BLIS_LIB_DIR") or f"/usr/lib/{DEBIAN_MULTIARCH}/blis-pthread"
    if not os.path.isfile(os.path.join(include, "blis.h")):
        sys.exit(f"error: blis.h not found in {include}\n{BLIS_HINT}")
    if not glob.glob(os.path.join(lib, "libblis.so*")):
        sys.exit(f"error: libblis.so not found in {lib}\n{BLIS_HINT}")
    return include, lib


def compile_args():
    args = ["-std=c11", "-O3", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
            "-fno-math-errno", "-D_GNU_SOURCE"]
    # The extension is compiled on the machine that runs it (pip install .), so tune for it
    # unless a portable build is asked for.
    if os.environ.get("PEFTCORE_PORTABLE", "0") != "1":
        args.append("-march=native")
    return args


blis_include, blis_lib = find_blis()
# the engine (csrc/*.c and its subsystems) plus the CPython glue; csrc/tests is C-only
ENGINE_DIRS = ["ops", "models", "peft", "optim", "python"]
engine_sources = sorted(glob.glob("csrc/*.c") +
                        [f for d in ENGINE_DIRS for f in glob.glob(f"csrc/{d}/*.c")])

setup(
    ext_modules=[
        Extension(
            "peftcore._C",
            sources=engine_sources,
            include_dirs=["csrc", numpy.get_include()],
            library_dirs=[blis_lib],
            runtime_library_dirs=[blis_lib],
            libraries=["blis", "m", "pthread"],
            extra_compile_args=compile_args() + ["-isystem", blis_include],
            extra_link_args=["-fopenmp"],
        )
    ],
)
