"""What both ring buffer kinds share: the record layout and the mmap of a map fd.

The map fd exposes a consumer page (``consumer_pos``), a producer page
(``producer_pos``) and the data area, mapped twice back to back so that a
record that wraps around the end is contiguous (kernel/bpf/ringbuf.c).  Each
record starts with an 8-byte header ``u32 len; u32 pg_off``; bit 31 of ``len``
is BUSY, bit 30 DISCARD; a record takes ``round_up(len + 8, 8)`` bytes.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import sys

from ..errors import Error, PermissionError, SyscallError
from ..kernel.constants import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ, MapType

_BUSY = BPF_RINGBUF_BUSY_BIT
_DISCARD = BPF_RINGBUF_DISCARD_BIT
_LEN_MASK = 0xFFFFFFFF & ~(_BUSY | _DISCARD)
_HDR = BPF_RINGBUF_HDR_SZ
# round_up(len + 8, 8) == (len + _ROUND) & _ALIGN
_ROUND = _HDR + 7
_ALIGN = ~7
# A header as one native u64: u32 len first, u32 pg_off = 0 after it.
_HDR_SHIFT = 0 if sys.byteorder == "little" else 32
# Runs of equal records are read (reader) and written (user) with one
# struct.Struct of up to this many records.
_UNPACK_RUN = 256


class _PyBuffer(ctypes.Structure):
    """``Py_buffer`` (Include/pybuffer.h): only ``buf`` is used."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_PyObject_GetBuffer.restype = ctypes.c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
_PyBuffer_Release.restype = None
_PyBUF_SIMPLE = 0


class _Mapping:
    """One shared mmap of a map fd, with its raw address for the C helper.

    The address comes from a buffer export held on the mmap object for as long
    as the mapping is open: ``mmap.close()`` refuses to unmap while an export
    exists, so the address can never outlive the memory.  (ctypes'
    ``from_buffer`` would do the same but refuses read-only mappings.)
    """

    __slots__ = ("mmap", "mem", "addr", "_pybuf", "__weakref__")

    def __init__(self, fd: int, length: int, offset: int, writable: bool, what: str, map_name: str):
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        try:
            self.mmap = mmap.mmap(fd, length, access=access, offset=offset)
        except OSError as exc:
            mode = "read-write" if writable else "read-only"
            message = f"mapping the {what} of map '{map_name}' {mode} ({length} bytes at offset {offset})"
            cls = PermissionError if exc.errno in (_errno.EPERM, _errno.EACCES) else SyscallError
            raise cls("mmap", exc.errno or _errno.EINVAL, message) from None
        self._pybuf = _PyBuffer()
        _PyObject_GetBuffer(self.mmap, ctypes.byref(self._pybuf), _PyBUF_SIMPLE)
        self.addr: int = self._pybuf.buf
        self.mem = memoryview(self.mmap)

    def close(self) -> None:
        """Unmap (idempotent).  Views derived from ``mem`` must be released first."""
        if self._pybuf is None:
            return
        _PyBuffer_Release(ctypes.byref(self._pybuf))
        self._pybuf = None
        self.addr = 0
        self.mem.release()
        try:
            self.mmap.close()  # also closes the fd the mmap module dup()ed
        except BufferError:
            # Someone still holds a slice of a record: the memory stays mapped
            # (never freed under them) until that slice is garbage; the mmap
            # object unmaps and closes its fd then.
            pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: ctypes may be half torn down
            pass


def _check_map(map, want: MapType) -> tuple[int, str, int]:
    """Validates ``map`` for a ring buffer of type ``want``; returns (fd, name, size)."""
    cls, other_type, other_cls = _ROLES[want]
    name = getattr(map, "name", "?")
    try:
        fd, map_type, size = map.fd, map.type, map.max_entries
    except AttributeError as exc:
        raise Error(f"{cls} needs a pybpf Map (with fd, type, max_entries, name), not {map!r}") from exc
    if map_type != want:
        try:
            type_name = MapType(map_type).name
        except ValueError:
            type_name = str(map_type)
        hint = f" (use {other_cls} for a {other_type.name} map)" if map_type == other_type else ""
        raise Error(f"{cls} needs a {want.name} map; map '{name}' is a {type_name} map{hint}")
    page = mmap.PAGESIZE
    # The kernel refuses anything else at map creation; this guards fakes and bugs.
    if size <= 0 or size & (size - 1) or size % page:
        raise Error(f"map '{name}': ring size {size} is not a power of two multiple of the page size ({page})")
    return fd, name, size


_ROLES = {
    MapType.RINGBUF: ("RingBuffer", MapType.USER_RINGBUF, "UserRingBuffer"),
    MapType.USER_RINGBUF: ("UserRingBuffer", MapType.RINGBUF, "RingBuffer"),
}


def _release_quietly(view: memoryview) -> None:
    try:
        view.release()
    except BufferError:
        pass  # still exported: the mapping stays alive until the export goes

