"""``python -m pybpf load OBJECT --cgroup PATH`` for objects in libbpf-tools' ``-c`` style:
the object's ``filter_cg`` global is set to true before load and PATH's fd goes to key 0 of
its ``cgroup_map`` (a BPF_MAP_TYPE_CGROUP_ARRAY) after load, so its programs count only
tasks inside that cgroup.

programs/cg_filter.bpf.c counts getpid() calls per process and sends one ring buffer
record per counted call (pid, running count, comm), which the CLI prints as it streams:
the test reads them.  Two children call getpid() N times each, one inside the test cgroup
and one outside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import threading
import time

import pytest

from conftest import ROOT, program
from test_attach_cgroup import cgroup, in_cgroup  # noqa: F401 - fixture
from test_cli_attach import PYTHON, CliSession

pytestmark = pytest.mark.kernel

OBJ = program("cg_filter")
CALLS = 25
# a record as the CLI prints it: TIME EVENT COMM PID count=N
RECORD = re.compile(r"\s(\d+)\s+count=(\d+)\s*$")

GETPID_BODY = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for _ in range({CALLS}):
    libc.syscall(39)            # SYS_getpid on x86-64, no libc caching in the way
out["pid"] = os.getpid()
"""

OUTSIDE_PRELUDE = "import json, os\nout = {}\n"


def outside_child() -> int:
    """A child outside the test cgroup (in this test's own cgroup) calling getpid() CALLS times."""
    proc = subprocess.run([PYTHON, "-c", OUTSIDE_PRELUDE + GETPID_BODY + "print(json.dumps(out))"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["pid"]


class Records:
    """The CLI's stdout read line by line in a thread: counts[pid] = the highest count seen."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: queue.Queue = queue.Queue()
        self.counts: dict[int, int] = {}
        self.header = False
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _take(self, line: str) -> None:
        if line.startswith("TIME"):
            self.header = True
        m = RECORD.search(line)
        if m:
            pid, n = int(m.group(1)), int(m.group(2))
            self.counts[pid] = max(self.counts.get(pid, 0), n)

    def wait(self, predicate, timeout: float = 20) -> None:
        """Read records until ``predicate()`` holds (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; counts so far: {self.counts}")
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the CLI's stdout ended; counts: {self.counts}")
            self._take(line)


@contextlib.contextmanager
def session(args: list):
    """A CLI session on cg_filter.o and its records; killed if still running at the end, and
    its pipes closed (the process is gone by then, so the readers are at end of file)."""
    s = CliSession(["load", OBJ, *args])
    try:
        with s:
            yield s, Records(s.proc)
    finally:
        s.proc.stderr.close()


def test_cgroup_counts_only_the_child_inside_it(cgroup, no_fd_leak):
    with session(["--cgroup", cgroup]) as (s, rec):
        rec.wait(lambda: rec.header)
        line = s.wait_err(lambda line: "cgroup filter" in line)
        assert f"filter_cg=true, cgroup_map[0]={cgroup}" in line, line
        assert "has no cgroup program" not in s.err            # --cgroup was used: as the filter
        outside = outside_child()
        inside = in_cgroup(cgroup, GETPID_BODY)["pid"]
        # records arrive in the order the calls were made: once the inside child's last call is
        # seen, a record of the outside child (which ran first) would have been read already
        rec.wait(lambda: rec.counts.get(inside, 0) >= CALLS)
        assert rec.counts[inside] >= CALLS
        assert outside not in rec.counts, rec.counts
        # nothing but tasks of the test cgroup was counted (the children are its only tasks)
        assert set(rec.counts) == {inside}, rec.counts
        assert s.interrupt() == 130, s.err
        assert "Traceback" not in s.err


def test_without_cgroup_both_children_are_counted(cgroup, no_fd_leak):
    with session([]) as (s, rec):
        rec.wait(lambda: rec.header)
        outside = outside_child()
        inside = in_cgroup(cgroup, GETPID_BODY)["pid"]
        rec.wait(lambda: rec.counts.get(inside, 0) >= CALLS and rec.counts.get(outside, 0) >= CALLS)
        assert s.interrupt() == 130, s.err
        assert "cgroup filter" not in s.err


def test_set_filter_cg_false_keeps_the_filter_off(cgroup, no_fd_leak):
    """An explicit --set filter_cg=0 wins: the map is still filled, nothing is filtered."""
    with session(["--cgroup", cgroup, "--set", "filter_cg=0"]) as (s, rec):
        rec.wait(lambda: rec.header)
        line = s.wait_err(lambda line: "cgroup filter" in line)
        assert "filter_cg as --set gives it" in line, line
        outside = outside_child()
        inside = in_cgroup(cgroup, GETPID_BODY)["pid"]
        rec.wait(lambda: rec.counts.get(inside, 0) >= CALLS and rec.counts.get(outside, 0) >= CALLS)
        assert s.interrupt() == 130, s.err


def test_a_sub_cgroup_is_inside_the_filter(cgroup, no_fd_leak):
    """bpf_current_task_under_cgroup() is true for descendants too, as for libbpf-tools' -c."""
    sub = os.path.join(cgroup, "sub")
    os.mkdir(sub)               # the cgroup fixture removes it with its parent
    with session(["--cgroup", cgroup]) as (s, rec):
        rec.wait(lambda: rec.header)
        inside = in_cgroup(sub, GETPID_BODY)["pid"]
        rec.wait(lambda: rec.counts.get(inside, 0) >= CALLS)
        assert s.interrupt() == 130, s.err


def test_a_directory_that_is_no_cgroup_is_one_clear_error(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", OBJ, "--cgroup", str(tmp_path), "--duration", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"--cgroup {tmp_path}" in proc.stderr and "cgroup_map[0]" in proc.stderr, proc.stderr
    assert "give a cgroup v2 directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_objects_without_the_convention_are_left_alone(cgroup):
    """An object with neither filter_cg nor cgroup_map: --cgroup only attaches (here: nothing)."""
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", program("tracepoint_test"), "--cgroup", cgroup,
                           "--duration", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cgroup filter" not in proc.stderr
    assert f"--cgroup {cgroup}:" in proc.stderr and "has no cgroup program to attach there" in proc.stderr
