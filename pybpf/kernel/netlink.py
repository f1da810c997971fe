"""rtnetlink, the kernel interface of legacy tc (clsact qdisc + cls_bpf filter) and of
device queries: a socket, messages built and parsed with :mod:`struct`, acks and
errors turned into pybpf errors, and every receive bounded in time and messages.

Layouts and values are the UAPI ones (netlink.h, rtnetlink.h, pkt_sched.h,
pkt_cls.h, if_link.h); all little-endian host order except where noted.

A socket belongs to the network namespace of the thread that made it, for its whole
life: a link that keeps its :class:`RtNetlink` keeps talking to the namespace its
device is in, wherever the thread that closes it is.
"""

from __future__ import annotations

import errno as _errno
import itertools
import socket
import struct
import time
from dataclasses import dataclass

from .. import errors

# -- netlink.h ------------------------------------------------------------------------------------
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10

NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100        # in acks
NLM_F_ACK_TLVS = 0x200      # in acks

NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# -- rtnetlink.h ----------------------------------------------------------------------------------
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_GETQDISC = 38
RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46

_RTM_NAMES = {
    RTM_NEWLINK: "RTM_NEWLINK", RTM_GETLINK: "RTM_GETLINK", RTM_SETLINK: "RTM_SETLINK",
    RTM_NEWQDISC: "RTM_NEWQDISC", RTM_DELQDISC: "RTM_DELQDISC", RTM_GETQDISC: "RTM_GETQDISC",
    RTM_NEWTFILTER: "RTM_NEWTFILTER", RTM_DELTFILTER: "RTM_DELTFILTER", RTM_GETTFILTER: "RTM_GETTFILTER",
}

# -- if_link.h ------------------------------------------------------------------------------------
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_XDP = 43
IFLA_XDP_FD = 1
IFLA_XDP_ATTACHED = 2
IFLA_XDP_FLAGS = 3
IFLA_XDP_PROG_ID = 4
IFLA_XDP_DRV_PROG_ID = 5
IFLA_XDP_SKB_PROG_ID = 6
IFLA_XDP_HW_PROG_ID = 7
IFLA_XDP_EXPECTED_FD = 8

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4
XDP_ATTACHED_NAMES = {0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi"}

# -- pkt_sched.h / pkt_cls.h ----------------------------------------------------------------------
TC_H_MAJ_MASK = 0xFFFF0000
TC_H_MIN_MASK = 0x0000FFFF
TC_H_CLSACT = 0xFFFFFFF1            # == TC_H_INGRESS
TC_H_MIN_INGRESS = 0xFFF2
TC_H_MIN_EGRESS = 0xFFF3
ETH_P_ALL = 0x0003

TCA_KIND = 1
TCA_OPTIONS = 2
TCA_BPF_FD = 6
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_FLAGS_GEN = 9
TCA_BPF_TAG = 10
TCA_BPF_ID = 11
TCA_BPF_FLAG_ACT_DIRECT = 1 << 0

_NLMSGHDR = struct.Struct("=IHHII")     # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")          # len, type
_TCMSG = struct.Struct("=BxxxiIII")     # family, pad, pad, ifindex, handle, parent, info
_IFINFOMSG = struct.Struct("=BxHiII")   # family, pad, type, index, flags, change

#: no receive waits longer than this for the kernel's next message (seconds)
RECV_TIMEOUT = 5.0
#: messages accepted in answer to one request (a dump of one device's filters is a few)
MAX_REPLIES = 4096

_seq = itertools.count(int(time.time()) & 0xFFFF)


def tc_h_make(major: int, minor: int) -> int:
    """TC_H_MAKE: the major half of ``major`` and the minor half of ``minor``."""
    return (major & TC_H_MAJ_MASK) | (minor & TC_H_MIN_MASK)


def _align(n: int) -> int:
    return (n + 3) & ~3


# -- attributes -----------------------------------------------------------------------------------

def attr(kind: int, data: bytes) -> bytes:
    """One netlink attribute (header, payload, padding to 4 bytes)."""
    length = _NLATTR.size + len(data)
    return _NLATTR.pack(length, kind) + data + b"\0" * (_align(length) - length)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value & 0xFFFFFFFF))


