"""The libbpf-tools-style objects tools/bench_load.py benchmarks, loaded as they are
and run on the real kernel: each one attached, triggered by what this test does,
and its maps read back.

- programs/tools_biolatency: tp_btf block_rq_issue/complete (+ the raw_tp twin):
  O_DIRECT|O_DSYNC writes of our own land in the disk's write histogram;
- programs/tools_runqlat: tp_btf sched_wakeup/_new/sched_switch (+ raw_tp twin):
  a thread of ours that sleeps and wakes is in its process's histogram;
- programs/tools_opensnoop: syscall tracepoints + raw_tp/sys_exit: our openat()
  calls come through the ring buffer with their names, flags and results;
- programs/tools_exitsnoop: tp_btf/sched_process_exit + raw_tp/sys_enter + iter/task:
  a child's exit code, its system calls, and the iterator's listing of a live child.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import subprocess
import threading
import time

import pytest

import pybpf

from conftest import ROOT, bpftool_json, program

pytestmark = pytest.mark.kernel

TOOLS = ("tools_biolatency", "tools_runqlat", "tools_opensnoop", "tools_exitsnoop")
NR_EXIT_GROUP = 231
REQ_OP_WRITE = 1


def collect(rb_map, action, want: int) -> list:
    """Ring buffer records after ``action()``: until ``want`` came or 2 s passed."""
    events = []
    with pybpf.RingBuffer(rb_map, events.append) as rb:
        action()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(events) < want:
            rb.poll(100)
        rb.consume()
    return events


@pytest.mark.parametrize("name", TOOLS)
def test_loads_as_bpftool_loads_it(name, no_fd_leak):
    """Every program of the object is in the kernel, with the type bpftool gives it."""
    pin = f"/sys/fs/bpf/pybpf_test_tools_{os.getpid()}"
    subprocess.run([shutil.which("bpftool") or "/usr/sbin/bpftool", "prog", "loadall", program(name), pin],
                   check=True, capture_output=True)
    try:
        names = sorted(os.listdir(pin))
        types = {n: bpftool_json("prog", "show", "pinned", os.path.join(pin, n))["type"] for n in names}
    finally:
        shutil.rmtree(pin, ignore_errors=True)
    with pybpf.load(program(name)) as obj:
        assert sorted(obj.programs) == names
        for n, prog in obj.programs.items():
            mine = bpftool_json("prog", "show", "id", str(prog.id))
            assert mine["type"] == types[n], n


# -- biolatency ---------------------------------------------------------------------------------

def _disk_of(path: str) -> tuple[int, int] | None:
    """(major, minor) of the whole disk ``path``'s file system is on, or None (no block device)."""
    st = os.stat(path)
    sys_path = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not os.path.exists(sys_path):
        return None
    real = os.path.realpath(sys_path)
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    with open(os.path.join(real, "dev")) as f:
        major, minor = f.read().strip().split(":")
    return int(major), int(minor)


def test_biolatency_histograms_our_direct_writes(no_fd_leak, tmp_path):
    where = next((d for d in (str(tmp_path), str(ROOT), "/var/tmp") if _disk_of(d)), None)
    assert where, "no folder on a block device to write to"
    major, minor = _disk_of(where)
    spec = pybpf.open(program("tools_biolatency"))
    spec.variables["targ_queued"].set(False)              # from issue to completion
    spec.variables["targ_dev"].set(major << 20 | minor)
    n = 16
    with spec.load() as obj:
        for p in ("block_rq_issue", "block_rq_complete", "block_rq_issue_raw"):
            obj.programs[p].attach()
        path = os.path.join(where, f"pybpf-biolatency-{os.getpid()}")
        buf = mmap.mmap(-1, 4096)                           # page-aligned, as O_DIRECT wants
        buf.write(b"x" * 4096)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_DIRECT | os.O_DSYNC, 0o600)
        try:
            for i in range(n):
                os.pwrite(fd, buf, i * 4096)
        finally:
            os.close(fd)
            os.unlink(path)
            buf.close()
        time.sleep(0.05)                                    # completions of the last writes
        hists = {(k.dev, k.op): list(v.slots) for k, v in obj.maps["hists"].items()}
        counters = [sum(obj.maps["counters"].lookup(i)) for i in range(4)]
    writes = hists.get((major << 20 | minor, REQ_OP_WRITE))
    assert writes is not None, f"no write histogram for {major}:{minor}: {hists}"
    assert sum(writes) >= n                                 # each O_DSYNC direct write is a request
    assert {dev for dev, _ in hists} == {major << 20 | minor}   # targ_dev filtered the others out
    issued, completed, _missed, raw_issued = counters
    assert completed >= n and issued >= completed - 1       # (one issued before attach may complete)
    assert raw_issued >= n                                  # the raw_tp twin saw the same issues


