"""Attaching programs (layer 4): tracepoint, raw tracepoint, kprobe (not supported
here), detaching through Link.close() and Object.close(), and test runs of
networking programs.

tracepoint_test counts getpid() calls (on_getpid) and syscall entries
(on_sys_enter) of the process whose tgid is in .rodata target_tgid.
"""

from __future__ import annotations

import mmap
import os

import pytest

import pybpf

from conftest import program

pytestmark = pytest.mark.kernel

N = 137
XDP_PASS = 2
ETH_HLEN = 14


def load_counting_this_process():
    spec = pybpf.open(program("tracepoint_test"))
    spec.variables["target_tgid"].set(os.getpid())
    return spec.load()


def getpid_n(n: int) -> None:
    for _ in range(n):
        os.getpid()           # a real getpid(2) each time (glibc does not cache it)


# -- tracepoint -------------------------------------------------------------------------------

def test_tracepoint_counts_getpid_exactly(no_fd_leak):
    with load_counting_this_process() as obj:
        calls = obj.variables["getpid_calls"]
        getpid_n(10)
        assert calls.get() == 0                       # not attached yet
        link = obj.programs["on_getpid"].attach()
        assert isinstance(link, pybpf.Link) and not link.closed
        assert (link.kind, link.target) == ("tracepoint", "syscalls/sys_enter_getpid")
        getpid_n(N)
        assert calls.get() == N
        getpid_n(N)
        assert calls.get() == 2 * N
        assert obj.links == [link]
        link.close()
        assert link.closed
        assert obj.links == []                        # only live links are listed
        getpid_n(N)
        assert calls.get() == 2 * N                   # detached: no more counting
        link.close()                                  # idempotent


def test_tracepoint_filters_on_rodata_tgid(no_fd_leak):
    spec = pybpf.open(program("tracepoint_test"))
    spec.variables["target_tgid"].set(os.getpid() + 1_000_000)   # no such process
    with spec.load() as obj:
        with obj.programs["on_getpid"].attach():
            getpid_n(N)
            assert obj.variables["getpid_calls"].get() == 0


def test_tracepoint_count_reset_from_user_space(no_fd_leak):
    with load_counting_this_process() as obj:
        calls = obj.variables["getpid_calls"]
        with obj.programs["on_getpid"].attach():
            getpid_n(5)
            calls.set(1000)
            getpid_n(N)
            assert calls.get() == 1000 + N


def test_raw_tracepoint_counts_syscalls(no_fd_leak):
    with load_counting_this_process() as obj:
        enters = obj.variables["sys_enter_calls"]
        link = obj.programs["on_sys_enter"].attach()
        assert (link.kind, link.target) == ("raw_tracepoint", "sys_enter")
        before = enters.get()
        getpid_n(N)
        after = enters.get()
        # every getpid enters a syscall; the interpreter may make a few others meanwhile
        assert N <= after - before <= N + 20
        link.close()
        stopped = enters.get()
        getpid_n(N)
        assert enters.get() == stopped


def test_link_as_context_manager(no_fd_leak):
    with load_counting_this_process() as obj:
        with obj.programs["on_getpid"].attach() as link:
            getpid_n(3)
        assert link.closed
        getpid_n(3)
        assert obj.variables["getpid_calls"].get() == 3


def test_attach_with_explicit_target(no_fd_leak):
    with load_counting_this_process() as obj:
        with obj.programs["on_getpid"].attach("syscalls/sys_enter_getppid"):
            getpid_n(N)
            for _ in range(4):
                os.getppid()
            assert obj.variables["getpid_calls"].get() == 4


def test_attach_to_missing_tracepoint(no_fd_leak):
    with load_counting_this_process() as obj:
        with pytest.raises(pybpf.Error, match="no_such_tracepoint"):
            obj.programs["on_getpid"].attach("syscalls/no_such_tracepoint")
        with pytest.raises(pybpf.Error, match="category/name"):
            obj.programs["on_getpid"].attach("nocategory")
        assert obj.links == []


# -- Object.attach / close ------------------------------------------------------------------------

