"""Maps from user space, after programs/maps_test.bpf.c's `fill` wrote into them:

hash[i] = {a = i*10, b = i, tag = "t"} for i in 1..3; array[2] = 222;
percpu[1] += 5 on the CPU that ran it; lru is left to user space.
"""

from __future__ import annotations

import errno
import struct

import pytest

import pybpf
from pybpf.kernel.constants import MapType
from pybpf.loader import possible_cpus

from conftest import program

pytestmark = pytest.mark.kernel

VAL = struct.Struct("<QI4s")          # struct val { __u64 a; __u32 b; char tag[4]; }


def val(i: int) -> bytes:
    return VAL.pack(i * 10, i, b"t")


@pytest.fixture
def filled(no_fd_leak):
    with pybpf.load(program("maps_test")) as obj:
        assert obj.programs["fill"].test_run().retval == 0
        yield obj


def test_map_attributes(filled):
    m = filled.maps
    assert (m["hash"].name, m["hash"].type, m["hash"].key_size, m["hash"].value_size, m["hash"].max_entries) == \
        ("hash", MapType.HASH, 4, 16, 128)
    assert (m["array"].type, m["array"].max_entries) == (MapType.ARRAY, 8)
    assert (m["percpu"].type, m["percpu"].value_size) == (MapType.PERCPU_ARRAY, 8)
    assert (m["lru"].type, m["lru"].key_size) == (MapType.LRU_HASH, 8)
    assert all(isinstance(x.fd, int) and x.fd > 2 for x in m.values())


# -- hash ----------------------------------------------------------------------------------

def test_hash_written_by_program(filled):
    h = filled.maps["hash"]
    assert sorted(h.keys()) == [1, 2, 3]
    assert dict(h.items()) == {i: val(i) for i in (1, 2, 3)}
    for i in (1, 2, 3):
        a, b, tag = VAL.unpack(h.lookup(i))
        assert (a, b, tag) == (i * 10, i, b"t\0\0\0")
    assert h.lookup(4) is None
    assert h.lookup(4, default="none") == "none"


def test_hash_int_and_bytes_keys_are_the_same_key(filled):
    h = filled.maps["hash"]
    assert h.lookup(struct.pack("<I", 2)) == h.lookup(2) == val(2)
    h.update(struct.pack("<I", 7), val(70))
    assert h.lookup(7) == val(70)
    assert h[7] == val(70)


def test_hash_update_delete(filled):
    h = filled.maps["hash"]
    assert h.delete(2) is True
    assert h.lookup(2) is None
    assert h.delete(2) is False
    assert sorted(h.keys()) == [1, 3]
    h.update(2, val(5))
    h.update(1, val(9))                         # overwrite
    assert dict(h.items()) == {1: val(9), 2: val(5), 3: val(3)}
    with pytest.raises(KeyError):
        h[42]
    del h[3]
    with pytest.raises(KeyError):
        del h[3]
    assert sorted(h) == [1, 2]


def test_hash_update_flags(filled):
    BPF_NOEXIST, BPF_EXIST = 1, 2
    h = filled.maps["hash"]
    with pytest.raises(pybpf.SyscallError) as exc:
        h.update(1, val(0), BPF_NOEXIST)
    assert exc.value.command == "BPF_MAP_UPDATE_ELEM"
    with pytest.raises(pybpf.SyscallError):
        h.update(99, val(0), BPF_EXIST)
    h.update(99, val(99), BPF_NOEXIST)
    assert h.lookup(99) == val(99)


def test_hash_program_sees_user_deletes(filled):
    h = filled.maps["hash"]
    for k in list(h.keys()):
        h.delete(k)
    assert list(h.items()) == []
    assert filled.programs["fill"].test_run().retval == 0
    assert sorted(h.keys()) == [1, 2, 3]


def test_hash_wrong_sizes_raise(filled):
    h = filled.maps["hash"]
    with pytest.raises(pybpf.Error, match="hash"):
        h.update(1, b"short")
    with pytest.raises(pybpf.Error):
        h.lookup(b"\x01\x00")                    # 2-byte key for a 4-byte map
    with pytest.raises(pybpf.Error):
        h.update(2**32, val(1))                  # does not fit the __u32 key
    with pytest.raises(pybpf.Error):
        h.update(1.5, val(1))
    assert h.lookup(1) == val(1)


