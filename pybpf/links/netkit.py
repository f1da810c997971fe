"""tc programs on netkit devices (kernel 6.7+): a BPF link made by BPF_LINK_CREATE with
attach type BPF_NETKIT_PRIMARY or BPF_NETKIT_PEER on the primary device's ifindex."""

from __future__ import annotations

import errno as _errno
import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import netlink as nl
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from .base import Link, _fd_link
from .xdp import kernel_has

_SINCE = "Linux 6.7"


def _kernel_has_netkit_driver() -> bool | None:
    """Whether the netkit driver is in this kernel: built in (its ``struct netkit`` is in
    the kernel's BTF) or loaded as a module (/sys/module/netkit).  None without BTF to ask."""
    from ..errors import Error as _Error
    from ..kernel.btf import vmlinux_btf
    if os.path.exists("/sys/module/netkit") or os.path.exists("/sys/kernel/btf/netkit"):
        return True
    try:
        btf = vmlinux_btf()
    except _Error:
        return None
    return any(True for _ in btf.by_name("netkit"))


def attach_netkit(program, iface, peer: bool = False) -> Link:
    """Attach tc program ``program`` to netkit device ``iface`` (name or ifindex of the
    primary device, looked up in the calling thread's network namespace): to the primary
    side, or with ``peer=True`` to its peer (the kernel picks the peer from the primary).

    NotSupportedError where the kernel has no netkit links or no netkit driver."""
    if program.type != ProgType.SCHED_CLS:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section "
                    f"{program.section!r}); attach_netkit() needs a tc program (SEC(\"netkit/primary\"), "
                    f"SEC(\"netkit/peer\") or SEC(\"tc\"))")
    missing = [f"{name} in its enum {enum}"
               for enum, name in (("bpf_link_type", "BPF_LINK_TYPE_NETKIT"),
                                  ("bpf_attach_type", "BPF_NETKIT_PEER" if peer else "BPF_NETKIT_PRIMARY"))
               if kernel_has(enum, name) is False]
    if missing:
        raise NotSupportedError(f"program {program.name!r}: this kernel has no netkit links: its BTF has no "
                                f"{' and no '.join(missing)} (netkit came with {_SINCE})")
    if _kernel_has_netkit_driver() is False:
        # no netkit device can exist here, whatever iface names
        raise NotSupportedError(f"program {program.name!r}: cannot attach to {iface!r}: this kernel has no "
                                f"netkit device driver (CONFIG_NETKIT, {_SINCE}: neither built in, with a "
                                f"struct netkit in its BTF, nor loaded as a module), so there is no netkit "
                                f"device to attach to; attach_tc() attaches to other devices")
    ifindex, label = nl.resolve_ifindex(iface)
    with nl.RtNetlink() as sock:
        kind = nl.get_link(sock, ifindex).kind
    if kind != "netkit":
        raise Error(f"program {program.name!r}: {label} is {'a ' + kind if kind else 'not a virtual'} device, "
                    f"not netkit: attach_netkit() needs the primary device of a netkit pair "
                    f"('ip link add NAME type netkit'); use attach_tc() on other devices")
    attach_type = AttachType.NETKIT_PEER if peer else AttachType.NETKIT_PRIMARY
    side = "peer" if peer else "primary"

    def make() -> int:
        attr = LinkCreateAttr(prog_fd=program.fd, target_ifindex=ifindex, attach_type=attach_type)
        try:
            return sc.bpf(Cmd.LINK_CREATE, attr)
        except SyscallError as e:
            hint = ""
            if e.errno == _errno.EACCES:
                # netkit_link_attach: the ifindex must be the primary device's, for both sides
                hint = f" ({label} is the peer of its pair: give the primary device, with peer=True for this side)"
            elif e.errno == _errno.EEXIST:
                hint = f" (this program already runs on {label} {side})"
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to netkit {label} "
                                              f"({side}){hint}") from None
    return _fd_link(program, "netkit", f"{label}:{side}", make)
