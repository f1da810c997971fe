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


@pytest.mark.kernel
def test_a_thousand_load_close_cycles_grow_rss_by_less_than_5_mb():
    """tools/rss_cycles.py in a fresh process: 1,000 cycles, round robin over every object under
    programs/ this kernel loads (typed maps and globals read, ring buffers opened, programs
    attached, everything closed), measured from the end of the warm-up round."""
    import json
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "tools" / "rss_cycles.py"), "1000", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    objects = sorted(root.glob("programs/*.o"))
    assert result["objects"] + len(result["refused"]) == len(objects)
    assert result["objects"] >= len(objects) // 2, result["refused"]
    assert result["cycles"] == 1000
    assert result["growth_mb"] < 5, result["marks"]


def test_a_dropped_spec_goes_at_once_not_at_the_next_cyclic_collection():
    """A spec, its BTF and the factory of its typed values are freed by reference counting:
    left to the cyclic collector, a load's worth of garbage piles up between full collections
    and fragments the heap (RSS grew by 16 MB over 1,000 cycles)."""
    import weakref
    spec = pybpf.open(program("globals_test"))
    btf = weakref.ref(spec.btf)
    values = [repr(v.get()) for v in spec.variables.values()]   # the typed factory and its types
    assert values and btf().types[1] is not None                  # the types view too
    gc.collect()
    gc.disable()
    try:
        del spec
        assert btf() is None
    finally:
        gc.enable()


@pytest.mark.kernel
def test_a_loaded_and_closed_object_goes_at_once(no_fd_leak):
    import weakref
    gc.collect()
    gc.disable()
    try:
        with pybpf.load(program("extern_ksyms")) as obj:
            spec = weakref.ref(obj.spec)
            btf = weakref.ref(obj.spec.btf)
        del obj
        assert spec() is None and btf() is None
    finally:
        gc.enable()


def test_same_content_shares_typed_classes_across_loads():
    """Opening the same object again gives the same ctypes classes (one factory per BTF
    content), so reloading creates no new types."""
    a = pybpf.open(program("globals_test"))
    b = pybpf.open(program("globals_test"))
    assert a.btf is not b.btf
    va = {n: type(v.get()) for n, v in a.variables.items() if not isinstance(v.get(), (int, float, bytes))}
    assert va
    for name, cls in va.items():
        assert type(b.variables[name].get()) is cls
        del a                            # the factory outlives the first BTF and serves the second
        break
    for name, cls in va.items():
        assert type(b.variables[name].get()) is cls


def test_kernel_symbols_are_looked_up_not_all_kept():
    """An untyped ksym costs one pass over /proc/kallsyms (~200k symbols, 10 MB of text), and
    only the names asked for are kept."""
    from pybpf.loader.facts import KernelFacts, read_kallsyms
    with open("/proc/kallsyms") as f:
        names = [line.split()[2] for _, line in zip(range(2000), f)][::500]
    facts = KernelFacts.running()
    facts.prefetch_ksyms(names)
    full = read_kallsyms()
    assert {n: facts.ksym_address(n) for n in names} == {n: full[n] for n in names}
    assert facts.ksym_address("pybpf_no_such_symbol") is None
    assert len(facts._kallsyms) == len(set(names)) + 1


def test_inspecting_an_object_with_externs_keeps_nothing_of_it():
    """inspect resolves .kconfig/.ksyms externs against the running kernel; the resolution is
    kept in a table weakly keyed by the spec, and must not hold the spec itself (it did: every
    inspected object stayed for the life of the process)."""
    import weakref
    from pybpf import inspect as _inspect
    from pybpf.loader import externs
    refs = []
    for name in ("extern_kconfig", "extern_ksyms"):
        spec = pybpf.open(program(name))
        assert spec.externs
        _inspect.describe(spec)
        externs.resolution_for(spec)
        refs.append(weakref.ref(spec))
        del spec
    gc.collect()
    assert [r() for r in refs] == [None, None]
