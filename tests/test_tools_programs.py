"""libbpf-tools-style programs loaded as they are from their .o files, checked against
what this process did:

- programs/syscall_latency: a biolatency-style log2 histogram of this process's
  system call latencies (raw_tp/sys_enter + tp_btf/sys_exit, CO-RE read of
  pt_regs), compared with the sleeps and calls the test makes;
- programs/execsnoop: an execsnoop-style ring buffer tool (sys_enter_execve +
  sys_exit_execve, CO-RE read of task->real_parent->tgid, declared record type),
  compared with the processes the test spawns.

The uprobe tool (programs/uprobe_tool) is tested in test_uprobe.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

import pybpf

from conftest import program

pytestmark = pytest.mark.kernel

NR_GETPID = 39
NR_CLOCK_NANOSLEEP = 230      # time.sleep()
SLEEP = 0.005                 # 5 ms: log2 slot 12 in microseconds (4096..8191), 2 in ms (4..7)
N = 12


def latency(**params):
    s = pybpf.open(program("syscall_latency"))
    s.variables["targ_tgid"].set(os.getpid())
    for name, value in params.items():
        s.variables[name].set(value)
    return s.load()


def hists(obj) -> dict:
    return {k.nr: (list(v.slots), v.total_ns) for k, v in obj.maps["hists"].items()}


def test_sleep_latency_histogram(no_fd_leak):
    with latency() as obj:
        links = obj.attach()
        assert sorted((l.kind, l.target) for l in links) == [("raw_tracepoint", "sys_enter"), ("trace", "sys_exit")]
        t0 = time.monotonic()
        for _ in range(N):
            time.sleep(SLEEP)
        elapsed = time.monotonic() - t0
        for link in links:
            link.close()
        slots, total_ns = hists(obj)[NR_CLOCK_NANOSLEEP]
        assert sum(slots) == N
        assert sum(slots[:12]) == 0                  # none shorter than 4096 us: each slept 5 ms
        assert slots[12] >= N - 2                    # 4096..8191 us (allowing a late wake-up or two)
        assert N * SLEEP * 1e9 <= total_ns <= elapsed * 1e9


def test_one_syscall_in_milliseconds(no_fd_leak):
    with latency(targ_nr=NR_CLOCK_NANOSLEEP, targ_ms=True) as obj:
        obj.attach()
        for _ in range(N):
            time.sleep(SLEEP)
        os.getpid()
        h = hists(obj)
        assert list(h) == [NR_CLOCK_NANOSLEEP]       # only the syscall asked for
        slots, _ = h[NR_CLOCK_NANOSLEEP]
        assert sum(slots) == N and slots[2] >= N - 2  # 4..7 ms


def test_every_call_counted_once(no_fd_leak):
    with latency(targ_nr=NR_GETPID) as obj:
        obj.attach()
        for _ in range(N * 10):
            os.getpid()
        slots, total_ns = hists(obj)[NR_GETPID]
        assert sum(slots) == N * 10
        assert total_ns < N * 10 * 1_000_000         # getpid takes far less than a millisecond
        assert list(obj.maps["start"].keys()) == []  # every entry met its exit


# -- execsnoop ----------------------------------------------------------------------------------

def execsnoop(**params):
    s = pybpf.open(program("execsnoop"))
    s.variables["targ_ppid"].set(os.getpid())         # only this test's children
    for name, value in params.items():
        s.variables[name].set(value)
    return s.load()


def collect(obj, action) -> list:
    events = []
    with pybpf.RingBuffer(obj.maps["events"], events.append) as rb:
        action()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not rb.consume():
            rb.poll(100)
        rb.consume()
    return events


def test_execsnoop_sees_a_spawned_program(no_fd_leak):
    with execsnoop() as obj:
        obj.attach()
        procs = []

        def spawn():
            for arg in ("one", "two"):
                p = subprocess.Popen(["/bin/true", arg, "--flag"])
                p.wait()
                procs.append(p)

        events = collect(obj, spawn)
        assert [e.pid for e in events] == [p.pid for p in procs]
        for e, arg in zip(events, ("one", "two")):
            assert e.ppid == os.getpid()
            assert e.uid == os.getuid()
            assert e.retval == 0
            assert e.comm == "true"                  # read after the exec: the new program's name
            assert e.filename == "/bin/true"
            assert e.args_count == 3
            assert list(e.args)[:3] == ["/bin/true", arg, "--flag"]


def test_execsnoop_failed_exec(no_fd_leak):
    with open("/proc/self/comm") as f:
        comm = f.read().strip()

    def fail():
        with pytest.raises(FileNotFoundError):
            subprocess.run(["/nonexistent/pybpf-prog", "x"])

    with execsnoop() as obj:
        obj.attach()
        events = collect(obj, fail)
        assert len(events) == 1
        e = events[0]
        assert (e.retval, e.filename, e.comm) == (-errno.ENOENT, "/nonexistent/pybpf-prog", comm)
    with execsnoop(ignore_failed=True) as obj:
        obj.attach()
        assert collect(obj, fail) == []