def test_hash_full(no_fd_leak):
    spec = pybpf.open(program("maps_test"))
    spec.maps["hash"].max_entries = 4
    with spec.load() as obj:
        h = obj.maps["hash"]
        assert h.max_entries == 4
        for k in range(4):
            h.update(k, val(k))
        with pytest.raises(pybpf.SyscallError) as exc:
            h.update(4, val(4))
        assert exc.value.errno == errno.E2BIG   # the map is full
        assert sorted(h.keys()) == [0, 1, 2, 3]


# -- array -----------------------------------------------------------------------------------

def test_array_written_by_program(filled):
    a = filled.maps["array"]
    assert list(a.keys()) == list(range(8))        # arrays have every key
    assert dict(a.items()) == {k: (222 if k == 2 else 0) for k in range(8)}


def test_array_update_lookup(filled):
    a = filled.maps["array"]
    a.update(7, 2**64 - 1)
    a.update(0, struct.pack("<Q", 12345))
    assert a.lookup(7) == 2**64 - 1
    assert a.lookup(0) == 12345
    assert a.lookup(8) is None                      # past max_entries
    with pytest.raises(pybpf.SyscallError):
        a.update(8, 1)
    with pytest.raises(pybpf.SyscallError):
        a.delete(0)                                 # array elements cannot be deleted
    # the program overwrites index 2 only
    a.update(2, 1)
    filled.programs["fill"].test_run()
    assert a.lookup(2) == 222 and a.lookup(7) == 2**64 - 1


# -- per-CPU ------------------------------------------------------------------------------------

def test_percpu_values_are_lists(filled):
    p = filled.maps["percpu"]
    ncpus = possible_cpus()
    v = p.lookup(1)
    assert isinstance(v, list) and len(v) == ncpus
    assert sum(v) == 5                                  # += 5 on the CPU that ran fill
    assert sorted(v)[-1] == 5 and v.count(0) == ncpus - 1
    for k in (0, 2, 3):
        assert p.lookup(k) == [0] * ncpus


def test_percpu_accumulates_across_runs(filled):
    p = filled.maps["percpu"]
    for run in range(2, 6):
        filled.programs["fill"].test_run()
        assert sum(p.lookup(1)) == 5 * run


def test_percpu_update_from_user_space(filled):
    p = filled.maps["percpu"]
    ncpus = possible_cpus()
    values = [100 + i for i in range(ncpus)]
    p.update(1, values)
    assert p.lookup(1) == values
    filled.programs["fill"].test_run()
    after = p.lookup(1)
    assert sum(after) == sum(values) + 5
    assert sum(1 for a, b in zip(after, values) if a != b) == 1      # one CPU ran it
    p.update(3, [struct.pack("<Q", i) for i in range(ncpus)])
    assert p.lookup(3) == list(range(ncpus))
    assert dict(p.items())[3] == list(range(ncpus))


def test_percpu_wrong_value_shape_raises(filled):
    p = filled.maps["percpu"]
    with pytest.raises(pybpf.Error, match="per-CPU"):
        p.update(1, 5)
    with pytest.raises(pybpf.Error, match="per-CPU"):
        p.update(1, [5] * (possible_cpus() + 1))


# -- LRU --------------------------------------------------------------------------------------------

def test_lru_hash_u64_keys(filled):
    lru = filled.maps["lru"]
    assert list(lru.keys()) == []
    big = 2**63 + 5
    lru.update(big, 1)
    lru.update(struct.pack("<Q", 7), 2)
    assert lru.lookup(big) == 1 and lru.lookup(7) == 2
    assert dict(lru.items()) == {big: 1, 7: 2}
    assert lru.delete(big) and list(lru.keys()) == [7]


def test_lru_evicts_instead_of_failing(filled):
    lru = filled.maps["lru"]
    for k in range(lru.max_entries * 4):
        lru.update(k, k)                              # never E2BIG: old entries go
    keys = list(lru.keys())
    assert 0 < len(keys) <= lru.max_entries
    assert (lru.max_entries * 4 - 1) in keys         # the newest survives
    assert all(lru.lookup(k) == k for k in keys)


