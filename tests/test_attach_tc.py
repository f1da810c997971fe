"""tc programs (Program.attach_tc) on a veth pair between two namespaces of the test's own,
through both paths: tcx links and the legacy clsact qdisc + direct-action cls_bpf filter
made over netlink.  Real packets: ingress and egress counters read back from the maps,
a UDP port dropped by TC_ACT_SHOT (direct-action), TOS and payload rewritten with their
checksums fixed and seen by the receiver, update() without a packet missed; the legacy
filter checked with ``tc filter show``, the qdisc removed only when we made it; tcx
info() against bpftool and PROG_QUERY; netkit refused on this kernel.

net_tc.o: tc_ingress/tc_egress count per L4 protocol (proto_packets: ingress at
[proto], egress at [257 + proto]) and UDP to watch_port (port_packets[0] / [1]);
tc_ingress drops UDP to drop_port ([3]); tc_rewrite rewrites UDP to rewrite_port
([4]); tc_pass counts watch_port ([2]).
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
import threading
import time

import pytest

import pybpf
from pybpf.kernel import netlink as nl
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import ProgQueryAttr
from pybpf.kernel.constants import AttachType, Cmd, LinkType
from pybpf.links.tc import TcFilterLink

from conftest import program
from test_attach_xdp import (bpftool_link, bpftool_net, drain, net, prog_id, send_udp,  # noqa: F401 (fixture)
                             udp_socket, wait_for)

pytestmark = pytest.mark.kernel

WATCH_PORT = 7777
DROP_PORT = 9999
REWRITE_PORT = 7000
NEW_TOS = 0xB8                 # DSCP EF, ECN bits 0
UDP = 17
EGRESS = 257                   # proto_packets offset of the egress half
N = 40
PATHS = [pytest.param(False, id="tcx"), pytest.param(True, id="legacy")]


def load_tc():
    spec = pybpf.open(program("net_tc"))
    spec.variables["watch_port"].set(WATCH_PORT)
    spec.variables["drop_port"].set(DROP_PORT)
    spec.variables["rewrite_port"].set(REWRITE_PORT)
    spec.variables["new_tos"].set(NEW_TOS)
    return spec.load()


def port_counts(obj) -> list[int]:
    m = obj.maps["port_packets"]
    return [m[i] for i in range(5)]


def tc_show(ns, iface: str, what: str = "filter", direction: str | None = None) -> str:
    argv = ["tc", what, "show", "dev", iface] + ([direction] if direction else [])
    return ns.run(argv, check=True).stdout


def assert_nothing_left(ns, iface: str) -> None:
    """No filter, no clsact qdisc, no tcx program on ``iface``."""
    assert tc_show(ns, iface, "filter", "ingress").strip() == ""
    assert tc_show(ns, iface, "filter", "egress").strip() == ""
    assert "clsact" not in tc_show(ns, iface, "qdisc")
    with ns.entered():
        ifindex = socket.if_nametoindex(iface)
    for attach_type in (AttachType.TCX_INGRESS, AttachType.TCX_EGRESS):
        assert tcx_query(ns, ifindex, attach_type) == ([], [])


def tcx_query(ns, ifindex: int, attach_type) -> tuple[list[int], list[int]]:
    """BPF_PROG_QUERY of a tcx hook of device ``ifindex`` of ``ns`` (the kernel looks the
    ifindex up in the caller's namespace): (prog ids, link ids) in run order."""
    progs, links = (ctypes.c_uint32 * 64)(), (ctypes.c_uint32 * 64)()
    attr = ProgQueryAttr(target_ifindex=ifindex, attach_type=attach_type, prog_ids=ctypes.addressof(progs),
                         count=64, link_ids=ctypes.addressof(links))
    with ns.entered():
        sc.bpf(Cmd.PROG_QUERY, attr)
    return list(progs[:attr.count]), list(links[:attr.count])


def set_tx_checksum_offload(ns, iface: str, on: bool) -> None:
    """ETHTOOL_STXCSUM through SIOCETHTOOL: off makes the sender's stack compute full
    checksums (CHECKSUM_NONE) that the receiver verifies, so a wrong fix drops the packet."""
    value = ctypes.create_string_buffer(struct.pack("=II", 0x17, int(on)))      # ETHTOOL_STXCSUM
    ifreq = struct.pack("16sP", iface.encode(), ctypes.addressof(value)) + b"\0" * 16
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        fcntl.ioctl(s, 0x8946, ifreq)                                            # SIOCETHTOOL


def recv_with_tos(sock, n: int, limit: float = 5.0) -> list[tuple[bytes, int]]:
    """Up to ``n`` datagrams with the TOS byte they arrived with (IP_RECVTOS)."""
    out = []
    deadline = time.monotonic() + limit
    while len(out) < n and time.monotonic() < deadline:
        sock.settimeout(0.5)
        try:
            data, anc, _, _ = sock.recvmsg(2048, 64)
        except socket.timeout:
            break
        tos = next((c[2][0] for c in anc if c[0] == socket.IPPROTO_IP and c[1] == socket.IP_TOS), None)
        out.append((data, tos))
    return out


# -- counting and dropping, both paths -------------------------------------------------------------

@pytest.mark.parametrize("legacy", PATHS)
def test_ingress_and_egress_counters(net, legacy, no_fd_leak):
    a, b = net.ns_a, net.ns_b
    with load_tc() as obj, udp_socket(b, (net.addr_b, WATCH_PORT)) as at_b, \
            udp_socket(a, (net.addr_a, WATCH_PORT)) as at_a:
        with b.entered():
            ingress = obj.programs["tc_ingress"].attach_tc(net.b_if, "ingress", legacy)
            egress = obj.programs["tc_egress"].attach_tc(net.b_if, "egress", legacy)
        kind = "tc" if legacy else "tcx"
        assert (ingress.kind, ingress.target) == (kind, f"{net.b_if}:ingress")
        assert (egress.kind, egress.target) == (kind, f"{net.b_if}:egress")
        send_udp(a, (net.addr_b, WATCH_PORT), N, b"to-b")          # B's ingress
        with udp_socket(b) as s:                                     # B's egress
            for _ in range(N // 2):
                s.sendto(b"to-a", (net.addr_a, WATCH_PORT))
        assert drain(at_b, N) == [b"to-b"] * N
        assert drain(at_a, N // 2) == [b"to-a"] * (N // 2)
        proto = obj.maps["proto_packets"]
        assert (proto[UDP], proto[EGRESS + UDP]) == (N, N // 2)     # no other UDP crosses the veth
        assert port_counts(obj)[:2] == [N, N // 2]
        ingress.close()
        egress.close()
        send_udp(a, (net.addr_b, WATCH_PORT), 5)
        assert len(drain(at_b, 5)) == 5 and port_counts(obj)[:2] == [N, N // 2]
        assert_nothing_left(b, net.b_if)


@pytest.mark.parametrize("legacy", PATHS)
def test_shot_drops_one_udp_port_and_passes_others(net, legacy, no_fd_leak):
    """TC_ACT_SHOT drops only when the return code is the action: direct-action on the
    legacy path (without it, 2 would be a classid and the packet would pass)."""
    a, b = net.ns_a, net.ns_b
    with load_tc() as obj, udp_socket(b, (net.addr_b, DROP_PORT)) as dropped, \
            udp_socket(b, (net.addr_b, WATCH_PORT)) as passing:
        with b.entered():
            link = obj.programs["tc_ingress"].attach_tc(net.b_if, "ingress", legacy=legacy)
        with link:
            send_udp(a, (net.addr_b, DROP_PORT), N, b"dropped")
            send_udp(a, (net.addr_b, WATCH_PORT), N, b"passes")
            assert drain(passing, N) == [b"passes"] * N
            assert drain(dropped, quiet=0.5) == []
            assert port_counts(obj)[3] == N
        send_udp(a, (net.addr_b, DROP_PORT), 3, b"later")
        assert drain(dropped, 3) == [b"later"] * 3
        assert_nothing_left(b, net.b_if)


@pytest.mark.parametrize("legacy", PATHS)
@pytest.mark.parametrize("where", ["sender-egress", "receiver-ingress"])
def test_rewrite_with_checksum_fix_is_seen_by_the_receiver(net, legacy, where, no_fd_leak):
    a, b = net.ns_a, net.ns_b
    set_tx_checksum_offload(a, net.a_if, False)   # full checksums in software, verified by B
    with load_tc() as obj, udp_socket(b, (net.addr_b, REWRITE_PORT)) as rx, \
            udp_socket(b, (net.addr_b, WATCH_PORT)) as other:
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        send_udp(a, (net.addr_b, REWRITE_PORT), 1, b"hello")
        assert recv_with_tos(rx, 1) == [(b"hello", 0)]            # as sent, before attaching
        ns, iface, direction = (a, net.a_if, "egress") if where == "sender-egress" else (b, net.b_if, "ingress")
        with ns.entered():
            link = obj.programs["tc_rewrite"].attach_tc(iface, direction, legacy)
        with link:
            send_udp(a, (net.addr_b, REWRITE_PORT), N, b"hello")
            send_udp(a, (net.addr_b, WATCH_PORT), 3, b"hello")
            # a wrong IP or UDP checksum would make B drop the datagram (InCsumErrors)
            assert recv_with_tos(rx, N) == [(b"RWllo", NEW_TOS)] * N
            assert drain(other, 3) == [b"hello"] * 3              # other ports untouched
            assert port_counts(obj)[4] == N
        snmp = b.run(["cat", "/proc/net/snmp"], check=True).stdout.splitlines()
        udp = dict(zip(*(line.split()[1:] for line in snmp if line.startswith("Udp:"))))
        assert udp["InCsumErrors"] == "0" and udp["InErrors"] == "0"
        assert_nothing_left(ns, iface)


# -- update() --------------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", PATHS)
def test_update_swaps_program_without_missing_a_packet(net, legacy, no_fd_leak):
    a, b = net.ns_a, net.ns_b
    with load_tc() as obj, udp_socket(b, (net.addr_b, WATCH_PORT)):
        old, new = obj.programs["tc_ingress"], obj.programs["tc_pass"]
        with b.entered():
            link = old.attach_tc(net.b_if, "ingress", legacy)
        port = obj.maps["port_packets"]
        sent = [0]
        stop = threading.Event()

        def sender():
            with udp_socket(a) as s:
                deadline = time.monotonic() + 20
                while not stop.is_set() and sent[0] < 2_000_000 and time.monotonic() < deadline:
                    s.sendto(b"stream", (net.addr_b, WATCH_PORT))
                    sent[0] += 1

        t = threading.Thread(target=sender)
        t.start()
        try:
            assert wait_for(lambda: port[0] >= 2000)
            link.update(new)
            assert wait_for(lambda: port[2] >= 2000)
        finally:
            stop.set()
            t.join(30)
        assert not t.is_alive()
        assert wait_for(lambda: port[0] + port[2] == sent[0])
        assert port[0] + port[2] == sent[0] and port[0] > 0 and port[2] > 0
        assert link.program is new
        if legacy:
            f = link.filter()
            assert (f.prog_id, f.handle, f.priority) == (prog_id(new), link.handle, link.priority)
            assert f"tc_pass:[{prog_id(new)}]" in tc_show(b, net.b_if, "filter", "ingress")
        else:
            assert link.info().prog_id == prog_id(new)
        link.close()
        assert_nothing_left(b, net.b_if)


# -- tcx: info(), detach(), PROG_QUERY -------------------------------------------------------------

def test_tcx_info_matches_bpftool_and_prog_query(net, no_fd_leak):
    b = net.ns_b
    with load_tc() as obj:
        ing, egr, pas = (obj.programs[n] for n in ("tc_ingress", "tc_egress", "tc_pass"))
        ifindex = b.ifindex(net.b_if)
        with b.entered():
            l1 = ing.attach_tc(net.b_if)                       # default direction: ingress
            l2 = pas.attach_tc(ifindex, "ingress")              # appended after l1
            l3 = egr.attach_tc(net.b_if, "egress")
        with l1, l2, l3:
            infos = [l.info() for l in (l1, l2, l3)]
            assert [(i.type, i.ifindex, i.attach_type) for i in infos] == [
                (LinkType.TCX, ifindex, AttachType.TCX_INGRESS), (LinkType.TCX, ifindex, AttachType.TCX_INGRESS),
                (LinkType.TCX, ifindex, AttachType.TCX_EGRESS)]
            assert [i.prog_id for i in infos] == [prog_id(p) for p in (ing, pas, egr)]
            for info in infos:
                tool = bpftool_link(info.id)
                assert (tool["id"], tool["prog_id"]) == (info.id, info.prog_id)
                assert tool["type"] in ("tcx", int(LinkType.TCX))      # bpftool before 7.3: the number
                if "ifindex" in tool:
                    assert (tool["ifindex"], tool["attach_type"]) == (ifindex, info.attach_type.name.lower())
            # the kernel's own list of the hook, in run order
            assert tcx_query(b, ifindex, AttachType.TCX_INGRESS) == ([infos[0].prog_id, infos[1].prog_id],
                                                                 [infos[0].id, infos[1].id])
            assert tcx_query(b, ifindex, AttachType.TCX_EGRESS) == ([infos[2].prog_id], [infos[2].id])
            # tcx needs no qdisc and is not a tc filter
            assert "clsact" not in tc_show(b, net.b_if, "qdisc")
            assert tc_show(b, net.b_if, "filter", "ingress").strip() == ""
        assert_nothing_left(b, net.b_if)


def test_tcx_detach_stops_the_program_and_keeps_the_fd(net, no_fd_leak):
    a, b = net.ns_a, net.ns_b
    with load_tc() as obj, udp_socket(b, (net.addr_b, DROP_PORT)) as dropped:
        with b.entered():
            link = obj.programs["tc_ingress"].attach_tc(net.b_if)
        send_udp(a, (net.addr_b, DROP_PORT), 3)
        assert drain(dropped, quiet=0.3) == []
        link.detach()
        assert not link.closed and link.info().ifindex == 0
        assert tcx_query(b, b.ifindex(net.b_if), AttachType.TCX_INGRESS) == ([], [])
        send_udp(a, (net.addr_b, DROP_PORT), 3, b"free")
        assert drain(dropped, 3) == [b"free"] * 3
        link.close()


# -- legacy: what tc sees, and the qdisc -----------------------------------------------------------

def test_legacy_filter_shows_in_tc_and_goes_with_its_qdisc(net, no_fd_leak):
    b = net.ns_b
    with load_tc() as obj:
        prog = obj.programs["tc_ingress"]
        assert "clsact" not in tc_show(b, net.b_if, "qdisc")
        with b.entered():
            link = prog.attach_tc(net.b_if, "ingress", legacy=True)
        assert isinstance(link, TcFilterLink) and link.created_qdisc
        shown = tc_show(b, net.b_if, "filter", "ingress")
        assert (f"pref {link.priority} bpf chain 0 handle {link.handle:#x} tc_ingress:[{prog_id(prog)}] "
                f"direct-action") in shown
        assert tc_show(b, net.b_if, "filter", "egress").strip() == ""
        assert "qdisc clsact ffff: parent ffff:fff1" in tc_show(b, net.b_if, "qdisc")
        with b.entered(), nl.RtNetlink() as sock:
            assert nl.has_clsact(sock, b.ifindex(net.b_if))
        f = link.filter()
        assert (f.kind, f.prog_id, f.direct_action, f.name, f.protocol) == \
            ("bpf", prog_id(prog), True, f"tc_ingress:[{prog_id(prog)}]", 3)        # ETH_P_ALL
        assert link.priority == 0xC000 and link.handle == 1     # the kernel's choice for prio 0, handle 0
        tool = bpftool_net(b)["tc"]
        assert [(t["kind"], t["id"]) for t in tool] == [("clsact/ingress", prog_id(prog))]
        with pytest.raises(pybpf.NotSupportedError, match="not a BPF link"):
            link.info()
        link.close()
        assert link.closed
        assert_nothing_left(b, net.b_if)                        # filter and our qdisc gone
        with b.entered(), nl.RtNetlink() as sock:
            assert not nl.has_clsact(sock, b.ifindex(net.b_if))
        link.close()                                            # idempotent


def test_legacy_keeps_a_clsact_qdisc_it_did_not_make(net, no_fd_leak):
    b = net.ns_b
    b.run(["tc", "qdisc", "add", "dev", net.b_if, "clsact"], check=True)
    try:
        with load_tc() as obj:
            with b.entered():
                link = obj.programs["tc_egress"].attach_tc(net.b_if, "egress", legacy=True)
            assert not link.created_qdisc
            assert "tc_egress" in tc_show(b, net.b_if, "filter", "egress")
            link.close()
            assert tc_show(b, net.b_if, "filter", "egress").strip() == ""
            assert "qdisc clsact" in tc_show(b, net.b_if, "qdisc")   # not ours: stays
    finally:
        b.run(["tc", "qdisc", "del", "dev", net.b_if, "clsact"], check=True)
    assert_nothing_left(b, net.b_if)


@pytest.mark.parametrize("first_closed", ["maker", "sharer"])
def test_legacy_links_share_the_qdisc_one_of_them_made(net, first_closed, no_fd_leak):
    """Two legacy links on one device: the qdisc goes with the last of them, whichever made it."""
    b = net.ns_b
    with load_tc() as obj:
        with b.entered():
            maker = obj.programs["tc_ingress"].attach_tc(net.b_if, "ingress", legacy=True)
            sharer = obj.programs["tc_egress"].attach_tc(net.b_if, "egress", legacy=True)
        assert (maker.created_qdisc, sharer.created_qdisc) == (True, False)
        first, second = (maker, sharer) if first_closed == "maker" else (sharer, maker)
        first.close()
        assert "qdisc clsact" in tc_show(b, net.b_if, "qdisc")
        assert second.program.name in tc_show(b, net.b_if, "filter", second.direction)
        second.close()
        assert_nothing_left(b, net.b_if)


def test_legacy_leaves_the_qdisc_while_another_filter_is_on_it(net, no_fd_leak):
    """Deleting clsact deletes every filter on it: while someone else's filter is there,
    our qdisc stays (and goes when they are done with it)."""
    b = net.ns_b
    with load_tc() as obj:
        other = obj.programs["tc_pass"]
        with b.entered():
            link = obj.programs["tc_ingress"].attach_tc(net.b_if, "ingress", legacy=True)
            sock = nl.RtNetlink()
        with sock:
            theirs = nl.add_bpf_filter(sock, b.ifindex(net.b_if), nl.clsact_parent("egress"), other.fd, "theirs")
            link.close()
            assert "theirs" in tc_show(b, net.b_if, "filter", "egress")
            assert "qdisc clsact" in tc_show(b, net.b_if, "qdisc")
            nl.del_bpf_filter(sock, b.ifindex(net.b_if), nl.clsact_parent("egress"), theirs.handle, theirs.priority)
            nl.del_clsact(sock, b.ifindex(net.b_if))
        assert_nothing_left(b, net.b_if)


def test_legacy_detach_and_a_filter_deleted_behind_our_back(net, no_fd_leak):
    a, b = net.ns_a, net.ns_b
    with load_tc() as obj, udp_socket(b, (net.addr_b, DROP_PORT)) as dropped:
        with b.entered():
            link = obj.programs["tc_ingress"].attach_tc(net.b_if, "ingress", legacy=True)
        link.detach()
        assert not link.closed and link.filter() is None
        assert_nothing_left(b, net.b_if)
        send_udp(a, (net.addr_b, DROP_PORT), 3, b"free")
        assert drain(dropped, 3) == [b"free"] * 3
        link.close()
        # someone deletes the qdisc (and our filter with it): close still succeeds
        with b.entered():
            link = obj.programs["tc_ingress"].attach_tc(net.b_if, "ingress", legacy=True)
        b.run(["tc", "qdisc", "del", "dev", net.b_if, "clsact"], check=True)
        link.close()
        assert link.closed
        assert_nothing_left(b, net.b_if)


def test_object_close_removes_both_kinds(net, no_fd_leak):
    b = net.ns_b
    obj = load_tc()
    try:
        with b.entered():
            obj.programs["tc_ingress"].attach_tc(net.b_if, "ingress", legacy=True)
            obj.programs["tc_egress"].attach_tc(net.b_if, "egress")
        assert len(obj.links) == 2
    finally:
        obj.close()
    assert obj.links == []
    assert_nothing_left(b, net.b_if)


# -- directions, errors, netkit --------------------------------------------------------------------

def test_direction_none_takes_the_section(net, no_fd_leak):
    """Program.attach_tc defaults to "ingress" (the issue's contract), whatever the section;
    pybpf.links.tc.attach_tc(direction=None) takes tc/egress from the section."""
    from pybpf.links.tc import attach_tc
    b = net.ns_b
    with load_tc() as obj:
        with b.entered():
            with attach_tc(obj.programs["tc_egress"], net.b_if, None) as link:
                assert link.info().attach_type == AttachType.TCX_EGRESS
            with attach_tc(obj.programs["tc_pass"], net.b_if, None) as link:
                assert link.info().attach_type == AttachType.TCX_INGRESS
            with obj.programs["tc_egress"].attach_tc(net.b_if) as link:
                assert link.info().attach_type == AttachType.TCX_INGRESS
        assert_nothing_left(b, net.b_if)


@pytest.mark.parametrize("legacy", PATHS)
def test_attach_errors_say_what_is_wrong(net, legacy, no_fd_leak):
    b = net.ns_b
    with load_tc() as obj:
        prog = obj.programs["tc_ingress"]
        with b.entered():
            with pytest.raises(pybpf.Error, match="use 'ingress' or 'egress'"):
                prog.attach_tc(net.b_if, "sideways", legacy)
            with pytest.raises(pybpf.Error, match="no network interface named 'pybpf-nope0'"):
                prog.attach_tc("pybpf-nope0", "ingress", legacy)
            with prog.attach_tc(net.b_if, "ingress", legacy):
                with pytest.raises(pybpf.SyscallError) as e:     # the same program twice on one hook
                    if legacy:
                        # a second filter at another priority is allowed: the same handle and
                        # priority is what the kernel refuses (NLM_F_EXCL)
                        sock = nl.RtNetlink()
                        with sock:
                            f = nl.filters(sock, b.ifindex(net.b_if), nl.clsact_parent("ingress"))[0]
                            nl.add_bpf_filter(sock, b.ifindex(net.b_if), nl.clsact_parent("ingress"), prog.fd,
                                              "again", priority=f.priority, handle=f.handle)
                    else:
                        prog.attach_tc(net.b_if, "ingress")
                assert e.value.errno == 17                        # EEXIST
                assert ("already runs" in str(e.value)) if not legacy else ("kernel says" in str(e.value))
        assert obj.links == []
    with pybpf.load(program("net_xdp")) as xdp, b.entered():
        with pytest.raises(pybpf.Error, match="needs a tc program"):
            xdp.programs["xdp_pass_count"].attach_tc(net.b_if, "ingress", legacy)
    assert_nothing_left(b, net.b_if)


def test_netkit_is_refused_on_a_kernel_without_it(net, no_fd_leak):
    """This kernel has the netkit link and attach types in its BTF but no netkit driver:
    attach_netkit says so (NotSupportedError naming CONFIG_NETKIT and the version that
    brought it).  On a kernel with the driver a veth is refused as not netkit."""
    from pybpf.links.netkit import _kernel_has_netkit_driver
    b = net.ns_b
    with load_tc() as obj, b.entered():
        prog = obj.programs["tc_pass"]
        for peer in (False, True):
            if _kernel_has_netkit_driver() is False:
                with pytest.raises(pybpf.NotSupportedError) as e:
                    prog.attach_netkit(net.b_if, peer)
                text = str(e.value)
                assert "no netkit device driver" in text and "CONFIG_NETKIT" in text and "6.7" in text
                assert net.b_if in text
                with pytest.raises(pybpf.NotSupportedError, match="no netkit device driver"):
                    prog.attach_netkit("pybpf-nk0", peer)              # no netkit device can exist here
            else:
                with pytest.raises(pybpf.Error, match="a veth device, not netkit"):
                    prog.attach_netkit(net.b_if, peer)
        assert obj.links == []