def attr_s32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=i", value))


def attr_str(kind: int, value: str) -> bytes:
    """A NUL-terminated string attribute (NLA_STRING / NLA_NUL_STRING)."""
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, *parts: bytes) -> bytes:
    """A nested attribute holding ``parts`` (NLA_F_NESTED set, as iproute2 and libbpf do)."""
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """The attributes in ``data``: type (flags masked off) -> payload; the last one wins."""
    out: dict[int, bytes] = {}
    off = 0
    while off + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, off)
        if length < _NLATTR.size or off + length > len(data):
            break               # malformed: stop, as the kernel's nla_ok() does
        out[kind & NLA_TYPE_MASK] = bytes(data[off + _NLATTR.size:off + length])
        off += _align(length)
    return out


def attr_to_str(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data.split(b"\0", 1)[0].decode(errors="replace")


def attr_to_u32(data: bytes | None) -> int | None:
    if data is None or len(data) < 4:
        return None
    return struct.unpack_from("=I", data)[0]


@dataclass
class Message:
    """One netlink message of a reply: its type, flags and payload (after the nlmsghdr)."""
    type: int
    flags: int
    payload: bytes


# -- the socket -----------------------------------------------------------------------------------

class RtNetlink:
    """A NETLINK_ROUTE socket of the calling thread's network namespace.

    :meth:`request` sends one message and gathers the replies up to its ack (or the
    end of a dump); an error reply raises :class:`pybpf.SyscallError` (EPERM/EACCES:
    :class:`pybpf.PermissionError`) named after the request type, with the kernel's
    extended-ack text.  Every receive waits at most :data:`RECV_TIMEOUT` seconds.
    """

    def __init__(self, timeout: float = RECV_TIMEOUT):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            # ext-ack: the kernel says in words what it refused; cap-ack: it does not echo
            # our request back in error replies (the TLVs still come)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                pass            # older kernels: the request is echoed, parsed the same way
            sock.bind((0, 0))
            sock.settimeout(timeout)
            self.port = sock.getsockname()[0]
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.timeout = timeout

    @property
    def closed(self) -> bool:
        return self._sock is None

    def fileno(self) -> int:
        if self._sock is None:
            raise errors.ClosedError("netlink socket is closed")
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket.  Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "RtNetlink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, payload: bytes, what: str = "") -> list[Message]:
        """Send message ``msg_type`` (NLM_F_REQUEST is added; add NLM_F_ACK or NLM_F_DUMP
        to know when it is done) and return the replies that carry data (echoes, dump
        parts), in order.  ``what`` goes into error messages."""
        if self._sock is None:
            raise errors.ClosedError("netlink socket is closed")
        seq = next(_seq) & 0xFFFFFFFF
        flags |= NLM_F_REQUEST
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload
        name = _RTM_NAMES.get(msg_type, f"RTM_{msg_type}")
        try:
            self._sock.send(msg)
        except OSError as e:
            raise _error(name, e.errno or _errno.EIO, what, f"send failed: {e.strerror}") from None
        if not flags & (NLM_F_ACK | NLM_F_DUMP):
            return []
        replies: list[Message] = []
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.TimeoutError(f"{name}: no answer from the kernel within {self.timeout:g} s"
                                          + (f": {what}" if what else ""))
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            except OSError as e:
                raise _error(name, e.errno or _errno.EIO, what, f"receive failed: {e.strerror}") from None
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, rtype, rflags, rseq, rpid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size or off + length > len(data):
                    break
                body = data[off + _NLMSGHDR.size:off + length]
                off += _align(length)
                if rseq != seq or rpid not in (0, self.port):
                    continue        # an answer to an older request (one that timed out)
                if rtype == NLMSG_ERROR:
                    err = struct.unpack_from("=i", body)[0] if len(body) >= 4 else -_errno.EIO
                    if err:
                        raise _error(name, -err, what, _ext_ack_text(body, rflags))
                    return replies      # the ack
                if rtype == NLMSG_DONE:
                    if len(body) >= 4:
                        err = struct.unpack_from("=i", body)[0]
                        if err < 0:
                            # a failed dump: the ext-ack TLVs follow the error code directly
                            text = attr_to_str(parse_attrs(body[4:]).get(NLMSGERR_ATTR_MSG)) \
                                if rflags & NLM_F_ACK_TLVS else None
                            raise _error(name, -err, what, text)
                    return replies
                replies.append(Message(rtype, rflags, bytes(body)))
                if len(replies) > MAX_REPLIES:
                    raise errors.Error(f"{name}: more than {MAX_REPLIES} replies to one request"
                                       + (f" ({what})" if what else "") + "; giving up")


def _ext_ack_text(body: bytes, flags: int) -> str | None:
    """The kernel's NLMSGERR_ATTR_MSG text of an error reply, if any."""
    if not flags & NLM_F_ACK_TLVS or len(body) < 4 + _NLMSGHDR.size:
        return None
    if flags & NLM_F_CAPPED:
        tlv_off = 4 + _NLMSGHDR.size
    else:
        echoed_len = _NLMSGHDR.unpack_from(body, 4)[0]
        tlv_off = 4 + _align(echoed_len)
    return attr_to_str(parse_attrs(body[tlv_off:]).get(NLMSGERR_ATTR_MSG))


def _error(name: str, err: int, what: str, text: str | None) -> errors.SyscallError:
    message = "; ".join(p for p in (what, f"kernel says: {text}" if text else None) if p)
    if err in (_errno.EPERM, _errno.EACCES):
        hint = "needs CAP_NET_ADMIN in the device's network namespace"
        return errors.PermissionError(name, err, f"{message}; {hint}" if message else hint)
    return errors.SyscallError(name, err, message or None)


# -- devices --------------------------------------------------------------------------------------

def tcmsg(ifindex: int, handle: int = 0, parent: int = 0, info: int = 0) -> bytes:
    """A ``struct tcmsg`` (family AF_UNSPEC)."""
    return _TCMSG.pack(0, ifindex, handle & 0xFFFFFFFF, parent & 0xFFFFFFFF, info & 0xFFFFFFFF)


def ifinfomsg(index: int) -> bytes:
    """A ``struct ifinfomsg`` (family AF_UNSPEC) for device ``index``."""
    return _IFINFOMSG.pack(0, 0, index, 0, 0)


@dataclass
class DeviceInfo:
    """What RTM_GETLINK says about one device."""
    ifindex: int
    name: str | None
    kind: str | None                 # IFLA_INFO_KIND: "veth", "netkit"...; None for physical devices
    xdp_attached: str | None         # None, "native", "generic", "offload" or "multi"
    xdp_prog_ids: dict               # mode -> prog id


def _device_info(payload: bytes) -> DeviceInfo:
    _, _, index, _, _ = _IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload[_IFINFOMSG.size:])
    kind = None
    if IFLA_LINKINFO in attrs:
        kind = attr_to_str(parse_attrs(attrs[IFLA_LINKINFO]).get(IFLA_INFO_KIND))
    attached, ids = None, {}
    if IFLA_XDP in attrs:
        xdp = parse_attrs(attrs[IFLA_XDP])
        if IFLA_XDP_ATTACHED in xdp:
            attached = XDP_ATTACHED_NAMES.get(xdp[IFLA_XDP_ATTACHED][0], str(xdp[IFLA_XDP_ATTACHED][0]))
        for key, mode in ((IFLA_XDP_DRV_PROG_ID, "native"), (IFLA_XDP_SKB_PROG_ID, "generic"),
                          (IFLA_XDP_HW_PROG_ID, "offload")):
            if key in xdp:
                ids[mode] = attr_to_u32(xdp[key])
        if not ids and attached not in (None, "multi") and IFLA_XDP_PROG_ID in xdp:
            ids[attached] = attr_to_u32(xdp[IFLA_XDP_PROG_ID])
    return DeviceInfo(index, attr_to_str(attrs.get(IFLA_IFNAME)), kind, attached, ids)


