"""sk_lookup and flow_dissector programs on a network namespace (BPF_LINK_TYPE_NETNS).

BPF_LINK_CREATE with a netns fd as target (Linux 5.7 for the flow dissector, 5.9 for
sk_lookup).  The kernel's rules (kernel/bpf/net_namespace.c, net/core/flow_dissector.c):
a namespace runs up to 64 sk_lookup programs, in attach order, and one flow dissector; a
flow dissector in the root namespace overrides every other one, so the kernel refuses
one in the root while another namespace has one, and the reverse.  The link does not keep
the namespace alive: when the namespace goes, the link stays open and runs nothing
(``info().netns_ino`` is then 0).
"""

from __future__ import annotations

import errno as _errno
import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from .base import Link, _fd_link

# program type -> (attach type, what it is, the kernel that brought its netns link)
_KINDS = {
    ProgType.SK_LOOKUP: (AttachType.SK_LOOKUP, "sk_lookup", "5.9"),
    ProgType.FLOW_DISSECTOR: (AttachType.FLOW_DISSECTOR, "flow dissector", "5.7"),
}


def _lacks(enum: str, member: str) -> bool:
    """True when the running kernel's BTF has ``enum`` without ``member`` (False when there
    is no BTF to tell)."""
    from ..kernel.btf import enum_names, running_btf
    names = enum_names(running_btf(None), enum)
    return names is not None and member not in names


def attach_netns(program, netns=None) -> Link:
    """Attach an sk_lookup or flow_dissector program to a network namespace with a BPF link:
    ``netns`` is a path (``/run/netns/NAME``, ``/proc/PID/ns/net``) or an open fd of one;
    None: the calling thread's namespace (the process's, unless the thread moved with setns).

    sk_lookup programs choose the socket for each new connection or datagram arriving in
    the namespace; a flow dissector takes over the kernel's packet parsing there
    (hashing, RPS, flower...).  ``link.info()`` gives ``netns_ino`` and ``attach_type``."""
    kind = _KINDS.get(program.type)
    if kind is None:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section {program.section!r}): "
                    f"only sk_lookup and flow_dissector programs attach to a network namespace")
    attach_type, what, since = kind
    if netns is None:
        netns = "/proc/thread-self/ns/net"
    own = not isinstance(netns, int)
    target = os.fspath(netns) if own else f"fd {netns}"

    def make() -> int:
        if own:
            try:
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SyscallError("open", e.errno, f"network namespace {target!r}") from None
        else:
            fd = netns
        try:
            return sc.bpf(Cmd.LINK_CREATE, LinkCreateAttr(prog_fd=program.fd, target_fd=fd,
                                                          attach_type=attach_type))
        except SyscallError as e:
            if e.errno == _errno.EINVAL and _lacks("bpf_link_type", "BPF_LINK_TYPE_NETNS"):
                raise NotSupportedError(
                    f"program {program.name!r}: this kernel has no BPF links on network namespaces "
                    f"(BPF_LINK_TYPE_NETNS is missing from its enum bpf_link_type; the {what} link came "
                    f"with Linux {since})") from None
            hint = ""
            if e.errno == _errno.EINVAL:
                hint = f" (is {target!r} a network namespace? e.g. /run/netns/NAME or /proc/PID/ns/net)"
            elif e.errno == _errno.E2BIG:
                hint = (" (a namespace runs one flow dissector and it has one: close that link first)"
                        if program.type == ProgType.FLOW_DISSECTOR else
                        " (a namespace runs at most 64 sk_lookup programs)")
            elif e.errno == _errno.EEXIST:
                hint = (" (a flow dissector in the root namespace excludes one in any other namespace, "
                        "and the reverse; or a program was attached there with BPF_PROG_ATTACH)")
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach the {what} to "
                                              f"network namespace {target!r}{hint}") from None
        finally:
            if own:
                os.close(fd)
    return _fd_link(program, what.replace(" ", "_"), target, make)
