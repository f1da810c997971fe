"""sk_lookup and flow_dissector programs on network namespaces of the test's own
(pybpf/links/netns.py): they act on real connections and packets there, link.info()
agrees with bpftool and the namespace's inode, and closing removes exactly the link."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

import pytest

import pybpf
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import ProgQueryAttr
from pybpf.kernel.constants import AttachType, Cmd, LinkType

from conftest import bpftool_link, link_gone, prog_id, program
from netns import PREFIX, Netns, leftovers, veth_pair

pytestmark = pytest.mark.kernel

OBJ = program("net_sock")
C_LOOKUP_STEERED = 2           # indices of `counters` in programs/net_sock.bpf.c
C_DISSECT_CALLS = 3
STEERED_PORT = 7007            # nothing listens here: sk_lookup sends it to the listener


def netns_progs(path: str, attach_type: AttachType) -> list[int]:
    """The ids of the programs a namespace runs for ``attach_type`` (BPF_PROG_QUERY)."""
    ids = (ctypes.c_uint32 * 64)()
    fd = os.open(path, os.O_RDONLY)
    try:
        attr = ProgQueryAttr(target_fd=fd, attach_type=attach_type, prog_cnt=64)
        attr.prog_ids = ctypes.addressof(ids)
        sc.bpf(Cmd.PROG_QUERY, attr)
        return list(ids[:attr.prog_cnt])
    finally:
        os.close(fd)


@pytest.fixture
def no_leftovers():
    yield
    mine = f"{PREFIX}{os.getpid()}-"           # other test processes may have theirs meanwhile
    assert [n for n in leftovers() if n.startswith(mine)] == [], "a test network namespace was left behind"


def connect(ns: Netns, port: int) -> socket.socket:
    with ns.entered():
        return socket.create_connection(("127.0.0.1", port), timeout=5)


# -- sk_lookup ------------------------------------------------------------------------------

def test_sk_lookup_steers_a_port_to_a_listener_on_another(no_fd_leak, no_leftovers):
    with Netns() as ns, pybpf.load(OBJ) as obj:
        with ns.entered():
            listener = socket.socket()
        with listener:
            listener.settimeout(5)
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            real_port = listener.getsockname()[1]
            assert real_port != STEERED_PORT
            obj.maps["lookup_port"][0] = STEERED_PORT
            obj.maps["lookup_socks"][0] = listener.fileno()
            steer = obj.programs["steer"]
            with pytest.raises(ConnectionRefusedError):      # before: nobody listens on the port
                connect(ns, STEERED_PORT).close()

            link = steer.attach_netns(ns.path)
            try:
                info = link.info()
                assert info.type == LinkType.NETNS and info.attach_type == AttachType.SK_LOOKUP
                assert info.prog_id == prog_id(steer)
                assert info.netns_ino == os.stat(ns.path).st_ino
                tool = bpftool_link(info.id)
                assert (tool["type"], tool["prog_id"], tool["netns_ino"], tool["attach_type"]) == \
                    ("netns", info.prog_id, info.netns_ino, "sk_lookup")
                assert netns_progs(ns.path, AttachType.SK_LOOKUP) == [info.prog_id]

                for i in range(3):
                    with connect(ns, STEERED_PORT) as client:
                        server, _ = listener.accept()
                        with server:
                            client.sendall(b"ping %d" % i)
                            server.settimeout(5)
                            assert server.recv(16) == b"ping %d" % i
                assert obj.maps["counters"][C_LOOKUP_STEERED] == 3
                with connect(ns, real_port):                 # the listener's own port is not touched
                    listener.accept()[0].close()
                assert obj.maps["counters"][C_LOOKUP_STEERED] == 3
            finally:
                link.close()
            assert link_gone(info.id)
            assert netns_progs(ns.path, AttachType.SK_LOOKUP) == []
            with pytest.raises(ConnectionRefusedError):
                connect(ns, STEERED_PORT).close()
            assert obj.maps["counters"][C_LOOKUP_STEERED] == 3


def test_sk_lookup_link_update_and_detach(no_fd_leak, no_leftovers):
    with Netns() as ns, pybpf.load(OBJ) as obj, pybpf.load(OBJ) as obj2:
        with ns.entered():
            listener = socket.socket()
        with listener:
            listener.settimeout(5)
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            for o in (obj, obj2):
                o.maps["lookup_port"][0] = STEERED_PORT
                o.maps["lookup_socks"][0] = listener.fileno()
            with obj.programs["steer"].attach_netns(ns.path) as link:
                link.update(obj2.programs["steer"])
                assert link.info().prog_id == prog_id(obj2.programs["steer"])
                with connect(ns, STEERED_PORT):
                    listener.accept()[0].close()
                assert (obj.maps["counters"][C_LOOKUP_STEERED], obj2.maps["counters"][C_LOOKUP_STEERED]) == (0, 1)
                with pytest.raises(pybpf.SyscallError):      # it no longer runs the first program
                    link.update(obj.programs["steer"], old=obj.programs["steer"])

                link.detach()                                # the fd stays; the namespace runs nothing
                assert link.info().netns_ino == 0
                assert netns_progs(ns.path, AttachType.SK_LOOKUP) == []
                with pytest.raises(ConnectionRefusedError):
                    connect(ns, STEERED_PORT).close()


def test_attach_netns_defaults_to_the_calling_threads_namespace(no_fd_leak, no_leftovers):
    with Netns() as ns, pybpf.load(OBJ) as obj:
        with ns.entered():
            link = obj.programs["steer"].attach_netns()
        with link:
            assert link.info().netns_ino == os.stat(ns.path).st_ino
        # an fd works as well as a path
        fd = os.open(ns.path, os.O_RDONLY)
        try:
            with obj.programs["dissect"].attach_netns(fd) as link:
                assert link.info().netns_ino == os.stat(ns.path).st_ino
        finally:
            os.close(fd)


def test_attach_netns_refusals_name_the_problem(no_fd_leak, tmp_path):
    with pybpf.load(OBJ) as obj:
        with pytest.raises(pybpf.Error, match="only sk_lookup and flow_dissector"):
            obj.programs["nf_count"].attach_netns("/proc/self/ns/net")
        not_a_netns = tmp_path / "file"
        not_a_netns.write_text("")
        with pytest.raises(pybpf.SyscallError, match="network namespace") as e:
            obj.programs["steer"].attach_netns(str(not_a_netns))
        assert e.value.errno == errno.EINVAL
        with pytest.raises(pybpf.SyscallError, match="missing"):
            obj.programs["steer"].attach_netns(str(tmp_path / "missing"))


# -- flow dissector -------------------------------------------------------------------------

def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x0800)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return eth + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv6_tcp(src: str, dst: str, sport: int, dport: int, flow_label: int) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x86DD)
    ip6 = struct.pack("!IHBB16s16s", (6 << 28) | flow_label, 20, socket.IPPROTO_TCP, 64,
                      socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 1024, 0, 0)
    return eth + ip6 + tcp


# struct bpf_flow_keys (include/uapi/linux/bpf.h): what BPF_PROG_TEST_RUN returns as data_out
FLOW_KEYS = struct.Struct("<HHHBBBB2s2s2s32sI4s")


def test_flow_dissector_test_run_returns_the_flow_keys(no_fd_leak):
    with pybpf.load(OBJ) as obj:
        dissect = obj.programs["dissect"]
        r = dissect.test_run(data=ipv4_udp("192.0.2.1", "192.0.2.2", 1234, 5678))
        assert r.retval == 0                                 # BPF_OK
        assert len(r.data) == FLOW_KEYS.size == 56
        (nhoff, thoff, addr_proto, is_frag, first_frag, encap, ip_proto, n_proto, sport, dport, addrs,
         flags, label) = FLOW_KEYS.unpack(r.data)
        assert (nhoff, thoff, addr_proto, ip_proto, is_frag) == (14, 34, 0x0800, socket.IPPROTO_UDP, 0)
        assert (n_proto, sport, dport) == (b"\x08\x00", struct.pack("!H", 1234), struct.pack("!H", 5678))
        assert addrs[:8] == socket.inet_aton("192.0.2.1") + socket.inet_aton("192.0.2.2")

        r = dissect.test_run(data=ipv6_tcp("2001:db8::1", "2001:db8::2", 40000, 443, 0x12345))
        assert r.retval == 0
        (nhoff, thoff, addr_proto, _, _, _, ip_proto, n_proto, sport, dport, addrs, _,
         label) = FLOW_KEYS.unpack(r.data)
        assert (nhoff, thoff, addr_proto, ip_proto) == (14, 54, 0x86DD, socket.IPPROTO_TCP)
        assert (sport, dport) == (struct.pack("!H", 40000), struct.pack("!H", 443))
        assert addrs == socket.inet_pton(socket.AF_INET6, "2001:db8::1") + \
            socket.inet_pton(socket.AF_INET6, "2001:db8::2")
        assert label == struct.pack("!I", 0x12345)

        truncated = ipv4_udp("192.0.2.1", "192.0.2.2", 1, 2)[:14 + 10]
        assert dissect.test_run(data=truncated).retval == 2   # BPF_DROP: no whole IP header


def enable_rps(ns: Netns, iface: str) -> None:
    """Receive packet steering on every rx queue of ``iface``: get_rps_cpu hashes each
    received packet (skb_get_hash), which is where the kernel runs the flow dissector of
    the device's namespace (__skb_flow_dissect).  The sysfs ``ip netns exec`` mounts is
    the namespace's own, so this touches the test's device only."""
    ns.run(["sh", "-c", f"for q in /sys/class/net/{iface}/queues/rx-*; do echo 1 > $q/rps_cpus; "
                        f"echo 16 > $q/rps_flow_cnt; done"], check=True)


def send_datagrams(ns: Netns, dst: tuple, n: int) -> None:
    """``n`` unconnected datagrams (a connected socket hashes its packets itself)."""
    with ns.entered():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tx:
        for i in range(n):
            tx.sendto(b"%d" % i, dst)


def test_flow_dissector_runs_on_packets_received_in_its_namespace(no_fd_leak, no_leftovers):
    n = 40
    with Netns() as a, Netns() as b, pybpf.load(OBJ) as obj:
        veth = veth_pair(a, b)
        enable_rps(b, veth.b_if)
        with b.entered():
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx:
            rx.settimeout(5)
            rx.bind((veth.addr_b, 0))
            dst = rx.getsockname()
            send_datagrams(a, dst, 1)                        # neighbours resolved before counting
            rx.recv(16)
            calls = lambda: obj.maps["counters"][C_DISSECT_CALLS]   # noqa: E731
            dissect = obj.programs["dissect"]
            link = dissect.attach_netns(b.path)
            try:
                info = link.info()
                assert (info.type, info.attach_type, info.netns_ino, info.prog_id) == \
                    (LinkType.NETNS, AttachType.FLOW_DISSECTOR, os.stat(b.path).st_ino, prog_id(dissect))
                tool = bpftool_link(info.id)
                assert (tool["netns_ino"], tool["attach_type"], tool["prog_id"]) == \
                    (info.netns_ino, "flow_dissector", info.prog_id)
                send_datagrams(a, dst, n)
                for _ in range(n):
                    rx.recv(16)
                assert calls() >= n                          # once per received datagram (plus ARP/ND)
                assert calls() < n + 20
                with pytest.raises(pybpf.SyscallError, match="one flow dissector") as e:
                    dissect.attach_netns(b.path)             # one per namespace
                assert e.value.errno == errno.E2BIG
            finally:
                link.close()
            assert link_gone(info.id)
            assert netns_progs(b.path, AttachType.FLOW_DISSECTOR) == []
            before = calls()
            send_datagrams(a, dst, n)
            for _ in range(n):
                rx.recv(16)
            assert calls() == before                         # the kernel's own dissector again