# -- closed ------------------------------------------------------------------------------------------

def test_closed_map_raises(no_fd_leak):
    with pybpf.load(program("maps_test")) as obj:
        h = obj.maps["hash"]
        h.close()
        assert h.closed
        for op in (lambda: h.lookup(1), lambda: h.update(1, val(1)), lambda: h.delete(1),
                   lambda: list(h.keys()), lambda: list(h.items()), lambda: h.fd):
            with pytest.raises(pybpf.ClosedError, match="hash"):
                op()
        assert obj.maps["array"].lookup(0) == 0       # the others are still open


def test_map_after_object_closed(no_fd_leak):
    obj = pybpf.load(program("maps_test"))
    a = obj.maps["array"]
    obj.close()
    with pytest.raises(pybpf.ClosedError):
        a.lookup(0)
    with pytest.raises(pybpf.ClosedError):
        a.update(0, 1)


# -- edges: raw per-CPU values, mmapable arrays over pages, keys gone meanwhile, empty queues, rings ---

def test_percpu_raw_values_are_exactly_value_size(no_fd_leak):
    """Without BTF types a per-CPU value is bytes: each CPU's exactly value_size (4) bytes, not
    the 8-byte slot the kernel copies it in."""
    spec = pybpf.open(program("percpu_sizes"))
    m = spec.maps["array4"]
    m.key_type_id = m.value_type_id = 0
    ncpus = possible_cpus()
    written = [bytes([0x80 | cpu]) * 3 + b"\xff" for cpu in range(ncpus)]
    with spec.load() as obj:
        obj.maps["array4"].update(0, written)
        assert obj.maps["array4"].lookup(0) == written
        assert obj.maps["array4"][1] == [bytes(4)] * ncpus


def test_mmapable_array_of_several_pages(no_fd_leak):
    """A BPF_F_MMAPABLE array of 1000 8-byte values (8000 bytes: two pages, the second partly
    used) is mapped whole: every element is where the syscalls put it."""
    from pybpf.kernel.constants import BPF_F_MMAPABLE
    spec = pybpf.open(program("maps_test"))
    spec.maps["array"].max_entries = 1000
    spec.maps["array"].flags |= BPF_F_MMAPABLE
    with spec.load() as obj:
        assert obj.programs["fill"].test_run().retval == 0
        a = obj.maps["array"]
        a.update(999, 0x1122334455667788)
        view = a.mmap()
        assert len(view) >= 8000
        assert struct.unpack_from("<Q", view, 2 * 8)[0] == 222          # written by the program
        assert struct.unpack_from("<Q", view, 999 * 8)[0] == 0x1122334455667788
        struct.pack_into("<Q", view, 600 * 8, 600)
        assert a[600] == 600


def test_items_skip_keys_deleted_meanwhile(filled, monkeypatch):
    """A key deleted between BPF_MAP_GET_NEXT_KEY and its lookup (by the program or another
    process) is skipped, not yielded with a missing value."""
    h = filled.maps["hash"]
    keys = h.keys

    def keys_and_a_gone_one():
        yield from keys()
        yield 99                    # as if deleted right after GET_NEXT_KEY returned it
    monkeypatch.setattr(h, "keys", keys_and_a_gone_one)
    assert sorted(k for k, _ in h.items()) == [1, 2, 3]
    assert len(list(h.values())) == 3


def test_empty_queue_and_stack_peek_and_pop(no_fd_leak):
    with pybpf.load(program("map_types")) as obj:
        for name in ("queue", "stack"):
            m = obj.maps[name]
            for op in (m.peek, m.pop):
                with pytest.raises(KeyError, match=f"map '{name}' is empty"):
                    op()
                assert op(None) is None and op(-1) == -1


def test_ring_buffer_maps_have_no_elements(no_fd_leak):
    with pybpf.load(program("ringbuf_test")) as obj:
        for name in ("rb", "urb"):
            m = obj.maps[name]
            for op in (lambda: m.lookup(0), lambda: m.update(0, 1), lambda: m.delete(0), lambda: list(m.keys())):
                with pytest.raises(pybpf.Error, match=f"map '{name}' is a .*RingBuffer"):
                    op()
