"""Refusals named by their cause (issue 9): objects that libbpf refuses too fail with one
line that says why.  Each refusal is provoked for real against the running kernel, and
what the kernel does is derived from the kernel itself (its BTF, securityfs, kconfig),
never assumed from the machine these tests were written on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys

import pytest

import pybpf
from pybpf.kernel.btf import vmlinux_btf
from pybpf.kernel.constants import AttachType, MapType, ProgType
from pybpf.loader import map_create_attr, possible_cpus, refusals
from pybpf.loader.facts import KernelFacts, read_kconfig
from pybpf.spec.btf import Kind
from pybpf.spec.sections import match_section

from btf_builder import BTFBuilder
from conftest import ROOT, program

MODES = ("none", "integrity", "confidentiality")


def running_enum(name: str) -> dict:
    for t in vmlinux_btf().by_name(name):
        if t.kind in (Kind.ENUM, Kind.ENUM64):
            return {v.name: v.value for v in t.values}
    return {}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybpf", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


# -- ENOTSUPP (524) --------------------------------------------------------------------------------

def test_enotsupp_is_named_not_unknown():
    e = pybpf.SyscallError("BPF_PROG_LOAD", 524, "program 'x'")
    assert str(e) == "BPF_PROG_LOAD: operation not supported by the kernel (ENOTSUPP): program 'x'"
    assert "Unknown error" not in str(e)
    assert e.errno == 524


@pytest.mark.kernel
def test_enotsupp_from_the_kernel(no_fd_leak):
    # bpf_prog_test_run: a program type without a test_run operation (tracepoints) is ENOTSUPP
    with pybpf.load(program("tracepoint_test")) as obj:
        with pytest.raises(pybpf.SyscallError) as exc:
            obj.programs["on_getpid"].test_run()
    e = exc.value
    assert (e.command, e.errno) == ("BPF_PROG_TEST_RUN", 524)
    assert "operation not supported by the kernel (ENOTSUPP)" in str(e)
    assert "Unknown error" not in str(e)


# -- maps left with max_entries 0 ---------------------------------------------------------------

UNSET = {"stacks": MapType.STACK_TRACE, "counts": MapType.HASH, "events": MapType.RINGBUF}


def test_maps_left_for_user_space_are_found_offline():
    spec = pybpf.open(program("max_entries_unset"))
    assert {m.name: m.max_entries for m in spec.maps.values() if not m.internal} == \
        {"stacks": 0, "counts": 0, "events": 0, "perf_events": 0, "task_seen": 0}
    found = refusals.unset_max_entries(spec)
    # a perf event array gets one slot per CPU, task storage must be 0: neither is refused
    assert {(name, mtype) for name, _, mtype in found} == set(UNSET.items())
    assert ("stacks", "spec.maps['stacks'].max_entries", MapType.STACK_TRACE) in found


def test_a_ring_buffer_without_a_size_is_not_created_at_one_page():
    spec = pybpf.open(program("max_entries_unset"))
    assert map_create_attr(spec.maps["events"]).max_entries == 0       # as libbpf: the kernel refuses 0
    spec.maps["events"].max_entries = 5000
    assert map_create_attr(spec.maps["events"]).max_entries == 8192     # page * 2^k
    assert map_create_attr(spec.maps["perf_events"]).max_entries == possible_cpus()


def test_an_inner_map_left_at_zero_names_its_setter():
    spec = pybpf.open(program("map_types"))
    spec.maps["outer"].inner.max_entries = 0
    found = refusals.unset_max_entries(spec)
    assert ("outer.inner", "spec.maps['outer'].inner.max_entries", MapType.ARRAY) in found
    with pytest.raises(pybpf.Error, match=r"spec\.maps\['outer'\]\.inner\.max_entries = "):
        refusals.check_max_entries(spec)


@pytest.mark.kernel
def test_unset_max_entries_refused_before_map_create(no_fd_leak):
    spec = pybpf.open(program("max_entries_unset"))
    with pytest.raises(pybpf.Error) as exc:
        spec.load()
    e = exc.value
    assert type(e) is pybpf.Error             # ours, before any BPF_MAP_CREATE (no SyscallError)
    text = str(e)
    assert "\n" not in text
    assert "'stacks' (STACK_TRACE), 'counts' (HASH), 'events' (RINGBUF) have max_entries 0" in text
    assert "perf_events" not in text and "task_seen" not in text
    assert "spec.maps['stacks'].max_entries = " in text
    assert "--max-entries stacks=" in text
    assert "ring buffer's max_entries is its size in bytes" in text


@pytest.mark.kernel
def test_unset_max_entries_set_through_the_spec(no_fd_leak):
    spec = pybpf.open(program("max_entries_unset"))
    spec.maps["stacks"].max_entries = 64
    spec.maps["counts"].max_entries = 32
    spec.maps["events"].max_entries = 4096
    with spec.load() as obj:
        got = {name: (m.type, m.max_entries) for name, m in obj.maps.items() if not m.spec.internal}
        assert got == {"stacks": (MapType.STACK_TRACE, 64), "counts": (MapType.HASH, 32),
                       "events": (MapType.RINGBUF, 4096),
                       "perf_events": (MapType.PERF_EVENT_ARRAY, possible_cpus()),
                       "task_seen": (MapType.TASK_STORAGE, 0)}
        assert set(obj.programs) == {"on_getpid"}


@pytest.mark.kernel
def test_unset_max_entries_set_with_the_cli():
    obj = program("max_entries_unset")
    refused = run_cli("load", obj, "--no-attach", "--duration", "0.1")
    assert refused.returncode == 1
    assert "have max_entries 0" in refused.stderr and "--max-entries stacks=" in refused.stderr
    loaded = run_cli("load", obj, "--no-attach", "--duration", "0.1", "--max-entries", "stacks=64",
                     "--max-entries", "counts=0x20", "--max-entries", "events=4096")
    assert loaded.returncode == 0, loaded.stderr
    partly = run_cli("load", obj, "--no-attach", "--duration", "0.1", "--max-entries", "stacks=64")
    assert partly.returncode == 1
    assert "maps 'counts' (HASH), 'events' (RINGBUF) have max_entries 0" in partly.stderr


@pytest.mark.parametrize("arg, message", [
    ("nope=3", "--max-entries: no map 'nope' (this object has: stacks, counts, events, perf_events, task_seen)"),
    ("stacks=0", "--max-entries takes MAP=N with N from 1"),
    ("stacks", "--max-entries takes MAP=N"),
    ("stacks=many", "--max-entries takes MAP=N"),
])
def test_cli_max_entries_bad_arguments(arg, message):
    proc = run_cli("load", program("max_entries_unset"), "--max-entries", arg)
    assert proc.returncode == 1
    assert message in proc.stderr


# -- struct_ops ----------------------------------------------------------------------------------

STRUCT_OPS_PROGRAMS = ("pybpf_ssthresh", "pybpf_cong_avoid", "pybpf_undo_cwnd")


def test_struct_ops_sections_are_recorded():
    spec = pybpf.open(program("struct_ops_test"))
    assert spec.struct_ops == {"pybpf_ca": (".struct_ops.link", "tcp_congestion_ops")}
    assert {n: p.prog_type for n, p in spec.programs.items()} == \
        {n: ProgType.STRUCT_OPS for n in STRUCT_OPS_PROGRAMS}
    m = spec.maps["pybpf_ca"]        # a STRUCT_OPS map named after the variable, as in libbpf
    assert (m.type, m.key_size, m.max_entries, m.flags) == (MapType.STRUCT_OPS, 4, 1, 1 << 13)
    assert m.struct_ops.funcs == {"ssthresh": "pybpf_ssthresh", "cong_avoid": "pybpf_cong_avoid",
                                  "undo_cwnd": "pybpf_undo_cwnd"}


def test_struct_ops_names_the_struct_type_a_kernel_lacks():
    # a "kernel" whose BTF has no bpf_struct_ops_tcp_congestion_ops (the object's own BTF)
    spec = pybpf.open(program("struct_ops_test"))
    with pytest.raises(pybpf.NotSupportedError) as exc:
        refusals.check_struct_ops(spec, KernelFacts(btf=spec.btf))
    text = str(exc.value)
    assert "struct tcp_congestion_ops 'pybpf_ca' (section .struct_ops.link) cannot be loaded" in text
    assert "this kernel does not offer struct tcp_congestion_ops to BPF" in text
    assert "(its BTF has no bpf_struct_ops_tcp_congestion_ops;" in text


@pytest.mark.kernel
def test_struct_ops_kernel_lacking_the_type_is_refused_before_the_kernel(no_fd_leak):
    spec = pybpf.open(program("struct_ops_test"))
    with pytest.raises(pybpf.NotSupportedError) as exc:
        spec.load(facts=KernelFacts(btf=spec.btf))
    text = str(exc.value)
    assert "\n" not in text
    assert "its BTF has no bpf_struct_ops_tcp_congestion_ops" in text
    assert "524" not in text and "ENOTSUPP" not in text


@pytest.mark.kernel
def test_struct_ops_object_loads(no_fd_leak):
    assert vmlinux_btf().by_name("bpf_struct_ops_tcp_congestion_ops", Kind.STRUCT)
    with pybpf.open(program("struct_ops_test")).load() as obj:
        assert obj.maps["pybpf_ca"].info().type == MapType.STRUCT_OPS
        assert set(obj.programs) == set(STRUCT_OPS_PROGRAMS)


@pytest.mark.kernel
def test_struct_ops_programs_left_out_load_the_rest(no_fd_leak):
    spec = pybpf.open(program("struct_ops_test"))
    for name in STRUCT_OPS_PROGRAMS:
        spec.programs[name].autoload = False
    with spec.load() as obj:
        assert not obj.programs
        assert obj.variables["cwnd_updates"].get() == 0


# -- section kinds newer than the kernel ----------------------------------------------------------

def test_fsession_sections_as_libbpf():
    for name, sleepable in (("fsession/do_getpgid", False), ("fsession.s/do_getpgid", True)):
        d = match_section(name)
        assert (d.prog_type, d.attach_type, d.attach) == ("TRACING", "TRACE_FSESSION", "trace")
        assert bool(d.flags & 8) == sleepable         # SLEEPABLE
    assert AttachType.TRACE_FSESSION == 58            # include/uapi/linux/bpf.h, after TRACE_UPROBE_SESSION


def _kernel_btf_with_attach_types(names: list) -> KernelFacts:
    b = BTFBuilder()
    b.int_("int", 4, enc=1)
    b.enum("bpf_prog_type", [("BPF_PROG_TYPE_TRACING", 26)])
    b.enum("bpf_attach_type", [(n, i) for i, n in enumerate(names)])
    return KernelFacts(btf=b.btf())


def test_fsession_on_a_kernel_without_the_attach_type():
    spec = pybpf.open(program("fsession_test"))
    with pytest.raises(pybpf.NotSupportedError) as exc:
        refusals.check_program_kinds(spec, _kernel_btf_with_attach_types(["BPF_TRACE_FENTRY"]))
    text = str(exc.value)
    assert "program 'on_getpgid' (section 'fsession/do_getpgid') is libbpf's fsession" in text
    assert "its BTF has no BPF_TRACE_FSESSION in its enum bpf_attach_type" in text
    assert "spec.programs['on_getpgid'].autoload = False" in text
    # a kernel that has it: not refused here (the kernel itself decides at BPF_PROG_LOAD)
    refusals.check_program_kinds(spec, _kernel_btf_with_attach_types(["BPF_TRACE_FENTRY", "BPF_TRACE_FSESSION"]))


@pytest.mark.kernel
def test_fsession_on_the_running_kernel(no_fd_leak, not_supported_skip):
    spec = pybpf.open(program("fsession_test"))
    if "BPF_TRACE_FSESSION" not in running_enum("bpf_attach_type"):
        with pytest.raises(pybpf.NotSupportedError) as exc:
            spec.load()
        assert "fsession" in str(exc.value)
        assert "its BTF has no BPF_TRACE_FSESSION in its enum bpf_attach_type" in str(exc.value)
        return
    with not_supported_skip:      # e.g. a kernel without BPF trampolines refuses it like fentry
        with spec.load() as obj:
            assert obj.programs["on_getpgid"].spec.expected_attach_type == AttachType.TRACE_FSESSION


# -- EPERM with an empty verifier log ----------------------------------------------------------

@pytest.mark.kernel
def test_iterator_program_loads_or_is_named_refused(no_fd_leak):
    spec = pybpf.open(program("btf_programs"))
    for name, p in spec.programs.items():
        p.autoload = name == "dump_squares"
    try:
        obj = spec.load()
    except pybpf.NotSupportedError as e:
        text = str(e)
        assert "program 'dump_squares' (section 'iter/bpf_map_elem', TRACING)" in text
        assert "it refuses TRACING programs with attach type TRACE_ITER" in text
        assert "EPERM as root" in text
        return
    with obj:
        assert set(obj.programs) == {"dump_squares"}


# -- helpers withheld by lockdown ---------------------------------------------------------------

def test_parse_lockdown():
    assert refusals.parse_lockdown("none [integrity] confidentiality\n") == "integrity"
    assert refusals.parse_lockdown("[none] integrity confidentiality\n") == "none"
    assert refusals.parse_lockdown("none integrity confidentiality") is None


def test_lockdown_lower_bound_without_securityfs(monkeypatch):
    monkeypatch.setattr(refusals, "_securityfs_mounts", lambda: [])
    config = {"CONFIG_SECURITY_LOCKDOWN_LSM": "y", "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY": "y"}
    assert refusals.lockdown_mode(config, "quiet") == \
        ("integrity", "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y", False)
    assert refusals.lockdown_mode(config, "quiet lockdown=confidentiality") == \
        ("confidentiality", "boot option lockdown=confidentiality", False)
    assert refusals.lockdown_mode({"CONFIG_SECURITY_LOCKDOWN_LSM": "y"}, "") == (None, "", False)
    assert refusals.lockdown_mode({"CONFIG_SECURITY_LOCKDOWN_LSM": "n"}, "lockdown=integrity")[::2] == \
        ("none", True)


class _Prog:
    def __init__(self, prog_type):
        self.prog_type, self.name = prog_type, "p"


LOG = "10: (85) call bpf_probe_write_user#36\nprogram of this type cannot use helper bpf_probe_write_user#36\n"


def test_lockdown_refusal_only_when_lockdown_is_the_cause():
    tp = _Prog(ProgType.TRACEPOINT)
    e = refusals.lockdown_refusal(LOG, tp, "program 'p'", mode_info=("integrity", "/x/lockdown", True))
    assert isinstance(e, pybpf.NotSupportedError) and e.log == LOG
    assert "kernel lockdown withholds helper bpf_probe_write_user (LOCKDOWN_BPF_WRITE_USER" in str(e)
    assert "locked down in mode integrity (/x/lockdown)" in str(e)
    # lockdown off: the verifier's own words stand
    assert refusals.lockdown_refusal(LOG, tp, "p", mode_info=("none", "/x/lockdown", True)) is None
    # a program type never offered the helper: not lockdown either
    assert refusals.lockdown_refusal(LOG, _Prog(ProgType.SOCKET_FILTER), "p",
                                     mode_info=("confidentiality", "/x", True)) is None
    # a helper lockdown does not gate
    other = LOG.replace("bpf_probe_write_user", "bpf_get_stackid")
    assert refusals.lockdown_refusal(other, tp, "p", mode_info=("confidentiality", "/x", True)) is None
    # only a lower bound below the helper's mode: named, with the mode unknown
    read = LOG.replace("bpf_probe_write_user", "bpf_probe_read_kernel").replace("#36", "#113")
    e = refusals.lockdown_refusal(read, tp, "p", mode_info=("integrity", "CONFIG_X=y", False))
    assert "lockdown mode is unknown (mount securityfs" in str(e)


@contextlib.contextmanager
def securityfs_mounted():
    """securityfs at /sys/kernel/security for the block (mounted only if it was not)."""
    mounted = bool(refusals._securityfs_mounts())
    if not mounted:
        r = subprocess.run(["mount", "-t", "securityfs", "securityfs", os.path.dirname(refusals.LOCKDOWN)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.fail(f"cannot mount securityfs to read the lockdown mode: {r.stderr.strip()}")
    try:
        yield
    finally:
        if not mounted:
            subprocess.run(["umount", os.path.dirname(refusals.LOCKDOWN)], check=True)


def running_lockdown() -> str:
    """This kernel's lockdown mode, read by the test itself from securityfs."""
    if not os.path.exists(refusals.LOCKDOWN):
        return "none"          # lockdown LSM not in this kernel
    with open(refusals.LOCKDOWN) as f:
        return f.read().split("[")[1].split("]")[0]


