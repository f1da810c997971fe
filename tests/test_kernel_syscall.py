"""pybpf.kernel against the real kernel: bpf() and its helpers, perf_event_open,
tracefs.  The unit tests at the bottom fake the system call."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import uuid

import pytest

import pybpf
from pybpf.kernel import perf, syscall, tracefs
from pybpf.kernel.attrs import (
    InfoByFdAttr, LinkCreateAttr, LinkInfo, MapCreateAttr, MapInfo, ProgInfo, ProgLoadAttr,
    TestRunAttr,
)
from pybpf.kernel.constants import (
    BPF_ANY, BPF_EXIST, BPF_NOEXIST, AttachType, Cmd, LinkType, MapType, ProgType,
)
from pybpf.kernel.syscall import bpf


def create_map(map_type=MapType.HASH, key_size=4, value_size=8, max_entries=16, name=b"pybpf_test",
               flags=0) -> int:
    attr = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                         max_entries=max_entries, map_flags=flags, map_name=name)
    return bpf(Cmd.MAP_CREATE, attr)


def key(n: int) -> bytearray:
    return bytearray(struct.pack("<I", n))


# mov64 r0, 0; exit  (struct bpf_insn: u8 code, u8 regs, s16 off, s32 imm)
RETURN_0 = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def load_program(prog_type: ProgType, name: bytes = b"pybpf_ret0", insns: bytes = RETURN_0) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                        license=ctypes.addressof(license_), prog_name=name)
    return bpf(Cmd.PROG_LOAD, attr)


# --- maps ---------------------------------------------------------------------


@pytest.mark.kernel
def test_hash_map_roundtrip(no_fd_leak):
    fd = create_map()
    try:
        value = bytearray(8)
        assert not syscall.map_lookup_elem(fd, key(1), value)
        syscall.map_update_elem(fd, key(1), struct.pack("<Q", 111))      # bytes value: copied
        syscall.map_update_elem(fd, bytes(key(2)), bytearray(struct.pack("<Q", 222)))
        assert syscall.map_lookup_elem(fd, key(1), value)
        assert struct.unpack("<Q", value)[0] == 111
        # ctypes objects are buffers too
        ckey, cvalue = ctypes.c_uint32(2), ctypes.c_uint64()
        assert syscall.map_lookup_elem(fd, ckey, cvalue)
        assert cvalue.value == 222

        with pytest.raises(pybpf.SyscallError) as exc:
            syscall.map_update_elem(fd, key(1), bytearray(8), BPF_NOEXIST)
        assert (exc.value.command, exc.value.errno) == ("BPF_MAP_UPDATE_ELEM", errno.EEXIST)
        with pytest.raises(pybpf.SyscallError) as exc:
            syscall.map_update_elem(fd, key(3), bytearray(8), BPF_EXIST)
        assert exc.value.errno == errno.ENOENT
        syscall.map_update_elem(fd, key(1), struct.pack("<Q", 112), BPF_ANY)

        keys, current, next_key = [], None, bytearray(4)
        while syscall.map_get_next_key(fd, current, next_key):
            keys.append(struct.unpack("<I", next_key)[0])
            current = bytearray(next_key)
        assert sorted(keys) == [1, 2]

        assert syscall.map_delete_elem(fd, key(1))
        assert not syscall.map_delete_elem(fd, key(1))
        assert not syscall.map_lookup_elem(fd, key(1), value)
        assert syscall.map_lookup_elem(fd, key(2), value)
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_map_info_reports_what_was_created(no_fd_leak):
    fd = create_map(MapType.HASH, key_size=4, value_size=12, max_entries=7, name=b"pybpf_info")
    try:
        info = syscall.obj_get_info_by_fd(fd, MapInfo())
        assert (info.type, info.key_size, info.value_size, info.max_entries) == (MapType.HASH, 4, 12, 7)
        assert info.name == b"pybpf_info"
        assert info.id > 0
        # the same map found by id
        found, next_id = False, 0
        while (next_id := syscall.get_next_id(Cmd.MAP_GET_NEXT_ID, next_id)) is not None:
            if next_id == info.id:
                found = True
                break
        assert found
        other = syscall.get_fd_by_id(Cmd.MAP_GET_FD_BY_ID, info.id)
        try:
            assert syscall.obj_get_info_by_fd(other, MapInfo()).id == info.id
        finally:
            os.close(other)
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_bad_map_raises_syscall_error(no_fd_leak):
    with pytest.raises(pybpf.SyscallError) as exc:
        create_map(MapType.HASH, key_size=0)
    assert exc.value.command == "BPF_MAP_CREATE"
    assert exc.value.errno == errno.EINVAL
    assert not isinstance(exc.value, pybpf.PermissionError)
    assert "BPF_MAP_CREATE" in str(exc.value) and "EINVAL" in str(exc.value)


@pytest.mark.kernel
def test_frozen_array_refuses_updates(no_fd_leak):
    fd = create_map(MapType.ARRAY, key_size=4, value_size=4, max_entries=1, name=b"pybpf_frozen")
    try:
        syscall.map_update_elem(fd, key(0), struct.pack("<I", 7))
        syscall.map_freeze(fd)
        with pytest.raises(pybpf.PermissionError) as exc:
            syscall.map_update_elem(fd, key(0), struct.pack("<I", 8))
        assert exc.value.command == "BPF_MAP_UPDATE_ELEM"
        value = bytearray(4)
        assert syscall.map_lookup_elem(fd, key(0), value) and value == struct.pack("<I", 7)
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_pin_and_get(no_fd_leak):
    if not os.path.isdir("/sys/fs/bpf"):
        pytest.skip("bpffs is not mounted at /sys/fs/bpf")
    path = f"/sys/fs/bpf/pybpf_test_{uuid.uuid4().hex[:12]}"
    fd = create_map(name=b"pybpf_pin")
    try:
        syscall.obj_pin(fd, path)
        again = syscall.obj_get(path)
        try:
            ids = {syscall.obj_get_info_by_fd(f, MapInfo()).id for f in (fd, again)}
            assert len(ids) == 1
        finally:
            os.close(again)
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.close(fd)


# --- programs and links -----------------------------------------------------------


@pytest.mark.kernel
def test_prog_load_info_and_test_run(no_fd_leak):
    fd = load_program(ProgType.SOCKET_FILTER)
    try:
        info = syscall.obj_get_info_by_fd(fd, ProgInfo())
        assert info.type == ProgType.SOCKET_FILTER
        assert info.name == b"pybpf_ret0"
        assert info.xlated_prog_len == len(RETURN_0)
        assert bytes(info.tag) != bytes(8)
        assert info.gpl_compatible == 1
        data = ctypes.create_string_buffer(64)
        run = TestRunAttr(prog_fd=fd, data_in=ctypes.addressof(data), data_size_in=64, repeat=1)
        bpf(Cmd.PROG_TEST_RUN, run)
        assert run.retval == 0
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_info_len_is_written_back(no_fd_leak):
    fd = create_map()
    try:
        info = MapInfo()
        attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)
        assert 0 < attr.info_len <= ctypes.sizeof(info)
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_tracepoint_perf_event_and_link(no_fd_leak):
    tp = tracefs.tracepoint_id("syscalls", "sys_enter_getpid")
    assert tp > 0
    event = perf.perf_event_open(perf.PerfEventAttr(type=perf.PERF_TYPE_TRACEPOINT, config=tp))
    try:
        perf.ioctl(event, perf.PERF_EVENT_IOC_ENABLE)
        perf.ioctl(event, perf.PERF_EVENT_IOC_DISABLE)
        prog = load_program(ProgType.TRACEPOINT, b"pybpf_tp")
        try:
            attr = LinkCreateAttr(prog_fd=prog, target_fd=event, attach_type=AttachType.PERF_EVENT)
            attr.perf_event_bpf_cookie = 0x1234
            link = bpf(Cmd.LINK_CREATE, attr)
            try:
                os.getpid()
                info = syscall.obj_get_info_by_fd(link, LinkInfo())
                assert info.type == LinkType.PERF_EVENT
                assert info.prog_id == syscall.obj_get_info_by_fd(prog, ProgInfo()).id
                assert info.perf_event.type == 5  # BPF_PERF_EVENT_TRACEPOINT
                assert info.perf_event.tracepoint.cookie == 0x1234
            finally:
                os.close(link)
        finally:
            os.close(prog)
    finally:
        os.close(event)


@pytest.mark.kernel
def test_set_bpf_with_a_map_fd_fails_with_the_ioctl_name(no_fd_leak):
    tp = tracefs.tracepoint_id("syscalls", "sys_enter_getpid")
    event = perf.perf_event_open(perf.PerfEventAttr(type=perf.PERF_TYPE_TRACEPOINT, config=tp))
    not_a_prog = create_map()
    try:
        with pytest.raises(pybpf.SyscallError) as exc:
            perf.ioctl(event, perf.PERF_EVENT_IOC_SET_BPF, not_a_prog)
        assert exc.value.command == "ioctl(PERF_EVENT_IOC_SET_BPF)"
    finally:
        os.close(not_a_prog)
        os.close(event)


@pytest.mark.kernel
def test_perf_event_open_unknown_tracepoint(no_fd_leak):
    with pytest.raises(pybpf.SyscallError) as exc:
        perf.perf_event_open(perf.PerfEventAttr(type=perf.PERF_TYPE_TRACEPOINT, config=0x7FFFFFF0))
    assert exc.value.command == "perf_event_open"
    assert "tracepoint" in str(exc.value)


# --- tracefs and PMUs -------------------------------------------------------------


@pytest.mark.kernel
def test_tracefs_root_has_events():
    assert os.path.isdir(os.path.join(tracefs.tracefs_root(), "events"))


@pytest.mark.kernel
def test_missing_tracepoint_message():
    with pytest.raises(pybpf.Error) as exc:
        tracefs.tracepoint_id("syscalls", "sys_exit_foo")
    message = str(exc.value)
    assert "tracepoint syscalls/sys_exit_foo not found in" in message
    assert "/events" in message and "available_events" in message
    with pytest.raises(pybpf.Error):
        tracefs.tracepoint_id("../..", "id")


@pytest.mark.kernel
def test_probe_pmus():
    assert tracefs.uprobe_pmu_type() > 0
    assert tracefs.pmu_retprobe_bit("uprobe") >= 0
    try:
        assert tracefs.kprobe_pmu_type() > 0
    except pybpf.NotSupportedError as exc:
        assert "kprobes are not supported by this kernel (CONFIG_KPROBES unset?)" in str(exc)


# --- without the kernel: the choke point's rules ------------------------------------


class FakeSyscall:
    """Stands in for libc's syscall(): fails with the given errnos, then succeeds."""

    def __init__(self, errnos, result=3):
        self.errnos = list(errnos)
        self.result = result
        self.calls = []

    def __call__(self, nr, cmd, address, size):
        self.calls.append((cmd, size))
        if self.errnos:
            ctypes.set_errno(self.errnos.pop(0))
            return -1
        return self.result


