"""Build script for the parts pyproject.toml cannot declare: the C helper.

``pybpf/_atomics.c`` is built as an extension module: pybpf.atomics loads its
plain functions with ctypes and imports it for its SampleBuffer type (a user
ring buffer sample with the buffer protocol), so ``pip install .`` needs a C
compiler.
"""

import hashlib
import pathlib

from setuptools import Extension, setup

SOURCE = "pybpf/_atomics.c"
# the built helper says which source it was built from (tests/test_atomics.py)
DIGEST = hashlib.sha256(pathlib.Path(__file__).with_name("pybpf").joinpath("_atomics.c").read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "pybpf._atomics",
            [SOURCE],
            extra_compile_args=["-O2", "-std=c11"],
            define_macros=[("PYBPF_SOURCE_SHA256", f'"{DIGEST}"')],
        )
    ],
)