def needed_mode(reason: str) -> str:
    """The lockdown mode from which the kernel refuses `reason` (its enum lockdown_reason)."""
    values = running_enum("lockdown_reason")
    return "integrity" if values[reason] < values["LOCKDOWN_INTEGRITY_MAX"] else "confidentiality"


def lockdown_spec(program_name: str):
    spec = pybpf.open(program("lockdown_helpers"))
    for name, p in spec.programs.items():
        p.autoload = name == program_name
    spec.variables["target_tgid"].set(os.getpid())
    return spec


@pytest.mark.kernel
def test_probe_write_user_under_lockdown(no_fd_leak):
    with securityfs_mounted():
        mode = running_lockdown()
        needed = needed_mode("LOCKDOWN_BPF_WRITE_USER")
        spec = lockdown_spec("write_user")
        if MODES.index(mode) >= MODES.index(needed):
            with pytest.raises(pybpf.NotSupportedError) as exc:
                spec.load()
            text = str(exc.value)
            assert "\n" not in text
            assert "program 'write_user'" in text
            assert f"kernel lockdown withholds helper bpf_probe_write_user (LOCKDOWN_BPF_WRITE_USER, " \
                   f"from lockdown mode {needed} up)" in text
            assert f"this kernel is locked down in mode {mode} ({refusals.LOCKDOWN})" in text
            assert "cannot use helper bpf_probe_write_user#36" in exc.value.log
            return
        # not locked down that far: it loads, and writes into this process
        target = ctypes.c_uint64(0)
        with spec.load() as obj:
            obj.variables["user_addr"].set(ctypes.addressof(target))
            with obj.programs["write_user"].attach():
                os.getpid()
        assert target.value == 0x70796270665f6f6b


