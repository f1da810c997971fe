"""`python -m pybpf load` streams PERF_EVENT_ARRAY maps (bpf_perf_event_output) as it streams
ring buffers: records decoded by their BTF type, --count exact, samples the kernel dropped
counted on stderr, Ctrl-C releasing the per-CPU events.

programs/perf_events_cli: one struct perf_rec (pid, seq, syscall, sig, target, comm) per getpid()
and kill() of the process target_tgid.  The target here is a Python child pinned to CPU 0 (so
its records come in one CPU's ring, in order) that waits for a line on stdin before calling."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, program

pytestmark = pytest.mark.kernel
PYTHON = sys.executable

# the target: wait for the session, then N getpid() calls, a pause, and one kill(parent, 0)
TARGET = """
import os, sys, time
os.sched_setaffinity(0, {0})
sys.stdin.readline()
for _ in range(int(sys.argv[1])):
    os.getpid()
time.sleep(float(sys.argv[2]))
os.kill(os.getppid(), 0)     # (os.getpid() here would be one more getpid record)
time.sleep(60)
"""

ROW = re.compile(r"^\d\d:\d\d:\d\d EVENT (\S+)\s+(\d+)\s+seq=(\d+) syscall=(\d) sig=(-?\d+) target=(-?\d+)$")


def start_target(calls: int, pause: float = 0.2) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-c", TARGET, str(calls), str(pause)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def start_session(target: subprocess.Popen, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "pybpf", "load", program("perf_events_cli"),
                             "--set", f"target_tgid={target.pid}", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_session(calls: int, *extra: str, pause: float = 0.2, timeout: float = 60):
    """Start the target and the session; go once the session printed its header (the perf
    buffer is in the map then); return (session stdout lines, stderr, returncode, target pid)."""
    target = start_target(calls, pause)
    session = None
    try:
        session = start_session(target, *extra)
        header = session.stdout.readline()
        assert header.split() == ["TIME", "EVENT", "COMM", "PID"], (header, session.stderr.read())
        target.stdin.write("go\n")
        target.stdin.flush()
        out, err = session.communicate(timeout=timeout)
        return out.splitlines(), err, session.returncode, target.pid
    finally:
        stop(session, target)


def stop(*procs) -> None:
    """Kill what still runs and close every pipe."""
    for p in procs:
        if p is None:
            continue
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def rows_of(lines: list[str]) -> list[tuple]:
    rows = []
    for line in lines:
        m = ROW.match(line)
        assert m, line
        rows.append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)),
                     int(m.group(6))))
    return rows


def test_records_decoded_by_their_declared_type(no_fd_leak):
    lines, err, rc, pid = run_session(20, "--count", "21", "--duration", "30")
    assert rc == 0, err
    rows = rows_of(lines)
    # 20 getpid() then one kill(parent, 0), each one record with the fields the program wrote
    assert rows == [("python", pid, i, 0, 0, 0) for i in range(20)] + [("python", pid, 20, 1, 0, os.getpid())]
    assert "lost" not in err


def test_count_is_exact_and_nothing_after_it(no_fd_leak):
    lines, err, rc, pid = run_session(50, "--count", "7", "--duration", "30")
    assert rc == 0, err
    assert rows_of(lines) == [("python", pid, i, 0, 0, 0) for i in range(7)]


def test_duration_stops_a_session_without_records(no_fd_leak):
    target = start_target(0)
    try:
        proc = subprocess.run([PYTHON, "-m", "pybpf", "load", program("perf_events_cli"),
                               "--set", f"target_tgid={target.pid}", "--duration", "1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
    finally:
        stop(target)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["TIME     EVENT COMM             PID"]


def test_lost_samples_are_counted_on_stderr(no_fd_leak):
    # a burst far bigger than a CPU's ring (8 pages, 64-byte samples: 512) while the session
    # prints line by line: the kernel drops samples and says how many in PERF_RECORD_LOST,
    # which it writes before the next sample that fits (the kill after the pause)
    burst = 50000
    lines, err, rc, pid = run_session(burst, "--duration", "8", pause=1.0)
    assert rc == 0, err
    rows = rows_of(lines)
    lost_lines = re.findall(r"pybpf: perf buffer events: (\d+) samples? lost on CPU 0 \(its ring was full\)", err)
    lost = sum(map(int, lost_lines))
    assert lost > 0, err
    # every sample the program sent is either printed or counted as lost
    assert len(rows) + lost == burst + 1, (len(rows), lost)
    assert rows[-1] == ("python", pid, burst, 1, 0, os.getpid())     # the kill after the pause made it
    seqs = [r[2] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert f"pybpf: perf buffer events: {lost} samples lost in all (the CPUs' rings were full)" in err


def held_prog_ids(pid: int) -> set[int]:
    """The ids of the BPF programs process ``pid`` holds fds of (its fdinfo's prog_id)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def bpftool(*args: str):
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_ctrl_c_releases_the_perf_events_and_unloads(no_fd_leak):
    target = start_target(3)
    session = start_session(target)
    try:
        assert session.stdout.readline().split() == ["TIME", "EVENT", "COMM", "PID"]
        ids = held_prog_ids(session.pid)
        progs = [p for p in bpftool("prog", "show") if p["id"] in ids]
        assert sorted(p["name"] for p in progs) == ["on_getpid", "on_kill"], progs
        map_ids = set(progs[0]["map_ids"])
        assert any(m["type"] == "perf_event_array" for m in bpftool("map", "show") if m["id"] in map_ids)
        target.stdin.write("go\n")
        target.stdin.flush()
        got = [session.stdout.readline().rstrip("\n") for _ in range(4)]
        assert [r[3] for r in rows_of(got)] == [0, 0, 0, 1]
        session.send_signal(signal.SIGINT)
        _, err = session.communicate(timeout=30)
    finally:
        stop(session, target)
    assert session.returncode == 130 and "Traceback" not in err, err
    assert not {p["id"] for p in progs} & {p["id"] for p in bpftool("prog", "show")}
    # the programs' references to their maps go after an RCU grace period (bpf_prog_put
    # frees the program, and then its maps, from call_rcu): wait for that, bounded
    deadline = time.monotonic() + 10
    while map_ids & {m["id"] for m in bpftool("map", "show")} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not map_ids & {m["id"] for m in bpftool("map", "show")}
