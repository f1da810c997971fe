"""BTF-attached programs (programs/btf_programs.bpf.c): attach_btf_id from kernel BTF.

Offline: the attach_btf_id and BPF_PROG_LOAD attributes the loader would send for
tp_btf, iter, fentry, fexit, fmod_ret, lsm (and sleepable fentry.s), module
targets in a hand-built split BTF, unknown targets.  Expected ids come from the
kernel's BTF looked up by the libbpf naming rule, never from pybpf's resolver.

In the kernel: tp_btf/sys_enter counts this process's getpid() calls, iter/task
is compared with /proc, iter/bpf_map_elem dumps a map; fentry/fexit/fmod_ret/lsm
are refused by this kernel (no BPF trampolines), reported as NotSupportedError.
"""

from __future__ import annotations

import os
import struct

import pytest

import pybpf
from pybpf.iter import Iterator
from pybpf.kernel.constants import AttachType, ProgType
from pybpf.loader import program_load_request
from pybpf.loader.attach_btf import AttachBTF, resolve_attach_btf, target_type
from pybpf.loader.facts import KernelFacts
from pybpf.spec.btf import BTF, Kind

from conftest import program

VMLINUX = "/sys/kernel/btf/vmlinux"
BPF_F_SLEEPABLE = 1 << 4
N = 97
NR_GETPID = 39   # x86_64

needs_btf = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="needs a kernel BTF file to resolve against")


@pytest.fixture(scope="module")
def vmlinux():
    return BTF.load(VMLINUX)


def offline_facts(btf, modules=None) -> KernelFacts:
    """Facts given as values: nothing is read from the running kernel."""
    return KernelFacts(btf=btf, module_btfs=modules or {})


def spec():
    return pybpf.open(program("btf_programs"))


def kernel_id(btf: BTF, name: str, kind: Kind) -> int:
    found = btf.by_name(name, kind)
    assert len(found) == 1, f"{kind.name} {name}: {found}"
    return found[0].id


# -- naming rules --------------------------------------------------------------------------------------

@pytest.mark.parametrize("attach_type, target, expected", [
    (AttachType.TRACE_RAW_TP, "sys_enter", ("btf_trace_sys_enter", Kind.TYPEDEF)),
    (AttachType.TRACE_FENTRY, "do_unlinkat", ("do_unlinkat", Kind.FUNC)),
    (AttachType.TRACE_FEXIT, "do_unlinkat", ("do_unlinkat", Kind.FUNC)),
    (AttachType.MODIFY_RETURN, "bpf_modify_return_test", ("bpf_modify_return_test", Kind.FUNC)),
    (AttachType.LSM_MAC, "file_open", ("bpf_lsm_file_open", Kind.FUNC)),
    (AttachType.LSM_CGROUP, "socket_bind", ("bpf_lsm_socket_bind", Kind.FUNC)),
    (AttachType.TRACE_ITER, "task", ("bpf_iter_task", Kind.FUNC)),
])
def test_target_type_follows_libbpf(attach_type, target, expected):
    assert target_type(attach_type, target) == expected


# -- offline: what the loader would send --------------------------------------------------------------

# program -> (prog type, expected attach type, BTF type name, kind, prog_flags)
EXPECTED = {
    "count_getpid_btf": (ProgType.TRACING, AttachType.TRACE_RAW_TP, "btf_trace_sys_enter", Kind.TYPEDEF, 0),
    "dump_task": (ProgType.TRACING, AttachType.TRACE_ITER, "bpf_iter_task", Kind.FUNC, 0),
    "dump_squares": (ProgType.TRACING, AttachType.TRACE_ITER, "bpf_iter_bpf_map_elem", Kind.FUNC, 0),
    "on_unlink_entry": (ProgType.TRACING, AttachType.TRACE_FENTRY, "do_unlinkat", Kind.FUNC, 0),
    "on_unlink_exit": (ProgType.TRACING, AttachType.TRACE_FEXIT, "do_unlinkat", Kind.FUNC, 0),
    "modify_return": (ProgType.TRACING, AttachType.MODIFY_RETURN, "bpf_modify_return_test", Kind.FUNC, 0),
    "on_file_open": (ProgType.LSM, AttachType.LSM_MAC, "bpf_lsm_file_open", Kind.FUNC, 0),
    "on_unlink_sleepable": (ProgType.TRACING, AttachType.TRACE_FENTRY, "do_unlinkat", Kind.FUNC, BPF_F_SLEEPABLE),
}


