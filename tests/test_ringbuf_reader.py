"""pybpf/ringbuf/reader.py against the kernel: RINGBUF, kernel -> user.  Records in order
with exact contents, discards, wrap-around, a full ring, poll wake-ups and their flags,
signals, callbacks (exceptions, views, close and consume from inside, negative returns).
The cases follow the kernel's selftests (tools/testing/selftests/bpf/prog_tests/ringbuf.c)."""

from __future__ import annotations

import os
import signal
import struct
import threading
import time

import pytest

import pybpf
from pybpf.kernel.constants import BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP
from pybpf.ringbuf import RingBuffer

from conftest import program
from ringbuf_common import obj  # noqa: F401  (the fixture)
from ringbuf_common import bpf_map_mappings, Collect, Export, FILL, MAX_RECORD, produce, record, SIZE, var


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
def test_each_record_reads_as_itself_whatever_the_callback_did_with_the_last(obj):
    """consume() moves a view nobody kept on to the next record (no object per record): what a
    callback did with its view (hashed it, sliced it, made a weak reference, released it, kept
    it) never shows in the next record's view, and what it kept shows its own record."""
    import weakref
    seen, hashes, slices, weak, kept = [], [], [], [], []

    def callback(view):
        i = len(seen)
        seen.append(bytes(view))
        hashes.append(hash(view) == hash(bytes(view)))     # a hash cached for another record: False
        if i % 5 == 0:
            slices.append(view[0:4])                        # a slice of it lives on
        elif i % 5 == 1:
            weak.append(weakref.ref(view))                  # a weak reference to it
        elif i % 5 == 2:
            view.release()                                  # released by the callback
        elif i % 5 == 3:
            kept.append(view)                               # kept: released after the callback

    sizes = [8, 20, 31, 64, 5, 100, 12]
    with RingBuffer(obj.maps["rb"], callback) as rb:
        seq = 0
        for size in sizes:                                  # records of several sizes: non-uniform batches
            assert produce(obj, 10, size, start_seq=seq) == 10
            seq += 10
        assert rb.consume() == 70
        want = [record(10 * k + j, size) for k, size in enumerate(sizes) for j in range(10)]
        assert seen == want and all(hashes)
        assert [bytes(s) for s in slices] == [w[:4] for w in want[0::5]]
        assert all(r() is None or bytes(r()) == want[1 + 5 * k] for k, r in enumerate(weak))
        for view in kept:
            with pytest.raises(ValueError):
                bytes(view)
        del slices


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
