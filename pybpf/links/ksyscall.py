"""ksyscall/kretsyscall programs: a kprobe on the kernel function behind a system call, named
the way libbpf names it (``__<arch>_sys_<name>`` where syscalls go through wrappers that take
a ``struct pt_regs *``, ``__se_sys_<name>`` otherwise)."""

from __future__ import annotations

import os

from ..errors import Error, NotSupportedError
from .base import Link

# libbpf's arch_specific_syscall_pfx(), by uname machine (the same table the kconfig externs use)
from ..loader.externs import _SYSCALL_PREFIX


def syscall_symbol(name: str, facts=None) -> str:
    """The kernel function a ksyscall/``name`` probe goes on: ``__x64_sys_getpid`` on x86-64
    (``__<prefix>_sys_<name>``) when the kernel has syscall wrappers, ``__se_sys_<name>`` when
    not (libbpf's rule).  Whether there are wrappers comes from the kernel's facts (its kconfig
    CONFIG_ARCH_HAS_SYSCALL_WRAPPER, else whether ``__<prefix>_sys_bpf`` is in kallsyms or
    BTF), not from libbpf's probe, which needs a working kprobe to answer."""
    from ..loader.externs import has_syscall_wrapper
    from ..loader.facts import KernelFacts
    if not name or "/" in name or not name.replace("_", "").isalnum():
        raise Error(f"ksyscall target {name!r} is not a system call name (e.g. SEC(\"ksyscall/openat\"))")
    facts = facts if facts is not None else KernelFacts.running()
    prefix = _SYSCALL_PREFIX.get(os.uname().machine)
    if prefix is not None and has_syscall_wrapper(facts):
        return f"__{prefix}_sys_{name}"
    return f"__se_sys_{name}"


def attach_ksyscall(program, name: str, retprobe: bool, cookie: int | None = None) -> Link:
    """Attach a ksyscall (``retprobe`` False) or kretsyscall program to system call ``name``:
    a kprobe on :func:`syscall_symbol` (NotSupportedError on a kernel without kprobes)."""
    from ..kernel import tracefs
    from .perf_event import attach_kprobe
    if not name:
        raise Error(f"program {program.name!r} (section {program.section!r}) names no system call: "
                    f"use SEC(\"ksyscall/<name>\") or attach(target=\"<name>\")")
    symbol = syscall_symbol(name)
    try:
        tracefs.kprobe_pmu_type()
    except NotSupportedError as e:
        raise NotSupportedError(f"program {program.name!r}: {'kretsyscall' if retprobe else 'ksyscall'}/{name} is "
                                f"a kprobe on {symbol}, and {e}") from None
    link = attach_kprobe(program, symbol, retprobe, cookie)
    link.kind = "kretsyscall" if retprobe else "ksyscall"
    link.target = name
    return link
