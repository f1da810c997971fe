"""RingBuffer under asyncio: ``await rb.read_batch_async()`` and ``async for``.

Producers run in other threads (BPF_PROG_TEST_RUN blocks), started after the
consumer is waiting; timeouts are generous (a loaded machine), and every
check is on records, not on timing.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import pytest

import pybpf
from pybpf.ringbuf import RingBuffer

from conftest import program
from test_ringbuf import FILL, produce, record

WAIT = 20  # seconds: only hit when something is broken


@pytest.fixture
def obj():
    with pybpf.load(program("ringbuf_test")) as o:
        o.variables["fill"].set(FILL)
        yield o


def later(delay, fn, *args):
    timer = threading.Timer(delay, fn, args)
    timer.start()
    return timer


@pytest.mark.kernel
def test_read_batch_async_waits_without_blocking_the_loop(obj):
    async def main(rb):
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        timer = later(0.2, produce, obj, 3, 16)
        try:
            records = await asyncio.wait_for(rb.read_batch_async(), WAIT)
        finally:
            timer.join()
            tick_task.cancel()
        return records, ticks

    with RingBuffer(obj.maps["rb"]) as rb:
        records, ticks = asyncio.run(main(rb))
        records += rb.read_batch()  # the rest, if the wakeup came after the first record
    assert records == [record(i, 16) for i in range(3)]
    assert ticks >= 3  # the loop kept running while we waited


@pytest.mark.kernel
def test_read_batch_async_returns_at_once_when_records_are_there(obj):
    with RingBuffer(obj.maps["rb"], type=memoryview) as rb:
        assert produce(obj, 2, 8) == 2
        got = asyncio.run(asyncio.wait_for(rb.read_batch_async(max_records=1), WAIT))
        assert got == [record(0, 8)]
        assert asyncio.run(rb.read_batch_async()) == [record(1, 8)]


@pytest.mark.kernel
def test_async_for_streams_records_until_closed(obj):
    total = 60

    def producer():
        for i in range(0, total, 6):
            produce(obj, 6, 32, start_seq=i)
            time.sleep(0.01)

    async def main(rb):
        got = []
        thread = threading.Thread(target=producer)
        thread.start()
        try:
            async for rec in rb:
                got.append(rec)
                if len(got) == total:
                    asyncio.get_running_loop().call_soon(rb.close)  # ends the loop
        finally:
            thread.join()
        return got

    rb = RingBuffer(obj.maps["rb"])
    got = asyncio.run(asyncio.wait_for(main(rb), WAIT))
    assert rb.closed
    assert got == [record(i, 32) for i in range(total)]


@pytest.mark.kernel
def test_async_for_gives_typed_records(obj):
    import ctypes

    class Seq(ctypes.Structure):
        _fields_ = [("seq", ctypes.c_uint32)]

    async def main(rb):
        later(0.05, produce, obj, 4, 8, 0, 40).join()
        seqs = []
        async for rec in rb:
            seqs.append(rec.seq)
            if len(seqs) == 4:
                break
        return seqs

    with RingBuffer(obj.maps["rb"], type=Seq) as rb:
        assert asyncio.run(asyncio.wait_for(main(rb), WAIT)) == [40, 41, 42, 43]


@pytest.mark.kernel
def test_closing_wakes_a_waiting_read(no_fd_leak, obj):
    async def main(rb):
        waiter = asyncio.create_task(rb.read_batch_async())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        threading.Thread(target=rb.close).start()  # from another thread, as a signal handler might
        with pytest.raises(pybpf.ClosedError):
            await asyncio.wait_for(waiter, WAIT)

    rb = RingBuffer(obj.maps["rb"])
    asyncio.run(main(rb))
    assert rb.closed


@pytest.mark.kernel
def test_a_busy_head_under_asyncio_waits_for_the_commit():
    """bench_ringbuf's `hold` keeps a record BUSY at the head; the async reader must
    neither return early nor starve the loop (a level-triggered fd stays readable)."""
    with pybpf.load(program("bench_ringbuf")) as o:
        o.variables["release"].set(0)

        async def main(rb):
            loop = asyncio.get_running_loop()
            runner = loop.run_in_executor(None, lambda: o.programs["hold"].test_run(
                ctx=struct.pack("<QQ", 7, 5_000_000_000)).retval)
            deadline = time.monotonic() + WAIT
            while not o.variables["holding"].get():
                assert time.monotonic() < deadline, "hold never reserved its record"
                await asyncio.sleep(0.001)
            reader = asyncio.create_task(rb.read_batch_async())
            ticks = 0
            for _ in range(20):
                await asyncio.sleep(0.005)
                ticks += 1
            still_held = o.variables["holding"].get()
            early = reader.done()
            o.variables["release"].set(1)
            records = await asyncio.wait_for(reader, WAIT)
            await runner
            return records, still_held, early, ticks

        with RingBuffer(o.maps["rb"], type=bytes) as rb:
            records, still_held, early, ticks = asyncio.run(main(rb))
            records += rb.read_batch()
        assert ticks == 20
        if still_held:
            assert not early
        assert [struct.unpack_from("<Q", r)[0] for r in records] == [7, 8, 9, 10]
