"""The user ring producer's C fast paths (pybpf._atomics.Producer, the base of
UserRingBuffer): reserve(n), submit(sample), write(data), write_batch(items).

Each fast path does the common case and hands every other one to the Python
method of the same name with ``_slow`` appended.  These tests check each
branch both ways: what the fast path must do itself (a sample across the end
of the data area, consumer_pos reloaded after a drain, the exact bytes of
libbpf's producer in the ring), and what it must hand over (a full ring, the
mutex held by another thread, the ring closed during the one allocation, a
live export, odd arguments).  ``forbid`` replaces a slow path to prove the
fast one did the work.

Kernel side: programs/ringbuf_test.bpf.c (16 KiB rings; ``drain`` counts the
samples it drains, keeps their first u32s in ``seen`` and can echo them into
``rb``), as in tests/ringbuf_common.py.
"""

from __future__ import annotations

import gc
import struct
import sys
import threading
import time

import pytest

import pybpf
from pybpf import atomics
from pybpf.ringbuf import RingBuffer, Sample, SampleExportedError, SampleSizeError, UserRingBuffer

from conftest import program
from ringbuf_common import FILL, SIZE, drain, seen, var


@pytest.fixture
def obj():
    with pybpf.load(program("ringbuf_test")) as o:
        o.variables["fill"].set(FILL)
        yield o


def forbid(name):
    def slow(*args, **kwargs):
        raise AssertionError(f"{name}: the fast path handed over")
    return slow


def no_slow_paths(urb) -> None:
    """The fast paths must do the rest alone (an instance attribute wins over the method)."""
    for name in ("_reserve_slow", "_submit_slow", "_write_slow", "_write_batch_slow"):
        setattr(urb, name, forbid(name))


def allow_slow_paths(urb) -> None:
    for name in ("_reserve_slow", "_submit_slow", "_write_slow", "_write_batch_slow"):
        urb.__dict__.pop(name, None)


def header(urb, pos: int) -> tuple[int, int]:
    """(len, pg_off) of the sample header at ring position ``pos``."""
    return struct.unpack_from("=II", urb._data, pos & urb._mask)


def payload(n: int, seq: int) -> bytes:
    return (struct.pack("<I", seq) + bytes((seq + i) & 0xFF for i in range(max(0, n - 4))))[:n]


def test_the_methods_are_the_c_fast_paths():
    base = atomics.module().Producer
    assert UserRingBuffer.__mro__[1] is base
    for name in ("reserve", "submit", "write", "write_batch"):
        assert getattr(UserRingBuffer, name) is base.__dict__[name]
        assert callable(getattr(UserRingBuffer, f"_{name}_slow"))


@pytest.mark.kernel
def test_each_fast_path_writes_what_libbpf_writes(obj):
    # libbpf's user_ring_buffer__reserve/memcpy/__submit: header u32 len, u32
    # pg_off 0, the payload, padding to 8; the drain sees exactly the payloads
    with UserRingBuffer(obj.maps["urb"]) as urb, RingBuffer(obj.maps["rb"]) as rb:
        no_slow_paths(urb)
        sent = []
        s = urb.reserve(13)
        assert type(s) is Sample and len(s) == 13 and s._pos == 0
        assert header(urb, 0) == (13 | (1 << 31), 0)  # BUSY until submitted
        s[:] = payload(13, 1)
        urb.submit(s)
        sent.append(payload(13, 1))
        assert header(urb, 0) == (13, 0) and s.committed
        urb.write(payload(24, 2))
        urb.write(bytearray(payload(5, 3)))
        urb.write(b"")
        sent += [payload(24, 2), payload(5, 3), b""]
        batch = [payload(7, 10 + i) for i in range(5)]
        assert urb.write_batch(batch) == 5
        assert urb.write_batch(tuple(batch)) == 5
        sent += batch * 2
        pos = 0
        for p in sent:
            assert header(urb, pos) == (len(p), 0)
            assert bytes(urb._data[(pos & urb._mask) + 8:(pos & urb._mask) + 8 + len(p)]) == p
            pos += (len(p) + 15) & ~7
        assert urb._prod == pos and struct.unpack_from("=Q", urb._views[0])[0] == pos  # producer_pos released
        assert (urb.records, urb.bytes, urb.discards) == (len(sent), sum(map(len, sent)), 0)
        assert drain(obj, echo=True) == len(sent)
        assert rb.read_batch() == sent


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["reserve", "write", "write_batch"])
def test_a_sample_across_the_end_of_the_data_area(obj, how):
    # the data area is mapped twice: a sample whose payload starts 8 bytes
    # before the end continues at the start of the second mapping
    with UserRingBuffer(obj.maps["urb"]) as urb, RingBuffer(obj.maps["rb"]) as rb:
        urb.write(bytes(SIZE - 16 - 8))  # the next header at SIZE - 16
        assert drain(obj) == 1
        no_slow_paths(urb)
        data = [payload(100, 7), payload(100, 8)]
        if how == "reserve":
            for p in data:
                s = urb.reserve(100)
                s[:] = p
                urb.submit(s)
        elif how == "write":
            for p in data:
                urb.write(p)
        else:
            assert urb.write_batch(data) == 2
        assert urb._prod == SIZE - 16 + 2 * 112
        assert header(urb, SIZE - 16) == (100, 0) and header(urb, SIZE + 96) == (100, 0)
        assert bytes(urb._data[SIZE - 8:SIZE]) == data[0][:8]
        assert bytes(urb._data[0:92]) == data[0][8:]  # the wrapped part, at the start
        assert drain(obj, echo=True) == 2
        assert rb.read_batch() == data
        assert var(obj, "drained_bytes") == SIZE - 24 + 200


