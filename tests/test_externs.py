"""Externs: .kconfig values, .ksyms kernel symbols and kfuncs (programs/extern_*.bpf.c).

Offline tests resolve and link against injected kernel facts (a hand-built
kernel BTF, a kconfig dict, a kallsyms function), so the expected ids and
values are known by construction; the module kfunc path is tested that way
(this machine has no modules).  Kernel tests load the programs and compare with
/proc/config.gz, uname, /proc/kallsyms and with what libbpf (bpftool 7.1, run
as an oracle with -d) does with the same objects.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess

import pytest

import pybpf
from pybpf.loader import externs as X
from pybpf.loader.facts import KernelFacts
from pybpf.loader.relocate import link_program
from pybpf.spec import insn as I
from pybpf.spec.btf import BTF, LINKAGE_GLOBAL, Kind

from conftest import program

CALL, LD_IMM64 = 0x85, 0x18
BPFTOOL = shutil.which("bpftool")


# -- a small BTF writer for hand-built "kernels" ------------------------------------------------

class Writer:
    """Raw BTF, one method per kind returning the new id; ``base`` makes split BTF (a module)."""

    def __init__(self, base: BTF | None = None):
        self.base = base
        self.first = len(base.types) if base is not None else 1
        self.str_base = base._str_end if base is not None else 0
        self.words: list[int] = []
        self.count = 0
        self.strings = bytearray() if base is not None else bytearray(b"\0")

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = self.str_base + len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: Kind, vlen: int, size_or_type: int, *extra: int, kflag=False) -> int:
        self.words += [self.s(name), (int(kflag) << 31) | (kind << 24) | vlen, size_or_type, *extra]
        self.count += 1
        return self.first + self.count - 1

    def int(self, name, size=4, signed=True):
        return self.add(name, Kind.INT, 0, size, ((1 if signed else 0) << 24) | size * 8)

    def struct(self, name, size):
        return self.add(name, Kind.STRUCT, 0, size)

    def ptr(self, t):
        return self.add("", Kind.PTR, 0, t)

    def typedef(self, name, t):
        return self.add(name, Kind.TYPEDEF, 0, t)

    def proto(self, ret, *params):
        extra = [w for name, t in params for w in (self.s(name), t)]
        return self.add("", Kind.FUNC_PROTO, len(params), ret, *extra)

    def func(self, name, proto):
        return self.add(name, Kind.FUNC, LINKAGE_GLOBAL, proto)

    def var(self, name, t):
        return self.add(name, Kind.VAR, 0, t, LINKAGE_GLOBAL)

    def enum(self, name, **values):
        extra = [w for k, v in values.items() for w in (self.s(k), v)]
        return self.add(name, Kind.ENUM, len(values), 4, *extra)

    def btf(self, source="test BTF") -> BTF:
        types = struct.pack(f"<{len(self.words)}I", *self.words)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return BTF(hdr + types + bytes(self.strings), source=source, base=self.base)


def tiny_kernel(with_acquire=True, cpu_number_type=None):
    """A vmlinux-like BTF with the kfuncs and per-CPU variables the test programs use."""
    w = Writer()
    ids = {}
    ids["int"] = w.int("int")
    ids["s32"] = w.typedef("s32", ids["int"])
    ids["task_struct"] = w.struct("task_struct", 64)
    task_ptr = w.ptr(ids["task_struct"])
    void_void = w.proto(0)
    ids["bpf_rcu_read_lock"] = w.func("bpf_rcu_read_lock", void_void)
    ids["bpf_rcu_read_unlock"] = w.func("bpf_rcu_read_unlock", void_void)
    ids["bpf_task_from_pid"] = w.func("bpf_task_from_pid", w.proto(task_ptr, ("pid", ids["s32"])))
    ids["bpf_task_release"] = w.func("bpf_task_release", w.proto(0, ("p", task_ptr)))
    if with_acquire:
        ids["bpf_task_acquire"] = w.func("bpf_task_acquire", w.proto(task_ptr, ("p", task_ptr)))
    ids["rq"] = w.struct("rq", 128)
    ids["runqueues"] = w.var("runqueues", ids["rq"])
    ids["cpu_number"] = w.var("cpu_number", cpu_number_type(w) if cpu_number_type else ids["int"])
    return w.btf("tiny vmlinux"), ids


KALLSYMS = {"bpf_prog_put": 0xFFFFFFFF814D38F0}


def facts(**kw) -> KernelFacts:
    btf, _ = tiny_kernel()
    args = dict(btf=btf, module_btfs={}, kconfig={}, kernel_version=X.kernel_version_code(6, 18, 44),
                ksym_address=KALLSYMS.get)
    args.update(kw)
    return KernelFacts(**args)


def insn(lp, i):
    return I.decode(lp.insns, i)        # (code, dst, src, off, imm)


def ld_imm64_value(lp, i) -> int:
    return (I.get_imm(lp.insns, i) & 0xFFFFFFFF) | ((I.get_imm(lp.insns, i + 1) & 0xFFFFFFFF) << 32)


def extern_sites(spec, prog):
    """extern name -> instruction indexes (in the unlinked program == linked: no subprograms here)."""
    out = {}
    for r in spec.programs[prog].function.relocations:
        if r.symbol.section == 0:
            out.setdefault(r.symbol.name, []).append(r.insn)
    return out


# -- collection and BTF fix-ups (libbpf bpf_object__collect_externs) ---------------------------

# what libbpf 1.1 prints for the committed objects (bpftool -d prog loadall): index, offset
KCONFIG_LAYOUT = [("CONFIG_PYBPF_NOPE", 0), ("CONFIG_BPF_JIT", 8), ("CONFIG_HZ", 12),
                  ("LINUX_KERNEL_VERSION", 16), ("LINUX_PYBPF_UNKNOWN", 20), ("CONFIG_BPF_JIT_CHAR", 24),
                  ("CONFIG_BPF_SYSCALL", 25), ("CONFIG_KPROBES", 26), ("LINUX_HAS_BPF_COOKIE", 27),
                  ("LINUX_HAS_SYSCALL_WRAPPER", 28), ("CONFIG_LOCALVERSION", 29)]
KSYMS_ORDER = ["bpf_prog_put", "bpf_pybpf_no_such_kfunc", "bpf_rcu_read_lock", "bpf_rcu_read_unlock",
               "bpf_task_acquire", "bpf_task_from_pid", "bpf_task_release", "pybpf_no_such_sym",
               "pybpf_no_such_var"]


def test_kconfig_externs_collected_in_libbpf_order():
    spec = pybpf.open(program("extern_kconfig"))
    layout = sorted((e.index, e.name, e.offset) for e in spec.externs.values())
    assert [(n, off) for _, n, off in layout] == KCONFIG_LAYOUT
    assert [i for i, _, _ in layout] == list(range(len(KCONFIG_LAYOUT)))
    e = spec.externs
    assert (e["CONFIG_HZ"].kconfig_type, e["CONFIG_HZ"].size, e["CONFIG_HZ"].signed) == ("int", 4, True)
    assert e["CONFIG_BPF_SYSCALL"].kconfig_type == "bool" and not e["CONFIG_BPF_SYSCALL"].weak
    assert e["CONFIG_BPF_JIT"].kconfig_type == "tristate"
    assert e["CONFIG_BPF_JIT_CHAR"].kconfig_type == "char"
    assert (e["CONFIG_LOCALVERSION"].kconfig_type, e["CONFIG_LOCALVERSION"].size) == ("char_array", 24)
    assert (e["CONFIG_PYBPF_NOPE"].kconfig_type, e["CONFIG_PYBPF_NOPE"].size) == ("int", 8)
    assert e["CONFIG_PYBPF_NOPE"].weak and e["CONFIG_KPROBES"].weak
    assert spec.kconfig_size == 53


def test_kconfig_map_spec():
    spec = pybpf.open(program("extern_kconfig"))
    m = spec.maps["extern_.kconfig"]            # libbpf: 7 chars of the object name + ".kconfig"
    assert (m.type, m.key_size, m.value_size, m.max_entries) == (2, 4, 53, 1)
    assert m.flags == 0x480                     # BPF_F_RDONLY_PROG | BPF_F_MMAPABLE (libbpf: "flags 480")
    assert m.readonly and m.internal and m.section == ".kconfig"
    sec = spec.btf[m.value_type_id]
    assert (sec.kind, sec.name, sec.size) == (Kind.DATASEC, ".kconfig", 53)
    # kconfig externs are variables of that map (readable after load)
    v = spec.variables["CONFIG_HZ"]
    assert (v.map, v.offset, v.size, v.type_name) == (m, 12, 4, "int")


def test_kconfig_btf_fixed_like_libbpf():
    spec = pybpf.open(program("extern_kconfig"))
    btf = spec.btf
    [sec] = btf.by_name(".kconfig", Kind.DATASEC)
    offsets = [(btf[si.type_id].name, si.offset, si.size) for si in sec.secinfos]
    assert [(n, o) for n, o, _ in offsets] == sorted(KCONFIG_LAYOUT, key=lambda x: x[1])
    for si in sec.secinfos:
        assert btf[si.type_id].linkage == LINKAGE_GLOBAL       # the kernel refuses extern VARs


def test_ksyms_btf_fixed_like_libbpf():
    spec = pybpf.open(program("extern_ksyms"))
    btf = spec.btf
    [sec] = btf.by_name(".ksyms", Kind.DATASEC)
    [dummy] = btf.by_name("dummy_ksym", Kind.VAR)
    assert dummy.id == len(btf.types) - 1                      # appended, nothing renumbered
    int_id = dummy.type_id
    assert (btf[int_id].kind, btf[int_id].bits) == (Kind.INT, 32)
    assert sec.size == 4 * len(sec.secinfos)
    funcs = 0
    for i, si in enumerate(sec.secinfos):
        assert (si.offset, si.size) == (4 * i, 4)
        var = btf[si.type_id]
        if var.id == dummy.id:
            funcs += 1
        else:
            assert (var.kind, var.type_id, var.linkage) == (Kind.VAR, int_id, LINKAGE_GLOBAL)
    assert funcs == 6            # the 6 kfuncs point at dummy_ksym
    for name in ("bpf_task_from_pid", "bpf_task_release", "bpf_pybpf_no_such_kfunc"):
        [f] = btf.by_name(name, Kind.FUNC)
        assert f.linkage == LINKAGE_GLOBAL
        assert all(p.name for p in btf[f.type_id].params)      # unnamed params: "dummy_ksym"


def test_ksym_externs():
    spec = pybpf.open(program("extern_ksyms"))
    assert sorted(spec.externs, key=lambda n: spec.externs[n].index) == KSYMS_ORDER
    e = spec.externs
    assert e["bpf_prog_put"].type_id == 0 and not e["bpf_prog_put"].is_func          # untyped
    assert e["pybpf_no_such_var"].type_id and e["pybpf_no_such_var"].weak            # typed (int)
    assert e["bpf_task_from_pid"].is_func and not e["bpf_task_from_pid"].weak
    assert spec.btf[e["bpf_task_from_pid"].type_id].kind == Kind.FUNC_PROTO
    assert e["bpf_pybpf_no_such_kfunc"].weak
    assert not any(m.section == ".kconfig" for m in spec.maps.values())


def test_btf_types_added_only_for_kfuncs():
    from pybpf.spec.btf_dump import btf_from_file
    for name, added in (("globals_test", 0), ("extern_kconfig", 0), ("extern_ksyms", 1), ("extern_refused", 1)):
        spec = pybpf.open(program(name))
        assert len(spec.btf) == len(btf_from_file(program(name))) + added, name     # dummy_ksym, at the end
    spec = pybpf.open(program("globals_test"))
    assert spec.externs == {} and spec.kconfig_size == 0


# -- .kconfig values (libbpf bpf_object__process_kconfig_line typing rules) ---------------------

KCONFIG = {"CONFIG_BPF_SYSCALL": "y", "CONFIG_HZ": "250", "CONFIG_BPF_JIT": "y",
           "CONFIG_LOCALVERSION": '"-fc-v657"', "CONFIG_KPROBES": "n", "CONFIG_ARCH_HAS_SYSCALL_WRAPPER": "y"}


def kconfig_values(kconfig=None, **kw) -> dict:
    spec = pybpf.open(program("extern_kconfig"))
    res = X.ExternResolution(spec, facts(kconfig=dict(KCONFIG if kconfig is None else kconfig), **kw)).resolve()
    out = {}
    for name, v in spec.variables.items():
        if v.map.section == ".kconfig":
            out[name] = pybpf.spec.object.decode_value(res.kconfig[v.offset:v.offset + v.size], spec.btf,
                                                       v.type_id)
    return out, res


def test_kconfig_values_typed():
    values, res = kconfig_values()
    assert values == {
        "LINUX_KERNEL_VERSION": 0x6122C, "LINUX_HAS_SYSCALL_WRAPPER": True, "LINUX_HAS_BPF_COOKIE": True,
        "LINUX_PYBPF_UNKNOWN": 0, "CONFIG_BPF_SYSCALL": True, "CONFIG_HZ": 250, "CONFIG_BPF_JIT": 1,
        "CONFIG_BPF_JIT_CHAR": 0, "CONFIG_LOCALVERSION": "-fc-v657", "CONFIG_KPROBES": False,
        "CONFIG_PYBPF_NOPE": 0}
    assert not res.externs["CONFIG_PYBPF_NOPE"].resolved and res.externs["CONFIG_HZ"].resolved
    assert len(res.kconfig) == 53


@pytest.mark.parametrize("option,value,expected", [
    ("CONFIG_HZ", "0x100", 256),                  # strtoull base 0: hex
    ("CONFIG_HZ", "010", 8),                      # ... octal
    ("CONFIG_HZ", "-5", -5),                      # negative into a signed int
    ("CONFIG_BPF_JIT", "m", 2),                   # tristate: y 1, m 2, n 0
    ("CONFIG_BPF_JIT", "n", 0),
    ("CONFIG_BPF_JIT_CHAR", "m", ord("m")),       # char: the letter itself
    ("CONFIG_BPF_JIT_CHAR", "65", 65),            # ... or a number
    ("CONFIG_PYBPF_NOPE", "0xffffffffffffffff", 2**64 - 1),
    ("CONFIG_LOCALVERSION", '""', ""),
    ("CONFIG_HZ", "n", None),                     # "is not set": an int option is missing
])
def test_kconfig_value_forms(option, value, expected):
    cfg = dict(KCONFIG, **{option: value})
    if expected is None:
        with pytest.raises(pybpf.ObjectError, match=r"extern 'CONFIG_HZ' \(kconfig\): CONFIG_HZ is not set"):
            kconfig_values(cfg)
        return
    values, _ = kconfig_values(cfg)
    assert values[option] == expected


@pytest.mark.parametrize("option,value,error", [
    ("CONFIG_BPF_SYSCALL", "m", "value 'm' \\(module\\) needs a tristate or char type"),
    ("CONFIG_BPF_SYSCALL", "1", "needs an integer type, not bool"),
    ("CONFIG_HZ", "y", "value 'y' needs a bool, tristate or char type, not int"),
    ("CONFIG_HZ", '"250"', "string value \"250\" needs a char array type"),
    ("CONFIG_HZ", "25x", "value '25x' is not a valid integer"),
    ("CONFIG_HZ", "0x100000000", "does not fit in 4 bytes"),
    ("CONFIG_BPF_JIT_CHAR", "256", "does not fit in 1 bytes"),
    ("CONFIG_LOCALVERSION", "42", "needs an integer type, not char\\[24\\]"),
    ("CONFIG_LOCALVERSION", '"abc', "invalid string value"),
])
def test_kconfig_value_errors(option, value, error):
    with pytest.raises(pybpf.ObjectError, match=f"extern '{option}' .*{error}"):
        kconfig_values(dict(KCONFIG, **{option: value}))


def test_kconfig_string_truncated_with_a_warning():
    with pytest.warns(UserWarning, match="truncated to 23 bytes"):
        values, _ = kconfig_values(dict(KCONFIG, CONFIG_LOCALVERSION='"' + "x" * 40 + '"'))
    assert values["CONFIG_LOCALVERSION"] == "x" * 23


def test_kconfig_missing_strong_option_is_named():
    cfg = dict(KCONFIG)
    del cfg["CONFIG_HZ"]
    with pytest.raises(pybpf.ObjectError,
                       match=r"extern 'CONFIG_HZ' \(kconfig\): CONFIG_HZ is not in the kernel config; "
                             r"declare it __weak"):
        kconfig_values(cfg)
    with pytest.raises(pybpf.ObjectError, match="kernel config could not be read"):
        kconfig_values({})


def test_kconfig_unset_bool_is_false_and_missing_weak_is_zero():
    cfg = dict(KCONFIG, CONFIG_BPF_SYSCALL="n")
    values, res = kconfig_values(cfg)
    assert values["CONFIG_BPF_SYSCALL"] is False and res.externs["CONFIG_BPF_SYSCALL"].resolved
    cfg.pop("CONFIG_KPROBES")
    values, res = kconfig_values(cfg)
    assert values["CONFIG_KPROBES"] is False and not res.externs["CONFIG_KPROBES"].resolved


def test_linux_virtual_externs_from_facts():
    values, _ = kconfig_values(kernel_version=X.kernel_version_code(5, 10, 300))
    assert values["LINUX_KERNEL_VERSION"] == (5 << 16) | (10 << 8) | 255       # patch capped as in libbpf
    values, _ = kconfig_values(dict(KCONFIG, CONFIG_ARCH_HAS_SYSCALL_WRAPPER="n"))
    assert values["LINUX_HAS_SYSCALL_WRAPPER"] is False
    with pytest.raises(pybpf.ObjectError, match="LINUX_KERNEL_VERSION.*kernel version is unknown"):
        kconfig_values(kernel_version=0)


def test_has_bpf_cookie_and_syscall_wrapper():
    w = Writer()
    w.enum("bpf_func_id", BPF_FUNC_unspec=0, BPF_FUNC_get_attach_cookie=174)
    assert X.has_bpf_cookie(facts(btf=w.btf()))
    w = Writer()
    w.enum("bpf_func_id", BPF_FUNC_unspec=0)
    assert not X.has_bpf_cookie(facts(btf=w.btf()))
    assert X.has_bpf_cookie(facts(btf=None, kernel_version=X.kernel_version_code(5, 15)))
    assert not X.has_bpf_cookie(facts(btf=None, kernel_version=X.kernel_version_code(5, 14)))
    assert X.has_syscall_wrapper(facts(kconfig={"CONFIG_ARCH_HAS_SYSCALL_WRAPPER": "y"}))
    # without the option: the arch's wrapper symbol in kallsyms
    pfx = X._SYSCALL_PREFIX.get(os.uname().machine)
    if pfx:
        assert X.has_syscall_wrapper(facts(ksym_address={f"__{pfx}_sys_bpf": 1}.get))
    assert not X.has_syscall_wrapper(facts(ksym_address={}.get))


def test_unknown_kconfig_externs():
    spec = pybpf.open(program("extern_kconfig"))
    ext = spec.externs["LINUX_PYBPF_UNKNOWN"]
    ext.weak = False
    with pytest.raises(pybpf.ObjectError, match="'LINUX_PYBPF_UNKNOWN' \\(kconfig\\): unknown .kconfig extern"):
        X.ExternResolution(spec, facts(kconfig=dict(KCONFIG))).resolve()


# -- ksyms and kfuncs: resolution and relocation ----------------------------------------------------

def linked_ksyms(f=None, prog="ksyms_read", obj="extern_ksyms", module_fd=None):
    spec = pybpf.open(program(obj))
    f = f or facts()
    X.resolve(spec, f, module_btf_fd=module_fd)
    try:
        return spec, link_program(spec, spec.programs[prog], f)
    finally:
        X.release(spec, f)


def test_kfunc_calls_get_btf_ids():
    _, ids = tiny_kernel()
    spec, lp = linked_ksyms()
    sites = extern_sites(spec, "ksyms_read")
    for name in ("bpf_rcu_read_lock", "bpf_task_from_pid", "bpf_task_release", "bpf_rcu_read_unlock"):
        [i] = sites[name]
        assert insn(lp, i) == (CALL, 0, I.PSEUDO_KFUNC_CALL, 0, ids[name]), name


def test_bpf_ksym_exists_on_kfuncs():
    _, ids = tiny_kernel()
    spec, lp = linked_ksyms()
    sites = extern_sites(spec, "ksyms_read")
    [i] = sites["bpf_task_acquire"]           # weak, present: ld_imm64 BPF_PSEUDO_BTF_ID of the FUNC
    assert (insn(lp, i)[0], insn(lp, i)[2]) == (LD_IMM64, I.PSEUDO_BTF_ID)
    assert (I.get_imm(lp.insns, i), I.get_imm(lp.insns, i + 1)) == (ids["bpf_task_acquire"], 0)
    # weak, missing: the address is 0 and the guarded call is poisoned as libbpf does
    ld, call = sites["bpf_pybpf_no_such_kfunc"]
    assert insn(lp, ld)[2] == 0 and ld_imm64_value(lp, ld) == 0
    index = spec.externs["bpf_pybpf_no_such_kfunc"].index
    assert index == 1
    assert insn(lp, call) == (CALL, 0, 0, 0, X.POISON_CALL_KFUNC_BASE + index)


def test_missing_weak_kfunc_without_it():
    spec, lp = linked_ksyms(facts(btf=tiny_kernel(with_acquire=False)[0]))
    [i] = extern_sites(spec, "ksyms_read")["bpf_task_acquire"]
    assert insn(lp, i)[2] == 0 and ld_imm64_value(lp, i) == 0


def test_untyped_and_missing_weak_ksyms():
    spec, lp = linked_ksyms()
    sites = extern_sites(spec, "ksyms_read")
    [i] = sites["bpf_prog_put"]
    assert insn(lp, i)[2] == 0 and ld_imm64_value(lp, i) == KALLSYMS["bpf_prog_put"]
    for name in ("pybpf_no_such_sym", "pybpf_no_such_var"):
        [i] = sites[name]
        assert insn(lp, i)[2] == 0 and ld_imm64_value(lp, i) == 0


def test_typed_ksyms_get_var_btf_ids():
    _, ids = tiny_kernel()
    spec, lp = linked_ksyms(prog="percpu_read", obj="extern_refused")
    sites = extern_sites(spec, "percpu_read")
    for name in ("cpu_number", "runqueues"):
        assert len(sites[name]) == 2
        for i in sites[name]:
            assert (insn(lp, i)[0], insn(lp, i)[2]) == (LD_IMM64, I.PSEUDO_BTF_ID)
            assert (I.get_imm(lp.insns, i), I.get_imm(lp.insns, i + 1)) == (ids[name], 0)   # 0: vmlinux


def test_unguarded_missing_weak_kfunc_is_poisoned():
    spec, lp = linked_ksyms(prog="unguarded_kfunc", obj="extern_refused")
    [i] = extern_sites(spec, "unguarded_kfunc")["bpf_pybpf_no_such_kfunc"]
    assert insn(lp, i) == (CALL, 0, 0, 0, X.POISON_CALL_KFUNC_BASE + 0)


def test_kconfig_reads_are_map_value_loads():
    spec = pybpf.open(program("extern_kconfig"))
    f = facts(kconfig=dict(KCONFIG))
    lp = link_program(spec, spec.programs["kconfig_read"], f)
    X.release(spec, f)
    sites = extern_sites(spec, "kconfig_read")
    refs = {r.insn: r for r in lp.map_refs}
    for name, insns in sites.items():
        for i in insns:
            assert (refs[i].map_name, refs[i].offset) == ("extern_.kconfig", spec.externs[name].offset)
    out = lp.with_map_fds({"extern_.kconfig": 7, "extern_k.bss": 8})
    [i] = sites["CONFIG_HZ"]
    assert I.decode(out, i)[2:] == (I.PSEUDO_MAP_VALUE, 0, 7) and I.get_imm(out, i + 1) == 12


def test_missing_strong_ksyms_are_named():
    w = Writer()
    w.int("int")
    with pytest.raises(pybpf.ObjectError, match=r"extern 'bpf_rcu_read_lock' \(ksym\): no kfunc "
                                                r"'bpf_rcu_read_lock' in the kernel's BTF"):
        linked_ksyms(facts(btf=w.btf()))
    with pytest.raises(pybpf.ObjectError, match=r"extern 'cpu_number' \(ksym\): no variable 'cpu_number'"):
        linked_ksyms(facts(btf=w.btf()), prog="percpu_missing", obj="extern_refused")
    with pytest.raises(pybpf.ObjectError, match=r"extern 'bpf_prog_put' \(ksym\): no symbol 'bpf_prog_put' "
                                                r"in /proc/kallsyms"):
        linked_ksyms(facts(ksym_address={}.get))
    with pytest.raises(pybpf.ObjectError, match="needs the kernel's BTF"):
        linked_ksyms(facts(btf=None))


def test_ksym_type_mismatches():
    # a typed ksym whose type differs from the kernel's: an error even if weak (libbpf)
    f = facts(btf=tiny_kernel(cpu_number_type=lambda w: w.struct("not_an_int", 4))[0])
    with pytest.raises(pybpf.ObjectError, match=r"extern 'cpu_number' \(ksym\): its type int does not "
                                                r"match the kernel's struct not_an_int"):
        linked_ksyms(f, prog="percpu_missing", obj="extern_refused")
    # a kfunc whose prototype differs: strong is an error, weak is left unresolved
    w = Writer()
    i = w.int("int")
    for name in ("bpf_rcu_read_lock", "bpf_rcu_read_unlock"):
        w.func(name, w.proto(i, ("x", i)))
    with pytest.raises(pybpf.ObjectError, match="'bpf_rcu_read_lock'.*prototype does not match"):
        linked_ksyms(facts(btf=w.btf()))


def test_kfunc_in_a_module():
    """A kfunc and a typed ksym found in a module's split BTF: call off = fd_array index,
    ld_imm64 second imm = the module BTF fd (libbpf's module path)."""
    base, ids = tiny_kernel()
    m = Writer(base)
    kfunc = m.func("bpf_pybpf_no_such_kfunc", m.proto(ids["int"], ("x", ids["int"])))
    percpu = m.var("pybpf_no_such_percpu", ids["int"])
    module = m.btf("pybpf_mod")
    assert kfunc >= len(base.types)                          # ids continue after vmlinux
    f = facts(btf=base, module_btfs={"pybpf_mod": module})
    opened = []

    def module_fd(name):
        opened.append(name)
        return 42

    spec, lp = linked_ksyms(f, module_fd=module_fd)
    ld, call = extern_sites(spec, "ksyms_read")["bpf_pybpf_no_such_kfunc"]
    assert insn(lp, call) == (CALL, 0, I.PSEUDO_KFUNC_CALL, 1, kfunc)        # off 1: fd_array[1]
    assert insn(lp, ld)[2] == I.PSEUDO_BTF_ID
    assert (I.get_imm(lp.insns, ld), I.get_imm(lp.insns, ld + 1)) == (kfunc, 42)

    spec = pybpf.open(program("extern_refused"))
    res = X.resolve(spec, f, module_btf_fd=module_fd)
    try:
        lp = link_program(spec, spec.programs["percpu_missing"], f)
        assert res.modules == ["pybpf_mod"] and res.fd_array() == [0, 42]
        [i] = extern_sites(spec, "percpu_missing")["pybpf_no_such_percpu"]
        assert insn(lp, i)[2] == I.PSEUDO_BTF_ID
        assert (I.get_imm(lp.insns, i), I.get_imm(lp.insns, i + 1)) == (percpu, 42)
        assert res.externs["bpf_pybpf_no_such_kfunc"].fd_index == 1
    finally:
        X.release(spec, f)
    # vmlinux first: a kfunc in both comes from vmlinux, no fd_array
    m = Writer(base)
    m.func("bpf_rcu_read_lock", m.proto(0))
    spec = pybpf.open(program("extern_ksyms"))
    res = X.resolve(spec, facts(btf=base, module_btfs={"other": m.btf()}), module_btf_fd=module_fd)
    assert res.externs["bpf_rcu_read_lock"].module is None and res.fd_array() is None


def test_flavored_kfunc_names():
    assert X.essential_name("bpf_task_acquire___v2") == "bpf_task_acquire"
    assert X.essential_name("bpf_task_acquire") == "bpf_task_acquire"
    assert X.essential_name("a___b___c") == "a___b"
    assert X.essential_name("x____y") == "x____y"           # 4 underscores: no flavor


def test_types_are_compat():
    w = Writer()
    i = w.int("int")
    u = w.int("unsigned int", signed=False)
    td = w.typedef("s32", i)
    s1, s2 = w.struct("a", 4), w.struct("b", 8)
    p1, p2 = w.ptr(s1), w.ptr(s2)
    f1 = w.proto(p1, ("x", td))
    f2 = w.proto(p2, ("y", u))
    f3 = w.proto(p2, ("y", u), ("z", u))
    f4 = w.proto(i, ("y", u))
    btf = w.btf()
    assert X.types_are_compat(btf, i, btf, u) and X.types_are_compat(btf, td, btf, u)
    assert X.types_are_compat(btf, s1, btf, s2)              # names below the top are not compared
    assert X.types_are_compat(btf, f1, btf, f2)
    assert not X.types_are_compat(btf, f1, btf, f3)          # parameter count
    assert not X.types_are_compat(btf, f1, btf, f4)          # pointer vs int return
    assert X.types_are_compat(btf, 0, btf, 0) and not X.types_are_compat(btf, 0, btf, i)


def test_c_integers():
    assert [X._parse_c_integer(s) for s in ("0", "12", "0x1F", "0X1f", "017", "-3", "+4")] == \
        [0, 12, 31, 31, 15, -3, 4]
    assert [X._parse_c_integer(s) for s in ("", "-", "0x", "08", "1_0", "12a", "y")] == [None] * 7


def test_link_program_without_facts_uses_the_running_kernel(monkeypatch):
    """link_program(spec, prog) with no facts resolves against KernelFacts.running()."""
    spec = pybpf.open(program("extern_kconfig"))
    monkeypatch.setattr(X, "_default_facts", facts(kconfig=dict(KCONFIG)))
    lp = link_program(spec, spec.programs["kconfig_read"])
    assert any(r.map_name == "extern_.kconfig" for r in lp.map_refs)
    X.release(spec)


def test_undefined_symbol_that_is_no_extern():
    spec = pybpf.open(program("extern_ksyms"))
    spec.externs.pop("bpf_prog_put")
    with pytest.raises(pybpf.ObjectError, match="undefined symbol 'bpf_prog_put', which is not a .kconfig or "
                                                ".ksyms extern"):
        link_program(spec, spec.programs["ksyms_read"], facts())
    X.release(spec, facts())


# -- in the kernel -----------------------------------------------------------------------------------

def proc_config() -> dict:
    with gzip.open("/proc/config.gz", "rt") as f:
        return dict(line.strip().split("=", 1) for line in f if line.startswith("CONFIG_"))


def kallsyms(name: str) -> int:
    with open("/proc/kallsyms") as f:
        found = [int(line.split()[0], 16) for line in f if line.split()[2:3] == [name]]
    assert len(found) == 1, name
    return found[0]


def uname_version() -> int:
    nums = [int(re.match(r"\d+", p).group()) for p in os.uname().release.split("-")[0].split(".")[:3]]
    return X.kernel_version_code(*nums)


@pytest.mark.kernel
@pytest.mark.skipif(not os.path.exists("/proc/config.gz"), reason="needs /proc/config.gz")
def test_kconfig_in_the_kernel(no_fd_leak):
    cfg = proc_config()
    with pybpf.load(program("extern_kconfig")) as obj:
        m = obj.maps["extern_.kconfig"]
        assert (m.value_size, m.flags) == (53, 0x480)
        ret = obj.programs["kconfig_read"].test_run().retval
        out = obj.variables["out"].get()
        assert ret == int(cfg["CONFIG_HZ"])
        assert out.kernel_version == uname_version()
        assert out.hz == int(cfg["CONFIG_HZ"])
        assert out.bpf_syscall == (cfg["CONFIG_BPF_SYSCALL"] == "y")
        assert out.bpf_jit == {"y": 1, "m": 2}[cfg["CONFIG_BPF_JIT"]]
        assert out.localversion == cfg.get("CONFIG_LOCALVERSION", '""').strip('"')
        assert out.kprobes == (cfg.get("CONFIG_KPROBES") == "y")
        assert out.has_syscall_wrapper == (cfg.get("CONFIG_ARCH_HAS_SYSCALL_WRAPPER") == "y")
        assert out.has_bpf_cookie == 1                      # 6.x
        assert (out.nope, out.unknown_linux, out.bpf_jit_char) == (0, 0, 0)
        # the externs are read-only variables of the frozen map
        assert obj.variables["CONFIG_HZ"].get() == int(cfg["CONFIG_HZ"])
        with pytest.raises(pybpf.Error, match="read-only"):
            obj.variables["CONFIG_HZ"].set(1)


@pytest.mark.kernel
def test_ksyms_in_the_kernel(no_fd_leak):
    with pybpf.load(program("extern_ksyms")) as obj:
        prog = obj.programs["ksyms_read"]
        prog.test_run(ctx=struct.pack("<i", os.getpid()))
        out = obj.variables["out"].get()
        assert out.prog_put_addr == kallsyms("bpf_prog_put")
        assert (out.no_such_var_addr, out.no_such_sym_addr) == (0, 0)
        assert out.task_found == 1                         # bpf_task_from_pid(our pid)
        assert (out.acquire_exists, out.nope_exists, out.nope_ret) == (1, 0, -1)
        obj.variables["out"].set(bytes(obj.variables["out"].size))
        prog.test_run(ctx=struct.pack("<i", 0x3FFFFFFF))   # no such pid
        assert obj.variables["out"].get().task_found == 0


@pytest.mark.kernel
def test_refused_externs_in_the_kernel(no_fd_leak):
    spec = pybpf.open(program("extern_refused"))
    with spec.load() as obj:
        assert list(obj.programs) == ["percpu_missing"]
        obj.programs["percpu_missing"].test_run()
        assert obj.variables["percpu"].get().missing_value == -1
    # a reachable call to a missing weak kfunc: the verifier refuses the poisoned call
    spec.programs["unguarded_kfunc"].autoload = True
    with pytest.raises(pybpf.VerifierError, match="(?s)invalid func unknown#2002000000.*hint: the program calls "
                                                  "kfunc 'bpf_pybpf_no_such_kfunc'.*bpf_ksym_exists"):
        spec.load()
    spec.programs["unguarded_kfunc"].autoload = False
    # typed per-CPU ksyms: kallsyms has no variables without CONFIG_KALLSYMS_ALL
    spec.programs["percpu_read"].autoload = True
    if proc_config().get("CONFIG_KALLSYMS_ALL") == "y":
        with spec.load() as obj:
            obj.programs["percpu_read"].test_run()
            p = obj.variables["percpu"].get()
            assert (p.this_cpu_number, p.cpu0_number, p.rq_this_is_cpu_rq) == (p.cpu, 0, 1)
    else:
        with pytest.raises(pybpf.VerifierError, match="(?s)failed to find the address for kernel symbol "
                                                      "'cpu_number'.*CONFIG_KALLSYMS_ALL"):
            spec.load()


# -- libbpf as the oracle (bpftool 7.1 prog loadall -d) --------------------------------------------

def bpftool_loadall(obj: str, tmp_name: str, pin_maps: bool = True) -> tuple[str, str]:
    """Run libbpf on ``obj``; returns (its debug log, the map pin directory)."""
    progs = f"/sys/fs/bpf/{tmp_name}_p"
    maps = f"/sys/fs/bpf/{tmp_name}_m"
    cmd = [BPFTOOL, "-d", "prog", "loadall", program(obj), progs]
    if pin_maps:
        cmd += ["pinmaps", maps]
    log = subprocess.run(cmd, capture_output=True, text=True).stderr
    shutil.rmtree(progs, ignore_errors=True)
    return log, maps


def pinned_map(path: str):
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.attrs import MapInfo
    fd = sc.obj_get(path)
    try:
        info = sc.obj_get_info_by_fd(fd, MapInfo())
        value = bytearray(info.value_size)
        sc.map_lookup_elem(fd, bytearray(4), value)
        return info, bytes(value)
    finally:
        os.close(fd)


needs_bpftool = pytest.mark.skipif(BPFTOOL is None, reason="needs bpftool (libbpf as the oracle)")


@pytest.mark.kernel
@needs_bpftool
def test_kconfig_like_libbpf(no_fd_leak):
    from pybpf.kernel.btf import btf_by_id
    log, maps = bpftool_loadall("extern_kconfig", f"pybpf_kcfg_{os.getpid()}")
    try:
        libbpf_layout = re.findall(r"extern \(kcfg\) #(\d+): symbol \d+, off (\d+), name (\w+)", log)
        assert [(n, int(off)) for _, off, n in libbpf_layout] == KCONFIG_LAYOUT
        info, libbpf_value = pinned_map(f"{maps}/extern__kconfig")
        theirs = btf_by_id(info.btf_id)
        spec = pybpf.open(program("extern_kconfig"))
        # the object's BTF after the .kconfig fix-ups: byte for byte what libbpf loaded
        assert spec.btf.to_bytes() == bytes(theirs.raw)
        with spec.load() as obj:
            ours = bytes(obj.maps["extern_.kconfig"].mmap()[:53])
            assert obj.maps["extern_.kconfig"].flags == info.map_flags
            assert obj.maps["extern_.kconfig"].name == info.name.decode()
        # every value as libbpf sets it, except LINUX_HAS_SYSCALL_WRAPPER: libbpf probes it with
        # a kprobe, which a kernel without kprobes refuses
        wrapper = spec.externs["LINUX_HAS_SYSCALL_WRAPPER"].offset
        assert ours[:wrapper] + ours[wrapper + 1:] == libbpf_value[:wrapper] + libbpf_value[wrapper + 1:]
        assert "'LINUX_HAS_SYSCALL_WRAPPER': set to 0x" in log
    finally:
        shutil.rmtree(maps, ignore_errors=True)


@pytest.mark.kernel
@needs_bpftool
def test_ksyms_like_libbpf(no_fd_leak):
    from pybpf.kernel.btf import btf_by_id
    log, maps = bpftool_loadall("extern_ksyms", f"pybpf_ksyms_{os.getpid()}")
    try:
        order = re.findall(r"extern \(ksym\) #(\d+): symbol \d+, name (\w+)", log)
        assert [n for _, n in order] == KSYMS_ORDER
        info, _ = pinned_map(f"{maps}/extern_k_bss")
        spec = pybpf.open(program("extern_ksyms"))
        assert spec.btf.to_bytes() == bytes(btf_by_id(info.btf_id).raw)
    finally:
        shutil.rmtree(maps, ignore_errors=True)
    res = X.resolve(spec, KernelFacts.running())
    try:
        for name, btf_id in re.findall(r"extern \(func ksym\) '(\w+)': resolved to kernel \[(\d+)\]", log):
            assert res.externs[name].btf_id == int(btf_id), name
        for name, addr in re.findall(r"extern \(ksym\) '(\w+)': set to 0x([0-9a-f]+)", log):
            assert res.externs[name].address == int(addr, 16), name
        weak = re.findall(r"extern '(\w+)' \(weak\): not resolved", log)
        assert sorted(weak) == ["bpf_pybpf_no_such_kfunc", "pybpf_no_such_sym", "pybpf_no_such_var"]
        assert sorted(n for n, r in res.externs.items() if not r.resolved) == sorted(weak)
    finally:
        X.release(spec)


@pytest.mark.kernel
@needs_bpftool
def test_typed_ksyms_like_libbpf():
    # libbpf resolves them, then the kernel refuses percpu_read as it refuses ours
    log, maps = bpftool_loadall("extern_refused", f"pybpf_refused_{os.getpid()}", pin_maps=False)
    resolved = dict(re.findall(r"extern \(var ksym\) '(\w+)': resolved to \[(\d+)\]", log))
    assert set(resolved) == {"cpu_number", "runqueues"}
    spec = pybpf.open(program("extern_refused"))
    res = X.resolve(spec, KernelFacts.running())
    try:
        for name, btf_id in resolved.items():
            assert (res.externs[name].btf_id, res.externs[name].module) == (int(btf_id), None)
        assert not res.externs["pybpf_no_such_percpu"].resolved
    finally:
        X.release(spec)


@pytest.mark.kernel
@needs_bpftool
def test_xlated_kfunc_calls_like_libbpf(no_fd_leak):
    """Our loaded ksyms_read and libbpf's are the same program after the verifier."""
    progs = f"/sys/fs/bpf/pybpf_xl_{os.getpid()}"
    subprocess.run([BPFTOOL, "prog", "loadall", program("extern_ksyms"), progs], check=True,
                   capture_output=True)
    try:
        theirs = json.loads(subprocess.check_output([BPFTOOL, "-j", "prog", "dump", "xlated", "pinned",
                                                     f"{progs}/ksyms_read", "opcodes"]))
        with pybpf.load(program("extern_ksyms")) as obj:
            from pybpf.kernel import syscall as sc
            from pybpf.kernel.attrs import ProgInfo
            ours_id = sc.obj_get_info_by_fd(obj.programs["ksyms_read"].fd, ProgInfo()).id
            ours = json.loads(subprocess.check_output([BPFTOOL, "-j", "prog", "dump", "xlated", "id",
                                                       str(ours_id), "opcodes"]))
    finally:
        shutil.rmtree(progs, ignore_errors=True)

    def norm(dump):   # the .bss map ids differ
        return [re.sub(r"map\[id:\d+\]", "map[id:N]", i["disasm"]) for i in dump]
    assert norm(ours) == norm(theirs)
    assert any("call bpf_task_from_pid#" in line for line in norm(ours))


@pytest.mark.kernel
def test_module_btf_fds_in_the_kernel(no_fd_leak):
    """The module path for real, on a kernel without modules: vmlinux's BTF object stands in
    for a module. The kernel reads the kfunc calls' fd_array slot and refuses it as "not a
    module BTF", which shows the fd reached it through fd_array[insn.off]."""
    import ctypes
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.attrs import BtfInfo
    from pybpf.kernel.btf import vmlinux_btf
    from pybpf.loader.facts import read_kallsyms

    fd = X.open_module_btf_fd("vmlinux")
    try:
        name = ctypes.create_string_buffer(64)
        info = sc.obj_get_info_by_fd(fd, BtfInfo(name=ctypes.addressof(name), name_len=64))
        assert info.kernel_btf and name.value == b"vmlinux"
    finally:
        os.close(fd)
    with pytest.raises(pybpf.Error, match="no kernel BTF object for module 'pybpf_no_such_module'"):
        X.open_module_btf_fd("pybpf_no_such_module")

    w = Writer()
    w.int("int")
    kallsyms = read_kallsyms()
    f = KernelFacts(btf=w.btf(), module_btfs={"vmlinux": vmlinux_btf()}, kconfig={}, kernel_version=1,
                    ksym_address=kallsyms.get)
    with pytest.raises(pybpf.VerifierError, match="BTF fd for kfunc is not a module BTF"):
        pybpf.open(program("extern_ksyms")).load(facts=f)
