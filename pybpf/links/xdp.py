"""XDP programs on a network device: a BPF_XDP link (BPF_LINK_CREATE, kernel 5.9+), or
on kernels without XDP links the netlink attachment libbpf falls back to (RTM_SETLINK
IFLA_XDP), which pybpf removes again on close."""

from __future__ import annotations

import errno as _errno
import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import netlink as nl
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from ..resource import deferred_signals
from .base import Link, _fd_link

#: mode name -> XDP_FLAGS_* mode bit (if_link.h); None: the kernel's choice (native if the
#: driver has it, else generic)
XDP_MODES = {
    None: 0,
    "generic": nl.XDP_FLAGS_SKB_MODE,
    "native": nl.XDP_FLAGS_DRV_MODE,
    "offload": nl.XDP_FLAGS_HW_MODE,
}


def kernel_has(enum: str, member: str) -> bool | None:
    """Whether the running kernel's BTF lists ``member`` in C enum ``enum`` (e.g.
    ``bpf_link_type``, ``BPF_LINK_TYPE_TCX``); None when there is no kernel BTF to ask."""
    from ..errors import Error as _Error
    from ..kernel.btf import vmlinux_btf
    from ..kernel.btf import enum_names
    try:
        names = enum_names(vmlinux_btf(), enum)
    except _Error:
        return None
    return None if names is None else member in names


def _mode_flags(mode) -> int:
    try:
        return XDP_MODES[mode]
    except (KeyError, TypeError):
        raise Error(f"XDP mode {mode!r}: use None (the kernel's choice), 'generic' or 'native' "
                    f"(or 'offload' for a NIC that runs XDP itself)") from None


def _check_program(program) -> None:
    if program.type != ProgType.XDP:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section "
                    f"{program.section!r}); attach_xdp() needs an XDP program (SEC(\"xdp\"))")


def _xdp_hint(err: int, mode, label: str) -> str:
    """What an errno of an XDP attach means."""
    if err == _errno.EBUSY:
        return (f" ({label} already has an XDP program in this mode: a link, or one attached with "
                f"'ip link set dev {label} xdp ...'; detach it first)")
    if err == _errno.EEXIST:
        return (f" ({label} has an XDP program in the other mode: native and generic XDP cannot be "
                f"active at the same time)")
    if err == _errno.EOPNOTSUPP:
        return f" (the driver of {label} has no {mode or 'native'} XDP; try mode='generic')"
    if err == _errno.ERANGE:
        return f" (the MTU of {label} or of its peer is too large for XDP without frags)"
    if err == _errno.ENODEV:
        return f" (no device {label})"
    if err == _errno.EINVAL and mode == "offload":
        return f" (the driver of {label} cannot offload XDP)"
    return ""


def attach_xdp(program, iface, mode: str | None = None) -> Link:
    """Attach XDP ``program`` to network device ``iface`` (a name, looked up in the calling
    thread's network namespace, or an ifindex) with a BPF_XDP link.

    ``mode``: None lets the kernel choose (the driver's native XDP if it has one, else
    generic), ``"generic"`` (XDP_FLAGS_SKB_MODE, any device, after the skb is built) or
    ``"native"`` (XDP_FLAGS_DRV_MODE, in the driver; veth has it).  ``close()`` (or
    closing the object) detaches it; the link keeps its device when the thread moves
    to another namespace.  On kernels before XDP links (5.9) the program is attached
    over netlink instead, only if the device has no XDP program yet, and removed again
    on close only while it is still the one attached."""
    _check_program(program)
    flags = _mode_flags(mode)
    ifindex, label = nl.resolve_ifindex(iface)
    if kernel_has("bpf_link_type", "BPF_LINK_TYPE_XDP") is False:
        return _attach_netlink(program, ifindex, label, mode)

    def make() -> int:
        # link_create.flags takes the mode bits only (dev_xdp_attach_link; 0 = the kernel's choice)
        attr = LinkCreateAttr(prog_fd=program.fd, target_ifindex=ifindex, attach_type=AttachType.XDP,
                              flags=flags)
        try:
            return sc.bpf(Cmd.LINK_CREATE, attr)
        except SyscallError as e:
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach XDP to {label} "
                                              f"(mode {mode or 'default'})"
                                              f"{_xdp_hint(e.errno, mode, label)}") from None
    return _fd_link(program, "xdp", label, make)