def test_object_attach_returns_links_and_close_detaches(no_fd_leak):
    obj = load_counting_this_process()
    try:
        links = obj.attach()
        # tracepoint and raw_tp attach by their section; xdp and socket need a target
        assert sorted((l.program.name, l.kind) for l in links) == [
            ("on_getpid", "tracepoint"), ("on_sys_enter", "raw_tracepoint")]
        assert sorted(l.program.name for l in obj.links) == ["on_getpid", "on_sys_enter"]
        getpid_n(N)
        assert obj.variables["getpid_calls"].get() == N
        assert obj.variables["sys_enter_calls"].get() >= N
        # keep our own reference to the .bss map to watch it after the object is gone
        bss_fd = os.dup(obj.maps["tracepoi.bss"].fd)
        offset = obj.variables["getpid_calls"].offset
    finally:
        obj.close()
    try:
        assert all(l.closed for l in links)
        with mmap.mmap(bss_fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            count = int.from_bytes(mm[offset:offset + 8], "little")
            assert count == N
            getpid_n(N)
            assert int.from_bytes(mm[offset:offset + 8], "little") == count    # detached
    finally:
        os.close(bss_fd)


def test_object_attach_is_all_or_nothing(no_fd_leak):
    spec = pybpf.open(program("tracepoint_test"))
    spec.variables["target_tgid"].set(os.getpid())
    spec.programs["on_sys_enter"].attach_target = "no_such_raw_tracepoint"
    with spec.load() as obj:
        with pytest.raises(pybpf.SyscallError) as exc:
            obj.attach()
        assert "no_such_raw_tracepoint" in str(exc.value) and "on_sys_enter" in str(exc.value)
        assert obj.links == []
        getpid_n(N)
        assert obj.variables["getpid_calls"].get() == 0      # on_getpid was detached again


def test_closing_program_keeps_link_attached(no_fd_leak):
    with load_counting_this_process() as obj:
        prog = obj.programs["on_getpid"]
        link = prog.attach()
        prog.close()                    # the link holds the program in the kernel
        getpid_n(N)
        assert obj.variables["getpid_calls"].get() == N
        link.close()


def test_attach_program_without_target_section(no_fd_leak):
    with load_counting_this_process() as obj:
        with pytest.raises(pybpf.Error, match="cannot be attached automatically"):
            obj.programs["xdp_pass"].attach()
        with pytest.raises(pybpf.Error, match="cannot be attached automatically"):
            obj.programs["sock_all"].attach()


def test_attach_after_object_closed(no_fd_leak):
    obj = load_counting_this_process()
    prog = obj.programs["on_sys_enter"]
    obj.close()
    with pytest.raises(pybpf.ClosedError):
        prog.attach()
    with pytest.raises(pybpf.ClosedError):
        obj.attach()


# -- kprobe: not on this kernel ---------------------------------------------------------------------

def test_kprobe_attach_not_supported(no_fd_leak):
    with pybpf.load(program("kprobe_test")) as obj:
        prog = obj.programs["on_nanosleep"]
        assert prog.type.name == "KPROBE"
        with pytest.raises(pybpf.NotSupportedError) as exc:
            prog.attach()
        assert "kprobes are not supported" in str(exc.value)
        with pytest.raises(pybpf.NotSupportedError):
            obj.attach()
        assert obj.links == []


# -- test runs of networking programs -----------------------------------------------------------------

@pytest.mark.parametrize("first", [0, 0x41, 0xFF])
def test_xdp_test_run_increments_first_byte(first, no_fd_leak):
    packet = bytes([first]) + bytes(range(1, 64))
    with pybpf.load(program("tracepoint_test")) as obj:
        r = obj.programs["xdp_pass"].test_run(data=packet)
        assert r.retval == XDP_PASS
        assert r.data == bytes([(first + 1) & 0xFF]) + packet[1:]


def test_xdp_test_run_repeat(no_fd_leak):
    with pybpf.load(program("tracepoint_test")) as obj:
        r = obj.programs["xdp_pass"].test_run(data=b"\x10" + bytes(63), repeat=100)
        # the kernel copies data_in once and runs the program on it `repeat` times
        assert r.retval == XDP_PASS and r.data[0] == 0x10 + 100


@pytest.mark.parametrize("size", [64, 100, 1500])
def test_socket_filter_returns_skb_len(size, no_fd_leak):
    with pybpf.load(program("tracepoint_test")) as obj:
        r = obj.programs["sock_all"].test_run(data=bytes(size))
        # test runs of skb programs pull the Ethernet header: skb->len excludes it
        assert r.retval == size - ETH_HLEN
