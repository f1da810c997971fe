"""`python -m pybpf load` runs a sampling (perf_event) object: the program is attached to a
cpu-clock sampling event on every online CPU and its ring buffer records are printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, program

pytestmark = pytest.mark.kernel
PYTHON = sys.executable
BUSY = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end:\n    pass\n"


def online_cpus() -> set[int]:
    cpus = set()
    for part in open("/sys/devices/system/cpu/online").read().strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def test_load_samples_a_busy_process_on_every_cpu_and_prints_its_records():
    busy = subprocess.Popen([PYTHON, "-c", BUSY])
    try:
        proc = subprocess.run([PYTHON, "-m", "pybpf", "load", program("profile_rb"), "--sample-freq", "200",
                               "--set", f"target_tgid={busy.pid}", "--count", "20", "--duration", "15"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        busy.kill()
        busy.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    cpus = online_cpus()
    assert (f"attached on_sample (perf_event) to a 200 Hz cpu-clock sampling event on CPUs "
            f"{','.join(map(str, sorted(cpus)))}") in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "COMM", "PID"]
    rows = lines[1:]
    assert len(rows) == 20, proc.stdout            # --count: exactly 20 records, none after
    for row in rows:
        m = re.search(r"\s(\d+)\s+cpu=(\d+) ustack_bytes=(-?\d+) kstack_bytes=(-?\d+)$", row)
        assert m, row
        assert int(m.group(1)) == busy.pid and "python" in row
        assert int(m.group(2)) in cpus
        # a busy loop in user space: its samples carry a user stack of whole 8-byte frames
        assert int(m.group(3)) >= 8 and int(m.group(3)) % 8 == 0


def test_default_frequency_and_ctrl_c_release_the_sampling_events():
    proc = subprocess.Popen([PYTHON, "-m", "pybpf", "load", program("profile_rb")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "to a 99 Hz cpu-clock sampling event" in line, line
        assert proc.stdout.readline().split() == ["TIME", "EVENT", "COMM", "PID"]
        assert "cpu=" in proc.stdout.readline()       # a sample arrives at 99 Hz
        perf_fds = [fd for fd in os.listdir(f"/proc/{proc.pid}/fd")
                    if os.readlink(f"/proc/{proc.pid}/fd/{fd}") == "anon_inode:[perf_event]"]
        assert len(perf_fds) == len(online_cpus())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130 and "Traceback" not in err
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30).stdout
    assert '"name":"on_sample"' not in out