@pytest.mark.kernel
def test_the_fast_paths_reload_consumer_pos_when_the_ring_looks_full(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb.write(bytes(SIZE - 8))  # the whole ring
        assert urb._cons == 0 and drain(obj) == 1
        no_slow_paths(urb)
        urb.write(b"abcd")  # the cached consumer_pos says full: reloaded, it fits
        assert urb._cons == SIZE
        s = urb.reserve(SIZE - 24)  # exactly what is left: SIZE - 16 with its header
        urb.submit(s)
        assert urb.free == 0
        assert drain(obj) == 2
        assert urb.write_batch([b"wxyz"] * (SIZE // 16)) == SIZE // 16  # the whole ring again
        assert drain(obj) == SIZE // 16


@pytest.mark.kernel
def test_a_full_ring_goes_to_the_slow_paths(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb.write(bytes(SIZE - 24))
        with pytest.raises(pybpf.RingBufferFullError, match="needs 24 bytes"):
            urb.reserve(9)
        with pytest.raises(pybpf.RingBufferFullError):
            urb.write(bytes(9))
        s = urb.reserve(8)  # 16 bytes: just fits
        assert urb.free == 0
        assert urb.write_batch([b"1234"] * 3) == 0  # none fits: the slow path says how many
        urb.submit(s)
        assert drain(obj) == 2
        assert urb.write_batch([struct.pack("<I", i) for i in range(SIZE // 16 + 5)]) == SIZE // 16  # what fits
        assert drain(obj) == SIZE // 16
        assert seen(obj, 2 + SIZE // 16 - 3, 3) == [SIZE // 16 - 3, SIZE // 16 - 2, SIZE // 16 - 1]


@pytest.mark.kernel
def test_a_reserved_sample_holds_back_the_later_ones_and_discard_frees_it(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        no_slow_paths(urb)
        a = urb.reserve(4)
        a[:] = struct.pack("<I", 1)
        urb.write(struct.pack("<I", 2))
        assert urb.write_batch([struct.pack("<I", 3)] * 2) == 2
        b = urb.reserve(4)
        b[:] = struct.pack("<I", 4)
        assert drain(obj) == 0  # a is BUSY: the drain stops there
        urb.submit(a)
        assert drain(obj) == 4  # up to b
        assert seen(obj, 0, 4) == [1, 2, 3, 3]
        allow_slow_paths(urb)  # discard is a Python method
        urb.discard(b)
        assert b.committed and drain(obj) == 0  # skipped, and the space is given back
        assert (urb.records, urb.discards) == (4, 1)
        assert urb.free == SIZE and len(urb._pending) == 0


@pytest.mark.kernel
def test_sizes_and_arguments_the_fast_reserve_refuses(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        for bad in (-1, SIZE - 7, 1 << 70, True, 2.0, "8"):
            with pytest.raises(SampleSizeError):
                urb.reserve(bad)
        s = urb.reserve(SIZE - 8)  # the largest: the whole ring
        urb.submit(s)
        assert drain(obj) == 1
        with pytest.raises(TypeError):
            urb.reserve(1, 2)
        with pytest.raises(pybpf.Error, match="no sample type"):
            urb.reserve()
        s = urb.reserve(n=4)  # keywords: the slow paths
        urb.submit(sample=s)
        urb.write(data=b"1234")
        urb.write(b"1234", timeout_ms=0)
        assert urb.write_batch(samples=[b"1234"]) == 1
        assert urb.write_batch([b"1234"], 0) == 1
        assert drain(obj) == 5
        assert urb.records == 6 and urb._pending == set()


@pytest.mark.kernel
def test_fast_submit_hands_over_what_it_cannot_commit(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        s = urb.reserve(8)
        view = memoryview(s)
        with pytest.raises(SampleExportedError):
            urb.submit(s)  # an export is alive: refused, still reserved
        assert not s.committed and s in urb._pending
        view.release()
        s.data[:] = struct.pack("<Q", 5)  # the .data view is the sample's own: released by submit
        inner = s.data[0:4]
        with pytest.raises(SampleExportedError):
            urb.submit(s)  # a view made from .data is alive
        inner.release()
        no_slow_paths(urb)
        urb.submit(s)
        assert s.committed and s.exports == 0
        with pytest.raises(pybpf.ClosedError):
            s.data  # noqa: B018
        allow_slow_paths(urb)
        with pytest.raises(pybpf.Error, match="already submitted"):
            urb.submit(s)
        with pytest.raises(pybpf.Error, match="takes a Sample"):
            urb.submit(b"12345678")
        assert drain(obj) == 1 and seen(obj, 0, 1) == [5]


@pytest.mark.kernel
def test_a_python_method_holding_the_mutex_makes_the_fast_paths_wait(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb._take()
        assert urb._lock.held
        done = []
        calls = [lambda: urb.write(struct.pack("<I", 1)), lambda: urb.submit(urb.reserve(4)),
                 lambda: urb.write_batch([struct.pack("<I", 3)])]
        threads = [threading.Thread(target=lambda c=c: done.append(c()), daemon=True) for c in calls]
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert done == [] and urb._prod == 0 and urb.records == 0  # nothing written while it is held
        urb._give(None)
        assert not urb._lock.held
        for t in threads:
            t.join(5)
        assert len(done) == 3 and urb.records == 3
        assert drain(obj) == 3
        with urb._lock:
            assert urb._lock.held
        assert not urb._lock.held


@pytest.mark.kernel
def test_the_ring_closed_while_reserve_allocates_its_sample(obj):
    # reserve's one allocation may collect garbage, and a collection runs
    # Python code (gc callbacks, finalizers): here it closes the ring.  The
    # fast path must look again after it, not write into the unmapped ring.
    # (Python 3.12+ runs collections between bytecodes, never inside an
    # allocation: there the ring closes just after reserve() returns, and the
    # sample it gave must then be refused.)
    urb = UserRingBuffer(obj.maps["urb"])
    reserving, ran = [], []

    def closer(phase, info):
        if phase == "start" and reserving and not ran:
            ran.append(1)
            urb.close()

    old = gc.get_threshold()
    gc.callbacks.append(closer)
    try:
        gc.set_threshold(1)  # a collection at every other tracked allocation
        junk = []
        for _ in range(50):
            junk.append([])  # one more each round: sooner or later it is reserve's Sample
            reserving.append(1)
            try:
                s = urb.reserve(8)
            except pybpf.ClosedError:
                break
            finally:
                reserving.clear()
            if ran:
                assert sys.version_info >= (3, 12), "closed during reserve(), which went on as if it were not"
                with pytest.raises(pybpf.ClosedError):
                    urb.submit(s)
                break
            urb.submit(s)
        else:
            pytest.fail("no collection inside reserve()")
    finally:
        gc.set_threshold(*old)
        gc.callbacks.remove(closer)
        urb.close()
    assert ran and urb.closed
    with pytest.raises(pybpf.ClosedError):
        urb.write(b"1234")


@pytest.mark.kernel
def test_closed_ring_every_fast_path_refuses(obj):
    urb = UserRingBuffer(obj.maps["urb"])
    s = urb.reserve(8)
    urb.close()
    assert s.committed  # discarded by close
    for call in (lambda: urb.reserve(8), lambda: urb.write(b"x"), lambda: urb.write_batch([b"x"]),
                 lambda: urb.submit(s)):
        with pytest.raises(pybpf.ClosedError):
            call()
    with pytest.raises(pybpf.ClosedError):
        s[:] = bytes(8)  # the fast slice assignment refuses too
    assert drain(obj) == 0


@pytest.mark.kernel
def test_fast_slice_assignment_only_for_the_whole_sample(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb, RingBuffer(obj.maps["rb"]) as rb:
        s = urb.reserve(8)
        s[:] = b"abcdefgh"
        s[0:8] = b"ABCDEFGH"
        s[::2] = b"1234"  # a step: the generic path
        s[4:] = b"wxyz"
        with pytest.raises((ValueError, TypeError)):
            s[:] = b"short"
        with pytest.raises((ValueError, TypeError)):
            s[1:] = b"12345678"
        urb.submit(s)
        assert drain(obj, echo=True) == 1
        assert rb.read_batch() == [b"1B2Dwxyz"]


@pytest.mark.kernel
def test_threads_share_the_fast_paths(obj):
    per, threads = 2000, 4
    with UserRingBuffer(obj.maps["urb"]) as urb:
        stop = threading.Event()

        def drainer():
            while not stop.is_set() or urb.free < SIZE:
                drain(obj)
                time.sleep(0.0005)

        def producer(k):
            for i in range(per):
                while True:
                    try:
                        if i % 3 == 0:
                            s = urb.reserve(8)
                            s[:] = struct.pack("<II", k, i)
                            urb.submit(s)
                        elif i % 3 == 1:
                            urb.write(struct.pack("<II", k, i))
                        elif not urb.write_batch([struct.pack("<II", k, i)]):
                            raise pybpf.RingBufferFullError("full")
                        break
                    except pybpf.RingBufferFullError:
                        time.sleep(0.0002)

        d = threading.Thread(target=drainer, daemon=True)
        d.start()
        ts = [threading.Thread(target=producer, args=(k,), daemon=True) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        stop.set()
        d.join(60)
        assert urb._pending == set()
        assert urb.records == per * threads == var(obj, "drained_count")
