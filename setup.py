"""Build peftcore._C: the C engine (csrc/) plus its CPython/NumPy glue, linked to BLIS.

The kernels (csrc/ops, csrc/peft, csrc/optim) are compiled once per instruction set and
picked at import (csrc/dispatch.c), so one build runs, and runs fast, on any CPU of its
architecture: no -march=native."""
import glob
import os
import sys

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MACHINE = os.uname().machine
DEBIAN_MULTIARCH = "x86_64-linux-gnu" if MACHINE == "x86_64" else f"{MACHINE}-linux-gnu"
BLIS_HINT = (
    "peftcore needs BLIS with its pthread variant. On Debian/Ubuntu:\n"
    "    sudo apt-get install libblis-dev libblis-pthread-dev\n"
    "or point BLIS_INCLUDE_DIR (folder of blis.h) and BLIS_LIB_DIR (folder of libblis.so) "
    "at another installation."
)

# Instruction sets the kernels are compiled for, with their flags (csrc/Makefile has the
# same table; csrc/dispatch.c checks the CPU for each set's features).
ISA_FLAGS = {"baseline": []}
if MACHINE in ("x86_64", "amd64"):
    ISA_FLAGS["avx2"] = ["-mavx2", "-mfma", "-mno-avx256-split-unaligned-load",
                         "-mno-avx256-split-unaligned-store"]
    ISA_FLAGS["avx512"] = ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw",
                           "-mavx512vl", "-mprefer-vector-width=512"]
KERNEL_DIRS = ["ops", "peft", "optim"]   # compiled once per set
ENGINE_DIRS = ["models", "adapters", "python"]  # with csrc/*.c, compiled once


def find_blis():
    include = os.environ.get("BLIS_INCLUDE_DIR") or f"/usr/include/{DEBIAN_MULTIARCH}/blis-pthread"
    lib = os.environ.get("BLIS_LIB_DIR") or f"/usr/lib/{DEBIAN_MULTIARCH}/blis-pthread"
    if not os.path.isfile(os.path.join(include, "blis.h")):
        sys.exit(f"error: blis.h not found in {include}\n{BLIS_HINT}")
    if not glob.glob(os.path.join(lib, "libblis.so*")):
        sys.exit(f"error: libblis.so not found in {lib}\n{BLIS_HINT}")
    return include, lib


COMPILE_ARGS = ["-std=c11", "-O3", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-fno-math-errno", "-D_GNU_SOURCE",
                "-Wno-psabi"]  # 64-byte vectors pass between static inline helpers only
# PEFTCORE_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer build (CI runs a train
# step on it with libasan preloaded: .ci/sanitizer_smoke.py)
SANITIZE = os.environ.get("PEFTCORE_SANITIZE", "0") == "1"
SANITIZE_ARGS = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                 "-fno-omit-frame-pointer"] if SANITIZE else []
blis_include, blis_lib = find_blis()
engine_sources = sorted(glob.glob("csrc/*.c") +
                        [f for d in ENGINE_DIRS for f in glob.glob(f"csrc/{d}/*.c")])
kernel_sources = sorted(f for d in KERNEL_DIRS for f in glob.glob(f"csrc/{d}/*.c"))


class BuildWithKernelSets(build_ext):
    """Compiles the kernel sources once per instruction set (each into its own folder, with
    its names suffixed by csrc/isa_names.h) and links them into the extension."""

    def build_extension(self, ext):
        objects = []
        for isa, flags in ISA_FLAGS.items():
            objects += self.compiler.compile(
                kernel_sources, output_dir=os.path.join(self.build_temp, "isa", isa),
                macros=[("PC_ISA", isa)], include_dirs=ext.include_dirs,
                extra_postargs=ext.extra_compile_args + flags +
                ["-include", os.path.join("csrc", "isa_names.h")],
                depends=ext.depends, debug=self.debug)
        ext.extra_objects = objects
        super().build_extension(ext)


setup(
    cmdclass={"build_ext": BuildWithKernelSets},
    ext_modules=[
        Extension(
            "peftcore._C",
            sources=engine_sources,
            # the kernel sources too: they are linked in as extra objects, and a change to
            # them alone must relink the extension
            depends=sorted(glob.glob("csrc/**/*.h", recursive=True)) + kernel_sources,
            include_dirs=["csrc", numpy.get_include()],
            library_dirs=[blis_lib],
            runtime_library_dirs=[blis_lib],
            libraries=["blis", "m", "pthread"],
            extra_compile_args=COMPILE_ARGS + SANITIZE_ARGS + ["-isystem", blis_include],
            extra_link_args=["-fopenmp"] + SANITIZE_ARGS,
        )
    ],
)
