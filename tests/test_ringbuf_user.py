"""pybpf/ringbuf/user.py against the kernel: USER_RINGBUF, user -> kernel.  Samples
reserved, submitted and discarded, reaching ``drain`` in order; a full ring, blocking
reserves, oversize samples, double submits, exported buffers, concurrent producers and
the writable-buffer contract of reserve().  The cases follow the kernel's selftests
(tools/testing/selftests/bpf/prog_tests/user_ringbuf.c)."""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time

import pytest

import pybpf
from pybpf.ringbuf import RingBuffer, Sample, SampleSizeError, UserRingBuffer

from conftest import program
from ringbuf_common import obj  # noqa: F401  (the fixture)
from ringbuf_common import Collect, drain, Export, PAGE, seen, SIZE, var


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
