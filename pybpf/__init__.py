"""pybpf: a pure-Python eBPF loader (no libbpf).

    spec = pybpf.open("prog.o")          # parse only: ObjectSpec
    with pybpf.load("prog.o") as obj:    # maps created, programs loaded
        obj.attach()
        obj.maps["counts"].items()
    for p in pybpf.programs():           # every program in the kernel now (ProgramInfo)
        print(p.id, p.name, p.type)

Layers, one way: ``pybpf.spec`` (ELF/BTF, pure) -> ``pybpf.kernel`` (the bpf()
syscall and UAPI layouts) -> ``pybpf.loader`` (relocate, create, load) ->
runtime objects (``Object``, ``Map``, ``Program``, ``Link``, ``RingBuffer``,
``UserRingBuffer``, ``PerfBuffer``) -> front ends (``python -m pybpf``).
"""

__version__ = "0.1.0"   # kept equal to pyproject.toml's version by tests/test_cli_session.py

import os as _os
import sys as _sys


def _command_starting() -> bool:
    """Is this import the start of the command, ``python -m pybpf`` or the ``pybpf`` console
    script?  Then nothing is in the kernel yet, and a Ctrl-C until pybpf.cli.main() installs
    its handler may end the process at once, with 130, instead of a KeyboardInterrupt
    traceback.  Any other importer keeps its KeyboardInterrupt."""
    argv = getattr(_sys, "argv", None) or [""]
    if argv[0] == "-m":
        # runpy imports the package of 'python -m X' first, with sys.argv[0] "-m" meanwhile:
        # X is pybpf only if the interpreter's own command line says so (sys.orig_argv, 3.10+;
        # before, the kernel's copy of it)
        orig = getattr(_sys, "orig_argv", None)
        if orig is None:
            try:
                with open("/proc/self/cmdline", "rb") as f:
                    orig = [_os.fsdecode(a) for a in f.read().split(b"\0")[:-1]]
            except OSError:
                return False
        return _run_module(orig) in ("pybpf", "pybpf.__main__")
    if _os.path.basename(argv[0]) != "pybpf":
        return False
    # the console script, whose wrapper (made by pip from pyproject.toml) imports
    # pybpf.__main__.run, and this package first
    try:
        with open(argv[0], "rb") as f:
            return b"from pybpf.__main__ import run" in f.read(4096)
    except OSError:
        return False


def _run_module(argv: list) -> "str | None":
    """The module of ``python [options] -m MODULE ...`` (None for a script or -c): the
    interpreter's options as CPython parses them (flags may be joined, as in ``-Bm``; -X, -W
    and --check-hash-based-pycs take a value)."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--check-hash-based-pycs":
            i += 2
            continue
        if arg == "-" or not arg.startswith("-") or arg.startswith("--"):
            return None
        for j, flag in enumerate(arg[1:], 1):
            if flag == "m":
                return arg[j + 1:] or (argv[i + 1] if i + 1 < len(argv) else None)
            if flag == "c":
                return None
            if flag in "XW":
                if j == len(arg) - 1:
                    i += 1          # its value is the next argument
                break
        i += 1
    return None


if __name__ == "pybpf" and _command_starting():
    # - _signal, not signal: CPython imported it at start-up, while 'import signal' builds
    #   its enums first (~2 ms, which a Ctrl-C then met as a traceback in enum.py);
    # - an ignored SIGINT stays ignored (a background job of a shell script starts so, and
    #   CPython then installs no handler of its own either).
    import _signal
    if _signal.getsignal(_signal.SIGINT) != _signal.SIG_IGN:
        _signal.signal(_signal.SIGINT, lambda signum, frame: _os._exit(128 + signum))

import types as _types


class _ListingModule(_types.ModuleType):
    """The modules ``pybpf.maps``, ``pybpf.programs`` and ``pybpf.links`` are also the listings
    the API promises: ``pybpf.maps()`` is :func:`pybpf.live.maps` (every map in the kernel),
    and so on, while ``pybpf.maps.Map`` stays the module's."""

    def __call__(self):
        from . import live
        return getattr(live, self.__name__.rpartition(".")[2])()


def _load_spec(spec, **kwargs):
    """``ObjectSpec.load()``: :func:`pybpf.collection.load_object`, imported on the first
    load.  The spec layer imports nothing above it, and ``import pybpf`` does not import the
    runtime classes, so a spec can exist before them; this hook is the one way a spec finds
    its loader (set on ObjectSpec when pybpf.spec.object is imported, below)."""
    from .collection import load_object
    return load_object(spec, **kwargs)


class _SpecPackage(_types.ModuleType):
    # pybpf.spec: when pybpf.spec.object is imported (by anything), its ObjectSpec gets the
    # loader hook above if it has none yet
    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "object" and type(value) is _types.ModuleType:
            cls = getattr(value, "ObjectSpec", None)
            if cls is not None and "_load_object" in vars(cls) and cls._load_object is None:
                cls._load_object = _load_spec


