"""netfilter programs: a BPF_NETFILTER link on one netfilter hook (Linux 6.4).

The program runs as a netfilter hook of the calling thread's network namespace, like an
nftables base chain: protocol family (``ipv4``/``ipv6``), hook (``prerouting``,
``local_in``, ``forward``, ``local_out``, ``postrouting``) and priority (lower runs first;
e.g. conntrack at -200, the filter table at 0).  It returns NF_ACCEPT or NF_DROP.

Kernel rules (net/netfilter/nf_bpf_link.c): the priority may not be NF_IP_PRI_FIRST
(INT_MIN) or NF_IP_PRI_LAST (INT_MAX, conntrack confirm must stay last); with
``defrag=True`` (BPF_F_NETFILTER_IP_DEFRAG, Linux 6.6) the program sees reassembled
packets, and must then run after the defragmenter (priority above
NF_IP_PRI_CONNTRACK_DEFRAG, -400).  The link cannot swap its program (update() fails
with EOPNOTSUPP); detach() and close() unregister the hook.
"""

from __future__ import annotations

import errno as _errno

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from .base import Link, _fd_link

NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
PROTOCOL_FAMILIES = {"ipv4": NFPROTO_IPV4, "ipv6": NFPROTO_IPV6}
HOOKS = {"prerouting": 0, "local_in": 1, "forward": 2, "local_out": 3, "postrouting": 4}   # NF_INET_*
NF_IP_PRI_FIRST = -(1 << 31)
NF_IP_PRI_LAST = (1 << 31) - 1
NF_IP_PRI_CONNTRACK_DEFRAG = -400
BPF_F_NETFILTER_IP_DEFRAG = 1 << 0


def _lacks(enum: str, member: str) -> bool:
    """True when the running kernel's BTF has ``enum`` without ``member`` (False when there
    is no BTF to tell)."""
    from ..kernel.btf import enum_names, running_btf
    names = enum_names(running_btf(None), enum)
    return names is not None and member not in names


def _name_of(table: dict, value: int) -> str:
    return next((k for k, v in table.items() if v == value), str(value))


def _lookup(table: dict, value, what: str) -> int:
    if isinstance(value, str):
        number = table.get(value.lower())
    elif isinstance(value, int) and not isinstance(value, bool) and value in table.values():
        number = value
    else:
        number = None
    if number is None:
        raise Error(f"netfilter {what} {value!r} is not one of {', '.join(table)}")
    return number


def attach_netfilter(program, pf="ipv4", hook="local_in", priority: int = 0, *, defrag: bool = False) -> Link:
    """Attach a netfilter program (SEC("netfilter")) at ``hook`` of protocol family ``pf``
    with ``priority``, in the calling thread's network namespace (BPF_NETFILTER link).

    ``pf``: ``"ipv4"`` or ``"ipv6"`` (or NFPROTO_IPV4 2 / NFPROTO_IPV6 10); ``hook``:
    ``"prerouting"``, ``"local_in"``, ``"forward"``, ``"local_out"``, ``"postrouting"`` (or
    NF_INET_* 0-4); ``priority``: a signed 32-bit number other than its two extremes.
    ``defrag=True`` asks for reassembled IP packets (priority must then be above -400).
    ``link.info()`` gives ``pf``, ``hooknum``, ``priority`` and ``flags``."""
    if program.type != ProgType.NETFILTER:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section {program.section!r}): "
                    f"only netfilter programs (SEC(\"netfilter\")) attach to a netfilter hook")
    pf_num = _lookup(PROTOCOL_FAMILIES, pf, "protocol family")
    hooknum = _lookup(HOOKS, hook, "hook")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise Error(f"netfilter priority {priority!r} is not an integer")
    if not NF_IP_PRI_FIRST < priority < NF_IP_PRI_LAST:
        raise Error(f"netfilter priority {priority} is out of range: the kernel takes signed 32-bit "
                    f"priorities strictly between NF_IP_PRI_FIRST ({NF_IP_PRI_FIRST}) and NF_IP_PRI_LAST "
                    f"({NF_IP_PRI_LAST})")
    if defrag and priority <= NF_IP_PRI_CONNTRACK_DEFRAG:
        raise Error(f"netfilter priority {priority} with defrag=True: the program must run after the "
                    f"defragmenter, at a priority above NF_IP_PRI_CONNTRACK_DEFRAG ({NF_IP_PRI_CONNTRACK_DEFRAG})")
    flags = BPF_F_NETFILTER_IP_DEFRAG if defrag else 0
    pf_name, hook_name = _name_of(PROTOCOL_FAMILIES, pf_num), _name_of(HOOKS, hooknum)
    target = f"{pf_name}/{hook_name}/{priority}"
    attr = LinkCreateAttr(prog_fd=program.fd, target_fd=0, attach_type=AttachType.NETFILTER)
    attr.netfilter.pf = pf_num
    attr.netfilter.hooknum = hooknum
    attr.netfilter.priority = priority
    attr.netfilter.flags = flags

    def make() -> int:
        try:
            return sc.bpf(Cmd.LINK_CREATE, attr)
        except SyscallError as e:
            where = f"{pf_name} {hook_name} (pf {pf_num}, hooknum {hooknum}) at priority {priority}"
            if e.errno == _errno.EINVAL and _lacks("bpf_link_type", "BPF_LINK_TYPE_NETFILTER"):
                raise NotSupportedError(
                    f"program {program.name!r}: this kernel has no netfilter links (BPF_LINK_TYPE_NETFILTER "
                    f"is missing from its enum bpf_link_type; BPF_NETFILTER links came with Linux 6.4)") from None
            if defrag and e.errno == _errno.EOPNOTSUPP:
                raise NotSupportedError(
                    f"program {program.name!r}: this kernel refuses BPF_F_NETFILTER_IP_DEFRAG at {where} "
                    f"(the flag came with Linux 6.6, and needs nf_defrag_{pf_name} built in or as a "
                    f"module)") from None
            hint = {
                _errno.ERANGE: " (the priority is refused: not NF_IP_PRI_FIRST/LAST, and above -400 with "
                               "defrag)",
                _errno.EPROTO: " (no such hook for this protocol family)",
                _errno.EAFNOSUPPORT: " (only ipv4 and ipv6 are supported)",
                _errno.E2BIG: " (this hook has the most entries the kernel allows, 1024)",
                _errno.ENOENT: f" (nf_defrag_{pf_name} is not available)" if defrag else "",
            }.get(e.errno, "")
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach at netfilter "
                                              f"{where}{hint}") from None
    return _fd_link(program, "netfilter", target, make)