@needs_btf
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prog_load_attr_offline(vmlinux, name):
    prog_type, attach_type, type_name, kind, flags = EXPECTED[name]
    s = spec()
    req = program_load_request(s, name, offline_facts(vmlinux))
    a = req.attr
    assert a.prog_type == prog_type
    assert a.expected_attach_type == attach_type
    assert a.attach_btf_id == kernel_id(vmlinux, type_name, kind)
    assert vmlinux[a.attach_btf_id].name == type_name and vmlinux[a.attach_btf_id].kind == kind
    assert a.attach_btf_obj_fd == 0          # vmlinux, not a module
    assert a.prog_flags == flags
    assert a.prog_name == name[:15].encode()
    assert a.insn_cnt == len(s.programs[name].insns) // 8
    assert a.log_level == 0 and a.log_buf == 0


@needs_btf
def test_resolution_reports_kind_and_module(vmlinux):
    got = resolve_attach_btf(spec().programs["count_getpid_btf"], offline_facts(vmlinux))
    assert got == AttachBTF(kernel_id(vmlinux, "btf_trace_sys_enter", Kind.TYPEDEF), "btf_trace_sys_enter",
                            Kind.TYPEDEF, "vmlinux")
    assert not got.in_module


def test_raw_tp_has_no_attach_btf_id():
    s = pybpf.open(program("tracepoint_test"))
    req = program_load_request(s, "on_sys_enter", offline_facts(None))
    assert req.attr.prog_type == ProgType.RAW_TRACEPOINT
    assert req.attr.attach_btf_id == 0 and req.attr.expected_attach_type == 0


@needs_btf
def test_attach_target_changed_before_load(vmlinux):
    s = spec()
    s.programs["count_getpid_btf"].attach_target = "sys_exit"
    s.programs["on_unlink_entry"].attach_target = "vfs_read"
    facts = offline_facts(vmlinux)
    assert (program_load_request(s, "count_getpid_btf", facts).attr.attach_btf_id
            == kernel_id(vmlinux, "btf_trace_sys_exit", Kind.TYPEDEF))
    assert (program_load_request(s, "on_unlink_entry", facts).attr.attach_btf_id
            == kernel_id(vmlinux, "vfs_read", Kind.FUNC))


@needs_btf
def test_unknown_target_names_section_and_type(vmlinux):
    with pytest.raises(pybpf.Error) as e:
        program_load_request(spec(), "missing_target", offline_facts(vmlinux))
    msg = str(e.value)
    assert "'missing_target'" in msg and "?tp_btf/no_such_tracepoint" in msg
    assert "TYPEDEF btf_trace_no_such_tracepoint" in msg and "searched vmlinux" in msg


def test_no_kernel_btf_is_a_clear_error():
    with pytest.raises(pybpf.Error, match="needs the kernel's BTF to find FUNC do_unlinkat"):
        resolve_attach_btf(spec().programs["on_unlink_entry"], offline_facts(None))


# a kernel module's split BTF on top of vmlinux: FUNC fake_fn(void) and FUNC do_unlinkat

def module_btf(base: BTF, funcs=("fake_fn", "do_unlinkat")) -> BTF:
    first_id = base.first_id + len(base)
    str_base = struct.unpack_from("<I", base.to_bytes(), 20)[0]     # split strings follow the base's
    strings = bytearray()
    offs = {}
    for f in funcs:
        offs[f] = str_base + len(strings)
        strings += f.encode() + b"\0"
    types = struct.pack("<III", 0, 13 << 24, 0)        # [first_id] FUNC_PROTO void(void)
    for f in funcs:
        types += struct.pack("<III", offs[f], (12 << 24) | 1, first_id)   # FUNC, global linkage
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return BTF(header + types + bytes(strings), source="fakemod", base=base)


