"""The C helper behind the ring buffers: pybpf.atomics on ctypes buffers."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest

import pybpf
from pybpf import atomics


def test_library_is_found_and_typed():
    path = atomics.library_path()
    assert os.path.basename(path).startswith("_atomics")
    lib = atomics.library()
    assert lib is atomics.library()  # loaded once
    assert lib.pybpf_load_acquire_u64.restype is ctypes.c_uint64


def test_load_acquire_u64():
    cell = ctypes.c_uint64(0xFEDC_BA98_7654_3210)
    assert atomics.load_acquire_u64(ctypes.addressof(cell)) == 0xFEDC_BA98_7654_3210


def test_store_release_u64():
    buf = (ctypes.c_uint64 * 3)(1, 2, 3)
    atomics.store_release_u64(ctypes.addressof(buf) + 8, 2**64 - 1)
    assert list(buf) == [1, 2**64 - 1, 3]  # neighbours untouched
    atomics.store_release_u64(ctypes.addressof(buf) + 8, 0)
    assert list(buf) == [1, 0, 3]


def test_load_acquire_u32():
    buf = (ctypes.c_uint32 * 2)(0x8000_0010, 7)
    assert atomics.load_acquire_u32(ctypes.addressof(buf)) == 0x8000_0010
    assert atomics.load_acquire_u32(ctypes.addressof(buf) + 4) == 7


def test_xchg_acq_rel_u32():
    buf = (ctypes.c_uint32 * 3)(5, 0x8000_0018, 9)
    old = atomics.xchg_acq_rel_u32(ctypes.addressof(buf) + 4, 0x4000_0018)
    assert old == 0x8000_0018
    assert list(buf) == [5, 0x4000_0018, 9]


def test_the_helper_in_use_is_built_from_this_source():
    # Tests exercise the built library, not pybpf/_atomics.c: an edit (or a
    # mutant) without 'pip install .' would otherwise test the old code.
    import hashlib
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pybpf", "_atomics.c")
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert atomics.module().SOURCE_SHA256 == digest, (
        f"{atomics.library_path()} was built from another _atomics.c: run 'pip install .'")


def test_on_a_bytearray_through_from_buffer():
    raw = bytearray(16)
    cell = ctypes.c_char.from_buffer(raw)
    addr = ctypes.addressof(cell)
    atomics.store_release_u64(addr + 8, 0x0102030405060708)
    assert raw[8:] == (0x0102030405060708).to_bytes(8, "little")
    assert atomics.load_acquire_u64(addr + 8) == 0x0102030405060708
    del cell


def test_xchg_is_atomic_across_threads():
    # Every thread swaps its own tokens in; each value read back is seen once.
    cell = ctypes.c_uint32(0)
    addr = ctypes.addressof(cell)
    seen = []
    lock = threading.Lock()

    def worker(base):
        got = [atomics.xchg_acq_rel_u32(addr, base + i) for i in range(1, 2001)]
        with lock:
            seen.extend(got)

    threads = [threading.Thread(target=worker, args=(k << 16,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen.append(cell.value)
    assert sorted(seen) == sorted([0] + [(k << 16) + i for k in range(4) for i in range(1, 2001)])


def test_missing_library_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(atomics, "_candidates", lambda: iter([str(tmp_path)]))
    with pytest.raises(pybpf.Error, match=r"not built: run 'pip install \.'"):
        atomics.library_path()
