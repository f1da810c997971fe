"""Links: attached programs; closing a link detaches its program.

One module per attach family, as cilium/ebpf's ``link/``:

- :mod:`.base`: :class:`Link` itself (fds, ``close()``, ``info()``, ``update()``, ``detach()``);
- :mod:`.perf_event`: tracepoints and kprobes through perf events, perf events the caller
  opened, sampling profiles (one perf event per CPU);
- :mod:`.uprobe`: uprobes, with the ELF symbol lookup;
- :mod:`.uprobe_multi`, :mod:`.kprobe_multi`: one link on many functions (glob patterns);
- :mod:`.ksyscall`: ksyscall/kretsyscall (kprobes on the syscall's kernel function);
- :mod:`.tracing`: raw tracepoints and BPF-trampoline kinds (tp_btf, fentry, lsm...);
- :mod:`.iter`: iterators;
- :mod:`.cgroup`: cgroup programs.

:func:`attach_program` attaches a program the way its section says.
"""

from __future__ import annotations

from ..errors import Error, NotSupportedError
from .base import Link, LinkInfo
from .cgroup import attach_cgroup, cgroup2_mount
from .iter import Iterator, attach_iter
from .netfilter import attach_netfilter
from .netkit import attach_netkit
from .netns import attach_netns
from .kprobe_multi import attach_kprobe_multi
from .ksyscall import attach_ksyscall, syscall_symbol
from .perf_event import PerfEventLink, attach_kprobe, attach_perf_event, attach_sampling, attach_tracepoint
from .socket import SocketFilterLink, attach_socket
from .sockmap import SockmapProgLink, attach_sockmap
from .tc import TcFilterLink, attach_tc
from .tracing import attach_raw_tracepoint, attach_trace
from .uprobe import attach_uprobe, parse_uprobe_target, resolve_binary, uprobe_file_offset
from .usdt import UsdtLink, attach_usdt
from .uprobe_multi import UprobeMultiLink, attach_uprobe_multi, attach_uprobe_multi_target, uprobe_multi_offsets
from .xdp import XdpNetlinkLink, attach_xdp


def _bpf_attr_has(*path: str) -> bool | None:
    """Whether the running kernel's BTF ``union bpf_attr`` has the member chain ``path``
    (e.g. ``raw_tracepoint.cookie``); None without kernel BTF to tell."""
    from ..kernel.btf import vmlinux_btf
    from ..spec.btf import Kind
    from .cgroup import _has_member
    try:
        btf = vmlinux_btf()
    except Error:
        return None
    union = next((t for t in btf.by_name("bpf_attr") if t.kind == Kind.UNION), None)
    return None if union is None else _has_member(btf, union, list(path), 0)


# attach kinds whose links take a BPF cookie, and where the kernel keeps it
_COOKIE_KINDS = "tracepoint, kprobe, kretprobe, uprobe, uretprobe, ksyscall, uprobe.multi, kprobe.multi, " \
                "raw_tp, tp_btf, fentry/fexit/fmod_ret, lsm"


def _check_cookie(program, kind: str, cookie) -> None:
    """NotSupportedError when ``kind`` takes no cookie, or the running kernel cannot pass it."""
    from ..kernel.constants import AttachType, ProgType
    from .perf_event import _cookie
    _cookie(cookie)
    spec = program.spec
    if kind == "raw_tracepoint" or (kind == "trace" and spec.expected_attach_type == AttachType.TRACE_RAW_TP):
        # raw_tp and tp_btf cookies came with bpf_attr.raw_tracepoint.cookie (Linux 6.10)
        if _bpf_attr_has("raw_tracepoint", "cookie") is False:
            raise NotSupportedError(f"program {program.name!r}: this kernel takes no BPF cookie for raw tracepoints "
                                    f"(its BTF's bpf_attr has no raw_tracepoint.cookie; Linux 6.10 brought it)")
        return
    if kind in ("trace", "lsm"):
        if program.type == ProgType.EXT:
            raise NotSupportedError(f"program {program.name!r}: freplace programs take no BPF cookie")
        if _bpf_attr_has("link_create", "tracing", "cookie") is False:
            raise NotSupportedError(f"program {program.name!r}: this kernel takes no BPF cookie for tracing links "
                                    f"(its BTF's bpf_attr has no link_create.tracing.cookie; Linux 5.19 brought "
                                    f"it)")
        return
    if kind in ("tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe", "ksyscall", "uprobe_multi",
                "kprobe_multi", "usdt"):
        return     # perf-event links (5.15) and multi links: checked when attaching
    raise NotSupportedError(f"program {program.name!r} (section {spec.section!r}): {kind or 'these'} attachments "
                            f"take no BPF cookie (the kinds that do: {_COOKIE_KINDS})")