@needs_btf
def test_module_target(vmlinux):
    mod = module_btf(vmlinux)
    facts = offline_facts(vmlinux, {"fakemod": mod})
    s = spec()
    p = s.programs["on_unlink_entry"]
    fake_id = mod.by_name("fake_fn", Kind.FUNC)[0].id
    assert fake_id >= mod.first_id
    p.attach_target = "fake_fn"                    # not in vmlinux: found in the module
    assert resolve_attach_btf(p, facts) == AttachBTF(fake_id, "fake_fn", Kind.FUNC, "fakemod")
    p.attach_target = "fakemod:fake_fn"            # libbpf's module:function form
    assert resolve_attach_btf(p, facts).module == "fakemod"
    p.attach_target = "do_unlinkat"                # vmlinux first, like libbpf
    assert resolve_attach_btf(p, facts).module == "vmlinux"
    p.attach_target = "fakemod:do_unlinkat"        # only the module's own types
    got = resolve_attach_btf(p, facts)
    assert got.module == "fakemod" and got.btf_id == mod.by_name("do_unlinkat", Kind.FUNC)[-1].id
    p.attach_target = "vmlinux:fake_fn"
    with pytest.raises(pybpf.Error, match="no FUNC fake_fn in the kernel's BTF"):
        resolve_attach_btf(p, facts)
    p.attach_target = "othermod:fake_fn"
    with pytest.raises(pybpf.Error, match="kernel module 'othermod' is not loaded"):
        resolve_attach_btf(p, facts)
    p.attach_target = "nothing_like_this"
    with pytest.raises(pybpf.Error, match="searched vmlinux, fakemod"):
        resolve_attach_btf(p, facts)


# -- in the kernel -----------------------------------------------------------------------------------

def load(*programs):
    """The object with only ``programs`` loaded: a program kind this kernel refuses (the map
    element iterator, the trampoline kinds) must not hide the others from their tests."""
    s = spec()
    s.variables["target_tgid"].set(os.getpid())
    for name, p in s.programs.items():
        p.autoload = name in programs
    return s.load()


@pytest.mark.kernel
def test_tp_btf_counts_getpid(no_fd_leak):
    with load("count_getpid_btf") as obj:
        calls = obj.variables["btf_getpid_calls"]
        link = obj.programs["count_getpid_btf"].attach()
        assert (link.kind, link.target) == ("trace", "sys_enter")
        for _ in range(N):
            os.getpid()
        assert calls.get() == N
        assert obj.variables["last_getpid_arg"].get() == NR_GETPID    # sys_enter's id argument
        link.close()
        for _ in range(N):
            os.getpid()
        assert calls.get() == N                  # detached


@pytest.mark.kernel
def test_tp_btf_attach_target_override_is_refused(no_fd_leak):
    with load("count_getpid_btf") as obj:
        with pytest.raises(pybpf.Error, match="set spec.programs\\['count_getpid_btf'\\].attach_target"):
            obj.programs["count_getpid_btf"].attach("sys_exit")


@pytest.mark.kernel
def test_attach_target_adjusted_before_load(no_fd_leak):
    s = spec()
    s.variables["target_tgid"].set(os.getpid())
    for name, p in s.programs.items():
        p.autoload = name == "count_getpid_btf"
    s.programs["count_getpid_btf"].attach_target = "sys_exit"
    with s.load() as obj:
        obj.programs["count_getpid_btf"].attach()
        for _ in range(N):
            os.getpid()
        assert obj.variables["btf_getpid_calls"].get() == N
        # sys_exit's second argument is the return value, not the syscall number
        assert obj.variables["last_getpid_arg"].get() == os.getpid()


def proc_tasks() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    out[int(name)] = f.read().rstrip("\n")
            except OSError:
                pass
    return out


