"""Layer 1, pure: parsing the committed objects into an ObjectSpec (no kernel, no root).

Expected values come from the C sources in programs/ (map definitions, globals,
section names) or from an independent reading of the ELF file with pyelftools
(section sizes, symbol values), never from pybpf itself.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

import pybpf
from pybpf.kernel.constants import AttachType, MapType, ProgType
from pybpf.spec.btf import BTF, Kind
from pybpf.spec.object import internal_map_name
from pybpf.spec.sections import match_section

from conftest import PROGRAMS, program

ALL_OBJECTS = sorted(p.stem for p in PROGRAMS.glob("*.o"))

BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10


def elf_facts(name: str):
    """Section sizes and symbol values of a committed object, read with pyelftools."""
    with open(program(name), "rb") as f:
        elf = ELFFile(f)
        sizes = {s.name: s["sh_size"] for s in elf.iter_sections()}
        symtab = elf.get_section_by_name(".symtab")
        symbols = {}
        for s in symtab.iter_symbols():
            if s["st_info"]["type"] in ("STT_OBJECT", "STT_FUNC") and isinstance(s["st_shndx"], int):
                symbols[s.name] = (elf.get_section(s["st_shndx"]).name, s["st_value"], s["st_size"])
        raw_btf = elf.get_section_by_name(".BTF").data()
        raw_ext = elf.get_section_by_name(".BTF.ext").data()
    return sizes, symbols, raw_btf, raw_ext


@pytest.mark.parametrize("name", ALL_OBJECTS)
def test_every_committed_object_parses(name):
    spec = pybpf.open(program(name))
    assert spec.programs, f"{name}: no programs found"
    assert spec.license == "GPL"
    assert spec.btf is not None and spec.btf_ext is not None
    sizes, symbols, _, _ = elf_facts(name)
    for prog in spec.programs.values():
        # each program is its ELF function symbol, in its own section, with all its bytes
        sec, value, size = symbols[prog.name]
        assert prog.section == sec
        assert prog.function.sec_insn_off * 8 == value
        assert len(prog.insns) == size and size % 8 == 0


def test_pybpf_open_accepts_pathlike():
    spec = pybpf.open(PROGRAMS / "calls_test.o")
    assert isinstance(spec, pybpf.ObjectSpec)
    assert spec.name == "calls_test"


# -- programs and their sections ----------------------------------------------------

EXPECTED_PROGRAMS = {
    # object: {program: (section, prog type, expected attach type, attach target)}
    "core_read": {"core_getpid": ("tracepoint/syscalls/sys_enter_getpid", ProgType.TRACEPOINT, None,
                                  "syscalls/sys_enter_getpid"),
                  "core_sys_enter": ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter")},
    "core_heavy": {"heavy": ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter")},
    "core_fail": {"guarded": ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter"),
                  **{n: ("?raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter")
                     for n in ("missing_field", "missing_type", "missing_enumval", "wrong_size")}},
    "calls_test": {"compute": ("syscall", ProgType.SYSCALL, None, ""),
                   "compute2": ("syscall", ProgType.SYSCALL, None, "")},
    "globals_test": {"read_globals": ("syscall", ProgType.SYSCALL, None, "")},
    "extern_kconfig": {"kconfig_read": ("syscall", ProgType.SYSCALL, None, "")},
    "extern_ksyms": {"ksyms_read": ("syscall", ProgType.SYSCALL, None, "")},
    "extern_refused": {"percpu_missing": ("syscall", ProgType.SYSCALL, None, ""),
                       "percpu_read": ("?syscall", ProgType.SYSCALL, None, ""),
                       "unguarded_kfunc": ("?syscall", ProgType.SYSCALL, None, "")},
    "maps_test": {"fill": ("syscall", ProgType.SYSCALL, None, "")},
    "layout_demo": {"fill": ("syscall", ProgType.SYSCALL, None, "")},
    "verifier_fail": {"oob": ("syscall", ProgType.SYSCALL, None, "")},
    "long_log": {"long_log": ("socket", ProgType.SOCKET_FILTER, None, "")},
    "tracepoint_test": {
        "on_getpid": ("tracepoint/syscalls/sys_enter_getpid", ProgType.TRACEPOINT, None,
                      "syscalls/sys_enter_getpid"),
        "on_sys_enter": ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter"),
        "xdp_pass": ("xdp", ProgType.XDP, AttachType.XDP, ""),
        "sock_all": ("socket", ProgType.SOCKET_FILTER, None, ""),
    },
    "kprobe_test": {"on_nanosleep": ("kprobe/do_nanosleep", ProgType.KPROBE, None, "do_nanosleep")},
    "user_ringbuf": {"kill_exit": ("tracepoint/syscalls/sys_exit_kill", ProgType.TRACEPOINT, None,
                                   "syscalls/sys_exit_kill")},
    "ringbuf_test": {"produce": ("syscall", ProgType.SYSCALL, None, ""),
                     "drain": ("syscall", ProgType.SYSCALL, None, "")},
    "ring_commands": {"apply": ("syscall", ProgType.SYSCALL, None, "")},
    "link_test": {"link_main": ("syscall", ProgType.SYSCALL, None, ""),
                  "not_autoloaded": ("?syscall", ProgType.SYSCALL, None, "")},
    "bench_ringbuf": {"produce": ("syscall", ProgType.SYSCALL, None, ""),
                      "drain": ("syscall", ProgType.SYSCALL, None, ""),
                      "hold": ("syscall", ProgType.SYSCALL, None, "")},
    "perf_test": {"output": ("raw_tp", ProgType.RAW_TRACEPOINT, None, "")},
    "btf_programs": {
        "count_getpid_btf": ("tp_btf/sys_enter", ProgType.TRACING, AttachType.TRACE_RAW_TP, "sys_enter"),
        "dump_task": ("iter/task", ProgType.TRACING, AttachType.TRACE_ITER, "task"),
        "dump_squares": ("iter/bpf_map_elem", ProgType.TRACING, AttachType.TRACE_ITER, "bpf_map_elem"),
        "on_unlink_entry": ("?fentry/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FENTRY, "do_unlinkat"),
        "on_unlink_exit": ("?fexit/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FEXIT, "do_unlinkat"),
        "modify_return": ("?fmod_ret/bpf_modify_return_test", ProgType.TRACING, AttachType.MODIFY_RETURN,
                          "bpf_modify_return_test"),
        "on_file_open": ("?lsm/file_open", ProgType.LSM, AttachType.LSM_MAC, "file_open"),
        "on_unlink_sleepable": ("?fentry.s/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FENTRY,
                                "do_unlinkat"),
        "missing_target": ("?tp_btf/no_such_tracepoint", ProgType.TRACING, AttachType.TRACE_RAW_TP,
                           "no_such_tracepoint"),
    },
    "map_arena": {"nothing": ("syscall", ProgType.SYSCALL, None, "")},
    "profile_rb": {"on_sample": ("perf_event", ProgType.PERF_EVENT, None, "")},
    "javagc_style": {
        "gc_begin": ("usdt", ProgType.KPROBE, None, ""),
        "gc_end": ("usdt", ProgType.KPROBE, None, ""),
    },
    "profile_style": {
        "on_cpu_sample": ("perf_event", ProgType.PERF_EVENT, None, ""),
        "converter": ("usdt//proc/self/exe:pybpf_profiler:ready", ProgType.KPROBE, None,
                      "/proc/self/exe:pybpf_profiler:ready"),
    },
    "perf_events_cli": {
        "on_getpid": ("tracepoint/syscalls/sys_enter_getpid", ProgType.TRACEPOINT, None, "syscalls/sys_enter_getpid"),
        "on_kill": ("tracepoint/syscalls/sys_enter_kill", ProgType.TRACEPOINT, None, "syscalls/sys_enter_kill"),
    },
    "map_types": {
        "run": ("raw_tp", ProgType.RAW_TRACEPOINT, None, ""),
        "tail_caller": ("raw_tp", ProgType.RAW_TRACEPOINT, None, ""),
        "tail_zero": ("raw_tp", ProgType.RAW_TRACEPOINT, None, ""),
        "tail_two": ("raw_tp", ProgType.RAW_TRACEPOINT, None, ""),
        "count_in_task": ("tp_btf/sys_enter", ProgType.TRACING, AttachType.TRACE_RAW_TP, "sys_enter"),
        "count_egress": ("cgroup_skb/egress", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_EGRESS, ""),
    },
    "tools_biolatency": {
        "block_rq_insert": ("tp_btf/block_rq_insert", ProgType.TRACING, AttachType.TRACE_RAW_TP, "block_rq_insert"),
        "block_rq_issue": ("tp_btf/block_rq_issue", ProgType.TRACING, AttachType.TRACE_RAW_TP, "block_rq_issue"),
        "block_rq_complete": ("tp_btf/block_rq_complete", ProgType.TRACING, AttachType.TRACE_RAW_TP,
                              "block_rq_complete"),
        "block_rq_issue_raw": ("raw_tp/block_rq_issue", ProgType.RAW_TRACEPOINT, None, "block_rq_issue"),
    },
    "tools_exitsnoop": {
        "sched_process_exit": ("tp_btf/sched_process_exit", ProgType.TRACING, AttachType.TRACE_RAW_TP,
                               "sched_process_exit"),
        "sys_enter_raw": ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter"),
        "list_children": ("iter/task", ProgType.TRACING, AttachType.TRACE_ITER, "task"),
    },
    "tools_opensnoop": {
        "enter_openat": ("tracepoint/syscalls/sys_enter_openat", ProgType.TRACEPOINT, None,
                         "syscalls/sys_enter_openat"),
        "exit_openat": ("tracepoint/syscalls/sys_exit_openat", ProgType.TRACEPOINT, None,
                        "syscalls/sys_exit_openat"),
        "sys_exit_raw": ("raw_tp/sys_exit", ProgType.RAW_TRACEPOINT, None, "sys_exit"),
    },
    "tools_runqlat": {
        "sched_wakeup": ("tp_btf/sched_wakeup", ProgType.TRACING, AttachType.TRACE_RAW_TP, "sched_wakeup"),
        "sched_wakeup_new": ("tp_btf/sched_wakeup_new", ProgType.TRACING, AttachType.TRACE_RAW_TP,
                             "sched_wakeup_new"),
        "sched_switch": ("tp_btf/sched_switch", ProgType.TRACING, AttachType.TRACE_RAW_TP, "sched_switch"),
        "sched_wakeup_raw": ("raw_tp/sched_wakeup", ProgType.RAW_TRACEPOINT, None, "sched_wakeup"),
    },
    "trace_kinds": {
        "count_samples": ("perf_event", ProgType.PERF_EVENT, None, ""),
        "profile": ("perf_event", ProgType.PERF_EVENT, None, ""),
        "count_by_cookie": ("uprobe.multi", ProgType.KPROBE, AttachType.TRACE_UPROBE_MULTI, ""),
        "count_ret_by_cookie": ("uretprobe.multi", ProgType.KPROBE, AttachType.TRACE_UPROBE_MULTI, ""),
        "libc_getpid": ("uprobe.multi/libc.so.6:getpid", ProgType.KPROBE, AttachType.TRACE_UPROBE_MULTI,
                        "libc.so.6:getpid"),
        "tp_cookie": ("tracepoint/syscalls/sys_enter_getppid", ProgType.TRACEPOINT, None,
                      "syscalls/sys_enter_getppid"),
        "uprobe_cookie": ("uprobe", ProgType.KPROBE, None, ""),
        "raw_tp_cookie": ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter"),
        "on_getpid_sys": ("?ksyscall/getpid", ProgType.KPROBE, None, "getpid"),
        "on_getpid_sys_ret": ("?kretsyscall/getpid", ProgType.KPROBE, None, "getpid"),
        "nanosleep_multi": ("?kprobe.multi/do_nanosleep*", ProgType.KPROBE, AttachType.TRACE_KPROBE_MULTI,
                            "do_nanosleep*"),
    },
    "usdt_test": {
        "on_probe": ("usdt", ProgType.KPROBE, None, ""),
        "on_tick": ("usdt/pybpf_cli:tick", ProgType.KPROBE, None, "pybpf_cli:tick"),
    },
    "uprobe_tool": {
        "func_entry": ("uprobe", ProgType.KPROBE, None, ""),
        "func_exit": ("uretprobe", ProgType.KPROBE, None, ""),
        "getpid_entry": ("uprobe/libc.so.6:getpid", ProgType.KPROBE, None, "libc.so.6:getpid"),
        "getpid_exit": ("uretprobe/libc.so.6:getpid", ProgType.KPROBE, None, "libc.so.6:getpid"),
    },
    "syscall_latency": {
        "sys_enter": ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT, None, "sys_enter"),
        "sys_exit": ("tp_btf/sys_exit", ProgType.TRACING, AttachType.TRACE_RAW_TP, "sys_exit"),
    },
    "lockdown_helpers": {
        "write_user": ("tracepoint/syscalls/sys_enter_getpid", ProgType.TRACEPOINT, None,
                       "syscalls/sys_enter_getpid"),
        "read_kernel": ("?tracepoint/syscalls/sys_enter_getpid", ProgType.TRACEPOINT, None,
                        "syscalls/sys_enter_getpid"),
    },
    "max_entries_unset": {"on_getpid": ("tracepoint/syscalls/sys_enter_getpid", ProgType.TRACEPOINT, None,
                                        "syscalls/sys_enter_getpid")},
    "fsession_test": {"on_getpgid": ("fsession/do_getpgid", ProgType.TRACING, AttachType.TRACE_FSESSION,
                                     "do_getpgid")},
    "struct_ops_test": {n: (f"struct_ops/{n}", ProgType.STRUCT_OPS, None, n)
                        for n in ("pybpf_ssthresh", "pybpf_cong_avoid", "pybpf_undo_cwnd")},
    "tcp_cc": {n: (f"struct_ops/{n}", ProgType.STRUCT_OPS, None, n)
               for n in ("pybpf_init", "pybpf_ssthresh", "pybpf_cong_avoid", "pybpf_cong_avoid_v2",
                         "pybpf_undo_cwnd")},
    "arena_test": {n: ("syscall", ProgType.SYSCALL, None, "") for n in ("bump", "alloc_page", "read_page")},
    "core_bitfield": {"read_bits": ("syscall", ProgType.SYSCALL, None, "")},
    "percpu_sizes": {"swap": ("syscall", ProgType.SYSCALL, None, "")},
    "pin_test": {
        "write_shared": ("syscall", ProgType.SYSCALL, None, ""),
        "bump_locked": ("syscall", ProgType.SYSCALL, None, ""),
        "count_getppid": ("tracepoint/syscalls/sys_enter_getppid", ProgType.TRACEPOINT, None,
                          "syscalls/sys_enter_getppid"),
    },
    "net_xdp": {n: ("xdp", ProgType.XDP, AttachType.XDP, "") for n in ("xdp_count_drop", "xdp_pass_count")},
    "net_tc": {
        "tc_ingress": ("tc/ingress", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, ""),
        "tc_egress": ("tc/egress", ProgType.SCHED_CLS, AttachType.TCX_EGRESS, ""),
        "tc_rewrite": ("tc", ProgType.SCHED_CLS, None, ""),
        "tc_pass": ("tc", ProgType.SCHED_CLS, None, ""),
    },
    "sock_iface": {
        "watch_frames": ("socket", ProgType.SOCKET_FILTER, None, ""),
    },
    "cg_filter": {
        "count_getpid": ("tracepoint/syscalls/sys_enter_getpid", ProgType.TRACEPOINT, None,
                         "syscalls/sys_enter_getpid"),
    },
    "execsnoop": {
        "enter_execve": ("tracepoint/syscalls/sys_enter_execve", ProgType.TRACEPOINT, None,
                         "syscalls/sys_enter_execve"),
        "exit_execve": ("tracepoint/syscalls/sys_exit_execve", ProgType.TRACEPOINT, None,
                        "syscalls/sys_exit_execve"),
    },
    "net_cgroup": {
        "skb_ingress": ("cgroup_skb/ingress", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_INGRESS, ""),
        "skb_egress": ("cgroup_skb/egress", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_EGRESS, ""),
        **{n: ("cgroup/sock_create", ProgType.CGROUP_SOCK, AttachType.CGROUP_INET_SOCK_CREATE, "")
           for n in ("sock_create_deny", "sock_create_count", "order_first", "order_second", "order_third")},
        "sockops_count": ("sockops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS, ""),
        "connect4": ("cgroup/connect4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_CONNECT, ""),
        "connect6": ("cgroup/connect6", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET6_CONNECT, ""),
        "bind4": ("cgroup/bind4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_BIND, ""),
        "bind6": ("cgroup/bind6", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET6_BIND, ""),
        "sendmsg4": ("cgroup/sendmsg4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP4_SENDMSG, ""),
        "sendmsg6": ("cgroup/sendmsg6", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP6_SENDMSG, ""),
        "recvmsg4": ("cgroup/recvmsg4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP4_RECVMSG, ""),
        "recvmsg6": ("cgroup/recvmsg6", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP6_RECVMSG, ""),
        "getsockopt_override": ("cgroup/getsockopt", ProgType.CGROUP_SOCKOPT, AttachType.CGROUP_GETSOCKOPT, ""),
        "setsockopt_override": ("cgroup/setsockopt", ProgType.CGROUP_SOCKOPT, AttachType.CGROUP_SETSOCKOPT, ""),
        "sysctl_deny": ("cgroup/sysctl", ProgType.CGROUP_SYSCTL, AttachType.CGROUP_SYSCTL, ""),
        "dev_deny": ("cgroup/dev", ProgType.CGROUP_DEVICE, AttachType.CGROUP_DEVICE, ""),
        "post_bind4_deny": ("cgroup/post_bind4", ProgType.CGROUP_SOCK, AttachType.CGROUP_INET4_POST_BIND, ""),
        "sock_release_count": ("cgroup/sock_release", ProgType.CGROUP_SOCK, AttachType.CGROUP_INET_SOCK_RELEASE,
                               ""),
        "getsockname4": ("cgroup/getsockname4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_GETSOCKNAME, ""),
        "getpeername4": ("cgroup/getpeername4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_GETPEERNAME, ""),
        "connect_unix": ("cgroup/connect_unix", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_UNIX_CONNECT, ""),
        "xdp_count": ("xdp", ProgType.XDP, AttachType.XDP, ""),
        "tc_count": ("tc/ingress", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, ""),
    },
    "net_sock": {
        "drop_ff": ("socket", ProgType.SOCKET_FILTER, None, ""),
        "steer": ("sk_lookup", ProgType.SK_LOOKUP, AttachType.SK_LOOKUP, ""),
        "dissect": ("flow_dissector", ProgType.FLOW_DISSECTOR, AttachType.FLOW_DISSECTOR, ""),
        "add_established": ("sockops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS, ""),
        "redirect_to_peer": ("sk_msg", ProgType.SK_MSG, AttachType.SK_MSG_VERDICT, ""),
        "skb_verdict": ("sk_skb/stream_verdict", ProgType.SK_SKB, AttachType.SK_SKB_STREAM_VERDICT, ""),
        "nf_count": ("netfilter", ProgType.NETFILTER, AttachType.NETFILTER, ""),
    },
}


def test_expected_programs_cover_every_object():
    assert sorted(EXPECTED_PROGRAMS) == ALL_OBJECTS


@pytest.mark.parametrize("name", sorted(EXPECTED_PROGRAMS))
def test_programs_sections_and_types(name):
    spec = pybpf.open(program(name))
    got = {p.name: (p.section, p.prog_type, p.expected_attach_type, p.attach_target)
           for p in spec.programs.values()}
    assert got == EXPECTED_PROGRAMS[name]


def test_two_programs_in_one_section_are_split_at_their_symbols():
    spec = pybpf.open(program("calls_test"))
    _, symbols, _, _ = elf_facts("calls_test")
    compute, compute2 = spec.programs["compute"], spec.programs["compute2"]
    assert compute.section == compute2.section == "syscall"
    assert compute.function.sec_insn_off == 0
    assert compute2.function.sec_insn_off * 8 == symbols["compute2"][1] > 0
    # .text functions are subprograms, not programs
    assert set(spec.functions) == {"add3", "twice", "sum_cb", "each_cb"}
    assert not set(spec.functions) & set(spec.programs)


def test_question_mark_section_is_not_autoloaded():
    spec = pybpf.open(program("link_test"))
    assert spec.programs["link_main"].autoload is True
    assert spec.programs["not_autoloaded"].autoload is False


@pytest.mark.parametrize("section, prog_type, attach_type", [
    ("tp/sched/sched_switch", "TRACEPOINT", None),
    ("raw_tracepoint/sys_enter", "RAW_TRACEPOINT", None),
    ("kretprobe/do_sys_open", "KPROBE", None),
    ("uprobe//bin/true:main", "KPROBE", None),
    ("fentry/do_unlinkat", "TRACING", "TRACE_FENTRY"),
    ("tp_btf/sched_switch", "TRACING", "TRACE_RAW_TP"),
    ("cgroup_skb/ingress", "CGROUP_SKB", "CGROUP_INET_INGRESS"),
    ("tcx/egress", "SCHED_CLS", "TCX_EGRESS"),
    ("xdp.frags", "XDP", "XDP"),
    ("?syscall", "SYSCALL", None),
    ("sk_lookup", "SK_LOOKUP", "SK_LOOKUP"),
])
def test_section_table(section, prog_type, attach_type):
    d = match_section(section)
    assert d is not None
    assert (d.prog_type, d.attach_type) == (prog_type, attach_type)


@pytest.mark.parametrize("section", ["sysfoo", "tracepointx/a/b", "xdpfoo", "kprobes/x", ""])
def test_section_table_rejects_unknown_names(section):
    assert match_section(section) is None


# -- maps ---------------------------------------------------------------------------------

def test_btf_defined_maps_of_maps_test():
    spec = pybpf.open(program("maps_test"))
    got = {m.name: (m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.internal)
           for m in spec.maps.values()}
    assert got == {
        # struct val is 16 bytes; __u32/__u64 keys and values (programs/maps_test.bpf.c)
        "hash": (MapType.HASH, 4, 16, 128, 0, False),
        "array": (MapType.ARRAY, 4, 8, 8, 0, False),
        "percpu": (MapType.PERCPU_ARRAY, 4, 8, 4, 0, False),
        "lru": (MapType.LRU_HASH, 8, 8, 64, 0, False),
    }
    hash_ = spec.maps["hash"]
    assert spec.btf.type_name(hash_.key_type_id) == "__u32"
    assert spec.btf.type_name(hash_.value_type_id) == "struct val"


def test_map_with_array_value_type():
    spec = pybpf.open(program("verifier_fail"))
    m = spec.maps["values"]
    assert (m.type, m.key_size, m.value_size, m.max_entries) == (MapType.ARRAY, 4, 16, 1)  # __u32[4]


def test_ring_buffer_maps_of_user_ringbuf():
    spec = pybpf.open(program("user_ringbuf"))
    assert (spec.maps["user_ringbuf"].type, spec.maps["user_ringbuf"].max_entries) == \
        (MapType.USER_RINGBUF, 256 * 1024)
    assert (spec.maps["kernel_ringbuf"].type, spec.maps["kernel_ringbuf"].max_entries) == \
        (MapType.RINGBUF, 256 * 1024)
    for name in ("user_ringbuf", "kernel_ringbuf"):
        assert (spec.maps[name].key_size, spec.maps[name].value_size) == (0, 0)


@pytest.mark.parametrize("name, expected", [
    ("user_ringbuf", {".bss": "user_rin.bss"}),
    ("globals_test", {".data": "globals_.data", ".rodata": "globals_.rodata", ".bss": "globals_.bss"}),
    ("tracepoint_test", {".rodata": "tracepoi.rodata", ".bss": "tracepoi.bss"}),
    ("link_test", {".data": "link_tes.data", ".bss": "link_tes.bss"}),
    ("calls_test", {}),
])
def test_internal_maps_named_as_libbpf_names_them(name, expected):
    spec = pybpf.open(program(name))
    sizes, _, _, _ = elf_facts(name)
    internal = {m.section: m for m in spec.maps.values() if m.internal}
    assert {sec: m.name for sec, m in internal.items()} == expected
    for sec, m in internal.items():
        # one-entry array whose value is the whole section; mmapable; .rodata read-only to programs
        assert (m.type, m.key_size, m.max_entries) == (MapType.ARRAY, 4, 1)
        assert m.value_size == sizes[sec] > 0
        assert m.flags & BPF_F_MMAPABLE
        assert bool(m.flags & BPF_F_RDONLY_PROG) == (sec == ".rodata") == m.readonly
        assert len(m.data) == m.value_size


def test_internal_map_name_rules():
    assert internal_map_name("user_ringbuf", ".bss") == "user_rin.bss"
    assert internal_map_name("ab", ".rodata") == "ab.rodata"
    # a section name with a dot inside is used alone (libbpf), cut to 15 characters
    assert internal_map_name("globals_test", ".data.custom") == ".data.custom"
    assert internal_map_name("x", ".rodata.str1.1.longer") == ".rodata.str1.1."
    assert internal_map_name("my-obj", ".bss") == "my_obj.bss"


def test_initial_images_of_internal_maps():
    spec = pybpf.open(program("globals_test"))
    data, rodata, bss = (spec.maps[f"globals_.{s}"] for s in ("data", "rodata", "bss"))
    _, symbols, _, _ = elf_facts("globals_test")
    # initial values from programs/globals_test.bpf.c, at the ELF symbol offsets
    off = symbols["data_counter"][1]
    assert struct.unpack_from("<i", data.data, off)[0] == 7
    off = symbols["data_struct"][1]
    assert struct.unpack_from("<IH2BQ", data.data, off) == (1, 2, 3, 4, 0x1122334455667788)
    assert struct.unpack_from("<I", rodata.data, symbols["rodata_param"][1])[0] == 42
    off = symbols["rodata_name"][1]
    assert bytes(rodata.data[off:off + 16]) == b"pybpf".ljust(16, b"\0")
    assert bytes(bss.data) == bytes(bss.value_size)


# -- variables -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["globals_test", "tracepoint_test", "user_ringbuf", "link_test", "ringbuf_test"])
def test_variables_at_their_elf_symbol_offsets(name):
    spec = pybpf.open(program(name))
    _, symbols, _, _ = elf_facts(name)
    expected = {sym: (sec, value, size) for sym, (sec, value, size) in symbols.items()
                if sec.startswith((".data", ".rodata", ".bss"))}
    got = {v.name: (v.section, v.offset, v.size) for v in spec.variables.values()}
    assert got == expected
    for v in spec.variables.values():
        assert v.map.section == v.section


def test_variable_types_and_initial_values():
    spec = pybpf.open(program("globals_test"))
    v = spec.variables
    assert v["data_counter"].get() == 7
    assert v["rodata_param"].get() == 42
    assert v["rodata_name"].get() == "pybpf"            # char arrays read as text
    assert v["bss_result"].get() == 0
    assert v["data_struct"].type_name == "struct data_struct"
    assert v["data_struct"].get() == struct.pack("<IH2BQ", 1, 2, 3, 4, 0x1122334455667788)


def test_variable_set_before_load_int_at_its_size():
    spec = pybpf.open(program("globals_test"))
    rodata = spec.maps["globals_.rodata"]
    name_before = bytes(rodata.data[4:20])
    spec.variables["rodata_param"].set(0x01020304)
    off = spec.variables["rodata_param"].offset
    assert bytes(rodata.data[off:off + 4]) == bytes([4, 3, 2, 1])
    assert spec.variables["rodata_param"].get() == 0x01020304
    assert bytes(rodata.data[4:20]) == name_before          # the neighbour is untouched
    spec.variables["bss_result"].set(2**64 - 1)             # u64: the full width
    assert spec.variables["bss_result"].get() == 2**64 - 1
    spec.variables["data_counter"].set(-5)                  # int: signed
    assert spec.variables["data_counter"].get() == -5


def test_variable_set_before_load_bytes():
    spec = pybpf.open(program("globals_test"))
    value = b"hello, world!!\0\0"
    spec.variables["rodata_name"].set(value)
    assert spec.variables["rodata_name"].get() == "hello, world!!"
    name = spec.variables["rodata_name"]
    assert bytes(name.map.data[name.offset:name.offset + 16]) == value
    raw = struct.pack("<IH2BQ", 9, 8, 7, 6, 5)
    spec.variables["data_struct"].set(raw)
    off = spec.variables["data_struct"].offset
    assert bytes(spec.maps["globals_.data"].data[off:off + 16]) == raw


@pytest.mark.parametrize("var, value", [
    ("rodata_name", "seventeen chars!!"),  # text longer than char[16]
    ("rodata_name", b"x" * 17),
    ("rodata_param", b"\0" * 8),
    ("rodata_param", 2**32),           # does not fit in a __u32
    ("data_struct", 5),                # a 16-byte struct is not an int
    ("rodata_param", 1.5),
])
def test_variable_set_wrong_size_or_type_raises(var, value):
    spec = pybpf.open(program("globals_test"))
    before = bytes(spec.variables[var].map.data)
    with pytest.raises(pybpf.Error) as exc:
        spec.variables[var].set(value)
    assert var in str(exc.value)
    assert bytes(spec.variables[var].map.data) == before


def test_open_does_not_share_state_between_specs():
    a = pybpf.open(program("globals_test"))
    a.variables["rodata_param"].set(1)
    b = pybpf.open(program("globals_test"))
    assert b.variables["rodata_param"].get() == 42


# -- BTF ------------------------------------------------------------------------------------

def test_btf_types_of_user_ringbuf():
    spec = pybpf.open(program("user_ringbuf"))
    event = spec.btf.find("struct event")
    assert event.kind == Kind.STRUCT and event.size == 20
    assert [(m.name, m.offset, spec.btf.type_name(m.type_id)) for m in event.members] == \
        [("pid", 0, "int"), ("comm", 4, "char[16]")]
    sample = spec.btf.find("struct user_sample")
    assert [m.name for m in sample.members] == ["i", "comm"] and sample.size == 20
    assert spec.btf.find("kill_exit").kind == Kind.FUNC
    with pytest.raises(pybpf.BTFError):
        spec.btf.find("struct no_such_struct")


@pytest.mark.parametrize("name", ["globals_test", "tracepoint_test", "calls_test", "link_test", "user_ringbuf"])
def test_datasec_fixup(name):
    spec = pybpf.open(program(name))
    sizes, symbols, raw_btf, _ = elf_facts(name)
    # as clang left it: DATASEC sizes 0 (that is what the fix-up is for)
    on_disk = {t.name: t for t in BTF(raw_btf) if t.kind == Kind.DATASEC}
    assert on_disk and all(t.size == 0 for t in on_disk.values())
    # after parsing, in the parsed types AND in the blob that goes to the kernel
    for btf in (spec.btf, BTF(spec.btf.to_bytes())):
        datasecs = {t.name: t for t in btf if t.kind == Kind.DATASEC}
        assert set(datasecs) == set(on_disk)
        for sec, t in datasecs.items():
            assert t.size == sizes[sec] > 0, sec
            offsets = [si.offset for si in t.secinfos]
            assert offsets == sorted(offsets), sec
            for si in t.secinfos:
                var = btf[si.type_id]
                assert (sec, si.offset, si.size) == symbols[var.name], var.name
                assert si.offset + si.size <= t.size


# -- .BTF.ext ---------------------------------------------------------------------------------

def _independent_btf_ext_counts(raw: bytes, strings: BTF) -> tuple[dict, dict]:
    """Record counts per section, read straight from the .BTF.ext layout."""
    magic, version, _, hdr_len, fi_off, fi_len, li_off, li_len = struct.unpack_from("<HBBIIIII", raw)
    assert (magic, version) == (0xEB9F, 1)
    out = []
    for off, length in ((fi_off, fi_len), (li_off, li_len)):
        counts: dict = {}
        pos, end = hdr_len + off, hdr_len + off + length
        rec_size = struct.unpack_from("<I", raw, pos)[0]
        pos += 4
        while pos < end:
            name_off, n = struct.unpack_from("<II", raw, pos)
            counts[strings.string(name_off)] = n
            pos += 8 + n * rec_size
        out.append(counts)
    return out[0], out[1]


@pytest.mark.parametrize("name", ALL_OBJECTS)
def test_btf_ext_func_info_and_line_info(name):
    spec = pybpf.open(program(name))
    _, symbols, raw_btf, raw_ext = elf_facts(name)
    fi_counts, li_counts = _independent_btf_ext_counts(raw_ext, BTF(raw_btf))
    ext = spec.btf_ext
    assert {s: len(r) for s, r in ext.func_info.items()} == fi_counts
    assert {s: len(r) for s, r in ext.line_info.items()} == li_counts
    # one func_info per function, at the function's offset, naming its FUNC type
    funcs = {(sec, value): fname for fname, (sec, value, _) in symbols.items()
             if sec in fi_counts and fname not in spec.variables and sec != "license"}
    got = {(sec, r.insn_off): spec.btf[r.type_id].name for sec, recs in ext.func_info.items() for r in recs}
    assert got == funcs
    for recs in ext.line_info.values():
        assert all(r.line > 0 for r in recs)
        assert [r.insn_off for r in recs] == sorted(r.insn_off for r in recs)


def test_line_info_carries_the_source_text():
    spec = pybpf.open(program("verifier_fail"))
    lines = [spec.btf.string(r.line_off) for r in spec.btf_ext.line_info["syscall"]]
    assert "\tval = v[idx]; /* deliberate out-of-bounds */" in lines
    files = {os.path.normpath(spec.btf.string(r.file_name_off)) for r in spec.btf_ext.line_info["syscall"]}
    assert files == {"verifier_fail.bpf.c"}


def test_objects_linked_by_bpftool_are_accepted(tmp_path):
    # `bpftool gen object` writes DATASEC sizes and offsets itself: nothing left to fix
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.skip("bpftool not installed")
    for name in ("globals_test", "calls_test", "tracepoint_test"):
        out = tmp_path / f"{name}.o"
        subprocess.run([bpftool, "gen", "object", str(out), program(name)], check=True, capture_output=True)
        with open(out, "rb") as f:
            raw = ELFFile(f).get_section_by_name(".BTF").data()
        assert all(t.size > 0 for t in BTF(raw) if t.kind == Kind.DATASEC)
        a, b = pybpf.open(program(name)), pybpf.open(out)
        assert {n: (v.section, v.offset, v.size) for n, v in a.variables.items()} == \
            {n: (v.section, v.offset, v.size) for n, v in b.variables.items()}
        assert {n: (m.type, m.key_size, m.value_size, m.max_entries, m.flags) for n, m in a.maps.items()} == \
            {n: (m.type, m.key_size, m.value_size, m.max_entries, m.flags) for n, m in b.maps.items()}
        assert {n: p.section for n, p in a.programs.items()} == {n: p.section for n, p in b.programs.items()}


def test_section_count_and_name_table_escapes():
    """The gABI escapes for many sections: e_shnum 0 (the count is section 0's sh_size) and
    e_shstrndx SHN_XINDEX (the index is section 0's sh_link) give the same object."""
    data = bytearray(open(program("globals_test"), "rb").read())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    struct.pack_into("<HH", data, 0x3C, 0, 0xFFFF)
    struct.pack_into("<Q", data, shoff + 0x20, shnum)       # section 0: sh_size = count
    struct.pack_into("<I", data, shoff + 0x28, shstrndx)    # section 0: sh_link = name table index
    plain = pybpf.ObjectSpec(open(program("globals_test"), "rb").read(), path="globals_test.o")
    escaped = pybpf.ObjectSpec(bytes(data), path="globals_test.o")
    assert [n for n, _, _ in escaped._sections] == [n for n, _, _ in plain._sections]
    assert {n: bytes(p.function.insns) for n, p in escaped.programs.items()} == \
        {n: bytes(p.function.insns) for n, p in plain.programs.items()}
    assert escaped.variables.keys() == plain.variables.keys()


@pytest.mark.parametrize("field,value,message", [
    (0x3A, 16, "e_shentsize 16 is too small"),                    # section header size
    (0x3E, 500, "section name table index 500 is not a section"),
])
def test_bad_section_table_fields_are_named(field, value, message):
    data = bytearray(open(program("globals_test"), "rb").read())
    struct.pack_into("<H", data, field, value)
    with pytest.raises(pybpf.ObjectError, match=message):
        pybpf.ObjectSpec(bytes(data), path="bad.o")


# -- __ulong() map attributes (libbpf's get_map_field_long) -----------------------------------------

def _map_def_spec(extra_member):
    """An ObjectSpec shell over hand-built BTF: struct { __uint(type, ARENA); __uint(max_entries, 8);
    <extra_member> } (extra_member(builder) -> (member name, type id))."""
    from btf_builder import BTFBuilder
    from pybpf.spec.object import ObjectSpec
    b = BTFBuilder()
    i32 = b.int_("int", 4, signed=True)
    u32 = b.int_("unsigned int", 4)

    def uint(n):
        return b.ptr(b.array(i32, n, index=u32))
    name, type_id = extra_member(b)
    st = b.struct("", 24, [("type", uint(MapType.ARENA), 0), ("max_entries", uint(8), 64),
                           (name, type_id, 128)])
    spec = ObjectSpec.__new__(ObjectSpec)
    spec.btf = b.btf()
    return spec, st


def test_ulong_map_extra_enum64():
    spec, st = _map_def_spec(lambda b: ("map_extra", b.enum64("", [("__unique_value0", 1 << 44)])))
    m = spec._parse_map_def("arena", st, 0)
    assert (m.type, m.max_entries, m.map_extra) == (MapType.ARENA, 8, 1 << 44)


def test_ulong_map_extra_full_64_bits():
    spec, st = _map_def_spec(lambda b: ("map_extra", b.enum64("", [("__unique_value3", (1 << 64) - 4096)])))
    assert spec._parse_map_def("arena", st, 0).map_extra == (1 << 64) - 4096


def test_ulong_map_extra_32_bit_enum():
    # a value that fits 32 bits: clang emits a plain ENUM
    spec, st = _map_def_spec(lambda b: ("map_extra", b.enum("", [("__unique_value1", 0x8000_0000)])))
    assert spec._parse_map_def("arena", st, 0).map_extra == 0x8000_0000


def test_uint_map_extra_still_accepted():
    def member(b):
        return "map_extra", b.ptr(b.array(b.int_("int", 4, signed=True), 3, index=b.int_("u32", 4)))
    spec, st = _map_def_spec(member)
    assert spec._parse_map_def("bloom", st, 0).map_extra == 3


def test_ulong_with_two_enumerators_is_refused():
    spec, st = _map_def_spec(lambda b: ("map_extra", b.enum64("", [("a", 1), ("b", 2)])))
    with pytest.raises(pybpf.BTFError, match=r"'map_extra' is an enum with 2 enumerators; __ulong\(map_extra, N\) "
                                             r"declares exactly one"):
        spec._parse_map_def("arena", st, 0)


def test_ulong_negative_is_refused():
    spec, st = _map_def_spec(lambda b: ("map_extra", b.enum64("", [("v", -4096)], signed=True)))
    with pytest.raises(pybpf.BTFError, match=r"'map_extra' is negative \(-4096\)"):
        spec._parse_map_def("arena", st, 0)


@pytest.mark.parametrize("attr", ["max_entries", "map_flags", "numa_node", "key_size", "value_size", "pinning"])
def test_ulong_only_for_map_extra_as_in_libbpf(attr):
    from btf_builder import BTFBuilder
    from pybpf.spec.object import ObjectSpec
    b = BTFBuilder()
    i32 = b.int_("int", 4, signed=True)
    arr = b.ptr(b.array(i32, MapType.HASH, index=i32))
    st = b.struct("", 16, [("type", arr, 0), (attr, b.enum64("", [("__unique_value2", 4)]), 64)])
    spec = ObjectSpec.__new__(ObjectSpec)
    spec.btf = b.btf()
    with pytest.raises(pybpf.BTFError, match=rf"'{attr}' is declared with __ulong\(\), which libbpf accepts only "
                                             rf"for map_extra: use __uint\({attr}, \.\.\.\)"):
        spec._parse_map_def("m", st, 0)


def test_map_extra_of_another_kind_names_both_macros():
    spec, st = _map_def_spec(lambda b: ("map_extra", b.int_("long", 8)))
    with pytest.raises(pybpf.BTFError, match=r"'map_extra' is not declared with __uint\(\) or __ulong\(\) "
                                             r"\(its type is INT long\)"):
        spec._parse_map_def("arena", st, 0)


def test_ulong_in_a_compiled_object():
    # programs/arena_test.bpf.c: __ulong(map_extra, 0x5ull << 40); the member's BTF is an ENUM64
    spec = pybpf.open(program("arena_test"))
    st = spec.btf.resolve(spec.btf[spec.maps["arena"].btf_var_id].size_or_type)
    member = next(m for m in st.members if m.name == "map_extra")
    assert spec.btf.resolve(member.type_id).kind == Kind.ENUM64
    assert spec.maps["arena"].map_extra == 0x5 << 40
