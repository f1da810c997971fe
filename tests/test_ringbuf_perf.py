"""PerfBuffer against the kernel: programs/perf_test.bpf.c's raw tracepoint
program ``output`` writes one sample per BPF_PROG_TEST_RUN with
bpf_perf_event_output(BPF_F_CURRENT_CPU); BPF_F_TEST_RUN_ON_CPU picks the CPU,
so each CPU's ring is exercised on purpose."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
import time
import types

import pytest

import pybpf
from pybpf.kernel.constants import BPF_F_TEST_RUN_ON_CPU, MapType
from pybpf.ringbuf.perf import PerfBuffer, online_cpus

from conftest import program

FILL = bytes((i * 13 + 1) & 0xFF for i in range(1024))


@pytest.fixture
def obj():
    with pybpf.load(program("perf_test")) as o:
        o.variables["buf"].set(FILL)
        yield o


def output(obj, seq: int, size: int, cpu: int = 0) -> int:
    """One sample on ``cpu``: returns bpf_perf_event_output's result."""
    ret = obj.programs["output"].test_run(ctx=struct.pack("<QQ", seq, size), flags=BPF_F_TEST_RUN_ON_CPU,
                                          cpu=cpu).retval
    return ret - (1 << 32) if ret > 0x7FFFFFFF else ret


def sample(seq: int, size: int, cpu: int) -> bytes:
    """What the callback gets: the data, padded so that 4 + length is a multiple of 8."""
    padded = ((size + 4 + 7) & ~7) - 4
    return struct.pack("<II", seq, cpu) + FILL[8:size], padded


class Collect:
    def __init__(self):
        self.samples = []
        self.lost = []

    def __call__(self, cpu, record):
        self.samples.append((cpu, bytes(record)))

    def on_lost(self, cpu, count):
        self.lost.append((cpu, count))


def check(got, expected):
    """(cpu, bytes) pairs against (cpu, seq, size): contents exact up to the padding."""
    assert len(got) == len(expected)
    for (cpu, raw), (want_cpu, seq, size) in zip(got, expected):
        data, padded = sample(seq, size, want_cpu)
        assert cpu == want_cpu
        assert len(raw) == padded
        assert raw[:size] == data


@pytest.mark.kernel
def test_samples_arrive_per_cpu_in_order(no_fd_leak, obj):
    got = Collect()
    with PerfBuffer(obj.maps["events"], got, got.on_lost) as pb:
        cpus = pb.cpus
        assert cpus == online_cpus()[:len(cpus)] and cpus
        expected = []
        for i in range(12):
            cpu = cpus[i % len(cpus)]
            size = 8 + (i * 5) % 60
            assert output(obj, i, size, cpu) == 0
            expected.append((cpu, i, size))
        assert pb.consume() == 12
        assert pb.consume() == 0
    # per CPU in order (CPUs are read one after the other)
    for cpu in cpus:
        check([s for s in got.samples if s[0] == cpu], [e for e in expected if e[0] == cpu])
    assert got.lost == []
    assert pb.records == 12 and pb.lost == 0


@pytest.mark.kernel
def test_records_that_wrap_around_a_one_page_ring(obj):
    got = Collect()
    cpu = online_cpus()[0]
    with PerfBuffer(obj.maps["events"], got, page_count=1) as pb:
        expected = []
        seq = 0
        for _round in range(40):
            for size in (8, 101, 333, 1000, 56):
                assert output(obj, seq, size, cpu) == 0
                expected.append((cpu, seq, size))
                seq += 1
            pb.consume()  # 5 samples < 4 KiB: nothing lost, every offset hit
        check(got.samples, expected)
        assert pb.bytes == sum(sample(s, size, cpu)[1] for _, s, size in expected)


@pytest.mark.kernel
def test_a_full_ring_reports_lost_samples(obj):
    got = Collect()
    cpu = online_cpus()[-1]
    with PerfBuffer(obj.maps["events"], got, got.on_lost, page_count=1) as pb:
        results = [output(obj, i, 200, cpu) for i in range(60)]  # 60 * 216 bytes > one page
        failed = results.count(-errno.ENOSPC)
        assert failed and set(results) == {0, -errno.ENOSPC}
        assert pb.consume() == 60 - failed
        assert got.lost == []  # the kernel writes the LOST record when there is room again
        assert output(obj, 1000, 200, cpu) == 0
        assert pb.consume() == 1
        assert got.lost == [(cpu, failed)] and pb.lost == failed
        assert obj.variables["output_failures"].get() == failed
        assert struct.unpack_from("<I", got.samples[-1][1])[0] == 1000


