"""Links: attached programs; closing a link detaches its program.

One module per attach family, as cilium/ebpf's ``link/``:

- :mod:`.base`: :class:`Link` itself (fds, ``close()``, ``info()``, ``update()``, ``detach()``);
- :mod:`.perf_event`: tracepoints and kprobes through perf events;
- :mod:`.uprobe`: uprobes, with the ELF symbol lookup;
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
from .perf_event import attach_kprobe, attach_tracepoint
from .socket import SocketFilterLink, attach_socket
from .sockmap import SockmapProgLink, attach_sockmap
from .tc import TcFilterLink, attach_tc
from .tracing import attach_raw_tracepoint, attach_trace
from .uprobe import attach_uprobe, parse_uprobe_target, resolve_binary, uprobe_file_offset
from .xdp import XdpNetlinkLink, attach_xdp


def attach_program(program, target: str | None = None, cookie: int | None = None) -> Link:
    """Attach ``program`` the way its section says; ``target`` overrides the section's target;
    ``cookie`` is what ``bpf_get_attach_cookie()`` returns, for the kinds that take one."""
    if cookie is not None:
        raise NotSupportedError(f"program {program.name!r}: pybpf does not pass BPF cookies for "
                                f"{program.spec.sec_def.attach} attachments yet")
    spec = program.spec
    kind = spec.sec_def.attach
    target = target if target is not None else spec.attach_target
    if kind == "tracepoint":
        return attach_tracepoint(program, target)
    if kind == "raw_tracepoint":
        return attach_raw_tracepoint(program, target)
    if kind in ("kprobe", "kretprobe"):
        return attach_kprobe(program, target, kind == "kretprobe")
    if kind in ("uprobe", "uretprobe"):
        return attach_uprobe(program, target, kind == "uretprobe")
    if kind in ("trace", "lsm"):
        return attach_trace(program, target)
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
    "attach_netfilter",
]
