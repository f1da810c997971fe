"""XDP links (Program.attach_xdp) on a veth pair between two namespaces of the test's own,
with real packets: per-protocol counters read back from the maps, a UDP port dropped
(the receiver gets nothing) while another passes, generic and native mode, update()
without a packet missed, info() against bpftool, detach(), and nothing left behind.

net_xdp.o: xdp_count_drop counts packets per L4 protocol (proto_packets) and drops UDP
to .rodata drop_port; both it and xdp_pass_count count UDP to watch_port, in slots 0
and 1 of port_packets (slot 2: drops).  Traffic goes A (192.0.2.1) -> B (192.0.2.2);
the program runs at B's end of the veth.

Native XDP on veth: veth has ndo_bpf, so a program on the receiving veth runs in its
NAPI poll for every frame its peer transmits (veth_xdp_set enables the peer's NAPI
path; nothing is needed on the peer).  The peer needs an XDP program or GRO only when
frames are XDP_REDIRECTed or XDP_TX'ed into a veth (veth_xdp_xmit), not done here.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import threading
import time

import pytest

import pybpf
from pybpf.kernel import netlink as nl
from pybpf.kernel.constants import LinkType

from conftest import bpftool_link, prog_id, program
from netns import Netns, leftovers, veth_pair

pytestmark = pytest.mark.kernel

PASS_PORT = 7777
DROP_PORT = 9999
N = 50
UDP, TCP, ICMP, NON_IP = 17, 6, 1, 256


# -- helpers shared with test_attach_tc ------------------------------------------------------------

@pytest.fixture
def net():
    """Two namespaces of this test and a veth pair between them; afterwards no namespace
    of the tests is left."""
    before = leftovers()
    with Netns() as a, Netns() as b:
        yield veth_pair(a, b)
    assert leftovers() == before


def bpftool_net(ns: Netns) -> dict:
    """``bpftool -j net show`` inside ``ns``: its XDP and tc (netlink) attachments."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = ns.run([bpftool, "-j", "net", "show"], check=True).stdout
    return json.loads(out)[0]