class XdpNetlinkLink(Link):
    """An XDP program attached over netlink (RTM_SETLINK IFLA_XDP), for kernels without
    XDP links.  The link owns a netlink socket of the device's namespace and a duplicate
    of the program fd; ``close()`` removes the program only if it is still the one the
    device runs (XDP_FLAGS_REPLACE with that fd).  No BPF link: ``info()`` is not there;
    ``update()`` swaps the program atomically (REPLACE), ``detach()`` removes it now."""

    def __init__(self, program, target: str, sock: nl.RtNetlink, ifindex: int, flags: int, prog_fd: int):
        super().__init__(program, "xdp", target, [prog_fd], bpf_link=False)
        self._nl = sock
        self.ifindex = ifindex
        self._flags = flags
        self._attached = True

    def _remove(self) -> None:
        if self._attached:
            try:
                nl.set_xdp(self._nl, self.ifindex, -1, self._flags, expected_fd=self._fds[0],
                           what=f"detach XDP program {self.program.name!r} from {self.target}")
            except SyscallError as e:
                # EEXIST: another program replaced ours; ENODEV: the device is gone
                if e.errno not in (_errno.EEXIST, _errno.ENODEV):
                    raise
            self._attached = False

    def close(self) -> None:
        """Remove the program (if it is still attached) and close the socket and fd."""
        with deferred_signals():
            if self._fds:
                self._remove()
                self._nl.close()
            super().close()

    def detach(self) -> None:
        """Remove the program from the device now; ``close()`` releases the rest."""
        self.fd      # ClosedError if closed
        self._remove()

    def update(self, program, *, old=None) -> None:
        """Swap in ``program`` atomically (IFLA_XDP with XDP_FLAGS_REPLACE)."""
        current = self.fd
        if old is not None and old is not self.program:
            raise Error(f"link xdp:{self.target}: runs {self.program.name!r}, not {old.name!r}")
        _check_program(program)
        with deferred_signals():
            new_fd = os.dup(program.fd)
            try:
                nl.set_xdp(self._nl, self.ifindex, new_fd, self._flags, expected_fd=current,
                           what=f"swap XDP program of {self.target} for {program.name!r}")
            except BaseException:
                os.close(new_fd)
                raise
            self._fds[0] = new_fd
            os.close(current)
        self.program = program


def _attach_netlink(program, ifindex: int, label: str, mode) -> Link:
    """XDP over netlink (RTM_SETLINK), as libbpf does on kernels without XDP links;
    XDP_FLAGS_UPDATE_IF_NOEXIST: never replace a program someone else attached."""
    flags = _mode_flags(mode)
    with deferred_signals() as section:
        sock = nl.RtNetlink()
        try:
            prog_fd = os.dup(program.fd)
        except BaseException:
            sock.close()
            raise
        try:
            nl.set_xdp(sock, ifindex, prog_fd, flags | nl.XDP_FLAGS_UPDATE_IF_NOEXIST,
                       what=f"attach XDP program {program.name!r} to {label} (mode {mode or 'default'})")
        except SyscallError as e:
            sock.close()
            os.close(prog_fd)
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach XDP to {label}"
                                              f"{_xdp_hint(e.errno, mode, label)}") from None
        except BaseException:
            sock.close()
            os.close(prog_fd)
            raise
        link = XdpNetlinkLink(program, label, sock, ifindex, flags, prog_fd)
        section.on_interrupt(link)
    return link


def xdp_not_supported(what: str) -> NotSupportedError:
    """The error for a kernel without XDP links, for callers that need a BPF link."""
    return NotSupportedError(f"{what}: this kernel has no XDP links (BPF_LINK_TYPE_XDP, Linux 5.9)")