def get_link(nl: RtNetlink, ifindex: int) -> DeviceInfo:
    """RTM_GETLINK of device ``ifindex``: its name, kind and attached XDP programs.
    (A unicast GET answers with one RTM_NEWLINK; NLM_F_ACK adds the ack that ends it.)"""
    replies = nl.request(RTM_GETLINK, NLM_F_ACK, ifinfomsg(ifindex), f"device with ifindex {ifindex}")
    for msg in replies:
        if msg.type == RTM_NEWLINK:
            return _device_info(msg.payload)
    raise errors.Error(f"RTM_GETLINK: the kernel sent no answer for ifindex {ifindex}")


def set_xdp(nl: RtNetlink, ifindex: int, prog_fd: int, flags: int = 0, expected_fd: int | None = None,
            what: str = "") -> None:
    """RTM_SETLINK with IFLA_XDP: attach ``prog_fd`` (-1: detach) in the mode of ``flags``
    (XDP_FLAGS_*); with ``expected_fd``, only if that program is the one attached
    (XDP_FLAGS_REPLACE).  The way to attach XDP before BPF links (kernel 5.9)."""
    parts = [attr_s32(IFLA_XDP_FD, prog_fd)]
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        parts.append(attr_s32(IFLA_XDP_EXPECTED_FD, expected_fd))
    if flags:
        parts.append(attr_u32(IFLA_XDP_FLAGS, flags))
    nl.request(RTM_SETLINK, NLM_F_ACK, ifinfomsg(ifindex) + nested(IFLA_XDP, *parts), what)


