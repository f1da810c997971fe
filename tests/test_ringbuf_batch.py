"""Batches: RingBuffer.read_batch (raw and typed), several rings, counters,
busy records at the head, and UserRingBuffer.write/write_batch.

Kernel side: programs/ringbuf_test.bpf.c (16 KiB rings, records of any size:
see tests/ringbuf_common.py) and programs/bench_ringbuf.bpf.c (64 MiB rings,
24-byte ``struct bench_event`` records; ``hold`` keeps a record BUSY at the
head).  A fake ring in a memfd covers the exact BUSY/DISCARD cases the kernel
cannot be made to show on demand.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import threading
import time
import types

import pytest

import pybpf
from pybpf import ringbuf
from pybpf.kernel.constants import MapType
from pybpf.ringbuf import Ring, RingBuffer, SampleSizeError, UserRingBuffer

from conftest import program
from ringbuf_common import FILL, MAX_RECORD, SIZE, Collect, drain, produce, record, seen, var

PAGE = mmap.PAGESIZE


class BenchEvent(ctypes.Structure):
    """struct bench_event of programs/bench_ringbuf.bpf.c."""

    _fields_ = [("seq", ctypes.c_uint64), ("cpu", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("value", ctypes.c_uint64)]


class Seq(ctypes.Structure):
    """The first 4 bytes of a ringbuf_test record."""

    _fields_ = [("seq", ctypes.c_uint32)]


@pytest.fixture
def obj():
    with pybpf.load(program("ringbuf_test")) as o:
        o.variables["fill"].set(FILL)
        yield o


@pytest.fixture
def bench():
    with pybpf.load(program("bench_ringbuf")) as o:
        yield o


def bench_produce(o, count, start_seq=0, flags=0) -> int:
    return o.programs["produce"].test_run(ctx=struct.pack("<IIQ", count, start_seq, flags)).retval


def seqs(records) -> list[int]:
    return [struct.unpack_from("<I", r)[0] for r in records]


# --- read_batch --------------------------------------------------------------

@pytest.mark.kernel
def test_read_batch_returns_copies_in_order_with_exact_contents(obj):
    with RingBuffer(obj.maps["rb"]) as rb:
        expected = []
        seq = 0
        for size in (0, 1, 3, 4, 5, 8, 13, 64, 100, 1000, MAX_RECORD):
            assert produce(obj, 3, size, start_seq=seq) == 3
            expected += [record(seq + i, size) for i in range(3)]
            seq += 3
        got = rb.read_batch()
        assert rb.read_batch() == []
        assert all(type(r) is bytes for r in got)
        assert got == expected
        # copies: the ring being reused does not change them
        for _ in range(10):
            assert produce(obj, 3, 3000, start_seq=1000) == 3
            assert len(rb.read_batch()) == 3
        assert got == expected


@pytest.mark.kernel
def test_read_batch_across_wrap_around_many_times(obj):
    groups = ((1237, 3, 777), (4099,), (0, 2049, 24, 24, 24))  # every alignment; runs of equal records
    seq = 0
    wrapped = 0
    with RingBuffer(obj.maps["rb"]) as rb:
        for _round in range(20):
            for sizes in groups:
                expected = []
                for size in sizes:
                    assert produce(obj, 2, size, start_seq=seq) == 2
                    expected += [record(seq + i, size) for i in range(2)]
                    seq += 2
                    wrapped += 2 * ((size + 15) & ~7)
                assert rb.read_batch() == expected
        uniform = []
        for _round in range(60):  # equal records only: the struct-unpack path, wrapping too
            assert produce(obj, 100, 40, start_seq=seq) == 100
            uniform.append((seq, rb.read_batch()))
            seq += 100
    assert wrapped > 20 * SIZE
    for first, got in uniform:
        assert got == [record(first + i, 40) for i in range(100)]
    assert var(obj, "reserve_failures") == 0


@pytest.mark.kernel
def test_read_batch_max_records_takes_a_prefix(obj):
    with RingBuffer(obj.maps["rb"]) as rb:
        assert produce(obj, 10, 16) == 10
        assert rb.read_batch(0) == []
        assert seqs(rb.read_batch(3)) == [0, 1, 2]
        assert seqs(rb.read_batch(max_records=4)) == [3, 4, 5, 6]
        assert seqs(rb.read_batch(100)) == [7, 8, 9]
        with pytest.raises(pybpf.Error, match="max_records"):
            rb.read_batch(-1)


@pytest.mark.kernel
def test_read_batch_skips_discards_and_counts(obj):
    with RingBuffer(obj.maps["rb"]) as rb:
        assert produce(obj, 20, 16, discard_every=3, start_seq=100) == 14
        assert produce(obj, 4, 5, discard_every=2, start_seq=200) == 2  # discards between unequal records
        got = rb.read_batch()
        assert seqs(got) == [100 + i for i in range(20) if (i + 1) % 3] + [200, 202]
        assert (rb.records, rb.bytes, rb.discards) == (16, 14 * 16 + 2 * 5, 8)
        assert produce(obj, 3, 8, discard_every=1) == 0  # discards only
        assert rb.read_batch() == []
        assert rb.discards == 11
        assert rb.rings[0].available == 0


@pytest.mark.kernel
def test_read_batch_of_more_records_than_one_scan(bench):
    n = 3 * ringbuf._BATCH_RECORDS + 17
    with RingBuffer(bench.maps["rb"], type=bytes) as rb:
        assert bench_produce(bench, n, start_seq=5) == n
        got = rb.read_batch()
        assert len(got) == n
        assert [struct.unpack_from("<Q", r)[0] for r in got] == list(range(5, 5 + n))
        assert all(len(r) == 24 for r in got)
        assert rb.records == n and rb.bytes == 24 * n


@pytest.mark.kernel
def test_typed_read_batch_is_one_ctypes_array(bench):
    n = 2 * ringbuf._BATCH_RECORDS + 5
    with RingBuffer(bench.maps["rb"]) as rb:  # the program declares struct bench_event
        assert bench_produce(bench, n, start_seq=7) == n
        events = rb.read_batch()
        assert isinstance(events, ctypes.Array) and len(events) == n
        assert [e.seq for e in events] == list(range(7, 7 + n))
        assert events[3].value == 9 and events[3].flags == 0
        assert "bench_event(seq=7," in repr(events[0])
        assert bytes(events[0]) == struct.pack("<QIIQ", 7, events[0].cpu, 0, 0)
        assert len(rb.read_batch()) == 0
        # a ctypes type of our own, a BTF spelling, raw bytes on demand
        assert bench_produce(bench, 3) == 3
        mine = rb.read_batch(type=BenchEvent)
        assert type(mine) is BenchEvent * 3 and [e.seq for e in mine] == [0, 1, 2]
        assert bench_produce(bench, 2) == 2
        assert [e.seq for e in rb.read_batch(type="struct bench_event")] == [0, 1]
        assert bench_produce(bench, 2) == 2
        assert [len(r) for r in rb.read_batch(type=bytes)] == [24, 24]


@pytest.mark.kernel
def test_typed_read_batch_cuts_long_records_and_stops_at_a_short_one(obj):
    with RingBuffer(obj.maps["rb"], type=Seq) as rb:
        assert produce(obj, 2, 40, start_seq=1) == 2
        assert produce(obj, 2, 9, discard_every=2, start_seq=3) == 1  # unequal lengths, a discard
        assert produce(obj, 1, 3, start_seq=5) == 1   # shorter than Seq (4 bytes)
        assert produce(obj, 1, 4, start_seq=6) == 1
        assert [r.seq for r in rb.read_batch()] == [1, 2, 3]   # up to the short record
        with pytest.raises(pybpf.Error, match="3-byte record is shorter than Seq"):
            rb.read_batch()                                      # consumes it
        assert [r.seq for r in rb.read_batch()] == [6]
        assert rb.records == 5 and rb.discards == 1


@pytest.mark.kernel
def test_callback_consume_across_scans_and_an_exception_in_a_later_scan(bench):
    n = ringbuf._BATCH_RECORDS + 100
    seen_seqs = []

    def callback(view):
        seq = struct.unpack_from("<Q", view)[0]
        seen_seqs.append(seq)
        if seq == ringbuf._BATCH_RECORDS + 50:
            raise KeyError(seq)

    with RingBuffer(bench.maps["rb"], callback, type=memoryview) as rb:
        assert bench_produce(bench, n) == n
        with pytest.raises(KeyError):
            rb.consume()
        assert rb.records == ringbuf._BATCH_RECORDS + 51
        assert rb.consume() == 49  # resumes right after the failing record
        assert seen_seqs == list(range(n))


@pytest.mark.kernel
def test_ring_buffer_without_a_callback_reads_batches_only(obj):
    with RingBuffer(obj.maps["rb"]) as rb:
        assert produce(obj, 1, 8) == 1
        with pytest.raises(pybpf.Error, match="no callback"):
            rb.consume()
        assert seqs(rb.read_batch()) == [0]


@pytest.mark.kernel
def test_read_batch_from_the_callback_is_refused(obj):
    def callback(view):
        rb.read_batch()

    with RingBuffer(obj.maps["rb"], callback) as rb:
        assert produce(obj, 1, 8) == 1
        with pytest.raises(pybpf.Error, match="own callback"):
            rb.consume()


@pytest.mark.kernel
def test_available_counts_what_is_left_even_from_the_callback(obj):
    left = []
    with RingBuffer(obj.maps["rb"], lambda view: left.append(rb.rings[0].available)) as rb:
        assert produce(obj, 3, 8) == 3  # 16 bytes each with the header
        assert rb.rings[0].available == 48
        assert rb.consume() == 3
        ring = rb.rings[0]
    assert left == [48, 48, 48]  # released once per batch, after it
    with pytest.raises(pybpf.ClosedError):
        ring.available


# --- several rings ---------------------------------------------------------------

@pytest.mark.kernel
def test_several_rings_share_one_epoll_and_keep_their_callbacks(no_fd_leak, obj):
    with pybpf.load(program("ringbuf_test")) as other:
        other.variables["fill"].set(FILL)
        first, second = Collect(), Collect()
        with RingBuffer(obj.maps["rb"], first) as rb:
            ring2 = rb.add(other.maps["rb"], second)
            assert isinstance(ring2, Ring) and rb.rings == (rb.rings[0], ring2)
            with pytest.raises(pybpf.Error, match="already a ring"):
                rb.add(other.maps["rb"], second)
            with pytest.raises(pybpf.Error, match="RINGBUF map"):
                rb.add(other.maps["urb"], second)
            fd = rb.fileno()
            assert select.select([fd], [], [], 0)[0] == []
            # the second ring alone wakes the poll
            producer = threading.Timer(0.1, produce, (other, 2, 16, 0, 50))
            producer.start()
            try:
                n = rb.poll(5000)
            finally:
                producer.join()
            n += rb.consume()
            assert n == 2 and first.records == [] and seqs(second.records) == [50, 51]
            assert produce(obj, 3, 8) == 3
            assert produce(other, 1, 8, start_seq=9) == 1
            assert rb.consume() == 4
            assert seqs(first.records) == [0, 1, 2] and seqs(second.records) == [50, 51, 9]
            assert (rb.rings[0].records, ring2.records, rb.records) == (3, 3, 6)
            assert select.select([fd], [], [], 0)[0] == []
            # read_batch takes every ring, in order
            assert produce(other, 1, 4, start_seq=70) == 1
            assert produce(obj, 1, 4, start_seq=60) == 1
            assert seqs(rb.read_batch()) == [60, 70]
            assert seqs(ring2.read_batch()) == []


# --- busy records ------------------------------------------------------------------

HOLD_NS = 300_000_000  # hold spins in the kernel (not preemptible here): keep it short


def run_hold(bench, start_seq: int, observe, max_ns: int = HOLD_NS):
    """Runs bench_ringbuf's `hold` in a thread: it reserves record `start_seq`,
    commits the three after it and keeps the first BUSY until `release` (or
    max_ns).  Calls observe() while it holds; returns (observe's result or None
    if the record was not BUSY all along, hold's return value)."""
    bench.variables["release"].set(0)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault(
        "ret", bench.programs["hold"].test_run(ctx=struct.pack("<QQ", start_seq, max_ns)).retval))
    runner.start()
    seen = None
    try:
        while runner.is_alive() and not bench.variables["holding"].get():
            time.sleep(0.001)
        if bench.variables["holding"].get():
            seen = observe()
            if not bench.variables["holding"].get():
                seen = None  # committed meanwhile: what observe saw proves nothing
    finally:
        bench.variables["release"].set(1)
        runner.join()
    return seen, result.get("ret")