def test_eintr_is_retried(monkeypatch):
    fake = FakeSyscall([errno.EINTR, errno.EINTR])
    monkeypatch.setattr(syscall, "_bpf_syscall", fake)
    assert bpf(Cmd.MAP_CREATE, MapCreateAttr()) == 3
    assert fake.calls == [(Cmd.MAP_CREATE, ctypes.sizeof(MapCreateAttr))] * 3


def test_eagain_is_retried_for_prog_load_only(monkeypatch):
    fake = FakeSyscall([errno.EAGAIN] * 100)
    monkeypatch.setattr(syscall, "_bpf_syscall", fake)
    with pytest.raises(pybpf.SyscallError) as exc:
        bpf(Cmd.PROG_LOAD, ProgLoadAttr())
    assert exc.value.errno == errno.EAGAIN and exc.value.command == "BPF_PROG_LOAD"
    assert 1 < len(fake.calls) <= 10

    fake = FakeSyscall([errno.EAGAIN, errno.EAGAIN])
    monkeypatch.setattr(syscall, "_bpf_syscall", fake)
    assert bpf(Cmd.PROG_LOAD, ProgLoadAttr()) == 3

    fake = FakeSyscall([errno.EAGAIN])
    monkeypatch.setattr(syscall, "_bpf_syscall", fake)
    with pytest.raises(pybpf.SyscallError):
        bpf(Cmd.MAP_CREATE, MapCreateAttr())
    assert len(fake.calls) == 1


