"""BPF cookies (bpf_get_attach_cookie(), programs/trace_kinds.bpf.c): one program attached
twice with different cookies tells its attachments apart: uprobes on two functions,
tracepoints on two syscalls, a raw tracepoint twice; uprobe.multi with one cookie for
all; kinds without cookies are a NotSupportedError.  Each count is what the probed code
did (calls of a gcc-built program, this process's syscalls)."""

from __future__ import annotations

import os

import pytest

import pybpf

from conftest import program
from test_attach_uprobe_multi import multi, run   # noqa: F401  (the probed program, a fixture)


def load():
    spec = pybpf.open(program("trace_kinds"))
    spec.variables["cookie_tgid"].set(os.getpid())
    return spec.load()


@pytest.mark.kernel
def test_uprobe_cookies_tell_two_functions_apart(multi, no_fd_leak):
    with load() as obj:
        prog = obj.programs["uprobe_cookie"]
        prog.attach_uprobe(f"{multi}:func_a", cookie=2)
        prog.attach_uprobe(f"{multi}:func_c", cookie=11)
        run(multi)
        counts = obj.variables["uprobe_counts"].get()
        assert counts[2] == 3 and counts[11] == 7 and sum(counts) == 10


@pytest.mark.kernel
def test_tracepoint_cookies_tell_two_tracepoints_apart(no_fd_leak):
    with load() as obj:
        prog = obj.programs["tp_cookie"]
        prog.attach(cookie=3)                                          # its section: sys_enter_getppid
        prog.attach("syscalls/sys_enter_getpid", cookie=5)
        for _ in range(4):
            os.getppid()
        for _ in range(6):
            os.getpid()
        counts = obj.variables["tp_counts"].get()
        assert counts[3] == 4 and counts[5] == 6 and sum(counts) == 10


@pytest.mark.kernel
def test_raw_tracepoint_cookies(no_fd_leak, not_supported_skip):
    with load() as obj:
        prog = obj.programs["raw_tp_cookie"]
        with not_supported_skip:                                       # raw_tracepoint.cookie: 6.10
            first = prog.attach(cookie=7)
            prog.attach(cookie=8)
        for _ in range(4):
            os.getppid()
        first.close()
        os.getppid()
        counts = obj.variables["raw_tp_counts"].get()
        assert counts[7] == 4 and counts[8] == 5 and sum(counts) == 9


@pytest.mark.kernel
def test_without_a_cookie_the_program_reads_zero(no_fd_leak):
    with load() as obj:
        obj.programs["tp_cookie"].attach()
        os.getppid()
        assert obj.variables["tp_counts"].get()[0] == 1


@pytest.mark.kernel
def test_uprobe_multi_section_style_attach_with_one_cookie(multi, no_fd_leak):
    with load() as obj:
        link = obj.programs["count_by_cookie"].attach(f"{multi}:func_*", cookie=6)
        assert link.cookies == [6, 6, 6]
        run(multi)
        assert obj.variables["entry_counts"].get()[6] == 15


@pytest.mark.kernel
def test_kinds_without_cookies_refuse_them(no_fd_leak):
    with load() as obj:
        with pytest.raises(pybpf.NotSupportedError, match="take no BPF cookie"):
            obj.programs["count_samples"].attach(cookie=1)
        with pytest.raises(pybpf.Error, match="BPF cookie -1"):
            obj.programs["tp_cookie"].attach(cookie=-1)
        assert all(link.closed for link in obj.links)
