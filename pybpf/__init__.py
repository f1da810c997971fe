"""pybpf: a pure-Python eBPF loader (no libbpf).

    spec = pybpf.open("prog.o")          # parse only: ObjectSpec
    with pybpf.load("prog.o") as obj:    # maps created, programs loaded
        obj.attach()
        obj.maps["counts"].items()

Layers, one way: ``pybpf.spec`` (ELF/BTF, pure) -> ``pybpf.kernel`` (the bpf()
syscall and UAPI layouts) -> ``pybpf.loader`` (relocate, create, load) ->
runtime objects (``Object``, ``Map``, ``Program``, ``Link``, ``RingBuffer``,
``UserRingBuffer``, ``PerfBuffer``) -> front ends (``python -m pybpf``).
"""

from __future__ import annotations

import os as _os
import sys as _sys

if _sys.argv[:1] == ["-m"] and __name__ == "pybpf":
    # `python -m pybpf` is starting (runpy imports the package first, sys.argv[0] is "-m"
    # meanwhile): until pybpf.cli.main() installs its handler, nothing is in the kernel,
    # and Ctrl-C exits at once with 130 instead of a KeyboardInterrupt traceback
    import signal as _signal
    _signal.signal(_signal.SIGINT, lambda signum, frame: _os._exit(128 + signum))

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .collection import Object, Variable
from .maps import Map
from .programs import Program, TestRunResult
from .spec.object import MapSpec, ObjectSpec, ProgramSpec, VariableSpec


def open(path) -> ObjectSpec:  # noqa: A001 - the public name the API promises
    """Parse a BPF object file; nothing is put in the kernel yet.

    Parsed objects are kept in pybpf's disk cache (``~/.cache/pybpf``; ``PYBPF_CACHE=0``
    turns it off), so opening the same file again costs ~1 ms instead of a parse."""
    return ObjectSpec.from_file(_os.fspath(path))


def load(path, **kwargs) -> Object:
    """Parse and load a BPF object: ``pybpf.open(path).load(**kwargs)``.

    ``target_btf=`` (a BTF file or object) sets the CO-RE target instead of the
    running kernel's BTF; ``facts=`` (a ``pybpf.loader.facts.KernelFacts``) sets
    every kernel fact (BTF, kconfig, version, kernel symbols)."""
    return open(path).load(**kwargs)


def __getattr__(name):
    # imported on first use, to keep 'import pybpf' short: the ring buffers pull in the C
    # helper, links perf_event_open and tracefs
    if name == "Link":
        from .links import Link
        return Link
    if name in ("RingBuffer", "UserRingBuffer"):
        from . import ringbuf
        return getattr(ringbuf, name)
    if name == "PerfBuffer":
        from . import perfbuf
        return perfbuf.PerfBuffer
    raise AttributeError(f"module 'pybpf' has no attribute {name!r}")


__all__ = list(_errors_all) + [
    "open", "load", "Object", "Variable", "Map", "Program", "TestRunResult", "Link",
    "ObjectSpec", "ProgramSpec", "MapSpec", "VariableSpec", "RingBuffer", "UserRingBuffer", "PerfBuffer",
]