@pytest.mark.kernel
def test_poll_wakes_up_and_times_out(obj):
    got = Collect()
    cpu = online_cpus()[0]
    with PerfBuffer(obj.maps["events"], got) as pb:
        t0 = time.monotonic()
        assert pb.poll(100) == 0
        assert time.monotonic() - t0 >= 0.09
        timer = threading.Timer(0.1, output, (obj, 5, 16, cpu))
        timer.start()
        try:
            n = pb.poll(5000)
        finally:
            timer.join()
        assert n == 1 and got.samples[0][0] == cpu
        assert select.select([pb], [], [], 0)[0] == []
        assert pb.fileno() == pb.epoll_fd()


@pytest.mark.kernel
def test_typed_samples(obj):
    class Head(ctypes.Structure):
        _fields_ = [("seq", ctypes.c_uint32), ("cpu", ctypes.c_uint32)]

    got = []
    with PerfBuffer(obj.maps["events"], lambda cpu, rec: got.append((cpu, rec.seq, rec.cpu)), type=Head) as pb:
        cpu = pb.cpus[-1]
        assert output(obj, 77, 8, cpu) == 0
        assert pb.consume() == 1
    assert got == [(cpu, 77, cpu)]


@pytest.mark.kernel
def test_close_takes_the_events_out_of_the_map(no_fd_leak, obj):
    pb = PerfBuffer(obj.maps["events"], Collect())
    cpu = pb.cpus[0]
    assert output(obj, 1, 8, cpu) == 0
    pb.close()
    pb.close()
    assert output(obj, 2, 8, cpu) == -errno.ENOENT  # no event at the CPU's index
    with pytest.raises(pybpf.ClosedError):
        pb.consume()
    with pytest.raises(pybpf.ClosedError):
        pb.poll(0)
    with pytest.raises(pybpf.ClosedError):
        pb.fileno()


@pytest.mark.kernel
def test_callback_errors_propagate_and_the_sample_counts_as_read(obj):
    seen = []

    def callback(cpu, rec):
        seen.append(struct.unpack_from("<I", rec)[0])
        if seen[-1] == 1:
            raise KeyError("boom")

    with PerfBuffer(obj.maps["events"], callback) as pb:
        cpu = pb.cpus[0]
        for i in range(3):
            assert output(obj, i, 8, cpu) == 0
        with pytest.raises(KeyError):
            pb.consume()
        assert pb.consume() == 1
    assert seen == [0, 1, 2]


def test_perf_buffer_argument_errors():
    ring = types.SimpleNamespace(fd=-1, type=MapType.RINGBUF, max_entries=4096, name="rb")
    with pytest.raises(pybpf.Error, match="PERF_EVENT_ARRAY map; map 'rb' is a RINGBUF.*RingBuffer"):
        PerfBuffer(ring, print)
    perf_like = types.SimpleNamespace(fd=-1, type=MapType.PERF_EVENT_ARRAY, max_entries=0, name="e")
    with pytest.raises(pybpf.Error, match="callable"):
        PerfBuffer(perf_like, None)
    with pytest.raises(pybpf.Error, match="power of two"):
        PerfBuffer(perf_like, print, page_count=3)
    with pytest.raises(pybpf.Error, match="needs a pybpf Map"):
        PerfBuffer(object(), print)


def test_online_cpus_parses_the_kernel_list():
    cpus = online_cpus()
    assert cpus and cpus == sorted(set(cpus)) and len(cpus) <= (os.cpu_count() or 1024)


@pytest.mark.kernel
def test_a_negative_callback_return_stops_consume_and_poll(obj):
    seqs = []

    def stop_at_3(cpu, record):
        seq = struct.unpack_from("<I", record)[0]
        seqs.append(seq)
        if seq == 3:
            return -7
        return seq % 2  # 0 and positive values go on (None too: Collect)

    with PerfBuffer(obj.maps["events"], stop_at_3) as pb:
        cpu = pb.cpus[0]
        for i in range(6):
            assert output(obj, i, 16, cpu) == 0
        assert pb.consume() == -7
        assert seqs == [0, 1, 2, 3] and pb.records == 4
        assert pb.consume() == 2  # the stopping sample was consumed: 4 and 5 are left
        assert seqs == [0, 1, 2, 3, 4, 5]
        assert output(obj, 3, 16, cpu) == 0
        assert pb.poll(1000) == -7
        assert pb.poll(0) == 0
