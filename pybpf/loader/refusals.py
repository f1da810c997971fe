"""Refusals named by their cause.

Objects that libbpf refuses too should fail with one line that says why, not with
an errno: some are caught before anything is put in the kernel (maps left with
``max_entries`` 0 for user space to set, struct_ops, section kinds this kernel does
not know), one is explained after the verifier's refusal (helpers withheld by
kernel lockdown).
"""

from __future__ import annotations

import os

from ..errors import Error, NotSupportedError
from ..kernel.constants import MapType, ProgType
from ..spec import sections as S
from ..spec.btf import BTF, Kind

# -- max_entries 0 -------------------------------------------------------------------------------

# map types whose max_entries 0 is right: the kernel requires 0 for local storage
# (bpf_local_storage_map_alloc_check, cgroup_storage_map_alloc), and a perf event array
# gets one slot per possible CPU (libbpf map_set_def_max_entries; map_create_attr here)
_ZERO_MAX_ENTRIES_OK = frozenset({
    MapType.PERF_EVENT_ARRAY, MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE,
    MapType.SK_STORAGE, MapType.INODE_STORAGE, MapType.TASK_STORAGE, MapType.CGRP_STORAGE,
})
_KNOWN_MAP_TYPES = frozenset(int(t) for t in MapType)


def _map_type_name(t: int) -> str:
    try:
        return MapType(t).name
    except ValueError:
        return str(t)


def unset_max_entries(spec) -> list[tuple[str, str, int]]:
    """The maps (and inner maps) of ``spec`` left with max_entries 0 that the kernel would
    refuse: ``(name, how to set it, map type)``."""
    out = []
    for name, m in spec.maps.items():
        for mspec, setter in ((m, f"spec.maps[{name!r}].max_entries"),
                              (m.inner, f"spec.maps[{name!r}].inner.max_entries")):
            # unknown (newer) map types: let the kernel judge
            if (mspec is not None and not mspec.max_entries and mspec.type in _KNOWN_MAP_TYPES
                    and mspec.type not in _ZERO_MAX_ENTRIES_OK):
                out.append((mspec.name, setter, mspec.type))
    return out


def check_max_entries(spec) -> None:
    """Refuses, before BPF_MAP_CREATE, maps that the object leaves for user space to size
    (libbpf-tools' profile, offcputime, memleak...; libbpf keeps ring buffers without a size at
    0 on purpose so that this is seen)."""
    unset = unset_max_entries(spec)
    if not unset:
        return
    name, setter, mtype = unset[0]
    example = 256 * 1024 if mtype in (MapType.RINGBUF, MapType.USER_RINGBUF) else 10240
    ring = any(t in (MapType.RINGBUF, MapType.USER_RINGBUF) for _, _, t in unset)
    what = ", ".join(f"{n!r} ({_map_type_name(t)})" for n, _, t in unset)
    plural = len(unset) > 1
    raise Error(
        f"{spec.path}: map{'s' if plural else ''} {what} {'have' if plural else 'has'} max_entries 0: "
        f"the object leaves {'them' if plural else 'it'} for user space to set before loading "
        f"(the kernel refuses 0). Set {'each' if plural else 'it'}, e.g. {setter} = {example}"
        + f", or with the CLI: python -m pybpf load OBJ --max-entries {name}={example}"
        + (" (a ring buffer's max_entries is its size in bytes, a power-of-2 multiple of the page size)"
           if ring else ""))


def check_program_kinds(spec, facts) -> None:
    """Programs of a kind newer than the kernel: its BTF has no such program type or attach
    type (fsession on kernels before BPF_TRACE_FSESSION...).  Only the kinds listed in
    :data:`pybpf.spec.sections.FEATURES` are checked (no BTF is read for the others)."""
    btf = None
    for name, prog in spec.programs.items():
        sec = prog.sec_def
        if not prog.autoload or sec.stem not in S.FEATURES:
            continue
        if btf is None:
            from ..kernel.btf import enum_names, running_btf
            btf = running_btf(facts)
            if btf is None:
                return
        missing = []
        prog_types = enum_names(btf, "bpf_prog_type")
        if prog_types is not None and f"BPF_PROG_TYPE_{sec.prog_type}" not in prog_types:
            missing.append(f"BPF_PROG_TYPE_{sec.prog_type} in its enum bpf_prog_type")
        attach_types = enum_names(btf, "bpf_attach_type")
        if sec.attach_type and attach_types is not None and f"BPF_{sec.attach_type}" not in attach_types:
            missing.append(f"BPF_{sec.attach_type} in its enum bpf_attach_type")
        if missing:
            raise NotSupportedError(
                f"{spec.path}: program {name!r} (section {prog.section!r}) is libbpf's {S.feature_name(sec)}, "
                f"which this kernel does not have: its BTF has no {' and no '.join(missing)}. "
                f"Leave the program out with spec.programs[{name!r}].autoload = False to load the rest")


