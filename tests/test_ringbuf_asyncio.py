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
from ringbuf_common import FILL, produce, record

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
        reader = asyncio.create_task(rb.read_batch_async())
        await asyncio.sleep(0.05)  # this coroutine runs while the reader waits
        assert not reader.done()
        producer = threading.Thread(target=produce, args=(obj, 3, 16))
        producer.start()
        try:
            return await asyncio.wait_for(reader, WAIT)
        finally:
            producer.join()

    with RingBuffer(obj.maps["rb"]) as rb:
        records = asyncio.run(main(rb))
        records += rb.read_batch()  # the rest, if the wakeup came after the first record
    assert records == [record(i, 16) for i in range(3)]


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
        closer = threading.Thread(target=rb.close)  # from another thread
        closer.start()
        try:
            with pytest.raises(pybpf.ClosedError):
                await asyncio.wait_for(waiter, WAIT)
        finally:
            closer.join()

    rb = RingBuffer(obj.maps["rb"])
    asyncio.run(main(rb))
    assert rb.closed


@pytest.mark.kernel
def test_a_busy_head_under_asyncio_waits_for_the_commit():
    """bench_ringbuf's `hold` keeps a record BUSY at the head; the async reader must
    neither return early nor starve the loop (a level-triggered fd stays readable).
    On a starved machine `hold` may give up before we look: then it is tried again."""
    with pybpf.load(program("bench_ringbuf")) as o:

        async def attempt(rb, seq):
            o.variables["release"].set(0)
            loop = asyncio.get_running_loop()
            runner = loop.run_in_executor(None, lambda: o.programs["hold"].test_run(
                ctx=struct.pack("<QQ", seq, 300_000_000)).retval)  # spins in the kernel: short
            try:
                while not runner.done() and not o.variables["holding"].get():
                    await asyncio.sleep(0.001)
                reader = asyncio.create_task(rb.read_batch_async())
                ticks = 0
                for _ in range(10):
                    await asyncio.sleep(0.002)  # the loop keeps running
                    ticks += 1
                held = o.variables["holding"].get() and not reader.done()
                still_held = held and o.variables["holding"].get()
            finally:
                o.variables["release"].set(1)
            records = await asyncio.wait_for(reader, WAIT)
            await runner
            return records, still_held, ticks

        with RingBuffer(o.maps["rb"], type=bytes) as rb:
            for n in range(5):
                seq = 10 * (n + 1)
                records, still_held, ticks = asyncio.run(attempt(rb, seq))
                records += rb.read_batch()
                assert ticks == 10
                assert [struct.unpack_from("<Q", r)[0] for r in records] == [seq, seq + 1, seq + 2, seq + 3]
                if still_held:
                    break
            else:
                pytest.fail("hold never kept its record BUSY while we looked, 5 times (a starved machine?)")
