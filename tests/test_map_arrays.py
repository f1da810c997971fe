"""numpy arrays of map values: Map.lookup_array, Map.values_array and Map.items_array.

Each array is checked against what ``lookup()`` decodes for the same key, element by
element and field by field, on maps filled by BPF programs (programs/maps_test.bpf.c
``fill``) and from user space: ARRAY, PERCPU_ARRAY (values in 8-byte slots per CPU),
HASH with a struct value, PERCPU_HASH of a 12-byte struct, and libbpf-tools' histogram
struct (an array member).
"""

from __future__ import annotations

import numpy as np
import pytest

import pybpf
from pybpf.loader import possible_cpus

from conftest import program


@pytest.fixture
def maps_test():
    with pybpf.load(program("maps_test")) as obj:
        assert obj.programs["fill"].test_run().retval == 0
        yield obj


@pytest.fixture
def percpu_sizes():
    with pybpf.load(program("percpu_sizes")) as obj:
        yield obj


def test_array_values_equal_lookup(maps_test):
    m = maps_test.maps["array"]
    for i in range(m.max_entries):
        if i != 2:                       # 2 holds 222 from the BPF program
            m[i] = i * 1_000_003 + (1 << 40)
    got = m.lookup_array()
    assert got.dtype == np.dtype("<u8") and got.shape == (m.max_entries,)
    assert got.tolist() == [m.lookup(i) for i in range(m.max_entries)]
    assert got[2] == 222
    assert np.array_equal(m.values_array(), got)
    keys, values = m.items_array()
    assert keys.tolist() == list(range(m.max_entries)) and np.array_equal(values, got)
    # chosen keys, in the order given, repeats included
    assert m.lookup_array([5, 2, 2, 0]).tolist() == [m.lookup(k) for k in (5, 2, 2, 0)]
    assert m.lookup_array(np.array([7, 1], dtype=np.uint32)).tolist() == [m.lookup(7), m.lookup(1)]
    # the array is the user's: writable, and not the map
    got[0] = 9
    assert m.lookup(0) != 9


def test_array_keys_out_of_range_raise_key_error(maps_test):
    m = maps_test.maps["array"]
    with pytest.raises(KeyError):
        m.lookup_array([0, m.max_entries])
    with pytest.raises(KeyError):
        m.lookup_array([-1])
    with pytest.raises(pybpf.Error, match="integer indexes"):
        m.lookup_array(["a"])


def test_percpu_array_has_one_column_per_possible_cpu(maps_test):
    m = maps_test.maps["percpu"]
    ncpus = possible_cpus()
    m[2] = [100 + c for c in range(ncpus)]
    got = m.lookup_array()
    assert got.shape == (m.max_entries, ncpus)
    assert got.tolist() == [m.lookup(i) for i in range(m.max_entries)]
    assert got[1].sum() == 5           # fill added 5 on the CPU it ran on
    assert got[2].tolist() == [100 + c for c in range(ncpus)]


def test_percpu_values_smaller_than_their_slot(percpu_sizes):
    """4- and 12-byte values sit in 8- and 16-byte slots per CPU: the strides skip the padding."""
    ncpus = possible_cpus()
    a4, a12 = percpu_sizes.maps["array4"], percpu_sizes.maps["array12"]
    for i in range(a4.max_entries):
        a4[i] = [0xA0000000 + i * 16 + c for c in range(ncpus)]
        a12[i] = [{"a": i, "b": c, "c": 0xFFFFFFFF - i} for c in range(ncpus)]
    got4 = a4.lookup_array()
    assert got4.dtype.itemsize == 4 and got4.shape == (a4.max_entries, ncpus)
    assert got4.tolist() == [a4.lookup(i) for i in range(a4.max_entries)]
    got12 = a12.values_array()
    assert got12.dtype.names == ("a", "b", "c") and got12.dtype.itemsize == 12
    for i in range(a12.max_entries):
        want = a12.lookup(i)
        assert [(v.a, v.b, v.c) for v in want] == [tuple(int(x) for x in r) for r in got12[i].tolist()]