class _Package(_types.ModuleType):
    # the import system sets each submodule as an attribute of its package: these three
    # become callable there (a function in their place would be replaced by the next import)
    def __setattr__(self, name, value):
        if name in ("maps", "programs", "links") and type(value) is _types.ModuleType:
            value.__class__ = _ListingModule
        elif name == "spec" and type(value) is _types.ModuleType:
            value.__class__ = _SpecPackage
            if "object" in vars(value):     # imported already (cannot be, but then hook it now)
                value.__setattr__("object", value.object)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

from .errors import *  # noqa: F401,F403,E402
from .errors import __all__ as _errors_all  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:   # for type checkers only: at run time these are the lazy attributes below
    from .collection import Object, Variable  # noqa: F401
    from .maps import Map  # noqa: F401
    from .programs import Program, TestRunResult  # noqa: F401
    from .spec.object import MapSpec, ObjectSpec, ProgramSpec, VariableSpec  # noqa: F401
del TYPE_CHECKING

# The rest is imported on first use, to keep 'import pybpf' short (a front end that lists
# programs, or a script that only parses, needs no runtime classes): name -> its module.
_LAZY = {
    "Object": "collection", "Variable": "collection",
    "Map": "maps",
    "Program": "programs", "TestRunResult": "programs",
    "ObjectSpec": "spec.object", "ProgramSpec": "spec.object", "MapSpec": "spec.object",
    "VariableSpec": "spec.object",
}


def open(path) -> "ObjectSpec":  # noqa: A001 - the public name the API promises
    """Parse a BPF object file; nothing is put in the kernel yet.

    Parsed objects are kept in pybpf's disk cache (``~/.cache/pybpf``; ``PYBPF_CACHE=0``
    turns it off), so opening the same file again costs ~1 ms instead of a parse."""
    from ._gcpause import gc_paused
    with gc_paused():       # the spec layer's first import too: pybpf._gcpause
        from .spec.object import ObjectSpec
        return ObjectSpec.from_file(_os.fspath(path))


def load(path, **kwargs) -> "Object":
    """Parse and load a BPF object: ``pybpf.open(path).load(**kwargs)``.

    ``target_btf=`` (a BTF file or object) sets the CO-RE target instead of the
    running kernel's BTF; ``facts=`` (a ``pybpf.loader.facts.KernelFacts``) sets
    every kernel fact (BTF, kconfig, version, kernel symbols)."""
    from ._gcpause import gc_paused
    with gc_paused():       # one section for both steps: pybpf._gcpause
        return open(path).load(**kwargs)


def __getattr__(name):
    # imported on first use, to keep 'import pybpf' short: the ring buffers pull in the C
    # helper, links perf_event_open and tracefs
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_submodule_import(module), name)
        globals()[name] = value     # found directly from now on
        return value
    if name == "Link":
        from .links import Link
        return Link
    if name in ("RingBuffer", "UserRingBuffer"):
        from . import ringbuf
        return getattr(ringbuf, name)
    if name == "PerfBuffer":
        from .ringbuf.perf import PerfBuffer
        return PerfBuffer
    if name in ("btfs", "stats", "ProgramInfo", "MapInfo", "BtfInfo"):
        from . import live
        return getattr(live, name)
    if name in ("maps", "programs", "links"):  # modules, callable (see _ListingModule): pybpf.maps()
        return _submodule_import(name)
    if name == "LinkInfo":
        from .links.base import LinkInfo
        return LinkInfo
    if name.isidentifier() and not name.startswith("_") and _submodule(name):
        # pybpf.kernel, pybpf.loader...: importing pybpf used to import many of them on the way
        # (private ones are left to the import system: 'from . import _cache' asks here first)
        return _submodule_import(name)
    raise AttributeError(f"module 'pybpf' has no attribute {name!r}")


def _submodule_import(name: str):
    # __import__, not importlib.import_module: the importlib package costs ~0.5 ms to import
    full = f"{__name__}.{name}"
    __import__(full)
    return _sys.modules[full]


def _submodule(name: str) -> bool:
    here = _os.path.dirname(__file__)
    return (_os.path.isfile(_os.path.join(here, name + ".py"))
            or _os.path.isfile(_os.path.join(here, name, "__init__.py")))


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = list(_errors_all) + [
    "open", "load", "Object", "Variable", "Map", "Program", "TestRunResult", "Link",
    "ObjectSpec", "ProgramSpec", "MapSpec", "VariableSpec", "RingBuffer", "UserRingBuffer", "PerfBuffer",
    "programs", "maps", "links", "btfs", "stats", "ProgramInfo", "MapInfo", "BtfInfo", "LinkInfo",
]
