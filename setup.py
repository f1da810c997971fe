"""Build script for the parts pyproject.toml cannot declare: the C helper.

``pybpf/_atomics.c`` is built as an extension module: pybpf.atomics loads its
plain functions with ctypes and imports it for its SampleBuffer type (a user
ring buffer sample with the buffer protocol), so ``pip install .`` needs a C
compiler.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pybpf._atomics",
            ["pybpf/_atomics.c"],
            extra_compile_args=["-O2", "-std=c11"],
        )
    ],
)