@pytest.mark.kernel
def test_a_busy_record_at_the_head_holds_back_later_ones(bench):
    """Nothing may be handed out while the head record is BUSY, and waiting for
    it must not spin.  On a starved machine `hold` may give up before we look:
    then it is tried again."""
    calls = []
    with RingBuffer(bench.maps["rb"], calls.append, type=bytes) as rb:
        def observe():
            del calls[:]
            t0 = time.monotonic()
            # poll(0): readable (producer_pos moved), nothing to hand out: backs off ~1 ms
            return (rb.read_batch(), rb.consume(), rb.poll(0), rb.rings[0].available, list(calls),
                    time.monotonic() - t0)

        for attempt in range(5):
            seq = 100 * (attempt + 1)
            seen, ret = run_hold(bench, seq, observe)
            got = [struct.unpack_from("<Q", r)[0] for r in rb.read_batch()]
            if seen is not None:
                break
        else:
            pytest.fail("hold never kept its record BUSY while we looked, 5 times (a starved machine?)")
        batch, consumed, polled, available, called, elapsed = seen
        assert (batch, consumed, polled, called) == ([], 0, 0, [])
        assert available == 4 * 32
        assert elapsed < HOLD_NS / 1e9  # nothing waited for the commit
        assert ret == 1
        assert got == [seq, seq + 1, seq + 2, seq + 3]