def attach_program(program, target: str | None = None, cookie: int | None = None) -> Link:
    """Attach ``program`` the way its section says; ``target`` overrides the section's target;
    ``cookie`` is what ``bpf_get_attach_cookie()`` returns, for the kinds that take one
    (tracepoints, k/uprobes, ksyscall: link_create.perf_event.bpf_cookie; uprobe.multi and
    kprobe.multi: the same cookie at every function; raw_tp and tp_btf: raw_tracepoint.cookie,
    6.10; fentry/fexit/fmod_ret/lsm: link_create.tracing.cookie).  Other kinds:
    NotSupportedError."""
    spec = program.spec
    kind = spec.sec_def.attach
    if cookie is not None:
        _check_cookie(program, kind, cookie)
    target = target if target is not None else spec.attach_target
    if kind == "tracepoint":
        return attach_tracepoint(program, target, cookie)
    if kind == "raw_tracepoint":
        return attach_raw_tracepoint(program, target, cookie)
    if kind in ("kprobe", "kretprobe"):
        return attach_kprobe(program, target, kind == "kretprobe", cookie)
    if kind in ("uprobe", "uretprobe"):
        return attach_uprobe(program, target, kind == "uretprobe", cookie=cookie)
    if kind == "ksyscall":
        return attach_ksyscall(program, target, spec.sec_def.stem.startswith("kret"), cookie)
    if kind == "uprobe_multi":
        return attach_uprobe_multi_target(program, target, spec.sec_def.stem.startswith("uret"), cookie)
    if kind == "kprobe_multi":
        if not target:
            raise Error(f"program {program.name!r} (section {spec.section!r}) names no function pattern: use "
                        f"SEC(\"kprobe.multi/<pattern>\") or attach_kprobe_multi(pattern)")
        return attach_kprobe_multi(program, target, spec.sec_def.stem.startswith("kret"), cookie)
    if kind == "usdt":
        from .usdt import attach_usdt_section
        return attach_usdt_section(program, target, cookie=cookie or 0)
    if kind in ("trace", "lsm"):
        return attach_trace(program, target, cookie)
    if kind == "iter":
        return attach_iter(program, target)
    if kind is None:
        raise Error(f"program {program.name!r} (section {spec.section!r}) cannot be attached automatically: "
                    f"its section names no target; attach it to a device, cgroup or socket yourself, or run it "
                    f"with test_run()")
    raise NotSupportedError(f"program {program.name!r} (section {spec.section!r}): pybpf cannot attach "
                            f"{kind} programs yet")


__all__ = [
    "Link", "LinkInfo", "Iterator", "attach_program", "attach_tracepoint", "attach_raw_tracepoint",
    "attach_kprobe", "attach_trace", "attach_uprobe", "attach_cgroup", "attach_iter",
    "parse_uprobe_target", "resolve_binary", "uprobe_file_offset", "cgroup2_mount",
    "attach_xdp", "attach_tc", "attach_netkit", "TcFilterLink", "XdpNetlinkLink",
    "attach_socket", "SocketFilterLink", "attach_netns", "attach_sockmap", "SockmapProgLink",
    "attach_netfilter", "attach_perf_event", "attach_sampling", "PerfEventLink", "attach_uprobe_multi",
    "uprobe_multi_offsets", "UprobeMultiLink", "attach_kprobe_multi", "attach_ksyscall", "syscall_symbol",
    "attach_usdt", "UsdtLink",
]
