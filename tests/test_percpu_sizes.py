"""Per-CPU maps whose value size is not a multiple of 8 (programs/percpu_sizes.bpf.c).

The kernel copies per-CPU values to and from user space in slots of
round_up(value_size, 8) bytes per possible CPU (bpf_percpu_array_copy,
bpf_percpu_hash_copy).  Python writes distinct values per CPU, the program reads
each CPU's value with bpf_map_lookup_percpu_elem (into .bss) and complements it,
and Python reads the complements back.
"""

from __future__ import annotations

import struct

import pytest

import pybpf
from pybpf.kernel.constants import MapType
from pybpf.loader import possible_cpus

from conftest import program

pytestmark = pytest.mark.kernel

MAPS = {"array4": (MapType.PERCPU_ARRAY, 4), "hash4": (MapType.PERCPU_HASH, 4),
        "array12": (MapType.PERCPU_ARRAY, 12), "hash12": (MapType.PERCPU_HASH, 12)}


def per_cpu_values(name: str, ncpus: int) -> list:
    """Distinct raw values, one per CPU, with every byte set (a slot boundary off by 4 shows)."""
    size = MAPS[name][1]
    salt = sum(name.encode())
    return [bytes((0x11 * (cpu + 1) + 3 * i + salt) & 0xFF | 0x80 for i in range(size)) for cpu in range(ncpus)]


def complement(raw: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in raw)


@pytest.fixture
def obj(no_fd_leak):
    with pybpf.load(program("percpu_sizes")) as o:
        yield o


def test_declared_sizes_are_not_multiples_of_8(obj):
    for name, (mtype, size) in MAPS.items():
        m = obj.maps[name]
        assert (m.type, m.value_size) == (mtype, size) and size % 8


def raw_values(values) -> list:
    """A per-CPU lookup's values as raw bytes (ints for 4-byte values, typed structs for 12)."""
    return [v.to_bytes(4, "little") if isinstance(v, int) else bytes(v) for v in values]


def test_python_writes_what_the_kernel_reads_per_cpu(obj):
    ncpus = possible_cpus()
    written = {name: per_cpu_values(name, ncpus) for name in MAPS}
    for name, values in written.items():
        obj.maps[name].update(0, values)
        assert raw_values(obj.maps[name].lookup(0)) == values, name
    assert obj.programs["swap"].test_run().retval == 0
    assert obj.variables["cpus_seen"].get() == ncpus
    for name, values in written.items():
        seen = obj.variables[f"seen_{name}"].get()        # [cpu] = the value the program read there
        assert [bytes(seen[cpu]) if MAPS[name][1] != 4 else seen[cpu].to_bytes(4, "little")
                for cpu in range(ncpus)] == values, name


def test_python_reads_what_the_kernel_wrote_per_cpu(obj):
    ncpus = possible_cpus()
    written = {name: per_cpu_values(name, ncpus) for name in MAPS}
    for name, values in written.items():
        obj.maps[name].update(0, values)
    assert obj.programs["swap"].test_run().retval == 0
    for name, values in written.items():
        assert raw_values(obj.maps[name].lookup(0)) == [complement(v) for v in values], name


def test_items_of_a_12_byte_percpu_hash(obj):
    ncpus = possible_cpus()
    h = obj.maps["hash12"]
    for key in (1, 2, 3):
        h.update(key, [{"a": key, "b": cpu, "c": key * 100 + cpu} for cpu in range(ncpus)])
    got = {k: [v.to_python() for v in vals] for k, vals in h.items()}
    assert got == {key: [{"a": key, "b": cpu, "c": key * 100 + cpu} for cpu in range(ncpus)] for key in (1, 2, 3)}
    assert raw_values(h[2]) == [struct.pack("<III", 2, cpu, 200 + cpu) for cpu in range(ncpus)]


def test_a_wrong_number_of_values_is_an_error(obj):
    with pytest.raises(pybpf.Error, match=f"give a list of {possible_cpus()} values"):
        obj.maps["array4"].update(0, [1])