def wait_for(cond, timeout: float = 5.0) -> bool:
    """Poll ``cond()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@contextlib.contextmanager
def udp_socket(ns: Netns, bind: tuple | None = None, family=socket.AF_INET, timeout: float = 1.0):
    """A UDP socket inside ``ns`` (made there; it stays there), bound to ``bind``."""
    with ns.entered():
        s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if bind:
            s.bind(bind)
        yield s
    finally:
        s.close()


def drain(sock, expect: int | None = None, quiet: float = 0.3, limit: float = 5.0) -> list[bytes]:
    """What arrives on ``sock``: until ``expect`` datagrams came, or nothing came for
    ``quiet`` seconds; never longer than ``limit`` seconds."""
    got = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and (expect is None or len(got) < expect):
        sock.settimeout(quiet)
        try:
            got.append(sock.recv(2048))
        except (socket.timeout, BlockingIOError):
            break
    return got


def send_udp(ns: Netns, dst: tuple, n: int, payload: bytes = b"pybpf", family=socket.AF_INET) -> None:
    with udp_socket(ns, family=family) as s:
        for _ in range(n):
            s.sendto(payload, dst)


def icmp_echo(ns: Netns, dst: str, n: int) -> int:
    """Send ``n`` ICMP echo requests to ``dst`` from ``ns`` (raw socket); return the replies."""
    def checksum(data: bytes) -> int:
        s = sum(struct.unpack(f"!{len(data) // 2}H", data))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        return ~s & 0xFFFF

    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    replies = 0
    try:
        s.settimeout(1.0)
        for seq in range(n):
            head = struct.pack("!BBHHH", 8, 0, 0, 0x4242, seq)
            body = b"pybpf-xdp"
            s.sendto(struct.pack("!BBHHH", 8, 0, checksum(head + body + b"\0"), 0x4242, seq) + body, (dst, 0))
            with contextlib.suppress(socket.timeout):
                while True:
                    pkt = s.recv(2048)
                    if pkt[20] == 0 and struct.unpack("!H", pkt[24:26])[0] == 0x4242:
                        replies += 1
                        break
    finally:
        s.close()
    return replies


def tcp_connect(client_ns: Netns, server_ns: Netns, addr: str, port: int) -> None:
    """One TCP connection (handshake, a few bytes, close) from ``client_ns`` to ``server_ns``."""
    with server_ns.entered():
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with client_ns.entered():
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        srv.settimeout(5)
        cli.settimeout(5)
        srv.bind((addr, port))
        srv.listen(1)
        cli.connect((addr, port))
        conn, _ = srv.accept()
        with conn:
            cli.sendall(b"hello")
            assert conn.recv(16) == b"hello"
    finally:
        cli.close()
        srv.close()


def xdp_state(ns: Netns, iface: str) -> str:
    """What ``ip -d link show`` says about XDP on ``iface``: its xdp* flag and prog/xdp lines."""
    out = ns.ip("-d", "link", "show", "dev", iface).stdout
    return " ".join(w for w in out.split() if w.startswith("xdp") or w.startswith("prog/xdp"))


def load_xdp(drop_port: int = DROP_PORT, watch_port: int = PASS_PORT):
    spec = pybpf.open(program("net_xdp"))
    spec.variables["drop_port"].set(drop_port)
    spec.variables["watch_port"].set(watch_port)
    return spec.load()


def counts(obj, map_name: str, n: int) -> list[int]:
    m = obj.maps[map_name]
    return [m[i] for i in range(n)]


# -- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [None, "generic", "native"])
def test_xdp_counts_protocols_and_drops_one_udp_port(net, mode, no_fd_leak):
    a, b = net.ns_a, net.ns_b
    with load_xdp() as obj, \
            udp_socket(b, (net.addr_b, PASS_PORT)) as passing, udp_socket(b, (net.addr_b, DROP_PORT)) as dropped, \
            udp_socket(b, (net.addr6_b, PASS_PORT), socket.AF_INET6) as passing6:
        prog = obj.programs["xdp_count_drop"]
        with b.entered():
            link = prog.attach_xdp(net.b_if, mode)
        assert (link.kind, link.target) == ("xdp", net.b_if)
        # the kernel's choice on veth is native XDP ("xdp"); generic shows as "xdpgeneric"
        assert xdp_state(b, net.b_if).split()[0] == ("xdpgeneric" if mode == "generic" else "xdp")
        assert f"prog/xdp id {prog_id(prog)}" in b.ip("-d", "link", "show", "dev", net.b_if).stdout

        send_udp(a, (net.addr_b, DROP_PORT), N, b"dropped")
        send_udp(a, (net.addr_b, PASS_PORT), N, b"passes")
        send_udp(a, (net.addr6_b, PASS_PORT), N, b"passes6", socket.AF_INET6)
        assert drain(passing, N) == [b"passes"] * N
        assert drain(passing6, N) == [b"passes6"] * N
        assert drain(dropped, quiet=0.5) == []               # XDP_DROP: never reached the socket
        assert icmp_echo(a, net.addr_b, 3) == 3
        tcp_connect(a, b, net.addr_b, 8080)

        proto = obj.maps["proto_packets"]
        assert proto[UDP] == 3 * N                            # IPv4 and IPv6 UDP, nothing else
        assert proto[ICMP] == 3                               # the echo requests (replies go the other way)
        assert proto[TCP] >= 3                                # SYN, ACK, data, FIN...
        assert proto[NON_IP] >= 1                             # ARP
        assert counts(obj, "port_packets", 3) == [2 * N, 0, N]   # watched (v4 + v6), -, dropped

        link.close()
        assert xdp_state(b, net.b_if) == ""
        send_udp(a, (net.addr_b, DROP_PORT), 5, b"after")
        assert drain(dropped, 5) == [b"after"] * 5            # no program: nothing dropped any more
        assert proto[UDP] == 3 * N


def test_native_and_generic_cannot_be_mixed_and_second_link_is_busy(net, no_fd_leak):
    b = net.ns_b
    with load_xdp() as obj:
        first, second = obj.programs["xdp_count_drop"], obj.programs["xdp_pass_count"]
        with b.entered():
            link = first.attach_xdp(net.b_if, "native")
            with link:
                with pytest.raises(pybpf.SyscallError) as e:
                    second.attach_xdp(net.b_if, "native")
                assert e.value.errno == 16 and net.b_if in str(e.value) and "detach it first" in str(e.value)
                with pytest.raises(pybpf.SyscallError) as e:
                    second.attach_xdp(net.b_if, "generic")
                assert e.value.errno in (16, 17)              # EBUSY (a link owns the device) or EEXIST
            assert xdp_state(b, net.b_if) == ""


def test_update_swaps_program_without_missing_a_packet(net, no_fd_leak):
    """A stream runs while update() swaps xdp_count_drop for xdp_pass_count: every datagram
    sent is counted by exactly one of them, and both counted some."""
    a, b = net.ns_a, net.ns_b
    with load_xdp(drop_port=0) as obj, udp_socket(b, (net.addr_b, PASS_PORT)):
        old, new = obj.programs["xdp_count_drop"], obj.programs["xdp_pass_count"]
        with b.entered():
            link = old.attach_xdp(net.b_if)
        port = obj.maps["port_packets"]
        sent = [0]
        stop = threading.Event()

        def sender():
            with udp_socket(a) as s:
                deadline = time.monotonic() + 20
                while not stop.is_set() and sent[0] < 2_000_000 and time.monotonic() < deadline:
                    s.sendto(b"stream", (net.addr_b, PASS_PORT))
                    sent[0] += 1

        t = threading.Thread(target=sender)
        t.start()
        try:
            assert wait_for(lambda: port[0] >= 2000)
            link.update(new)
            assert link.program is new
            assert wait_for(lambda: port[1] >= 2000)
        finally:
            stop.set()
            t.join(30)
        assert not t.is_alive()
        assert wait_for(lambda: port[0] + port[1] == sent[0])
        assert port[0] + port[1] == sent[0] and port[0] > 0 and port[1] > 0
        assert link.info().prog_id == prog_id(new)
        link.close()


def test_info_matches_bpftool_and_detach_stops_the_program(net, no_fd_leak):
    a, b = net.ns_a, net.ns_b
    with load_xdp() as obj, udp_socket(b, (net.addr_b, DROP_PORT)) as dropped:
        prog = obj.programs["xdp_count_drop"]
        with b.entered():
            link = prog.attach_xdp(b.ifindex(net.b_if))       # by ifindex
        assert link.target == net.b_if
        info = link.info()
        assert info.type == LinkType.XDP and info.prog_id == prog_id(prog)
        assert info.ifindex == b.ifindex(net.b_if)
        tool = bpftool_link(info.id)
        assert (tool["id"], tool["type"], tool["prog_id"]) == (info.id, "xdp", info.prog_id)
        if "ifindex" in tool:                                 # bpftool before 7.2 leaves it out
            assert tool["ifindex"] == info.ifindex
        # bpftool's view from inside the namespace: the device of that ifindex runs the program
        net_view = bpftool_net(b)["xdp"]
        assert [(x["devname"], x["ifindex"], x["id"]) for x in net_view] == [(net.b_if, info.ifindex, info.prog_id)]

        send_udp(a, (net.addr_b, DROP_PORT), 5)
        assert drain(dropped, quiet=0.3) == [] and obj.maps["port_packets"][2] == 5
        link.detach()
        assert not link.closed and link.info().ifindex == 0   # the fd stays, attached to nothing
        assert xdp_state(b, net.b_if) == ""
        send_udp(a, (net.addr_b, DROP_PORT), 5, b"free")
        assert drain(dropped, 5) == [b"free"] * 5
        assert obj.maps["port_packets"][2] == 5
        link.close()
        with pytest.raises(pybpf.ClosedError):
            link.info()


def test_object_close_detaches_its_xdp_links(net, no_fd_leak):
    b = net.ns_b
    obj = load_xdp()
    try:
        with b.entered():
            link = obj.programs["xdp_count_drop"].attach_xdp(net.b_if, "generic")
        assert obj.links == [link] and xdp_state(b, net.b_if).startswith("xdpgeneric")
    finally:
        obj.close()
    assert link.closed and xdp_state(b, net.b_if) == ""


def test_link_stays_on_its_device_when_the_thread_leaves_the_namespace(net, no_fd_leak):
    """The name is looked up in the calling thread's namespace; the link keeps its device."""
    a, b = net.ns_a, net.ns_b
    with load_xdp() as obj, udp_socket(b, (net.addr_b, DROP_PORT)) as dropped:
        with b.entered():
            link = obj.programs["xdp_count_drop"].attach_xdp(net.b_if)
        with link:                                            # back in the test's own namespace
            send_udp(a, (net.addr_b, DROP_PORT), 3)
            assert drain(dropped, quiet=0.3) == []
        assert xdp_state(b, net.b_if) == ""


