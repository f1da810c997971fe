"""Perf-event attachments (programs/trace_kinds.bpf.c): sampling profiles with
attach_sampling (one perf event per CPU, one Link), attach_perf_event on a perf event
fd the test opened, and a bcc-profile-style sampler whose user stacks name the busy
function of a small C program built here.

Counts are checked against the sampling rate times the time the busy loops ran;
"stops after close" against a second reading a while later.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

import pybpf
from pybpf.kernel import perf
from pybpf.ringbuf.perf import online_cpus

from conftest import program

BUSY_SECONDS = 0.5
FREQ = 1000

BUSY_C = r"""
#include <stdlib.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* the function the profile must find in the user stacks */
__attribute__((noinline)) unsigned long busy_spin(double seconds)
{
	double end = now() + seconds;
	unsigned long n = 0;

	while (now() < end)
		for (int i = 0; i < 10000; i++) {
			n++;
			__asm__ volatile("" : "+r"(n) : : "memory");
		}
	return n;
}

int main(int argc, char **argv)
{
	return busy_spin(atof(argv[1])) == 0;
}
"""


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """A non-PIE busy program with frame pointers and symbols (user stacks unwind through it)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the sampled program")
    d = tmp_path_factory.mktemp("perf")
    (d / "busy.c").write_text(BUSY_C)
    exe = d / "busy"
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-no-pie", "-o", str(exe), str(d / "busy.c")],
                   check=True, timeout=60)
    return str(exe)