def test_percpu_hash_needs_keys_and_matches_lookup(percpu_sizes):
    ncpus = possible_cpus()
    h = percpu_sizes.maps["hash12"]
    for k in (3, 0, 2):
        h[k] = [{"a": k, "b": c, "c": k * c} for c in range(ncpus)]
    with pytest.raises(pybpf.Error, match="needs the keys"):
        h.lookup_array()
    got = h.lookup_array([2, 0, 3])
    assert got.shape == (3, ncpus)
    for row, k in zip(got, (2, 0, 3)):
        assert [bytes(v) for v in h.lookup(k)] == [r.tobytes() for r in row]
    with pytest.raises(KeyError):
        h.lookup_array([1])
    keys, values = h.items_array()
    assert sorted(keys.tolist()) == [0, 2, 3]
    for k, row in zip(keys.tolist(), values):
        assert [bytes(v) for v in h.lookup(k)] == [r.tobytes() for r in row]


def test_hash_struct_values_written_by_bpf(maps_test):
    h = maps_test.maps["hash"]
    got = h.lookup_array([1, 2, 3])
    assert got.dtype.names == ("a", "b", "tag") and got.dtype.itemsize == h.value_size == 16
    for k, v in zip((1, 2, 3), got):
        want = h.lookup(k)
        assert (int(v["a"]), int(v["b"]), v["tag"].rstrip(b"\0").decode()) == (want.a, want.b, want.tag)
        assert (want.a, want.b) == (k * 10, k)
        assert v.tobytes() == bytes(want)
    keys, values = h.items_array()
    assert sorted(zip(keys.tolist(), values["a"].tolist())) == [(1, 10), (2, 20), (3, 30)]
    assert np.array_equal(np.sort(h.values_array()["b"]), [1, 2, 3])


def test_struct_with_an_array_member():
    """libbpf-tools' struct hist {u32 slots[26]; char comm[16]; ...}: the array member a sub-array."""
    with pybpf.load(program("tools_biolatency")) as obj:
        h = obj.maps["hists"]
        dt = h.lookup_array([]).dtype
        slots = [n for n in dt.names if dt.fields[n][0].shape]
        assert slots, dt
        name = slots[0]
        shape = dt.fields[name][0].shape
        raw = bytearray(h.value_size)
        first = dt.fields[name][1]
        n = int(np.prod(shape))
        raw[first:first + 4 * n] = np.arange(1, n + 1, dtype="<u4").tobytes()
        key = {"dev": 7, "op": 1}
        h[key] = bytes(raw)
        got = h.lookup_array([key])
        assert got[name][0].tolist() == np.arange(1, n + 1).reshape(shape).tolist()
        assert got[0].tobytes() == bytes(h.lookup(key))
        keys, values = h.items_array()      # struct keys: a structured array too
        assert keys.dtype.names == ("dev", "op") and keys.tolist() == [(7, 1)]
        assert values[0].tobytes() == bytes(raw)


def test_explicit_dtype_and_its_size(maps_test):
    m = maps_test.maps["array"]
    m[3] = 0x0102030405060708
    as_bytes = m.lookup_array(dtype=np.dtype((np.uint8, 8)))
    assert as_bytes[3].tolist() == [8, 7, 6, 5, 4, 3, 2, 1]
    halves = m.lookup_array(dtype=np.dtype([("lo", "<u4"), ("hi", "<u4")]))
    assert (int(halves["lo"][3]), int(halves["hi"][3])) == (0x05060708, 0x01020304)
    with pytest.raises(pybpf.Error, match="4 bytes, but the map's values are 8 bytes"):
        m.lookup_array(dtype="<u4")
    with pytest.raises(pybpf.Error, match="16 bytes, but the map's values are 8 bytes"):
        m.values_array(dtype="struct val")


def test_no_btf_value_type_asks_for_a_dtype():
    with pybpf.load(program("map_types")) as obj:
        m = obj.maps["jump_table"]         # PROG_ARRAY: no value type in BTF
        assert not m.spec.value_type_id
        with pytest.raises(pybpf.Error, match="needs a dtype"):
            m.lookup_array()


def test_ring_buffers_have_no_values(maps_test):
    with pybpf.load(program("ringbuf_test")) as obj:
        with pytest.raises(pybpf.Error, match="RingBuffer"):
            obj.maps["rb"].values_array(dtype="<u8")
