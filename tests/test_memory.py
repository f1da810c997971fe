"""Memory stays flat: loading and closing objects again and again keeps nothing of them alive
(no in-process cache without a bound, no table whose values hold their keys)."""

from __future__ import annotations

import gc

import pytest

import pybpf
from pybpf.spec.btf import BTF
from pybpf.spec.object import ObjectSpec

from conftest import program


def alive(cls) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is cls)


@pytest.mark.kernel
def test_load_close_cycles_keep_no_object_or_btf_alive(no_fd_leak):
    """Typed values (map items, globals, ring records) build ctypes types per BTF; once the
    object is closed and dropped, its spec and BTF must go too."""
    def cycle():
        for name in ("globals_test", "maps_test", "user_ringbuf", "map_types"):
            with pybpf.load(program(name)) as obj:
                for m in obj.maps.values():
                    if m.value_type is not None and m.type in (1, 2):     # hash, array: typed items
                        for _ in zip(range(1), m.items()):
                            pass
                for v in obj.variables.values():
                    repr(v.get())
                rb = obj.maps.get("kernel_ringbuf")
                if rb is not None:
                    pybpf.RingBuffer(rb, lambda r: None, type="struct event").close()
    cycle()
    specs, btfs = alive(ObjectSpec), alive(BTF)
    for _ in range(20):
        cycle()
    assert alive(ObjectSpec) == specs
    assert alive(BTF) <= btfs