def test_attach_errors_say_what_is_wrong(net, no_fd_leak):
    with load_xdp() as obj:
        prog = obj.programs["xdp_count_drop"]
        with pytest.raises(pybpf.Error, match="no network interface named 'pybpf-nope0'"):
            prog.attach_xdp("pybpf-nope0")
        with pytest.raises(pybpf.Error, match="XDP mode 'fast'"):
            with net.ns_b.entered():
                prog.attach_xdp(net.b_if, "fast")
        with pytest.raises(pybpf.Error, match="no network interface with ifindex 999999"):
            prog.attach_xdp(999999)
        # the test's own namespace has no such veth: names are per namespace
        with pytest.raises(pybpf.Error, match=f"no network interface named '{net.b_if}'"):
            prog.attach_xdp(net.b_if)
        assert obj.links == []
    with pybpf.load(program("net_tc")) as tc:
        with net.ns_b.entered(), pytest.raises(pybpf.Error, match="needs an XDP program"):
            tc.programs["tc_pass"].attach_xdp(net.b_if)


def test_netlink_attachment_for_kernels_without_xdp_links(net, no_fd_leak):
    """The fallback attach_xdp takes where the kernel has no BPF_LINK_TYPE_XDP (before 5.9):
    RTM_SETLINK IFLA_XDP, only if the device has no program yet; update() replaces the
    program atomically; close() removes it.  Called directly here (this kernel has XDP links)."""
    from pybpf.links.xdp import XdpNetlinkLink, _attach_netlink
    a, b = net.ns_a, net.ns_b
    with load_xdp() as obj, udp_socket(b, (net.addr_b, DROP_PORT)) as dropped:
        first, second = obj.programs["xdp_count_drop"], obj.programs["xdp_pass_count"]
        ifindex = b.ifindex(net.b_if)
        with b.entered():
            link = _attach_netlink(first, ifindex, net.b_if, "generic")
            assert isinstance(link, XdpNetlinkLink)
            # a BPF link cannot take a device with a netlink-attached program: EBUSY
            with pytest.raises(pybpf.SyscallError) as e:
                second.attach_xdp(net.b_if, "generic")
            assert e.value.errno == 16
            with pytest.raises(pybpf.SyscallError) as e:         # never replaces a program: EBUSY
                _attach_netlink(second, ifindex, net.b_if, "generic")
            assert e.value.errno == 16
            with nl.RtNetlink() as sock:
                dev = nl.get_link(sock, ifindex)
        assert (dev.xdp_attached, dev.xdp_prog_ids) == ("generic", {"generic": prog_id(first)})
        send_udp(a, (net.addr_b, DROP_PORT), 4)
        assert drain(dropped, quiet=0.3) == [] and obj.maps["port_packets"][2] == 4
        with pytest.raises(pybpf.NotSupportedError, match="not a BPF link"):
            link.info()
        link.update(second)
        assert f"prog/xdp id {prog_id(second)}" in b.ip("-d", "link", "show", "dev", net.b_if).stdout
        send_udp(a, (net.addr_b, DROP_PORT), 4, b"now")
        assert drain(dropped, 4) == [b"now"] * 4
        link.close()
        assert link.closed and xdp_state(b, net.b_if) == ""
        link.close()
