"""Ring buffers against the kernel: RINGBUF consumer and USER_RINGBUF producer.

The BPF side is programs/ringbuf_test.bpf.c: ``produce`` writes numbered
records into ``rb``; ``drain`` drains ``urb`` (counting into .bss globals) and
can echo each sample back into ``rb``.  The cases follow the kernel's own
selftests for these maps (ringbuf.c, user_ringbuf.c).
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import threading
import time
import types

import pytest

import pybpf
from pybpf.kernel.constants import BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, MapType
from pybpf.ringbuf import RingBuffer, Sample, SampleSizeError, UserRingBuffer

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


# --- RINGBUF: kernel -> user ------------------------------------------------

@pytest.mark.kernel
def test_records_in_order_with_exact_lengths_and_contents(obj):
    got = Collect()
    with RingBuffer(obj.maps["rb"], got) as rb:
        expected = []
        seq = 0
        for size in (0, 1, 3, 4, 5, 8, 13, 64, 100, 1000, MAX_RECORD):
            count = 3
            assert produce(obj, count, size, start_seq=seq) == count
            expected += [record(seq + i, size) for i in range(count)]
            seq += count
            assert rb.consume() == count
        assert rb.consume() == 0
    assert got.records == expected


@pytest.mark.kernel
def test_discarded_records_are_skipped(obj):
    got = Collect()
    with RingBuffer(obj.maps["rb"], got) as rb:
        assert produce(obj, 20, 16, discard_every=3, start_seq=100) == 14
        assert var(obj, "discarded") == 6
        assert rb.consume() == 14
    want = [100 + i for i in range(20) if (i + 1) % 3]
    assert [struct.unpack_from("<I", r)[0] for r in got.records] == want
    assert all(r == record(s, 16) for r, s in zip(got.records, want))


@pytest.mark.kernel
def test_wraps_around_the_ring_many_times(obj):
    got = Collect()
    sizes = (1237, 3, 777, 4099, 0, 2049)  # odd sizes: every alignment, wraps mid-record
    seq = 0
    nbytes = 0
    expected = []
    with RingBuffer(obj.maps["rb"], got) as rb:
        for _round in range(50):
            for size in sizes:
                assert produce(obj, 3, size, start_seq=seq) == 3
                assert rb.consume() == 3
                expected += [record(seq + i, size) for i in range(3)]
                seq += 3
                nbytes += 3 * ((size + 8 + 7) & ~7)
    assert var(obj, "reserve_failures") == 0
    assert nbytes > 50 * SIZE
    assert got.records == expected


@pytest.mark.kernel
def test_a_full_ring_drops_in_the_kernel_and_recovers(obj):
    got = Collect()
    with RingBuffer(obj.maps["rb"], got) as rb:
        n = produce(obj, 1000, 100)  # 112 bytes each: 146 fit in 16 KiB
        assert n == (SIZE // 112)
        assert var(obj, "reserve_failures") == 1
        assert rb.consume() == n
        assert produce(obj, 5, 100, start_seq=n) == 5
        assert rb.consume() == 5
    assert [struct.unpack_from("<I", r)[0] for r in got.records] == list(range(n + 5))


@pytest.mark.kernel
def test_poll_times_out_with_nothing_to_read(obj):
    with RingBuffer(obj.maps["rb"], Collect()) as rb:
        t0 = time.monotonic()
        assert rb.poll(150) == 0
        elapsed = time.monotonic() - t0
        assert 0.13 <= elapsed < 1.5
        assert rb.poll(0) == 0


@pytest.mark.kernel
def test_poll_wakes_up_when_a_record_arrives(obj):
    got = Collect()
    with RingBuffer(obj.maps["rb"], got) as rb:
        producer = threading.Timer(0.1, produce, (obj, 2, 16))
        producer.start()
        try:
            t0 = time.monotonic()
            n = rb.poll(5000)
            elapsed = time.monotonic() - t0
        finally:
            producer.join()
        n += rb.consume()  # the second record may land after the wakeup
    assert n == 2
    assert 0.05 <= elapsed < 2.5
    assert got.records == [record(0, 16), record(1, 16)]


@pytest.mark.kernel
def test_poll_woken_by_discards_only_returns_0_and_the_ring_goes_quiet(obj):
    got = Collect()
    with RingBuffer(obj.maps["rb"], got) as rb:
        assert produce(obj, 3, 8, discard_every=1) == 0  # every record discarded
        t0 = time.monotonic()
        assert rb.poll(2000) == 0  # woken (producer_pos moved), nothing to hand out
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        assert rb.poll(100) == 0  # consumer caught up: EPOLLIN is off, a real wait
        assert time.monotonic() - t0 >= 0.09
    assert got.records == []


@pytest.mark.kernel
def test_no_wakeup_leaves_a_sleeping_poller_asleep_until_force_wakeup(obj):
    got = Collect()
    result = {}
    with RingBuffer(obj.maps["rb"], got) as rb:
        def poller():
            t0 = time.monotonic()
            result["n"] = rb.poll(10_000)
            result["elapsed"] = time.monotonic() - t0

        thread = threading.Thread(target=poller)
        thread.start()
        try:
            time.sleep(0.2)  # the poller is asleep in epoll_wait
            assert produce(obj, 3, 16, flags=BPF_RB_NO_WAKEUP) == 3
            time.sleep(0.3)
            assert thread.is_alive(), "BPF_RB_NO_WAKEUP woke the poller"
            assert produce(obj, 1, 16, start_seq=3, flags=BPF_RB_FORCE_WAKEUP) == 1
            thread.join(5)
            assert not thread.is_alive(), "BPF_RB_FORCE_WAKEUP did not wake the poller"
        finally:
            thread.join()
    assert result["n"] == 4
    assert result["elapsed"] >= 0.45
    assert got.records == [record(i, 16) for i in range(4)]


@pytest.mark.kernel
def test_ctrl_c_during_poll_propagates_and_leaves_the_buffer_usable(obj):
    got = Collect()
    with RingBuffer(obj.maps["rb"], got) as rb:
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                rb.poll(5000)
        finally:
            timer.join()
        assert produce(obj, 1, 8) == 1
        assert rb.poll(1000) == 1


@pytest.mark.kernel
def test_a_signal_that_does_not_raise_does_not_cut_the_wait_short(obj):
    caught = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: caught.append(1))
    try:
        with RingBuffer(obj.maps["rb"], Collect()) as rb:
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            t0 = time.monotonic()
            try:
                assert rb.poll(300) == 0
            finally:
                timer.join()
            assert time.monotonic() - t0 >= 0.28  # EINTR retried with the remaining time
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert caught == [1]


@pytest.mark.kernel
def test_ringbuf_mmap_permissions(obj):
    fd = obj.maps["rb"].fd
    # consumer page: read-write, exactly one page
    with mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=0):
        pass
    with pytest.raises(PermissionError):
        mmap.mmap(fd, 2 * PAGE, access=mmap.ACCESS_WRITE, offset=0)
    # producer page and data: read-only
    with pytest.raises(PermissionError):
        mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=PAGE)
    with pytest.raises(PermissionError):
        mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=2 * PAGE)
    with mmap.mmap(fd, PAGE + 2 * SIZE, access=mmap.ACCESS_READ, offset=PAGE):
        pass


@pytest.mark.kernel
def test_callback_exception_propagates_and_the_record_counts_as_consumed(obj):
    calls = []

    def callback(view):
        seq = struct.unpack_from("<I", view)[0]
        calls.append(seq)
        if seq == 1:
            raise KeyError("boom")

    with RingBuffer(obj.maps["rb"], callback) as rb:
        assert produce(obj, 4, 8) == 4
        with pytest.raises(KeyError, match="boom"):
            rb.consume()
        assert calls == [0, 1]
        assert rb.consume() == 2  # resumes after the failing record
        assert calls == [0, 1, 2, 3]


@pytest.mark.kernel
def test_record_views_are_released_after_the_callback(obj):
    kept = []
    with RingBuffer(obj.maps["rb"], kept.append) as rb:
        assert produce(obj, 2, 32) == 2
        assert rb.consume() == 2
    assert len(kept) == 2
    for view in kept:
        assert isinstance(view, memoryview)
        with pytest.raises(ValueError):
            bytes(view)


@pytest.mark.kernel
def test_record_views_are_read_only_memoryviews_of_the_payload(obj):
    checks = []

    def callback(view):
        checks.append((view.readonly, view.nbytes, view.format, bytes(view[:4])))
        with pytest.raises(TypeError):
            view[0] = 1

    with RingBuffer(obj.maps["rb"], callback) as rb:
        assert produce(obj, 1, 20, start_seq=7) == 1
        assert rb.consume() == 1
    assert checks == [(True, 20, "B", struct.pack("<I", 7))]


@pytest.mark.kernel
def test_close_from_the_callback_stops_and_releases(no_fd_leak, obj):
    calls = []
    rb = RingBuffer(obj.maps["rb"], lambda view: (calls.append(1), rb.close()))
    assert produce(obj, 3, 8) == 3
    assert rb.consume() == 1
    assert rb.closed
    with pytest.raises(pybpf.ClosedError):
        rb.consume()


@pytest.mark.kernel
def test_close_from_another_thread_waits_for_the_running_consume(no_fd_leak, obj):
    base = bpf_map_mappings()
    entered, resume = threading.Event(), threading.Event()
    got = []

    def callback(view):
        entered.set()
        assert resume.wait(5)
        got.append(bytes(view))  # still mapped: the close is deferred

    rb = RingBuffer(obj.maps["rb"], callback)
    assert produce(obj, 2, 8) == 2
    consumer = threading.Thread(target=rb.consume)
    consumer.start()
    try:
        assert entered.wait(5)
        rb.close()
        assert rb.closed
        assert bpf_map_mappings() == base + 2  # not yet: the consumer is in its callback
        with pytest.raises(pybpf.Error):
            rb.consume()  # closed (and busy)
    finally:
        resume.set()
        consumer.join()
    assert got == [record(0, 8)]  # stopped after the close
    assert bpf_map_mappings() == base


@pytest.mark.kernel
def test_consume_from_the_callback_is_refused(obj):
    def callback(view):
        rb.consume()

    with RingBuffer(obj.maps["rb"], callback) as rb:
        assert produce(obj, 1, 8) == 1
        with pytest.raises(pybpf.Error, match="own callback"):
            rb.consume()


@pytest.mark.kernel
def test_ring_buffer_fileno_works_with_select(obj):
    import select

    with RingBuffer(obj.maps["rb"], Collect()) as rb:
        assert rb.epoll_fd() == rb.fileno()
        assert select.select([rb], [], [], 0)[0] == []
        assert produce(obj, 1, 8) == 1
        assert select.select([rb], [], [], 1)[0] == [rb]
        assert rb.consume() == 1
        assert select.select([rb], [], [], 0)[0] == []


# --- USER_RINGBUF: user -> kernel -------------------------------------------

@pytest.mark.kernel
def test_user_ringbuf_mmap_permissions(obj):
    fd = obj.maps["urb"].fd
    with pytest.raises(PermissionError):
        mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=0)  # consumer page
    with mmap.mmap(fd, PAGE, access=mmap.ACCESS_READ, offset=0):
        pass
    with mmap.mmap(fd, PAGE + 2 * SIZE, access=mmap.ACCESS_WRITE, offset=PAGE):
        pass


@pytest.mark.kernel
def test_submitted_samples_reach_the_drain_in_order(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        for i in range(10):
            sample = urb.reserve(4 + i)
            assert isinstance(sample, Sample) and len(sample) == 4 + i
            sample[:4] = struct.pack("<I", 1000 + i)
            urb.submit(sample)
        assert drain(obj) == 10
        assert var(obj, "drained_count") == 10
        assert var(obj, "drained_bytes") == sum(4 + i for i in range(10))
        assert var(obj, "last_size") == 13
        assert seen(obj, 0, 10) == [1000 + i for i in range(10)]
        assert drain(obj) == 0
        assert urb.free == SIZE


@pytest.mark.kernel
def test_reserve_of_size_minus_8_fills_the_ring_exactly(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        assert urb.max_sample == SIZE - 8
        sample = urb.reserve(SIZE - 8)
        assert urb.free == 0
        with pytest.raises(pybpf.RingBufferFullError):
            urb.reserve(0)
        sample.data[:4] = struct.pack("<I", 0xABCD)
        urb.submit(sample)
        assert drain(obj) == 1
        assert var(obj, "last_size") == SIZE - 8
        assert seen(obj, 0, 1) == [0xABCD]
        assert urb.free == SIZE
        # and again, now that the positions are not at zero
        urb.write(b"x" * 8)
        sample = urb.reserve(SIZE - 16 - 8)  # the 8-byte sample took 16
        assert urb.free == 0
        urb.submit(sample)
        assert drain(obj) == 2


@pytest.mark.kernel
def test_overfill_raises_ring_buffer_full_after_the_exact_count(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        per = SIZE // 32  # 24-byte samples take 32 bytes with the header
        for i in range(per):
            urb.write(struct.pack("<I", i) + bytes(20))
        with pytest.raises(pybpf.RingBufferFullError, match=r"24-byte sample needs 32 bytes.*0 of 16384 free"):
            urb.write(bytes(24))
        assert drain(obj) == per
        assert seen(obj, per - 256, 256) == list(range(per - 256, per))
        urb.write(bytes(24))  # room again
        assert drain(obj) == 1


@pytest.mark.kernel
def test_discarded_samples_are_ignored_by_the_drain(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        for i in range(10):
            sample = urb.reserve(8)
            sample[:4] = struct.pack("<I", i)
            if i % 3 == 0:
                urb.discard(sample)
            else:
                sample.submit()
        assert drain(obj) == 6
        assert var(obj, "drained_count") == 6
        assert seen(obj, 0, 6) == [1, 2, 4, 5, 7, 8]
        assert urb.free == SIZE  # discards were consumed too


@pytest.mark.kernel
def test_drain_stops_at_the_oldest_unsubmitted_sample(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        a, b, c = (urb.reserve(4) for _ in range(3))
        for i, s in enumerate((a, b, c)):
            s[:] = struct.pack("<I", i)
        urb.submit(c)
        assert drain(obj) == 0  # a is still BUSY
        urb.submit(a)
        assert drain(obj) == 1
        urb.submit(b)
        assert drain(obj) == 2
        assert seen(obj, 0, 3) == [0, 1, 2]


@pytest.mark.kernel
def test_echo_round_trip(obj):
    got = Collect()
    payloads = [bytes([i]) * n for i, n in enumerate((1, 4, 7, 33, 500, 4100), start=1)]
    with UserRingBuffer(obj.maps["urb"]) as urb, RingBuffer(obj.maps["rb"], got) as rb:
        for p in payloads:
            urb.write(p)
        assert drain(obj, echo=True) == len(payloads)
        assert var(obj, "echo_failures") == 0
        assert rb.consume() == len(payloads)
    assert got.records == payloads


@pytest.mark.kernel
def test_blocking_reserve_times_out_then_succeeds_after_a_drain(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        big = urb.reserve(SIZE - 200)
        urb.submit(big)
        t0 = time.monotonic()
        with pytest.raises(pybpf.TimeoutError, match="within 200 ms"):
            urb.reserve_blocking(1000, 200)
        assert 0.18 <= time.monotonic() - t0 < 1.5

        drainer = threading.Timer(0.15, drain, (obj,))
        drainer.start()
        try:
            t0 = time.monotonic()
            sample = urb.reserve_blocking(1000, 5000)
            elapsed = time.monotonic() - t0
        finally:
            drainer.join()
        assert 0.1 <= elapsed < 2.5
        assert var(obj, "last_drain_ret") == 1
        sample.submit()
        assert drain(obj) == 1
        assert var(obj, "last_size") == 1000


@pytest.mark.kernel
def test_blocking_reserve_on_a_completely_full_ring(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb.write(bytes(SIZE - 8))
        assert urb.free == 0
        drainer = threading.Timer(0.1, drain, (obj,))
        drainer.start()
        try:
            sample = urb.reserve_blocking(SIZE - 8, 5000)
        finally:
            drainer.join()
        urb.discard(sample)
        assert drain(obj) == 0
        assert urb.free == SIZE


@pytest.mark.kernel
def test_oversize_samples_are_refused_before_touching_the_ring(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        for n in (SIZE - 7, SIZE, 1 << 30, 1 << 31):
            with pytest.raises(SampleSizeError, match=f"at most {SIZE - 8} bytes"):
                urb.reserve(n)
        with pytest.raises(ValueError):  # SampleSizeError is also a ValueError
            urb.reserve(-1)
        with pytest.raises(pybpf.Error):
            urb.reserve_blocking(SIZE, 10)
        assert urb.free == SIZE
        assert drain(obj) == 0


@pytest.mark.kernel
def test_submit_twice_or_a_foreign_sample_is_refused(obj):
    with pybpf.load(program("ringbuf_test")) as other_obj:
        with UserRingBuffer(obj.maps["urb"]) as urb, UserRingBuffer(other_obj.maps["urb"]) as other:
            sample = urb.reserve(8)
            urb.submit(sample)
            with pytest.raises(pybpf.Error, match="already submitted"):
                urb.submit(sample)
            with pytest.raises(pybpf.Error, match="already submitted"):
                urb.discard(sample)
            with pytest.raises(ValueError):
                sample.data[0] = 1  # released at submit
            foreign = other.reserve(8)
            with pytest.raises(pybpf.Error, match="another ring buffer"):
                urb.submit(foreign)
            other.discard(foreign)
            with pytest.raises(pybpf.Error, match="takes a Sample"):
                urb.submit(b"12345678")
        assert drain(obj) == 1


@pytest.mark.kernel
def test_close_discards_pending_samples_so_the_drain_is_not_stuck(obj):
    urb = UserRingBuffer(obj.maps["urb"])
    urb.write(struct.pack("<I", 1))
    pending = urb.reserve(4)
    pending[:] = struct.pack("<I", 2)
    urb.close()
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb.write(struct.pack("<I", 3))
        assert drain(obj) == 2
        assert seen(obj, 0, 2) == [1, 3]
        assert urb.free == SIZE


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


@pytest.mark.kernel
def test_submit_refuses_a_sample_whose_buffer_is_still_exported(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        sample = urb.reserve(8)
        export = Export(sample.data)
        with pytest.raises(pybpf.Error, match="buffer export"):
            sample.submit()
        export.release()
        sample.submit()  # still reserved: fine now
        assert drain(obj) == 1


@pytest.mark.kernel
def test_a_record_export_kept_past_the_callback_is_reported(obj):
    exports = []

    def keeps_export(view):
        exports.append(Export(view))

    def keeps_export_and_raises(view):
        exports.append(Export(view))
        raise LookupError("mine")

    with RingBuffer(obj.maps["rb"], keeps_export) as rb:
        assert produce(obj, 2, 8) == 2
        with pytest.raises(pybpf.Error, match="kept a buffer export"):
            rb.consume()
        rb._callback = keeps_export_and_raises
        with pytest.raises(LookupError, match="mine"):  # the callback's own error wins
            rb.consume()
        assert rb.consume() == 0  # both records were consumed
        for e in exports:
            e.release()


@pytest.mark.kernel
def test_sample_as_context_manager(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        with urb.reserve(4) as sample:
            sample[:] = struct.pack("<I", 41)
        with pytest.raises(RuntimeError):
            with urb.reserve(4) as sample:
                sample[:] = struct.pack("<I", 42)
                raise RuntimeError
        with urb.reserve(4) as sample:
            sample[:] = struct.pack("<I", 43)
        assert drain(obj) == 2
        assert seen(obj, 0, 2) == [41, 43]


@pytest.mark.kernel
def test_concurrent_producers_are_serialized(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        def worker(base):
            for i in range(50):
                urb.write(struct.pack("<I", base + i) + bytes(4))

        threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert drain(obj) == 200
        assert var(obj, "drained_bytes") == 200 * 8


@pytest.mark.kernel
def test_drain_rejects_a_misaligned_producer_pos_and_an_oversize_header(obj):
    # What the kernel does with what UserRingBuffer never writes (why reserve
    # keeps producer_pos 8-aligned and refuses oversize samples).
    fd = obj.maps["urb"].fd
    with mmap.mmap(fd, PAGE + 2 * SIZE, access=mmap.ACCESS_WRITE, offset=PAGE) as prod:
        struct.pack_into("<II", prod, PAGE, 4, 0)  # a committed 4-byte sample...
        struct.pack_into("<Q", prod, 0, 12)  # ...published with an unaligned producer_pos
        assert drain(obj) == -22  # -EINVAL
        struct.pack_into("<II", prod, PAGE, SIZE, 0)  # a sample larger than the ring
        struct.pack_into("<Q", prod, 0, 2 * SIZE)
        assert drain(obj) == -7  # -E2BIG
        assert var(obj, "last_drain_ret") == -7
        assert var(obj, "drained_count") == 0


# --- life cycle and errors --------------------------------------------------

@pytest.mark.kernel
def test_close_releases_every_fd_and_mapping(no_fd_leak, obj):
    base = bpf_map_mappings()
    rb = RingBuffer(obj.maps["rb"], Collect())
    urb = UserRingBuffer(obj.maps["urb"])
    assert bpf_map_mappings() == base + 4
    urb.reserve(8)  # left pending: close still unmaps
    rb.close()
    urb.close()
    assert bpf_map_mappings() == base
    rb.close()  # idempotent
    urb.close()
    with RingBuffer(obj.maps["rb"], Collect()), UserRingBuffer(obj.maps["urb"]):
        assert bpf_map_mappings() == base + 4
    assert bpf_map_mappings() == base


@pytest.mark.kernel
def test_a_closed_buffer_raises_closed_error(obj):
    rb = RingBuffer(obj.maps["rb"], Collect())
    rb.close()
    for call in (rb.consume, rb.poll, rb.fileno):
        with pytest.raises(pybpf.ClosedError):
            call()
    urb = UserRingBuffer(obj.maps["urb"])
    sample = urb.reserve(8)
    urb.close()
    assert urb.closed and rb.closed
    with pytest.raises(pybpf.ClosedError):
        urb.reserve(8)
    with pytest.raises(pybpf.ClosedError):
        urb.reserve_blocking(8, 10)
    with pytest.raises(pybpf.ClosedError):
        urb.write(b"1234")
    with pytest.raises(pybpf.ClosedError):
        urb.submit(sample)
    with pytest.raises(ValueError):
        sample.data[0] = 1  # released by close


def test_wrong_map_type_raises_a_clear_error():
    rb_like = types.SimpleNamespace(fd=-1, type=MapType.RINGBUF, max_entries=SIZE, name="rb")
    urb_like = types.SimpleNamespace(fd=-1, type=MapType.USER_RINGBUF, max_entries=SIZE, name="urb")
    hash_like = types.SimpleNamespace(fd=-1, type=MapType.HASH, max_entries=SIZE, name="h")
    with pytest.raises(pybpf.Error, match="RingBuffer needs a RINGBUF map; map 'urb' is a USER_RINGBUF.*UserRingBuffer"):
        RingBuffer(urb_like, print)
    with pytest.raises(pybpf.Error, match="UserRingBuffer needs a USER_RINGBUF map; map 'rb' is a RINGBUF"):
        UserRingBuffer(rb_like)
    with pytest.raises(pybpf.Error, match="map 'h' is a HASH map"):
        RingBuffer(hash_like, print)
    with pytest.raises(pybpf.Error, match="needs a pybpf Map"):
        UserRingBuffer(object())
    bad_size = types.SimpleNamespace(fd=-1, type=MapType.RINGBUF, max_entries=3 * PAGE, name="odd")
    with pytest.raises(pybpf.Error, match="power of two"):
        RingBuffer(bad_size, print)
    with pytest.raises(pybpf.Error, match="callable"):
        RingBuffer(rb_like, None)


@pytest.mark.kernel
def test_wrong_map_type_on_real_maps(no_fd_leak, obj):
    with pytest.raises(pybpf.Error, match="use UserRingBuffer"):
        RingBuffer(obj.maps["urb"], print)
    with pytest.raises(pybpf.Error, match="use RingBuffer"):
        UserRingBuffer(obj.maps["rb"])


# --- the reserved sample is a buffer (issue 2's contract) ---------------------

def echoed(obj, urb_map_count: int) -> list[bytes]:
    """Drains ``urb`` with echo and returns the bytes the kernel received, in order."""
    got = Collect()
    with RingBuffer(obj.maps["rb"], got) as rb:
        assert drain(obj, echo=True) == urb_map_count
        assert var(obj, "echo_failures") == 0
        assert rb.consume() == urb_map_count
    return got.records


@pytest.mark.kernel
def test_reserved_sample_is_a_writable_buffer_the_kernel_receives(obj):
    import ctypes

    class Thirteen(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("seq", ctypes.c_uint32), ("tail", ctypes.c_uint8 * 9)]

    expected = []
    with UserRingBuffer(obj.maps["urb"]) as urb:
        s = urb.reserve(7)  # odd sizes: the payload is not 8-aligned at its end
        assert len(s) == 7
        struct.pack_into("<I3s", s, 0, 0x01020304, b"abc")
        assert bytes(s) == struct.pack("<I3s", 0x01020304, b"abc")
        expected.append(bytes(s))
        urb.submit(s)

        s = urb.reserve(5)
        s[0:4] = b"WXYZ"
        s[4] = 0x7F
        assert (s[0], s[1:3], len(s)) == (ord("W"), b"XY", 5)
        expected.append(b"WXYZ\x7f")
        urb.submit(s)

        s = urb.reserve(9)
        m = memoryview(s)
        assert (m.nbytes, m.readonly, m.format) == (9, False, "B")
        m[:] = b"memoryvw!"
        m.release()
        expected.append(b"memoryvw!")
        urb.submit(s)

        s = urb.reserve(13)
        t = Thirteen.from_buffer(s)
        t.seq = 0xDEADBEEF
        t.tail[:] = range(9)
        del t  # the ctypes object holds an export: submit refuses while it lives
        expected.append(struct.pack("<I", 0xDEADBEEF) + bytes(range(9)))
        urb.submit(s)

        s = urb.reserve_blocking(6, 1000)
        struct.pack_into("<HI", s, 0, 0xBEEF, 6)
        expected.append(struct.pack("<HI", 0xBEEF, 6))
        urb.discard(s)  # a discarded one never reaches the program
        expected.pop()
        s = urb.reserve_blocking(6, 1000)
        struct.pack_into("<HI", s, 0, 0xCAFE, 6)
        expected.append(struct.pack("<HI", 0xCAFE, 6))
        s.submit()

        with urb.reserve(3) as s:
            s[:] = b"ctx"
        expected.append(b"ctx")
        s = urb.reserve(2)
        s.data[:] = b"dt"  # the pre-buffer API still works
        expected.append(b"dt")
        urb.submit(s)
        assert urb.records == len(expected) and urb.discards == 1
    assert echoed(obj, len(expected)) == expected


@pytest.mark.kernel
def test_a_live_view_blocks_submit_and_nothing_writes_after_it(obj):
    import ctypes

    from pybpf.ringbuf import SampleClosedError, SampleExportedError

    with UserRingBuffer(obj.maps["urb"]) as urb:
        s = urb.reserve(8)
        s[:] = b"original"
        view = memoryview(s)
        derived = view[2:6]  # outlives view.release(): why a memoryview is not enough
        view.release()
        with pytest.raises(SampleExportedError, match="still alive.*stays reserved") as err:
            urb.submit(s)
        assert isinstance(err.value, BufferError) and isinstance(err.value, pybpf.Error)
        assert drain(obj) == 0  # still reserved (BUSY): the drain stops at it
        derived.release()
        urb.submit(s)

        c = urb.reserve(8)
        c[:] = b"ctypes!!"
        alive = (ctypes.c_char * 8).from_buffer(c)
        with pytest.raises(SampleExportedError):
            urb.discard(c)
        with pytest.raises(SampleExportedError):
            c.submit()
        assert alive.raw == b"ctypes!!"
        del alive
        data = c.data  # .data is the sample's own view: released by the commit
        urb.submit(c)

        for stale in (s, c):
            with pytest.raises(TypeError):  # struct replaces our SampleClosedError with its own
                struct.pack_into("<Q", stale, 0, 1)
            with pytest.raises(SampleClosedError):
                stale[0:1] = b"x"
            with pytest.raises(SampleClosedError):
                memoryview(stale)
            with pytest.raises(SampleClosedError):
                ctypes.c_uint64.from_buffer(stale)
            with pytest.raises(pybpf.ClosedError):
                bytes(stale)
            with pytest.raises(ValueError):
                stale.data
            assert len(stale) == 8 and stale.committed
        with pytest.raises(ValueError):
            data[0] = 0
        with pytest.raises(pybpf.Error, match="already submitted"):
            urb.submit(s)
    assert echoed(obj, 2) == [b"original", b"ctypes!!"]


@pytest.mark.kernel
def test_close_with_a_live_view_discards_the_sample_and_keeps_the_memory(obj):
    urb = UserRingBuffer(obj.maps["urb"])
    s = urb.reserve(8)
    view = memoryview(s)
    urb.close()  # a BUSY sample would wedge the drain: discarded by force
    view[:] = b"stillmap"  # mapped until the view goes: no crash, nobody reads it
    with pytest.raises(pybpf.ClosedError):
        memoryview(s)
    del view
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb.write(b"after")
    assert echoed(obj, 1) == [b"after"]


@pytest.mark.kernel
def test_tutorial_sample_filled_with_pack_into_reaches_the_tracepoint():
    with pybpf.load(program("user_ringbuf")) as obj:
        events = []
        with obj.programs["kill_exit"].attach(), \
                RingBuffer(obj.maps["kernel_ringbuf"], lambda e: events.append(e.pid)) as rb, \
                UserRingBuffer(obj.maps["user_ringbuf"]) as urb:
            entry = urb.reserve(20)
            struct.pack_into("i16s", entry, 0, os.getpid(), b"hello")
            urb.submit(entry)
            os.kill(os.getpid(), 0)  # sys_exit_kill drains the user ring
            assert rb.poll(1000) == 1
            assert obj.variables["read"].get() == 1
            assert urb.free == urb.size
        assert events == [os.getpid()]


# --- the callback's return value, as libbpf's ring_buffer__consume --------------

class StopAt:
    """A callback that records the seq of each record and returns ``stops[seq]``
    (None, 0 and positive values otherwise, which go on)."""

    def __init__(self, stops):
        self.stops = stops
        self.seqs = []

    def __call__(self, view):
        seq = struct.unpack_from("<I", view)[0]
        self.seqs.append(seq)
        return self.stops.get(seq, (None, 0, seq)[seq % 3])


@pytest.mark.kernel
def test_a_negative_callback_return_stops_consume_and_poll(obj):
    cb = StopAt({2: -1, 5: -22, 11: -5})
    with RingBuffer(obj.maps["rb"], cb) as rb:
        assert produce(obj, 8, 13) == 8  # 13 bytes: consumer_pos must round up past each
        assert rb.consume() == -1
        assert cb.seqs == [0, 1, 2] and rb.records == 3
        assert rb.consume() == -22  # the stopping record was consumed: 3 comes next
        assert cb.seqs == [0, 1, 2, 3, 4, 5]
        assert rb.consume() == 2
        assert cb.seqs == list(range(8)) and rb.rings[0].available == 0
        assert produce(obj, 3, 5, start_seq=10) == 3
        assert rb.poll(1000) == -5
        assert rb.poll(1000) == 1
        assert cb.seqs == list(range(8)) + [10, 11, 12]
        assert rb.poll(0) == 0


@pytest.mark.kernel
def test_a_negative_return_stops_every_ring_of_a_multi_ring_consume(obj):
    with pybpf.load(program("ringbuf_test")) as other:
        other.variables["fill"].set(FILL)
        first, second = StopAt({1: -3}), StopAt({})
        with RingBuffer(obj.maps["rb"], first) as rb:
            rb.add(other.maps["rb"], second)
            assert produce(obj, 3, 7) == 3
            assert produce(other, 2, 7, start_seq=100) == 2
            assert rb.consume() == -3  # the second ring is not read
            assert first.seqs == [0, 1] and second.seqs == []
            assert rb.consume() == 3  # 2, then 100, 101
            assert first.seqs == [0, 1, 2] and second.seqs == [100, 101]
            second.stops[102] = -9
            assert produce(other, 2, 7, start_seq=102) == 2
            assert rb.poll(1000) == -9
            assert second.seqs == [100, 101, 102]
            assert rb.poll(1000) == 1
            assert rb.records == 7