def spin_on(cpus, seconds=BUSY_SECONDS):
    """One busy Python child pinned to each CPU of ``cpus``, for ``seconds``; waits for them."""
    code = ("import os, sys, time\n"
            "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
            "end = time.monotonic() + float(sys.argv[2])\n"
            "while time.monotonic() < end: pass\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cpu), str(seconds)]) for cpu in cpus]
    for p in procs:
        assert p.wait(timeout=seconds + 30) == 0


def per_cpu_samples(obj):
    return obj.maps["samples"][0]


def load():
    return pybpf.open(program("trace_kinds")).load()


@pytest.mark.kernel
def test_sampling_counts_per_cpu_and_stops_after_close(no_fd_leak):
    cpus = online_cpus()
    with load() as obj:
        prog = obj.programs["count_samples"]
        t0 = time.monotonic()
        link = prog.attach_sampling(frequency=FREQ)
        spin_on(cpus)
        link.close()
        elapsed = time.monotonic() - t0
        counts = per_cpu_samples(obj)
        for cpu in cpus:
            # a busy CPU takes FREQ samples a second; the clock keeps its rate (factor 2 either way)
            assert FREQ * BUSY_SECONDS / 2 <= counts[cpu] <= FREQ * elapsed * 2, (cpu, counts, elapsed)
        time.sleep(0.2)
        spin_on(cpus, 0.1)
        assert per_cpu_samples(obj) == counts            # closed: no more samples anywhere


@pytest.mark.kernel
def test_sampling_is_one_link_owning_every_cpu(no_fd_leak):
    cpus = online_cpus()
    with load() as obj:
        link = obj.programs["count_samples"].attach_sampling(frequency=99)
        assert link.cpus == cpus
        assert len(link.perf_fds) == len(link.link_fds) == len(cpus)
        info = link.info()
        assert info.type == pybpf.kernel.constants.LinkType.PERF_EVENT
        assert info.prog_id == obj.programs["count_samples"].info().id
        for fd in link.perf_fds:
            assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[perf_event]"
        link.close()
        assert link.closed
        link.close()                                       # idempotent


@pytest.mark.kernel
@pytest.mark.skipif(len(online_cpus()) < 2, reason="needs two CPUs")
def test_sampling_only_the_given_cpus(no_fd_leak):
    with load() as obj:
        with obj.programs["count_samples"].attach_sampling(frequency=FREQ, cpus=[1]) as link:
            assert link.cpus == [1]
            spin_on([0, 1])
        counts = per_cpu_samples(obj)
        assert counts[0] == 0
        assert counts[1] >= FREQ * BUSY_SECONDS / 2


@pytest.mark.kernel
def test_sampling_by_period_and_task_clock(no_fd_leak):
    with load() as obj:
        prog = obj.programs["count_samples"]
        with prog.attach_sampling(period=1_000_000, cpus=[0]):       # one sample per ms of cpu-clock
            spin_on([0])
        by_period = per_cpu_samples(obj)[0]
        assert 1000 * BUSY_SECONDS / 2 <= by_period <= 1000 * BUSY_SECONDS * 4
        with prog.attach_sampling(frequency=FREQ, cpus=[0], event="task-clock"):
            spin_on([0])
        assert per_cpu_samples(obj)[0] - by_period >= FREQ * BUSY_SECONDS / 2


@pytest.mark.kernel
def test_hardware_events_need_a_pmu(no_fd_leak, not_supported_skip):
    has_pmu = os.path.exists("/sys/bus/event_source/devices/cpu")
    with load() as obj:
        prog = obj.programs["count_samples"]
        for event in ("cycles", "instructions"):
            if has_pmu:
                with prog.attach_sampling(frequency=99, event=event):
                    spin_on([0], 0.2)
            else:
                with pytest.raises(pybpf.NotSupportedError, match="hardware PMU"):
                    prog.attach_sampling(frequency=99, event=event)
        if has_pmu:
            assert per_cpu_samples(obj)[0] > 0


@pytest.mark.kernel
def test_sampling_errors(no_fd_leak):
    with load() as obj:
        prog = obj.programs["count_samples"]
        with pytest.raises(pybpf.Error, match="sampling event 'bogus'"):
            prog.attach_sampling(event="bogus")
        with pytest.raises(pybpf.Error, match="perf_event_max_sample_rate"):
            prog.attach_sampling(frequency=10_000_000)
        with pytest.raises(pybpf.Error, match="not online"):
            prog.attach_sampling(cpus=[4096])
        with pytest.raises(pybpf.Error, match="frequency"):
            prog.attach_sampling(frequency=0)
        with pytest.raises(pybpf.Error, match="sampling runs PERF_EVENT programs"):
            obj.programs["tp_cookie"].attach_sampling()
        assert obj.links == [] or all(link.closed for link in obj.links)


def cpu_clock_event(cpu=0, freq=FREQ) -> int:
    attr = perf.PerfEventAttr(type=perf.PERF_TYPE_SOFTWARE, config=perf.PERF_COUNT_SW_CPU_CLOCK, sample_freq=freq)
    attr.freq = 1
    return perf.perf_event_open(attr, pid=-1, cpu=cpu)


@pytest.mark.kernel
def test_attach_perf_event_to_the_callers_fd(no_fd_leak):
    pfd = cpu_clock_event(0)
    try:
        with load() as obj:
            prog = obj.programs["count_samples"]
            link = prog.attach_perf_event(pfd)
            assert link.perf_fds != [pfd]                  # a dup: the caller's fd is its own
            assert link.info().type == pybpf.kernel.constants.LinkType.PERF_EVENT
            spin_on([0])
            link.close()
            first = per_cpu_samples(obj)[0]
            assert first >= FREQ * BUSY_SECONDS / 2
            spin_on([0], 0.2)
            assert per_cpu_samples(obj)[0] == first         # detached
            os.fstat(pfd)                                   # the caller's fd is still open...
            with prog.attach_perf_event(pfd, cookie=9):     # ...and still an event to attach to
                spin_on([0], 0.2)
            assert per_cpu_samples(obj)[0] > first
    finally:
        os.close(pfd)


@pytest.mark.kernel
def test_attach_perf_event_refusals(no_fd_leak):
    pfd = cpu_clock_event(0)
    try:
        with load() as obj:
            with pytest.raises(pybpf.Error, match="does not match the event"):
                obj.programs["tp_cookie"].attach_perf_event(pfd)   # a TRACEPOINT program on a cpu-clock event
            with pytest.raises(pybpf.Error, match="perf event fd"):
                obj.programs["count_samples"].attach_perf_event(-1)
    finally:
        os.close(pfd)


def elf_functions(path):
    """(start, end, name) of the FUNC symbols of ``path`` (a non-PIE: addresses are the runtime ones)."""
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return [(s["st_value"], s["st_value"] + s["st_size"], s.name) for s in symtab.iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_value"]]


@pytest.mark.kernel
def test_profile_stacks_name_the_busy_function(busy, no_fd_leak):
    funcs = elf_functions(busy)
    with load() as obj:
        with obj.programs["profile"].attach_sampling(frequency=FREQ):
            child = subprocess.Popen([busy, "0.6"])
            try:
                assert child.wait(timeout=30) == 0
            finally:
                child.kill() if child.poll() is None else None
        assert obj.variables["profile_samples"].get() > 0
        names = {}
        for key, count in obj.maps["stack_counts"].items():
            if key.tgid != child.pid or key.user_stack_id < 0:
                continue
            raw = obj.maps["stacks"][key.user_stack_id]
            ips = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
            for ip in filter(None, ips):
                for lo, hi, name in funcs:
                    if lo <= ip < hi:
                        names[name] = names.get(name, 0) + count
        # the child spent its 0.6 s in busy_spin, called from main: both on its stacks
        assert names.get("busy_spin", 0) >= FREQ * 0.6 / 4, names
        assert "main" in names, names


# -- ksyscall and kprobe.multi: kprobes (this test kernel has none: CONFIG_KPROBES unset) ------------

HAS_KPROBES = os.path.exists("/sys/bus/event_source/devices/kprobe")


class _Facts:
    """Kernel facts as a kernel without syscall wrappers would give them."""
    kconfig = {"CONFIG_ARCH_HAS_SYSCALL_WRAPPER": "n"}


def kallsyms_text() -> set:
    with open("/proc/kallsyms") as f:
        return {parts[2] for parts in map(str.split, f) if len(parts) >= 3 and parts[1] in "tT"}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 syscall wrapper names")
def test_ksyscall_symbol_is_the_x64_wrapper():
    from pybpf.links import syscall_symbol
    assert syscall_symbol("getpid") == "__x64_sys_getpid"
    assert syscall_symbol("openat") == "__x64_sys_openat"
    text = kallsyms_text()
    assert {"__x64_sys_getpid", "__x64_sys_openat"} <= text          # the functions the probes would go on
    assert syscall_symbol("getpid", _Facts()) == "__se_sys_getpid"    # libbpf's name without wrappers
    with pytest.raises(pybpf.Error, match="not a system call name"):
        syscall_symbol("get/pid")


def load_with(*names):
    spec = pybpf.open(program("trace_kinds"))
    for name in names:
        spec.programs[name].autoload = True
    return spec.load()


@pytest.mark.kernel
def test_ksyscall_needs_kprobes(no_fd_leak):
    with load_with("on_getpid_sys", "on_getpid_sys_ret") as obj:
        for name, kind in (("on_getpid_sys", "ksyscall"), ("on_getpid_sys_ret", "kretsyscall")):
            prog = obj.programs[name]
            if not HAS_KPROBES:
                with pytest.raises(pybpf.NotSupportedError, match=f"{kind}/getpid is a kprobe on "
                                                                  f"__x64_sys_getpid.*kprobes"):
                    prog.attach()
            else:
                link = prog.attach()
                assert (link.kind, link.target) == (kind, "getpid")
        if HAS_KPROBES:
            for _ in range(10):
                os.getpid()
            assert obj.variables["ksyscall_calls"].get() >= 20
        assert all(link.closed for link in obj.links)


@pytest.mark.kernel
def test_kprobe_multi_needs_kprobes(no_fd_leak):
    from pybpf.links.kprobe_multi import kprobe_multi_symbols
    assert "do_nanosleep" in kprobe_multi_symbols("do_nanosleep*")
    with load_with("nanosleep_multi") as obj:
        prog = obj.programs["nanosleep_multi"]
        if not HAS_KPROBES:
            with pytest.raises(pybpf.NotSupportedError, match="kprobe.multi.*kprobes"):
                prog.attach()
            with pytest.raises(pybpf.NotSupportedError, match="kprobes"):
                prog.attach_kprobe_multi("do_nanosleep", retprobe=True, cookies=[1])
        else:
            with prog.attach_kprobe_multi("do_nanosleep", cookies={"do_nanosleep": 1}):
                time.sleep(0.01)
            assert obj.variables["kprobe_multi_calls"].get() >= 1
        with pytest.raises(pybpf.Error, match="no traceable kernel function"):
            prog.attach_kprobe_multi("no_such_function_pybpf*")
        assert all(link.closed for link in obj.links)
