"""examples/: each run as a user runs it (a subprocess, with a timeout), and its
real output checked."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.kernel
EXAMPLES = ROOT / "examples"


def _comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


def test_user_ringbuf_example_answers_our_kills(no_fd_leak):
    """The tutorial's user side: each kill(2) we make drains the sample it wrote,
    and the kernel's answer (our pid and comm) is printed as a row."""
    # unbuffered: a buffered reader would take several lines in one read and select() would
    # then see nothing more to read while the header waits in the buffer
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "user_ringbuf.py"), "--count", "3",
                             "--pid", str(os.getpid()), "--duration", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, cwd="/")
    lines = []
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 25
        ready = False
        while time.monotonic() < deadline:
            if sel.select(0.05):
                line = proc.stdout.readline().decode()     # raw: reads up to the newline only
                if not line:
                    break
                lines.append(line.rstrip("\n"))
                ready = ready or line.startswith("TIME")
            elif ready:
                os.kill(os.getpid(), 0)   # sys_exit_kill: drains the sample the example wrote
        sel.close()
        out, err = proc.communicate(timeout=10)
        out, err = out.decode(), err.decode()
        lines += out.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert lines[:2] == ["Draining current samples...", "TIME     EVENT COMM             PID    "]
    rows = [l for l in lines if re.match(r"\d\d:\d\d:\d\d SIGN ", l)]
    assert len(rows) == 3, lines
    for row in rows:
        assert row.split() [2:] == [_comm(), str(os.getpid())], row
    # a new sample after each answer: Draining... between the rows
    assert lines.count("Draining current samples...") >= 4
    m = re.fullmatch(r"3 rows, (\d+) samples written, (\d+) answered by the kernel", lines[-1])
    assert m and int(m[1]) >= 4 and int(m[2]) >= 3, lines[-1]


def test_user_ringbuf_example_stops_after_its_duration():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "user_ringbuf.py"), "--duration", "0.5",
                           "--pid", "1"], capture_output=True, text=True, timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("0 rows, ")


def test_ring_commands_example_applies_the_commands_and_measures_the_rate(no_fd_leak):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "ring_commands.py"), "--commands", "20000",
                           "--keys", "500", "--batch", "1024"], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # the demo: one command of each kind, the table read back from the kernel map
    assert "the kernel applied 6 commands; table:" in out
    table = re.findall(r"^  (\w+) +(\d+)$", out, re.M)
    assert table == [("apples", "7"), ("pears", "10"), ("plums", "1")]
    assert "table matches the commands\n" in out
    # the rate: both ways measured, every command applied, table = the Python model
    rates = re.findall(r"^(\d+) commands in [\d.]+ s: ([\d,]+) commands/s \((write_batch of 1024 \w+)", out, re.M)
    assert [r[2] for r in rates] == ["write_batch of 1024 dicts", "write_batch of 1024 commands"]
    assert sum(int(r[0]) for r in rates) == 20000
    assert all(int(r[1].replace(",", "")) > 0 for r in rates)
    assert re.search(r"^table matches the commands: \d+ keys, 20000 commands applied$", out, re.M)
    assert re.search(r"malformed samples: 0$", out, re.M)
    print(out)


def test_opensnoop_numpy_counts_our_own_opens(no_fd_leak):
    """examples/opensnoop_numpy.py: the opens it makes, traced and read back with
    read_array(), agree with what it made; no event dropped; counters read with values_array()."""
    out = subprocess.run([sys.executable, str(EXAMPLES / "opensnoop_numpy.py"), "--opens", "2000"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"\d+ events \(304 bytes each, fields: ts, pid, ppid, uid, ret, flags, comm, fname\)",
                        lines[0]), lines
    m = re.fullmatch(r"openat\(\) in (\S+): (\d+) opened, (\d+) ENOENT \(made: (\d+) opened, (\d+) failed\)",
                     lines[1])
    assert m, lines
    folder, seen_ok, seen_enoent, made_ok, made_failed = m[1], *map(int, m.groups()[1:])
    assert (seen_ok, seen_enoent) == (made_ok, made_failed) and made_ok + made_failed == 2001
    counters = dict(kv.split(" ") for kv in lines[2].removeprefix("counters: ").split(", "))
    assert int(counters["dropped"]) == 0 and int(counters["sent"]) == int(lines[0].split()[0])
    assert int(counters["failed"]) >= made_failed
    assert lines[3].split() == [str(made_ok), f"{folder}/present"]   # the C string, cut at its NUL
