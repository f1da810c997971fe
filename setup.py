"""Build script for the parts pyproject.toml cannot declare: the C helper.

``pybpf/_atomics.c`` is built as a plain shared library (loaded with ctypes by
pybpf.atomics, never imported), so ``pip install .`` needs a C compiler.
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