@pytest.mark.kernel
def test_probe_write_user_lockdown_named_without_securityfs(monkeypatch, no_fd_leak):
    # securityfs not mounted: the mode comes from the boot option and kconfig, as a lower bound
    monkeypatch.setattr(refusals, "_securityfs_mounts", lambda: [])
    mode, source, exact = refusals.lockdown_mode()
    with securityfs_mounted():
        real = running_lockdown()
    needed = needed_mode("LOCKDOWN_BPF_WRITE_USER")
    spec = lockdown_spec("write_user")
    if MODES.index(real) < MODES.index(needed):
        with spec.load():
            return
    with pytest.raises(pybpf.NotSupportedError) as exc:
        spec.load()
    text = str(exc.value)
    assert "kernel lockdown withholds helper bpf_probe_write_user" in text
    assert "mount securityfs (mount -t securityfs securityfs /sys/kernel/security)" in text
    if mode is not None and MODES.index(mode) >= MODES.index(needed):
        assert f"locked down in mode {mode} at least ({source};" in text
        kconfig = read_kconfig()
        assert source.startswith("boot option lockdown=") or kconfig.get(source.split("=")[0]) == "y"
    else:
        assert "lockdown mode is unknown" in text


@pytest.mark.kernel
def test_probe_read_kernel_under_lockdown(no_fd_leak):
    with securityfs_mounted():
        mode = running_lockdown()
        needed = needed_mode("LOCKDOWN_BPF_READ_KERNEL")
        spec = lockdown_spec("read_kernel")
        if MODES.index(mode) >= MODES.index(needed):
            with pytest.raises(pybpf.NotSupportedError) as exc:
                spec.load()
            assert "kernel lockdown withholds helper bpf_probe_read_kernel (LOCKDOWN_BPF_READ_KERNEL" in str(exc.value)
            assert f"locked down in mode {mode}" in str(exc.value)
            return
        with spec.load() as obj:
            assert set(obj.programs) == {"read_kernel"}
