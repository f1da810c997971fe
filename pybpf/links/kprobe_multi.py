"""kprobe.multi: one BPF link (BPF_TRACE_KPROBE_MULTI, Linux 5.18) on every kernel function
matching a glob, each with its own BPF cookie.  The kernel runs it through fprobe
(CONFIG_FPROBE, on the function tracer); kernels without it answer EOPNOTSUPP."""

from __future__ import annotations

import ctypes
import errno as _errno
import fnmatch
import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from ..resource import deferred_signals
from .base import Link

BPF_F_KPROBE_MULTI_RETURN = 1 << 0
_MAX_CNT = 1 << 20            # MAX_KPROBE_MULTI_CNT: E2BIG above


def _traceable_functions() -> list[str]:
    """The kernel functions kprobe.multi can probe: tracefs available_filter_functions (what
    libbpf matches patterns against: ftrace-able functions only), else /proc/kallsyms text
    symbols.  Module functions come as ``name [module]``: the name alone is kept."""
    from ..kernel import tracefs
    names = []
    try:
        with open(os.path.join(tracefs.tracefs_root(), "available_filter_functions")) as f:
            for line in f:
                name = line.split(None, 1)[0] if line.strip() else ""
                if name:
                    names.append(name)
        return names
    except (OSError, Error):
        pass
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("t", "T"):
                    names.append(parts[2])
    except OSError as e:
        raise Error(f"cannot list kernel functions (available_filter_functions, /proc/kallsyms): {e.strerror}") \
            from None
    return names


def kprobe_multi_symbols(pattern: str) -> list[str]:
    """The kernel functions matching glob ``pattern``, sorted and without duplicates (libbpf
    skips the ``__ftrace_invalid_address__`` placeholders too)."""
    found = {n for n in _traceable_functions() if fnmatch.fnmatchcase(n, pattern)
             and not n.startswith("__ftrace_invalid_address__")}
    if not found:
        raise Error(f"no traceable kernel function matches {pattern!r}")
    return sorted(found)


def attach_kprobe_multi(program, pattern: str, retprobe: bool = False, cookies=None) -> Link:
    """Probe every kernel function matching the glob ``pattern`` (entry, or return with
    ``retprobe``) with one BPF_TRACE_KPROBE_MULTI link, the functions passed by name (syms),
    as libbpf does.  ``cookies``: a dict name -> cookie, a list in sorted-name order, or one int.
    NotSupportedError on a kernel without kprobe.multi (no fprobe/kprobes, or before 5.18)."""
    from .uprobe_multi import _cookie_list
    from .xdp import kernel_has
    if program.type != ProgType.KPROBE:
        raise Error(f"program {program.name!r} is a {program.type.name} program; kprobe.multi needs a "
                    f"SEC(\"kprobe.multi\") program")
    attach_type = program.spec.expected_attach_type
    if attach_type not in (AttachType.TRACE_KPROBE_MULTI, getattr(AttachType, "TRACE_KPROBE_SESSION", -1)):
        raise Error(f"program {program.name!r} (section {program.section!r}) was not loaded for kprobe.multi "
                    f"(expected attach type BPF_TRACE_KPROBE_MULTI: use SEC(\"kprobe.multi\") or "
                    f"SEC(\"kretprobe.multi\"))")
    if not isinstance(pattern, str) or not pattern:
        raise Error(f"program {program.name!r}: kprobe.multi needs a function pattern (e.g. 'vfs_*')")
    if kernel_has("bpf_attach_type", "BPF_TRACE_KPROBE_MULTI") is False:
        raise NotSupportedError("this kernel has no kprobe.multi links (BPF_TRACE_KPROBE_MULTI is not in its BTF's "
                                "enum bpf_attach_type; Linux 5.18 brought them)")
    names = kprobe_multi_symbols(pattern)
    if len(names) > _MAX_CNT:
        raise Error(f"program {program.name!r}: {len(names)} functions match {pattern!r}; at most {_MAX_CNT}")
    cookie_values = _cookie_list(program, cookies, names)
    bufs = [ctypes.create_string_buffer(n.encode()) for n in names]
    syms = (ctypes.c_uint64 * len(names))(*[ctypes.addressof(b) for b in bufs])
    attr = LinkCreateAttr(prog_fd=program.fd, target_fd=0, attach_type=attach_type)
    km = attr.kprobe_multi
    km.syms = ctypes.addressof(syms)
    km.cnt = len(names)
    km.flags = BPF_F_KPROBE_MULTI_RETURN if retprobe and attach_type == AttachType.TRACE_KPROBE_MULTI else 0
    if cookie_values is not None:
        cookie_arr = (ctypes.c_uint64 * len(names))(*cookie_values)
        km.cookies = ctypes.addressof(cookie_arr)

    def make() -> int:
        try:
            return sc.bpf(Cmd.LINK_CREATE, attr)
        except SyscallError as e:
            if e.errno in (_errno.EOPNOTSUPP, 524):
                # bpf_kprobe_multi_link_attach() without CONFIG_FPROBE: -EOPNOTSUPP
                raise NotSupportedError(f"program {program.name!r}: this kernel cannot run kprobe.multi programs "
                                        f"(BPF_LINK_CREATE with BPF_TRACE_KPROBE_MULTI: "
                                        f"{_errno.errorcode.get(e.errno, e.errno)}): they need kprobes through "
                                        f"fprobe (CONFIG_FPROBE, CONFIG_KPROBES)") from None
            hint = " (a function is not traceable, or is not in kallsyms)" if e.errno in (_errno.ENOENT,
                                                                                       _errno.ESRCH) else ""
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach kprobe.multi to "
                                              f"{len(names)} functions matching {pattern!r}{hint}") from None

    with deferred_signals() as section:
        link = Link(program, "kretprobe_multi" if retprobe else "kprobe_multi", pattern, [make()])
        section.on_interrupt(link)
    link.symbols = names
    link.cookies = cookie_values
    return link
