"""What the ring buffer tests share: programs/ringbuf_test.bpf.c driven through
BPF_PROG_TEST_RUN (``produce`` writes numbered records into ``rb``; ``drain`` drains
``urb``, counting into .bss globals, and can echo each sample back into ``rb``), the
records it writes, and the ``obj`` fixture."""

from __future__ import annotations

import mmap
import struct

import pytest

import pybpf

from conftest import program


PAGE = mmap.PAGESIZE
SIZE = 16384  # both rings in ringbuf_test.bpf.c
FILL = bytes((i * 7 + 3) & 0xFF for i in range(4096))
MAX_RECORD = 4 + 4096  # largest record produce handles


# --- helpers ----------------------------------------------------------------

def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def produce(obj, count, size, discard_every=0, start_seq=0, flags=0) -> int:
    """Runs ``produce``: returns the number of records submitted."""
    ctx = struct.pack("<IIIIQ", count, size, discard_every, start_seq, flags)
    return _s32(obj.programs["produce"].test_run(ctx=ctx).retval)


def drain(obj, flags=0, echo=False) -> int:
    """Runs ``drain``: returns bpf_user_ringbuf_drain's result."""
    ctx = struct.pack("<QI4x", flags, 1 if echo else 0)
    return _s32(obj.programs["drain"].test_run(ctx=ctx).retval)


def var(obj, name):
    return obj.variables[name].get()


def seen(obj, first, count):
    """The first u32 of drained samples first .. first+count-1 (mod 256)."""
    raw = var(obj, "seen")
    slots = struct.unpack("<256I", raw)
    return [slots[(first + i) % 256] for i in range(count)]


def record(seq: int, size: int) -> bytes:
    """The bytes produce writes for record ``seq`` of ``size`` bytes."""
    if size >= 4:
        return struct.pack("<I", seq & 0xFFFFFFFF) + FILL[: size - 4]
    return struct.pack("<I", seq & 0xFFFFFFFF)[:size]


def bpf_map_mappings() -> int:
    """How many bpf map mappings this process has (lines of /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return sum("bpf-map" in line for line in f)


class Collect:
    """A RingBuffer callback that copies every record."""

    def __init__(self):
        self.records: list[bytes] = []

    def __call__(self, view):
        self.records.append(bytes(view))


@pytest.fixture
def obj():
    with pybpf.load(program("ringbuf_test")) as o:
        o.variables["fill"].set(FILL)
        yield o


class Export:
    """Holds a buffer export of an object, as numpy.frombuffer does (PyObject_GetBuffer)."""

    def __init__(self, obj):
        import ctypes

        from pybpf.ringbuf import _PyBuffer

        self._buf = _PyBuffer()
        get = ctypes.pythonapi.PyObject_GetBuffer
        get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
        get(obj, ctypes.byref(self._buf), 0)

    def release(self):
        import ctypes

        from pybpf.ringbuf import _PyBuffer

        rel = ctypes.pythonapi.PyBuffer_Release
        rel.argtypes = [ctypes.POINTER(_PyBuffer)]
        rel(ctypes.byref(self._buf))