# -- runqlat ------------------------------------------------------------------------------------

def test_runqlat_sees_our_thread_wake_up(no_fd_leak):
    spec = pybpf.open(program("tools_runqlat"))
    spec.variables["targ_tgid"].set(os.getpid())
    sleeps = 20
    with spec.load() as obj:
        links = obj.attach()
        assert sorted(l.target for l in links) == ["sched_switch", "sched_wakeup", "sched_wakeup", "sched_wakeup_new"]

        def sleeper():
            for _ in range(sleeps):
                time.sleep(0.002)
        t = threading.Thread(target=sleeper)
        t.start()
        t.join()
        for link in links:
            link.close()
        hist = obj.maps["hists"].lookup(os.getpid())
        wakeups = [obj.maps["wakeups"].lookup(i) for i in (0, 1)]
        assert not any(pid != os.getpid() for pid in obj.maps["hists"].keys())  # only our process
    assert sum(hist.slots) >= sleeps                         # each timer wake-up, then the switch to it
    assert wakeups[0] >= sleeps and wakeups[1] >= sleeps


# -- opensnoop ----------------------------------------------------------------------------------

def test_opensnoop_reports_our_opens(no_fd_leak, tmp_path):
    spec = pybpf.open(program("tools_opensnoop"))
    spec.variables["targ_tgid"].set(os.getpid())
    present = tmp_path / "present-file"
    present.write_text("x")
    missing = str(tmp_path / "missing-file")
    got = {}
    with spec.load() as obj:
        obj.attach()

        def opens():
            got["fd"] = os.open(present, os.O_RDONLY | os.O_CLOEXEC)
            os.close(got["fd"])
            with pytest.raises(FileNotFoundError):
                os.open(missing, os.O_RDONLY)

        events = collect(obj.maps["events"], opens, 2)
        stats = [sum(obj.maps["stats"].lookup(i)) for i in range(4)]
    mine = [e for e in events if e.fname in (str(present), missing)]
    assert [(e.fname, e.ret) for e in mine] == [(str(present), got["fd"]), (missing, -errno.ENOENT)]
    first = mine[0]
    assert first.pid == os.getpid() and first.uid == os.getuid() and first.ppid == os.getppid()
    assert first.flags & (os.O_ACCMODE | os.O_CLOEXEC) == os.O_RDONLY | os.O_CLOEXEC
    entered, sent, dropped, failed_syscalls = stats
    assert sent == len(events) and dropped == 0 and entered >= sent
    assert failed_syscalls >= 1                             # the missing file, at least


# -- exitsnoop ----------------------------------------------------------------------------------

def test_exitsnoop_reports_a_childs_exit_and_its_syscalls(no_fd_leak):
    spec = pybpf.open(program("tools_exitsnoop"))
    spec.variables["targ_ppid"].set(os.getpid())
    procs = []
    with spec.load() as obj:
        obj.programs["sched_process_exit"].attach()
        obj.programs["sys_enter_raw"].attach()

        def spawn():
            t = time.monotonic()
            procs.append((subprocess.run(["/bin/sh", "-c", "exit 3"]), time.monotonic() - t))

        events = collect(obj.maps["events"], spawn, 1)
        syscalls = {nr: sum(v) for nr, v in obj.maps["syscalls"].items()}
        sent = obj.maps["sent"].lookup(0)
    (proc, took), = procs
    assert proc.returncode == 3
    assert [(e.ppid, e.exit_code, e.sig, e.comm) for e in events] == [(os.getpid(), 3 << 8, 0, "sh")]
    assert events[0].pid == events[0].tid and sent == 1
    assert 0 < events[0].age_ns <= took * 1e9
    assert syscalls.get(NR_EXIT_GROUP) == 1                 # the child's last call, counted once
    assert sum(syscalls.values()) > 10                      # exec, mmaps, ... of the child


def test_exitsnoop_iterator_lists_a_live_child(no_fd_leak):
    spec = pybpf.open(program("tools_exitsnoop"))
    spec.variables["targ_ppid"].set(os.getpid())
    child = subprocess.Popen(["sleep", "10"])
    try:
        # Popen returns once exec closed the child's close-on-exec pipe, which the kernel does
        # before it renames the task (fs/exec.c begin_new_exec: do_close_on_exec, then
        # __set_task_comm): wait (bounded) until the task is called sleep, as the iterator sees it
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/comm") as f:
                if f.read().strip() == "sleep":
                    break
            time.sleep(0.001)
        with spec.load() as obj:
            it = obj.programs["list_children"].iterate()
            try:
                lines = list(it.lines())
            finally:
                it.close()
    finally:
        child.kill()
        child.wait()
    assert f"{child.pid} sleep" in lines
    assert all(int(line.split()[0]) != os.getpid() for line in lines)   # children only