@pytest.mark.kernel
def test_iter_task_matches_proc(no_fd_leak):
    with load("dump_task") as obj:
        it = obj.programs["dump_task"].iterate()
        assert isinstance(it, Iterator) and it.kind == "iter"
        before = proc_tasks()
        rows = [line.split(" ", 2) for line in it.lines()]
        after = proc_tasks()
        tasks = {}
        for pid, tgid, comm in rows:
            tasks[int(pid)] = (int(tgid), comm)
        leaders = {pid: comm for pid, (tgid, comm) in tasks.items() if pid == tgid}
        stable = {pid: comm for pid, comm in before.items() if after.get(pid) == comm}
        # every process that lived through the walk is there, with its comm (the task
        # iterator starts after pid 1 on this kernel, as bpftool iter shows too)
        missing = set(stable) - set(leaders) - {1}
        assert not missing, f"processes in /proc but not in the iterator: {sorted(missing)[:10]}"
        for pid in stable.keys() & leaders.keys():
            if stable[pid].startswith("kworker/"):
                # /proc/<pid>/comm of a kworker adds its work queue: kworker/0:0-events
                assert stable[pid].startswith(leaders[pid]), pid
            else:
                assert leaders[pid] == stable[pid][:15], pid
        assert leaders[os.getpid()] == before[os.getpid()]
        # threads belong to processes the iterator also shows
        assert all(tgid in tasks for tgid, _ in tasks.values())


@pytest.mark.kernel
def test_iter_task_for_one_process(no_fd_leak):
    import threading
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with load("dump_task") as obj:
            it = obj.programs["dump_task"].iterate(pid=os.getpid())
            rows = [tuple(line.split(" ", 2)) for line in it.lines()]
            tids = sorted(int(r[0]) for r in rows)
            assert tids == sorted(int(t) for t in os.listdir("/proc/self/task"))
            assert {int(r[1]) for r in rows} == {os.getpid()}
            it2 = obj.programs["dump_task"].iterate(tid=t.native_id)
            assert it2.read().split(b" ")[0] == str(t.native_id).encode()
    finally:
        stop.set()
        t.join()


@pytest.mark.kernel
def test_iter_map_elements_and_rereads(no_fd_leak, not_supported_skip):
    with not_supported_skip:
        obj = load("dump_squares")
    with obj:
        squares = obj.maps["squares"]
        for i in range(6):
            squares[i] = i * i
        it = obj.programs["dump_squares"].iterate(map=squares)
        first = it.read()
        assert dict(line.split("=") for line in first.decode().split()) == {str(i): str(i * i) for i in range(6)}
        squares[9] = 81
        del squares[0]
        # every read is a new walk
        assert sorted(it.lines()) == sorted(f"{i}={i * i}" for i in (1, 2, 3, 4, 5, 9))
        it.close()
        with pytest.raises(pybpf.ClosedError):
            it.read()


@pytest.mark.kernel
def test_map_iterator_without_map_says_so(no_fd_leak, not_supported_skip):
    with not_supported_skip:
        obj = load("dump_squares")
    with obj:
        with pytest.raises(pybpf.SyscallError, match=r"give it with iterate\(map=...\)"):
            obj.programs["dump_squares"].iterate()


@pytest.mark.kernel
def test_object_close_detaches_iterators_and_tp_btf(no_fd_leak):
    obj = load("dump_task", "count_getpid_btf")
    it = obj.programs["dump_task"].iterate()
    link = obj.programs["count_getpid_btf"].attach()
    assert set(obj.links) == {it, link}
    obj.close()
    assert it.closed and link.closed


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["on_unlink_entry", "on_unlink_exit", "modify_return", "on_file_open",
                                  "on_unlink_sleepable"])
def test_trampoline_programs_refused_clearly(name, no_fd_leak):
    with pytest.raises(pybpf.NotSupportedError) as e:
        load(name)
    msg = str(e.value)
    assert f"program {name!r}" in msg
    assert "not permitted by this kernel (no BPF trampolines)" in msg


@pytest.mark.kernel
def test_unknown_target_fails_before_the_kernel(no_fd_leak):
    with pytest.raises(pybpf.Error, match="no TYPEDEF btf_trace_no_such_tracepoint"):
        load("missing_target", "count_getpid_btf")