def test_size_argument(monkeypatch):
    fake = FakeSyscall([])
    monkeypatch.setattr(syscall, "_bpf_syscall", fake)
    bpf(Cmd.MAP_CREATE, MapCreateAttr(), size=72)
    assert fake.calls == [(Cmd.MAP_CREATE, 72)]


def test_permission_errors_name_root(monkeypatch):
    monkeypatch.setattr(syscall, "_bpf_syscall", FakeSyscall([errno.EPERM]))
    monkeypatch.setattr(syscall, "bpf_capable", lambda: False)        # no CAP_BPF/CAP_SYS_ADMIN
    with pytest.raises(pybpf.PermissionError) as exc:
        bpf(Cmd.PROG_LOAD, ProgLoadAttr())
    assert exc.value.command == "BPF_PROG_LOAD" and exc.value.errno == errno.EPERM
    assert "needs root (CAP_BPF, CAP_PERFMON)" in str(exc.value)


def test_command_names():
    assert syscall.command_name(Cmd.MAP_CREATE) == "BPF_MAP_CREATE"
    assert syscall.command_name(10) == "BPF_PROG_TEST_RUN"
    assert syscall.command_name(999) == "BPF_CMD_999"


def test_attr_aliases():
    from pybpf.kernel.attrs import GetIdAttr, MapElemAttr
    elem = MapElemAttr(next_key=5)
    assert elem.value == 5
    ids = GetIdAttr(map_id=9)
    assert ids.start_id == ids.prog_id == ids.link_id == 9
    load = ProgLoadAttr(attach_btf_obj_fd=4)
    assert load.attach_prog_fd == 4
    link = LinkCreateAttr(target_ifindex=2, iter_info=0x1000, iter_info_len=8)
    assert link.target_fd == 2 and link.target_btf_id == 0x1000  # one union at offset 16
    assert link.iter_info == 0x1000 and link.iter_info_len == 8
    link.tracing_cookie = 77
    assert link.tracing.cookie == 77 and link.iter_info_len == 77