class FakeRing:
    """A RINGBUF's pages in a memfd, written by hand: what a BPF producer leaves
    in the ring, including a BUSY record whenever we like.  The kernel maps the
    data area twice; here every write is mirrored into the second copy."""

    def __init__(self, size: int = 4 * PAGE):
        self.fd = os.memfd_create("pybpf-fake-ringbuf")
        os.ftruncate(self.fd, 2 * PAGE + 2 * size)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + 2 * size)
        self.map = types.SimpleNamespace(fd=self.fd, type=MapType.RINGBUF, max_entries=size, name="fake")
        self.size = size
        self.prod = 0

    def _put(self, pos: int, raw: bytes) -> None:
        base = 2 * PAGE
        for i, b in enumerate(raw):
            off = (pos + i) % self.size
            self.mem[base + off] = b
            self.mem[base + self.size + off] = b

    def write(self, payload: bytes, busy=False, discard=False) -> int:
        pos = self.prod
        length = len(payload) | (ringbuf._BUSY if busy else 0) | (ringbuf._DISCARD if discard else 0)
        self._put(pos, struct.pack("<II", length, 0) + payload)
        self.prod += (len(payload) + 15) & ~7
        struct.pack_into("<Q", self.mem, PAGE, self.prod)
        return pos

    def commit(self, pos: int) -> None:
        length = struct.unpack_from("<I", self.mem, 2 * PAGE + pos % self.size)[0]
        self._put(pos, struct.pack("<I", length & ~ringbuf._BUSY))

    def close(self):
        self.mem.close()
        os.close(self.fd)