# -- clsact qdisc and cls_bpf filters -------------------------------------------------------------

def _clsact_msg(ifindex: int) -> bytes:
    return tcmsg(ifindex, handle=tc_h_make(TC_H_CLSACT, 0), parent=TC_H_CLSACT) + attr_str(TCA_KIND, "clsact")


def add_clsact(nl: RtNetlink, ifindex: int, what: str = "") -> bool:
    """Add a clsact qdisc to device ``ifindex``: True if this made it, False if the device
    already had one (RTM_NEWQDISC with NLM_F_EXCL fails with EEXIST then)."""
    try:
        nl.request(RTM_NEWQDISC, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, _clsact_msg(ifindex), what)
    except errors.SyscallError as e:
        if e.errno == _errno.EEXIST:
            return False
        raise
    return True


def del_clsact(nl: RtNetlink, ifindex: int, what: str = "") -> None:
    """Delete the clsact qdisc of device ``ifindex``, and with it every filter of both
    directions (the kernel says EINVAL when there is none)."""
    nl.request(RTM_DELQDISC, NLM_F_ACK, _clsact_msg(ifindex), what)


def has_clsact(nl: RtNetlink, ifindex: int) -> bool:
    """True if device ``ifindex`` has a clsact qdisc (RTM_GETQDISC dump)."""
    for msg in nl.request(RTM_GETQDISC, NLM_F_DUMP, tcmsg(ifindex), f"qdiscs of ifindex {ifindex}"):
        _, index, handle, parent, _ = _TCMSG.unpack_from(msg.payload)
        if index != ifindex:
            continue
        kind = attr_to_str(parse_attrs(msg.payload[_TCMSG.size:]).get(TCA_KIND))
        if kind == "clsact" and parent == TC_H_CLSACT:
            return True
    return False


def clsact_parent(direction: str) -> int:
    """The parent handle of clsact's ``"ingress"`` or ``"egress"`` hook (ffff:fff2 / ffff:fff3)."""
    return tc_h_make(TC_H_CLSACT, TC_H_MIN_INGRESS if direction == "ingress" else TC_H_MIN_EGRESS)


@dataclass
class Filter:
    """One tc filter as the kernel reports it (RTM_NEWTFILTER, from a dump or an echo)."""
    ifindex: int
    parent: int
    handle: int
    priority: int
    protocol: int            # host order (ETH_P_ALL = 3)
    kind: str | None
    prog_id: int | None      # cls_bpf only
    name: str | None         # cls_bpf only
    direct_action: bool      # cls_bpf only


def _filter(payload: bytes) -> Filter:
    _, index, handle, parent, info = _TCMSG.unpack_from(payload)
    attrs = parse_attrs(payload[_TCMSG.size:])
    kind = attr_to_str(attrs.get(TCA_KIND))
    prog_id = name = None
    da = False
    if kind == "bpf" and TCA_OPTIONS in attrs:
        opts = parse_attrs(attrs[TCA_OPTIONS])
        prog_id = attr_to_u32(opts.get(TCA_BPF_ID))
        name = attr_to_str(opts.get(TCA_BPF_NAME))
        da = bool((attr_to_u32(opts.get(TCA_BPF_FLAGS)) or 0) & TCA_BPF_FLAG_ACT_DIRECT)
    return Filter(index, parent, handle, info >> 16, socket.ntohs(info & 0xFFFF), kind, prog_id, name, da)


