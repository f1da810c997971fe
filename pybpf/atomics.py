"""Acquire/release memory operations for memory shared with the kernel.

The ring buffers share positions and record headers with the kernel, which
orders them with ``smp_store_release``/``smp_load_acquire``/``xchg``.  Python
cannot express that ordering, so a tiny C helper (``pybpf/_atomics.c``, built by
``pip install .``) provides it and this module loads it with ctypes on first
use.  :func:`module` imports the same file as the extension module
``pybpf._atomics``: its ``SampleBuffer`` type (a reserved user ring buffer
sample with the buffer protocol), and ``Producer`` and ``Mutex``, the base
class of ``UserRingBuffer`` with the C fast paths of reserve/submit/write/
write_batch, and the mutex those fast paths can see is held (no ctypes call
per sample there).

Every function takes a raw address (an ``int``).  The caller must keep the
memory mapped for the duration of the call.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
import threading

from .errors import Error

__all__ = [
    "load_acquire_u64", "store_release_u64", "load_acquire_u32",
    "xchg_acq_rel_u32", "fence_acquire", "library", "library_path", "module",
]

_NOT_BUILT = "pybpf's C helper (_atomics) is not built: run 'pip install .' in the pybpf source tree"

# name -> (restype, argtypes)
_SIGNATURES = {
    "pybpf_load_acquire_u64": (ctypes.c_uint64, [ctypes.c_void_p]),
    "pybpf_store_release_u64": (None, [ctypes.c_void_p, ctypes.c_uint64]),
    "pybpf_load_acquire_u32": (ctypes.c_uint32, [ctypes.c_void_p]),
    "pybpf_xchg_acq_rel_u32": (ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_uint32]),
    "pybpf_fence_acquire": (None, []),
    # (producer_pos, data, mask, cons, limit, max_bytes, max_records, out, res, copy, copy_size) -> records
    "pybpf_ringbuf_scan": (ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                             ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint32,
                                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32]),
    # (producer_pos, data, mask, cons, limit, max_records, out, size, res) -> records copied
    "pybpf_ringbuf_copy": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                             ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint32,
                                             ctypes.c_void_p]),
    # (data, mask, prod, src, size, count) -> next producer position
    "pybpf_user_ringbuf_fill": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                                  ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64]),
}

_lock = threading.Lock()
_lib: ctypes.PyDLL | None = None
_module = None


def _candidates():
    """Directories that may hold the built helper, in search order.

    First the directory of this file (an installed package, or an in-place
    build), then ``<entry>/pybpf`` for every ``sys.path`` entry: when the source
    tree shadows the installed package (``python -m pybpf`` run from the
    repository root after ``pip install .``), the library is in site-packages.
    """
    yield os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        yield os.path.join(os.path.abspath(entry or os.curdir), "pybpf")


def library_path() -> str:
    """The path of the built C helper; raises :class:`pybpf.Error` if it is not built."""
    seen = set()
    for directory in _candidates():
        if directory in seen:
            continue
        seen.add(directory)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_atomics" + suffix)
            if os.path.isfile(path):
                return path
    raise Error(_NOT_BUILT)


def library() -> ctypes.PyDLL:
    """The loaded C helper, with argtypes/restype set (loaded on first call)."""
    global _lib
    lib = _lib
    if lib is not None:
        return lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                # PyDLL: keep the GIL; these calls take nanoseconds
                lib = ctypes.PyDLL(path)
                for name, (restype, argtypes) in _SIGNATURES.items():
                    func = getattr(lib, name)
                    func.restype = restype
                    func.argtypes = argtypes
            except (OSError, AttributeError) as exc:
                raise Error(f"pybpf's C helper at {path} is unusable ({exc}): "
                            "rebuild it with 'pip install .' in the pybpf source tree") from exc
            _lib = lib
    return _lib


def module():
    """The C helper as the extension module ``pybpf._atomics`` (imported on first call).

    Found by :func:`library_path`, so it works when the source tree shadows the
    installed package, where ``import pybpf._atomics`` would not find it.
    """
    global _module
    mod = _module
    if mod is not None:
        return mod
    with _lock:
        if _module is None:
            mod = sys.modules.get("pybpf._atomics")
            if mod is None:
                path = library_path()
                try:
                    loader = importlib.machinery.ExtensionFileLoader("pybpf._atomics", path)
                    spec = importlib.util.spec_from_file_location("pybpf._atomics", path, loader=loader)
                    mod = importlib.util.module_from_spec(spec)
                    loader.exec_module(mod)
                    mod.SampleBuffer, mod.Producer, mod.Mutex, mod.deliver  # noqa: B018  (an old build lacks them)
                except (ImportError, AttributeError) as exc:
                    raise Error(f"pybpf's C helper at {path} is unusable ({exc}): "
                                "rebuild it with 'pip install .' in the pybpf source tree") from exc
                sys.modules["pybpf._atomics"] = mod
            _module = mod
    return _module


def load_acquire_u64(addr: int) -> int:
    """Load the u64 at ``addr`` with acquire ordering."""
    return library().pybpf_load_acquire_u64(addr)


def store_release_u64(addr: int, value: int) -> None:
    """Store ``value`` into the u64 at ``addr`` with release ordering."""
    library().pybpf_store_release_u64(addr, value)


def load_acquire_u32(addr: int) -> int:
    """Load the u32 at ``addr`` with acquire ordering."""
    return library().pybpf_load_acquire_u32(addr)


def xchg_acq_rel_u32(addr: int, value: int) -> int:
    """Atomically swap ``value`` into the u32 at ``addr`` (acquire+release); returns the old value."""
    return library().pybpf_xchg_acq_rel_u32(addr, value)


def fence_acquire() -> None:
    """Acquire fence: loads before it are ordered before every access after it."""
    library().pybpf_fence_acquire()