class AlwaysReady:
    """select.epoll stand-in (a memfd cannot be polled): always readable, like
    a ring whose producer_pos moved past a BUSY record."""

    def __init__(self, *args):
        self.fds = []

    def register(self, fd, mask):
        self.fds.append(fd)

    def poll(self, timeout=-1, maxevents=-1):
        return [(fd, select.EPOLLIN) for fd in self.fds]

    def fileno(self):
        return -1

    def close(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(ringbuf.reader, "select", types.SimpleNamespace(epoll=AlwaysReady, EPOLLIN=select.EPOLLIN,
                                                                        EPOLLOUT=select.EPOLLOUT))
    ring = FakeRing()
    yield ring
    ring.close()


def test_fake_ring_busy_head_then_commit(fake):
    got = Collect()
    a = fake.write(b"A" * 8, busy=True)
    fake.write(b"B" * 5)
    fake.write(b"C" * 24)
    with RingBuffer(fake.map, got) as rb:
        assert rb.consume() == 0 and rb.read_batch() == []
        t0 = time.monotonic()
        for _ in range(20):
            assert rb.poll(-1) == 0  # woken, nothing committed: backs off instead of spinning
        assert time.monotonic() - t0 >= 20 * ringbuf._BUSY_BACKOFF * 0.9
        fake.commit(a)
        assert rb.read_batch() == [b"A" * 8, b"B" * 5, b"C" * 24]
        assert got.records == []


def test_fake_ring_busy_in_the_middle_and_discards(fake):
    fake.write(b"x" * 3, discard=True)
    fake.write(b"1" * 16)
    fake.write(b"2" * 16)
    b = fake.write(b"3" * 16, busy=True)
    fake.write(b"4" * 16)
    with RingBuffer(fake.map, type=Seq) as rb:
        assert [bytes(r) for r in rb.read_batch()] == [b"1111", b"2222"]
        assert rb.discards == 1
        fake.commit(b)
        fake.write(b"y" * 3, discard=True)
        assert [bytes(r) for r in rb.read_batch()] == [b"3333", b"4444"]
        assert (rb.records, rb.discards) == (4, 2)


def test_fake_ring_wraps_and_counts_every_way(fake):
    got = Collect()
    with RingBuffer(fake.map, got) as rb:
        sizes = (100, 7, 24, 24, 24, 1000, 0)
        expected = []
        for i in range(600):
            payload = bytes([i & 0xFF]) * sizes[i % len(sizes)]
            fake.write(payload, discard=(i % 11 == 0))
            if i % 11:
                expected.append(payload)
            if i % 5 == 4:
                rb.consume()
        rb.consume()
        assert got.records == expected
        assert fake.prod > 5 * fake.size
        assert (rb.records, rb.discards) == (len(expected), 600 - len(expected))



def test_fake_ring_a_record_longer_than_what_was_published_waits(fake):
    # consumer_pos only moves to positions read from whole published records
    # (CVE-2024-41009): a header whose record runs past producer_pos is not one.
    fake.write(b"a" * 5)
    pos = fake.write(b"b" * 13)
    struct.pack_into("<Q", fake.mem, PAGE, pos + 16)  # 8 of b's 24 bytes not published
    got = Collect()
    with RingBuffer(fake.map, got) as rb:
        assert rb.consume() == 1 and rb.read_batch() == []
        assert got.records == [b"a" * 5]
        assert struct.unpack_from("<Q", fake.mem, 0)[0] == 16  # consumer_pos, past a only
        struct.pack_into("<Q", fake.mem, PAGE, fake.prod)
        assert rb.read_batch() == [b"b" * 13]
        assert struct.unpack_from("<Q", fake.mem, 0)[0] == fake.prod == 40

# --- user ring buffer: write and write_batch ----------------------------------------

@pytest.mark.kernel
def test_write_batch_publishes_everything_in_one_go(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        samples = [struct.pack("<I", 500 + i) + bytes(20) for i in range(100)]
        assert urb.write_batch(samples) == 100
        assert urb.free == SIZE - 100 * 32
        assert drain(obj) == 100
        assert seen(obj, 0, 100) == list(range(500, 600))
        assert var(obj, "drained_bytes") == 100 * 24
        # unequal sizes, bytes-likes of every kind, an iterator
        mixed = [b"\x01\x00\x00\x00", bytearray(b"\x02\x00\x00\x00xyz"), memoryview(b"\x03\x00\x00\x00" + bytes(30)),
                 struct.pack("<I", 4)[:3], (ctypes.c_uint32 * 2)(5, 6)]
        assert urb.write_batch(iter(mixed)) == 5
        assert drain(obj) == 5
        assert seen(obj, 100, 5) == [1, 2, 3, 4, 5]
        assert var(obj, "drained_bytes") == 100 * 24 + 4 + 7 + 34 + 3 + 8
        assert (urb.records, urb.bytes, urb.discards) == (105, 100 * 24 + 56, 0)
        assert urb.write_batch([]) == 0


@pytest.mark.kernel
def test_write_batch_of_equal_lengths_that_are_not_all_bytes(obj):
    # equal lengths take the struct path, which only packs bytes/bytearray: the
    # others make it fall back before anything is published
    with UserRingBuffer(obj.maps["urb"]) as urb:
        samples = [struct.pack("<I", 1), memoryview(struct.pack("<I", 2)), bytearray(struct.pack("<I", 3)),
                   (ctypes.c_uint32 * 1)(4)]
        assert urb.write_batch(samples) == 4
        assert drain(obj) == 4
        assert seen(obj, 0, 4) == [1, 2, 3, 4]
        assert urb.write_batch([struct.pack("<I", i) for i in range(5, 300)]) == 295  # runs of 256 + the rest
        assert drain(obj) == 295
        assert seen(obj, 295 - 256 + 4, 3) == [299 - 255, 299 - 254, 299 - 253]
        assert var(obj, "drained_bytes") == 4 * 299


@pytest.mark.kernel
def test_write_batch_wraps_around_many_times(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        seq = 0
        for _round in range(30):
            batch = [struct.pack("<I", seq + i) + bytes(36) for i in range(400)]  # 400 * 48 > SIZE
            written = urb.write_batch(batch)
            assert written == SIZE // 48
            assert drain(obj) == written
            last = seq + written - 3  # seen keeps the last 256
            assert seen(obj, last, 3) == [last, last + 1, last + 2]
            seq += written
            sizes = [1 + (i * 37) % 300 for i in range(20)]
            mixed = [struct.pack("<I", seq + i)[:min(4, n)] + bytes(max(0, n - 4)) for i, n in enumerate(sizes)]
            assert urb.write_batch(mixed) == 20
            assert drain(obj) == 20
            seq += 20
        assert var(obj, "drained_count") == seq
        assert urb.free == SIZE


@pytest.mark.kernel
def test_write_batch_stops_when_full_or_waits_for_room(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        per = SIZE // 32
        assert urb.write_batch([bytes(24)] * (per + 10)) == per  # no room: how many fit
        assert urb.free == 0
        assert urb.write_batch([bytes(24)]) == 0
        drainer = threading.Timer(0.1, drain, (obj,))
        drainer.start()
        try:
            assert urb.write_batch([bytes(24)] * 10, timeout_ms=20_000) == 10  # once the drain made room
        finally:
            drainer.join()
        assert urb.write_batch([bytes(24)] * per, timeout_ms=100) == per - 10  # gave up waiting
        assert drain(obj) == per


@pytest.mark.kernel
def test_write_batch_refuses_an_oversize_sample_before_writing(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        with pytest.raises(SampleSizeError, match=f"at most {SIZE - 8} bytes"):
            urb.write_batch([b"ok", bytes(SIZE)])
        with pytest.raises(SampleSizeError):
            urb.write_batch([bytes(SIZE - 7)] * 3)
        assert urb.free == SIZE and drain(obj) == 0
        urb.close()
        with pytest.raises(pybpf.ClosedError):
            urb.write_batch([b"1234"])


@pytest.mark.kernel
def test_write_and_reserve_interleave_in_order(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        a = urb.reserve(4)
        a[:] = struct.pack("<I", 1)
        urb.write(struct.pack("<I", 2))       # publishes a's BUSY header with it
        assert drain(obj) == 0                # the drain stops at a
        a.submit()                            # already visible: committed in place
        assert drain(obj) == 2
        b = urb.reserve(4)
        c = urb.reserve(4)
        b[:] = struct.pack("<I", 3)
        c[:] = struct.pack("<I", 4)
        urb.discard(c)
        urb.submit(b)
        assert urb.write_batch([struct.pack("<I", 5)]) == 1
        assert drain(obj) == 2
        assert seen(obj, 0, 4) == [1, 2, 3, 5]
        assert (urb.records, urb.discards) == (4, 1)


@pytest.mark.kernel
def test_user_ring_buffer_through_the_c_helper_release(obj):
    # What non-x86 machines do: producer_pos released by the C helper.
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb._set_release(False)
        urb.write(struct.pack("<I", 7))
        with urb.reserve(4) as sample:
            sample[:] = struct.pack("<I", 8)
        assert urb.write_batch([struct.pack("<I", 9)] * 3) == 3
        assert drain(obj) == 5
        assert seen(obj, 0, 5) == [7, 8, 9, 9, 9]


@pytest.mark.kernel
def test_echo_round_trip_through_batches(obj):
    payloads = [bytes([i]) * n for i, n in enumerate((1, 4, 7, 33, 500, 4100, 24, 24), start=1)]
    with UserRingBuffer(obj.maps["urb"]) as urb, RingBuffer(obj.maps["rb"]) as rb:
        assert urb.write_batch(payloads) == len(payloads)
        assert drain(obj, echo=True) == len(payloads)
        assert rb.read_batch() == payloads


# --- live rates -------------------------------------------------------------------

def test_rate_meter_reports_rates_since_the_previous_line():
    now = [100.0]
    rb = types.SimpleNamespace(name="events", records=0, bytes=0)
    urb = types.SimpleNamespace(name="samples", records=10, bytes=100)
    meter = ringbuf.RateMeter(rb, urb, clock=lambda: now[0])
    rb.records, rb.bytes = 2_500_000, 60_000_000
    urb.records, urb.bytes = 11, 120
    now[0] += 2.0
    assert meter.rates() == [("events", 1_250_000.0, 30_000_000.0), ("samples", 0.5, 10.0)]
    rb.records += 500
    rb.bytes += 12_000
    now[0] += 1.0
    assert meter.line() == "events: 500 records/s, 12kB/s | samples: 0 records/s, 0B/s"


@pytest.mark.kernel
def test_rate_meter_on_real_buffers(obj):
    with RingBuffer(obj.maps["rb"]) as rb, UserRingBuffer(obj.maps["urb"]) as urb:
        meter = ringbuf.RateMeter(rb, urb)
        assert produce(obj, 10, 16) == 10
        rb.read_batch()
        urb.write(b"abcd")
        (name1, records1, bytes1), (name2, records2, bytes2) = meter.rates()
        assert (name1, name2) == ("rb", "urb")
        assert records1 > 0 and bytes1 == records1 * 16 and records2 > 0 and bytes2 == 4 * records2


# --- record sizes that are not multiples of 8 (position arithmetic rounds up) ---

@pytest.mark.kernel
@pytest.mark.parametrize("size", [5, 7, 13, 21])
def test_read_batch_of_equal_odd_sized_records_across_wrap_around(obj, size):
    stride = (size + 8 + 7) & ~7
    per_round = (SIZE // 2) // stride  # two rounds per wrap: every offset comes up
    seq = 0
    with RingBuffer(obj.maps["rb"]) as rb:
        for _round in range(12):
            assert produce(obj, per_round, size, start_seq=seq) == per_round
            got = rb.read_batch()
            assert got == [record(seq + i, size) for i in range(per_round)]  # no garbage records between
            seq += per_round
        assert rb.records == seq and rb.bytes == seq * size and rb.rings[0].available == 0
    assert seq * stride > 5 * SIZE


@pytest.mark.kernel
@pytest.mark.parametrize("size", [5, 7, 13])
def test_write_batch_of_equal_odd_sized_samples_round_trips(obj, size):
    stride = (size + 8 + 7) & ~7
    seq = 0
    with UserRingBuffer(obj.maps["urb"]) as urb, RingBuffer(obj.maps["rb"]) as rb:
        for _round in range(6):
            count = (SIZE // 2) // stride  # the echo of them fits rb
            batch = [struct.pack("<I", seq + i) + bytes([size]) * (size - 4) for i in range(count)]
            assert urb.write_batch(batch) == count
            assert drain(obj, echo=True) == count
            assert var(obj, "echo_failures") == 0
            assert rb.read_batch() == batch
            seq += count
        assert urb.free == SIZE
    assert seq * stride > 2 * SIZE


@pytest.mark.kernel
def test_a_stopped_consume_counts_the_discards_before_the_stop(obj):
    seqs = []

    def stop_at_6(view):
        seqs.append(struct.unpack_from("<I", view)[0])
        return -1 if seqs[-1] == 6 else None

    with RingBuffer(obj.maps["rb"], stop_at_6) as rb:
        assert produce(obj, 9, 5, discard_every=3) == 6  # 2, 5 and 8 discarded
        assert rb.consume() == -1
        assert seqs == [0, 1, 3, 4, 6]
        assert (rb.records, rb.discards) == (5, 2)  # 2 and 5, not the one after the stop
        assert rb.consume() == 1
        assert seqs == [0, 1, 3, 4, 6, 7] and (rb.records, rb.discards) == (6, 3)


@pytest.mark.kernel
def test_the_whole_user_ring_fits_one_sample_again_after_a_drain(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        for i in range(5):
            urb.write(struct.pack("<I", i) + bytes(9))  # 13 bytes: 24 in the ring
        assert drain(obj) == 5
        # the ring may become completely full: one sample of size - 8
        sample = urb.reserve(SIZE - 8)
        sample[0:4] = struct.pack("<I", 77)
        urb.submit(sample)
        assert urb.free == 0
        assert drain(obj) == 1
        assert seen(obj, 5, 1) == [77] and var(obj, "drained_bytes") == 5 * 13 + SIZE - 8
