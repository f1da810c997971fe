"""Map batch operations and the other element commands of issue 13, on programs/pin_test.o:
lookup_batch / update_batch / delete_batch / lookup_and_delete_batch on hash, per-CPU hash and
array maps of 100,000 entries equal their one-at-a-time equivalents; hash buckets larger than
the batch (the kernel's ENOSPC) are read whole; arrays refuse deletes; lookup_and_delete(key),
freeze() and lookup(key, lock=True) against a program updating the value under its spin lock.
"""

from __future__ import annotations

import errno
import struct
import threading
import time

import pytest

import pybpf
from conftest import program
from pybpf.kernel import syscall as sc
from pybpf.kernel.constants import MapType

pytestmark = pytest.mark.kernel

N = 100_000


@pytest.fixture(scope="module")
def obj():
    with pybpf.load(program("pin_test")) as o:
        yield o


def clear(m) -> None:
    """Empty a hash map (zero an array) one key at a time: what the batch operations are checked against."""
    if m.type == MapType.ARRAY:
        for k in range(m.max_entries):
            m[k] = 0
    else:
        for k in list(m.keys()):
            m.delete(k)
        assert not list(m.keys())


def expected_items(m) -> dict:
    """100,000 (key, value) pairs for the map: keys spread over the u32 range for hash maps
    (several per bucket), the first N indexes for arrays; per-CPU values one per CPU."""
    array = m.type == MapType.ARRAY
    keys = range(N) if array else (k * 2654435761 % (1 << 32) for k in range(1, N + 1))
    if m._ncpus:
        return {k: [(k + c) % (1 << 64) for c in range(m._ncpus)] for k in keys}
    return {k: k * 3 + 1 for k in keys}