# -- struct_ops ----------------------------------------------------------------------------------

def check_struct_ops(spec, facts) -> None:
    """struct_ops maps whose struct this kernel does not offer to BPF (no
    ``bpf_struct_ops_<name>`` in its BTF, or no BTF at all): refused by name before anything
    is created, instead of failing later with ENOTSUPP."""
    st_maps = getattr(spec, "struct_ops", {})
    if not st_maps:
        return
    types = sorted({tname for _, tname in st_maps.values()})
    from ..kernel.btf import running_btf
    btf = running_btf(facts)
    parts = ", ".join(f"struct {tname} {var!r} (section {section})" for var, (section, tname) in st_maps.items())
    if btf is None:
        raise NotSupportedError(f"{spec.path}: struct_ops {parts} cannot be registered: this kernel has no BTF "
                                f"(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF), which describes the "
                                f"struct_ops types")
    absent = [t for t in types if not btf.by_name(f"bpf_struct_ops_{t}", Kind.STRUCT)]
    if absent:
        raise NotSupportedError(
            f"{spec.path}: struct_ops {parts} cannot be loaded: this kernel does not offer "
            f"{', '.join('struct ' + t for t in absent)} to BPF (its BTF has no "
            f"{', '.join('bpf_struct_ops_' + t for t in absent)}; it came with the kernel code that "
            f"registers that struct_ops type). Leave the map out of the object to load the rest")


def check_object(spec, facts) -> None:
    """Everything refused before the kernel is touched, most fundamental first."""
    check_struct_ops(spec, facts)
    check_program_kinds(spec, facts)
    check_max_entries(spec)


# -- helpers withheld by lockdown ---------------------------------------------------------------

LOCKDOWN = "/sys/kernel/security/lockdown"
_MODES = ("none", "integrity", "confidentiality")

# helper -> the lockdown reason that withholds it (kernel/trace/bpf_trace.c, kernel/bpf/helpers.c)
LOCKDOWN_HELPERS = {
    "bpf_probe_write_user": "LOCKDOWN_BPF_WRITE_USER",
    "bpf_probe_read": "LOCKDOWN_BPF_READ_KERNEL",
    "bpf_probe_read_str": "LOCKDOWN_BPF_READ_KERNEL",
    "bpf_probe_read_kernel": "LOCKDOWN_BPF_READ_KERNEL",
    "bpf_probe_read_kernel_str": "LOCKDOWN_BPF_READ_KERNEL",
}
# the mode that starts refusing each reason (reasons below LOCKDOWN_INTEGRITY_MAX are
# integrity ones), when the kernel's BTF has no enum lockdown_reason to say it
_REASON_MODE = {"LOCKDOWN_BPF_WRITE_USER": "integrity", "LOCKDOWN_BPF_READ_KERNEL": "confidentiality"}
# program types offered bpf_probe_write_user at all (bpf_tracing_func_proto)
_WRITE_USER_TYPES = frozenset({
    ProgType.KPROBE, ProgType.TRACEPOINT, ProgType.PERF_EVENT, ProgType.RAW_TRACEPOINT,
    ProgType.RAW_TRACEPOINT_WRITABLE, ProgType.TRACING, ProgType.LSM,
})


def parse_lockdown(text: str) -> str | None:
    """The mode in brackets of /sys/kernel/security/lockdown: ``"integrity"`` for
    ``"none [integrity] confidentiality"``."""
    start, end = text.find("["), text.find("]")
    if start < 0 or end < start:
        return None
    mode = text[start + 1:end].strip()
    return mode if mode in _MODES else None


def _securityfs_mounts() -> list[str]:
    """Where securityfs is mounted (/proc/self/mounts), /sys/kernel/security first."""
    found = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "securityfs":
                    found.append(fields[1].replace("\\040", " "))
    except OSError:
        pass
    return sorted(found, key=lambda m: m != os.path.dirname(LOCKDOWN))