def add_bpf_filter(nl: RtNetlink, ifindex: int, parent: int, prog_fd: int, name: str,
                   priority: int = 0, handle: int = 0, replace: bool = False, what: str = "") -> Filter:
    """Add a direct-action cls_bpf filter running ``prog_fd`` under ``parent`` of device
    ``ifindex``, for every protocol; returns it as the kernel made it (its handle and
    priority: 0 lets the kernel choose, as libbpf's ``bpf_tc_attach`` does).

    ``replace``: swap the program of the filter at (``handle``, ``priority``) instead
    (NLM_F_REPLACE; cls_bpf replaces the filter in one RCU step: every packet sees the
    old program or the new one)."""
    if not 0 <= priority <= 0xFFFF:
        raise errors.Error(f"tc filter priority {priority} out of range (0..65535)")
    flags = NLM_F_ACK | NLM_F_ECHO | NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    # tcm_info: priority in the upper 16 bits, protocol in network order in the lower
    info = tc_h_make(priority << 16, socket.htons(ETH_P_ALL))
    options = nested(TCA_OPTIONS, attr_u32(TCA_BPF_FD, prog_fd), attr_str(TCA_BPF_NAME, name),
                     attr_u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT))
    body = tcmsg(ifindex, handle=handle, parent=parent, info=info) + attr_str(TCA_KIND, "bpf") + options
    replies = nl.request(RTM_NEWTFILTER, flags, body, what)
    for msg in replies:
        if msg.type == RTM_NEWTFILTER:
            return _filter(msg.payload)
    raise errors.Error(f"RTM_NEWTFILTER: the kernel did not echo the new filter{f' ({what})' if what else ''}")


def del_bpf_filter(nl: RtNetlink, ifindex: int, parent: int, handle: int, priority: int, what: str = "") -> None:
    """Delete the cls_bpf filter (``handle``, ``priority``) under ``parent`` of device ``ifindex``."""
    info = tc_h_make(priority << 16, socket.htons(ETH_P_ALL))
    body = tcmsg(ifindex, handle=handle, parent=parent, info=info) + attr_str(TCA_KIND, "bpf")
    nl.request(RTM_DELTFILTER, NLM_F_ACK, body, what)


def filters(nl: RtNetlink, ifindex: int, parent: int) -> list[Filter]:
    """The filters under ``parent`` of device ``ifindex`` (RTM_GETTFILTER dump).  The
    kernel also lists one entry with handle 0 per priority (the chain head): left out."""
    replies = nl.request(RTM_GETTFILTER, NLM_F_DUMP, tcmsg(ifindex, parent=parent),
                         f"filters of ifindex {ifindex}")
    return [f for f in (_filter(m.payload) for m in replies if m.type == RTM_NEWTFILTER) if f.handle]


# -- interface names --------------------------------------------------------------------------------

def resolve_ifindex(iface) -> tuple[int, str]:
    """``(ifindex, label)`` of a network device given by name or ifindex, looked up in the
    calling thread's network namespace; the label is its name when it has one there."""
    if isinstance(iface, bool) or not isinstance(iface, (int, str)):
        raise errors.Error(f"network interface must be a name or an ifindex, not {iface!r}")
    if isinstance(iface, int):
        if iface <= 0:
            raise errors.Error(f"ifindex must be positive, not {iface}")
        try:
            return iface, socket.if_indextoname(iface)
        except OSError:
            raise errors.Error(f"no network interface with ifindex {iface} in this network namespace "
                               f"(see 'ip link'; a name or ifindex is looked up in the calling "
                               f"thread's namespace)") from None
    try:
        return socket.if_nametoindex(iface), iface
    except OSError:
        raise errors.Error(f"no network interface named {iface!r} in this network namespace "
                           f"(see 'ip link'; a name is looked up in the calling thread's namespace)") from None