@pytest.mark.parametrize("name", ["batch_hash", "batch_percpu", "batch_array"])
def test_batches_equal_one_at_a_time(obj, name, no_fd_leak):
    m = obj.maps[name]
    want = expected_items(m)
    array = m.type == MapType.ARRAY
    if m._ncpus:
        assert all(len(v) == m._ncpus == pybpf.loader.possible_cpus() for v in want.values())

    # written one at a time, read in batches
    clear(m)
    for k, v in want.items():
        m.update(k, v)
    got = m.lookup_batch()
    expect = dict(want)
    if array:           # the other indexes exist too, zero
        expect.update({k: 0 for k in range(N, m.max_entries)})
    assert len(got) == len(expect) and dict(got) == expect

    # written in batches, read one at a time
    clear(m)
    assert m.update_batch(want) == N
    assert dict(m.items()) == expect
    # and in batches again, a few elements per call (array cursors, hash buckets)
    assert dict(m.lookup_batch(batch_size=777)) == expect
    some = m.lookup_batch(count=1000)
    assert len(some) == 1000 and all(expect[k] == v for k, v in some)

    if array:
        with pytest.raises(pybpf.Error, match="cannot be deleted"):
            m.delete_batch([1, 2])
        with pytest.raises(pybpf.Error, match="cannot be deleted"):
            m.lookup_and_delete_batch()
        return
    # deleted in a batch (keys not there are skipped) and one at a time: the same map
    keys = list(want)
    half = keys[:N // 2]
    assert m.delete_batch(half + [0xFFFFFFFF - 1, keys[0]]) == len(half)
    assert all(m.delete(k) for k in keys[N // 2:N * 3 // 4])
    left = {k: want[k] for k in keys[N * 3 // 4:]}
    assert dict(m.lookup_batch()) == dict(m.items()) == left
    # drained
    drained = m.lookup_and_delete_batch()
    assert dict(drained) == left and len(drained) == len(left)
    assert m.lookup_batch() == [] and list(m.keys()) == []


def test_hash_buckets_larger_than_the_batch_are_read_whole(obj, no_fd_leak, monkeypatch):
    """batch_size=1 on a hash map with several keys per bucket: the kernel answers ENOSPC (a bucket
    is copied whole or not at all) and lookup_batch asks again for more, losing nothing."""
    m = obj.maps["batch_hash"]
    want = expected_items(m)
    clear(m)
    m.update_batch(want)
    seen = []
    real = sc.map_batch

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(sc, "map_batch", spy)
    got = m.lookup_batch(batch_size=1)
    monkeypatch.undo()
    assert dict(got) == want and len(got) == N
    assert any(err == errno.ENOSPC for _, err in seen)         # the growth path did run
    assert seen[-1][1] == errno.ENOENT                         # and the end came as ENOENT
    clear(m)


def test_typed_struct_values_in_batches(obj, no_fd_leak):
    m = obj.maps["batch_points"]
    clear(m)
    items = {i: {"x": i, "y": -i, "tag": f"t{i % 10}"} for i in range(1, 501)}
    items[1000] = (7, -7, "abc")
    assert m.update_batch(items) == 501
    got = {k: v.to_python() for k, v in m.lookup_batch()}
    assert got == {k: v if isinstance(v, dict) else {"x": 7, "y": -7, "tag": "abc"} for k, v in items.items()}
    assert {k: v.to_python() for k, v in m.items()} == got
    with pytest.raises(pybpf.Error, match="pairs"):
        m.update_batch([1, 2, 3])
    # a full map stops the batch: the exception says how far it got, and that much is stored
    room = m.max_entries - len(got)
    more = [(10_000 + i, (i, i, "")) for i in range(room + 5)]
    with pytest.raises(pybpf.SyscallError, match=rf"update_batch failed after {room} of {room + 5} "
                                                 rf"elements") as err:
        m.update_batch(more)
    assert err.value.errno == errno.E2BIG
    assert len(m.lookup_batch()) == m.max_entries and m[10_000 + room - 1].x == room - 1
    clear(m)


def test_lookup_and_delete(obj, no_fd_leak):
    h = obj.maps["batch_hash"]
    clear(h)
    h[42] = 4200
    assert h.lookup_and_delete(42) == 4200
    assert h.lookup(42) is None and h.lookup_and_delete(42, "gone") == "gone"
    pc = obj.maps["batch_percpu"]
    clear(pc)
    pc[1] = [1] * pc._ncpus
    assert pc.lookup_and_delete(1) == [1] * pc._ncpus and pc.lookup(1) is None
    with pytest.raises(pybpf.Error, match=r"lookup_and_delete\(\) is for hash maps"):
        obj.maps["batch_array"].lookup_and_delete(1)


def test_freeze_refuses_user_writes_not_program_writes(no_fd_leak):
    with pybpf.load(program("pin_test")) as fresh:
        shared = fresh.maps["shared"]
        shared[0] = {"total": 1}
        assert not shared.frozen and not shared.info().frozen
        shared.freeze()
        assert shared.frozen and shared.info().frozen
        with pytest.raises(pybpf.PermissionError, match=r"map 'shared': update failed: the map is frozen"):
            shared[0] = {"total": 2}
        with pytest.raises(pybpf.PermissionError, match="frozen"):
            shared.update_batch({1: {"total": 2}})
        with pytest.raises(pybpf.PermissionError, match="frozen already"):
            shared.freeze()
        # programs still write it, and user space reads it
        assert fresh.programs["write_shared"].test_run(ctx=struct.pack("<IIQ", 0, 0, 10)).retval == 0
        assert shared[0].total == 11 and dict(shared.lookup_batch())[0].total == 11


def test_lookup_with_lock_sees_whole_updates(obj, no_fd_leak):
    """bump_locked adds to a and b under the value's bpf_spin_lock; lookup(lock=True) copies
    the value under that lock, so a == b in every read while another thread runs the program."""
    locked = obj.maps["locked"]
    locked.update(1, {"rounds": 0, "a": 0, "b": 0}, lock=True)
    prog = obj.programs["bump_locked"]
    ctx = struct.pack("<IIQ", 1, 0, 3)
    stop = threading.Event()
    runs = [0]

    def hammer():
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            prog.test_run(ctx=ctx)
            runs[0] += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    reads = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and reads < 20000:
            v = locked.lookup(1, lock=True)
            assert v.a == v.b == 3 * v.rounds, v
            reads += 1
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    final = locked.lookup(1, lock=True)
    assert final.rounds == runs[0] > 0 and final.a == final.b == 3 * runs[0]
    assert reads > 100
    # a locked write replaces a and b together
    locked.update(1, {"rounds": 1, "a": 5, "b": 5}, lock=True)
    assert locked.lookup(1, lock=True).to_python() == {"lock": {"val": 0}, "rounds": 1, "a": 5, "b": 5}
    with pytest.raises(pybpf.SyscallError, match=r"lock=True \(BPF_F_LOCK\) needs a value type with a struct "
                                                  r"bpf_spin_lock"):
        obj.maps["batch_hash"].lookup(1, lock=True)