def lockdown_mode(kconfig: dict | None = None, cmdline: str | None = None) -> tuple[str | None, str, bool]:
    """(mode, where it was read, exact).  Exact: from securityfs' ``lockdown`` file wherever
    securityfs is mounted (pybpf mounts nothing).  Otherwise a lower bound (the mode can only
    be raised after boot) from the boot's ``lockdown=`` and CONFIG_LOCK_DOWN_KERNEL_FORCE_*,
    or None when those say nothing."""
    for mount in _securityfs_mounts():
        try:
            with open(os.path.join(mount, "lockdown")) as f:
                mode = parse_lockdown(f.read())
        except OSError:
            continue
        if mode is not None:
            return mode, os.path.join(mount, "lockdown"), True
    if cmdline is None:
        try:
            with open("/proc/cmdline") as f:
                cmdline = f.read()
        except OSError:
            cmdline = ""
    if kconfig is None:
        from .facts import read_kconfig
        kconfig = read_kconfig()
    if kconfig and kconfig.get("CONFIG_SECURITY_LOCKDOWN_LSM") != "y":
        return "none", "a kernel built without CONFIG_SECURITY_LOCKDOWN_LSM", True
    found = [(_MODES.index(w[9:]), f"boot option {w}") for w in cmdline.split()
             if w.startswith("lockdown=") and w[9:] in _MODES]
    found += [(level, f"CONFIG_LOCK_DOWN_KERNEL_FORCE_{mode.upper()}=y") for level, mode in enumerate(_MODES)
              if level and kconfig.get(f"CONFIG_LOCK_DOWN_KERNEL_FORCE_{mode.upper()}") == "y"]
    if not found:
        return None, "", False
    level, source = max(found)
    return _MODES[level], source, False


def _reason_mode(reason: str, btf: BTF | None) -> str:
    """The lockdown mode from which ``reason`` is refused, from the kernel's enum lockdown_reason."""
    if btf is not None:
        for t in btf.by_name("lockdown_reason"):
            if t.kind in (Kind.ENUM, Kind.ENUM64):
                values = {v.name: v.value for v in t.values}
                if reason in values and "LOCKDOWN_INTEGRITY_MAX" in values:
                    return "integrity" if values[reason] < values["LOCKDOWN_INTEGRITY_MAX"] else "confidentiality"
    return _REASON_MODE[reason]


def refused_helper(log: str) -> tuple[str, int] | None:
    """(helper name, id) of the verifier's "program of this type cannot use helper X#N"
    (older kernels: "unknown func X#N"), or None."""
    for marker in ("cannot use helper ", "unknown func "):
        at = log.rfind(marker)
        if at < 0:
            continue
        word = log[at + len(marker):].split(None, 1)[0] if log[at + len(marker):].strip() else ""
        name, _, number = word.partition("#")
        if name and number.isdigit():
            return name, int(number)
    return None


def lockdown_refusal(log: str, prog, where: str, facts=None, mode_info=None) -> NotSupportedError | None:
    """The NotSupportedError for a verifier refusal of a helper that kernel lockdown withholds,
    when lockdown's mode withholds it; None when lockdown is not the cause."""
    found = refused_helper(log)
    if found is None or found[0] not in LOCKDOWN_HELPERS:
        return None
    helper, number = found
    if helper == "bpf_probe_write_user" and prog.prog_type not in _WRITE_USER_TYPES:
        return None          # never offered to this program type: the verifier's words stand
    reason = LOCKDOWN_HELPERS[helper]
    from ..kernel.btf import running_btf
    needed = _reason_mode(reason, running_btf(facts))
    mode, source, exact = mode_info if mode_info is not None else lockdown_mode()
    if mode is not None and _MODES.index(mode) < _MODES.index(needed):
        if exact:
            return None      # lockdown is not the cause
        mode = None          # only a lower bound, below what withholds the helper
    exact_hint = f"mount securityfs (mount -t securityfs securityfs {os.path.dirname(LOCKDOWN)}) to read its mode"
    if mode is None:
        state = f"this kernel's lockdown mode is unknown ({exact_hint})"
    elif exact:
        state = f"this kernel is locked down in mode {mode} ({source})"
    else:
        state = f"this kernel is locked down in mode {mode} at least ({source}; {exact_hint})"
    err = NotSupportedError(
        f"{where}: kernel lockdown withholds helper {helper} ({reason}, from lockdown mode {needed} up), and "
        f"{state}; the verifier said \"cannot use helper {helper}#{number}\". Use a kernel whose lockdown mode "
        f"is below {needed}, or leave the program out with spec.programs[{prog.name!r}].autoload = False")
    err.log = log
    return err


__all__ = ["check_object", "check_max_entries", "check_struct_ops", "check_program_kinds",
           "unset_max_entries", "lockdown_mode", "lockdown_refusal", "parse_lockdown", "refused_helper",
           "LOCKDOWN", "LOCKDOWN_HELPERS"]
