"""Socket filters (pybpf/links/socket.py) and sockmap programs (pybpf/links/sockmap.py) on
sockets in network namespaces of the test's own: the filter drops what it should and only
while attached; the cgroup/sockops program fills a SOCKHASH and the sk_msg program redirects
each message to its peer's socket (past TCP); the sk_skb verdict passes and drops received
data; closing removes exactly what was added."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import sys
import time

import pytest

import pybpf
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import MapInfo, ProgQueryAttr
from pybpf.kernel.constants import AttachType, Cmd, LinkType
from pybpf.links import SockmapProgLink, SocketFilterLink, cgroup2_mount
from pybpf.links.sockmap import attach_sockmap

from conftest import bpftool_link, link_gone, prog_id, program
from netns import PREFIX, Netns, leftovers

pytestmark = pytest.mark.kernel

OBJ = program("net_sock")
# indices of `counters` in programs/net_sock.bpf.c
C_FILTER_SEEN, C_FILTER_DROPPED = 0, 1
C_SOCKOPS_ADDED, C_MSG_SEEN, C_MSG_REDIRECTED, C_MSG_NO_PEER = 4, 5, 6, 7
C_SKB_SEEN, C_SKB_DROPPED = 8, 9
SOL_SOCKET, SO_GET_FILTER = 1, 26


def map_progs(m, attach_type: AttachType) -> list[int]:
    """The program a sockmap runs for ``attach_type`` (BPF_PROG_QUERY), as a list of ids."""
    ids = (ctypes.c_uint32 * 1)()
    attr = ProgQueryAttr(target_fd=m.fd, attach_type=attach_type, prog_cnt=1)
    attr.prog_ids = ctypes.addressof(ids)
    sc.bpf(Cmd.PROG_QUERY, attr)
    return list(ids[:attr.prog_cnt])


def has_filter(sock: socket.socket) -> bool:
    """An eBPF filter is on the socket: SO_GET_FILTER cannot show one (EACCES)."""
    try:
        return sock.getsockopt(SOL_SOCKET, SO_GET_FILTER) != 0
    except OSError as e:
        return e.errno == errno.EACCES


def fdinfo(fd: int) -> dict:
    """The kernel's text view of a link fd (sock_map_link_show_fdinfo adds map_id, attach_type)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def classic_filter_len(sock: socket.socket) -> int:
    """SO_GET_FILTER with optlen 0: the kernel writes a classic filter's instruction count
    into optlen (sk_get_filter)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(0)
    assert libc.getsockopt(sock.fileno(), SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(size)) == 0
    return size.value


@pytest.fixture
def no_leftovers():
    yield
    mine = f"{PREFIX}{os.getpid()}-"           # other test processes may have theirs meanwhile
    assert [n for n in leftovers() if n.startswith(mine)] == [], "a test network namespace was left behind"


# -- socket filter ----------------------------------------------------------------------------

def udp_pair(ns: Netns) -> tuple[socket.socket, socket.socket]:
    with ns.entered():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.3)
    return rx, tx


def exchange(rx, tx, payloads: list[bytes]) -> list[bytes]:
    """Send each payload, then read until nothing more comes (bounded: len(payloads) + 1 reads)."""
    for p in payloads:
        tx.sendto(p, rx.getsockname())
    got = []
    for _ in range(len(payloads) + 1):
        try:
            got.append(rx.recv(64))
        except socket.timeout:
            break
    return got


MIX = [bytes([0xff if i % 3 == 1 else 0x41 + i]) + b"payload %d" % i for i in range(30)]
KEPT = [p for p in MIX if p[0] != 0xff]


def test_socket_filter_drops_ff_datagrams_until_closed(no_fd_leak, no_leftovers):
    with Netns() as ns, pybpf.load(OBJ) as obj:
        rx, tx = udp_pair(ns)
        with rx, tx:
            counters = obj.maps["counters"]
            link = obj.programs["drop_ff"].attach_socket(rx)
            try:
                assert isinstance(link, SocketFilterLink) and has_filter(rx)
                assert exchange(rx, tx, MIX) == KEPT                 # exactly the others, in order
                assert (counters[C_FILTER_SEEN], counters[C_FILTER_DROPPED]) == (len(MIX), len(MIX) - len(KEPT))
                with pytest.raises(pybpf.NotSupportedError, match="SO_ATTACH_BPF"):
                    link.info()
            finally:
                link.close()
            assert not has_filter(rx)                                # SO_DETACH_BPF
            assert exchange(rx, tx, MIX) == MIX                      # 0xff datagrams arrive again
            assert counters[C_FILTER_SEEN] == len(MIX)
            link.close()                                             # idempotent
            with pytest.raises(pybpf.ClosedError):
                link.info()


def test_socket_filter_update_and_detach(no_fd_leak, no_leftovers):
    with Netns() as ns, pybpf.load(OBJ) as obj, pybpf.load(OBJ) as obj2:
        rx, tx = udp_pair(ns)
        with rx, tx:
            with obj.programs["drop_ff"].attach_socket(rx.fileno()) as link:      # an fd works too
                link.update(obj2.programs["drop_ff"])        # SO_ATTACH_BPF again: swapped in one step
                assert exchange(rx, tx, MIX) == KEPT
                assert obj.maps["counters"][C_FILTER_SEEN] == 0
                assert obj2.maps["counters"][C_FILTER_SEEN] == len(MIX)
                with pytest.raises(pybpf.Error, match="not 'drop_ff'|runs"):
                    link.update(obj.programs["drop_ff"], old=obj.programs["drop_ff"])
                link.detach()
                assert not has_filter(rx)
                assert exchange(rx, tx, MIX[:3]) == MIX[:3]
            assert not has_filter(rx)


def test_socket_filter_link_leaves_a_filter_it_did_not_add(no_fd_leak, no_leftovers):
    """The link holds its own duplicate of the socket fd: after the caller closed their
    socket and the fd number went to another socket, close() touches only its own socket;
    and a filter someone else put in its place (a classic one) stays."""
    with Netns() as ns, pybpf.load(OBJ) as obj:
        with ns.entered():
            first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        number = first.fileno()
        link = obj.programs["drop_ff"].attach_socket(number)
        first.close()
        with ns.entered():
            second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with second:
            other = obj.programs["drop_ff"].attach_socket(second)
            with other:
                link.close()                         # detaches from the first socket, not from `second`
                assert has_filter(second)
        # a classic filter replacing ours is left alone
        with ns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            link = obj.programs["drop_ff"].attach_socket(sock)
            accept_all = struct.pack("HBBI", 0x06, 0, 0, 0xFFFF)        # BPF_RET | BPF_K, 0xffff
            code = ctypes.create_string_buffer(accept_all)
            sock.setsockopt(SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(code)))   # SO_ATTACH_FILTER
            link.close()
            assert classic_filter_len(sock) == 1                         # still there, one instruction


def test_socket_filter_refusals(no_fd_leak, tmp_path):
    with pybpf.load(OBJ) as obj:
        with pytest.raises(pybpf.Error, match="only socket filters"):
            obj.programs["nf_count"].attach_socket(0)
        with open(tmp_path / "f", "w") as f:
            with pytest.raises(pybpf.SyscallError, match="not a socket"):
                obj.programs["drop_ff"].attach_socket(f)
        s = socket.socket()
        s.close()
        with pytest.raises(pybpf.ClosedError):
            obj.programs["drop_ff"].attach_socket(s)


# -- sockops + sk_msg: the sockmap redirect pattern ---------------------------------------------

# runs in the test's network namespace, in the test's cgroup (so the sockops program sees
# its sockets): a TCP connection on loopback, one message each way, and what TCP itself
# received on each socket (tcp_info.tcpi_bytes_received, byte 128)
CONNECTION = r'''
import json, socket, struct
def tcp_received(s):
    return struct.unpack_from("<Q", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 128)[0]
listener = socket.socket()
listener.settimeout(5)
listener.bind(("127.0.0.1", 0))
listener.listen(1)
client = socket.create_connection(listener.getsockname(), timeout=5)
server, _ = listener.accept()
server.settimeout(5)
client.sendall(b"hello from the client")
to_server = server.recv(100)
server.sendall(b"hello from the server")
to_client = client.recv(100)
print(json.dumps({"to_server": to_server.decode(), "to_client": to_client.decode(),
                  "server_tcp_received": tcp_received(server), "client_tcp_received": tcp_received(client)}))
'''


@pytest.fixture
def cgroup():
    path = os.path.join(cgroup2_mount(), f"pybpf-sockmap-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)
    assert not os.path.exists(path)


def run_in(ns: Netns, cg: str, script: str) -> dict:
    def join_cgroup():           # in the child, before exec: its sockets belong to the cgroup
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    r = ns.run([sys.executable, "-c", script], timeout=30, preexec_fn=join_cgroup)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_sk_msg_redirects_each_message_to_the_peer_socket(no_fd_leak, no_leftovers, cgroup):
    with Netns() as ns, pybpf.load(OBJ) as obj:
        counters, sock_hash = obj.maps["counters"], obj.maps["sock_hash"]
        verdict = obj.programs["redirect_to_peer"]
        # sockets take the map's programs when they are added: the sk_msg program first
        msg_link = verdict.attach_sockmap(sock_hash)
        try:
            info = msg_link.info()
            assert (info.type, info.attach_type, info.prog_id) == \
                (LinkType.SOCKMAP, AttachType.SK_MSG_VERDICT, prog_id(verdict))
            map_id = sc.obj_get_info_by_fd(sock_hash.fd, MapInfo()).id
            assert info.map_id == map_id
            tool = bpftool_link(info.id)                  # bpftool 7.1 shows no sockmap fields...
            assert (tool["id"], tool["prog_id"], tool["type"] in (14, "sockmap")) == (info.id, info.prog_id, True)
            fields = fdinfo(msg_link.fd)                   # ...the kernel's fdinfo does
            assert (int(fields["map_id"]), int(fields["attach_type"])) == (map_id, AttachType.SK_MSG_VERDICT)
            assert map_progs(sock_hash, AttachType.SK_MSG_VERDICT) == [info.prog_id]

            with obj.programs["add_established"].attach_cgroup(cgroup):
                got = run_in(ns, cgroup, CONNECTION)
            assert got["to_server"] == "hello from the client" and got["to_client"] == "hello from the server"
            # the data went from one socket's sendmsg to the other's receive queue, not through TCP
            assert got["server_tcp_received"] == 0 and got["client_tcp_received"] == 0
            assert counters[C_SOCKOPS_ADDED] == 2                 # both ends, when established
            assert (counters[C_MSG_SEEN], counters[C_MSG_REDIRECTED], counters[C_MSG_NO_PEER]) == (2, 2, 0)
            assert list(sock_hash.keys()) == []                   # closed sockets leave the map
        finally:
            msg_link.close()
        assert link_gone(info.id)
        assert map_progs(sock_hash, AttachType.SK_MSG_VERDICT) == []

        # without the sk_msg program the same connection goes through TCP, counted by nobody
        with obj.programs["add_established"].attach_cgroup(cgroup):
            got = run_in(ns, cgroup, CONNECTION)
        assert got["to_server"] == "hello from the client"
        assert got["server_tcp_received"] == len("hello from the client")
        assert counters[C_MSG_SEEN] == 2 and counters[C_SOCKOPS_ADDED] == 4


# -- sk_skb stream verdict ----------------------------------------------------------------------

def tcp_pair(ns: Netns, listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    with ns.entered():
        client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    server.settimeout(0.5)
    return client, server


def recv_or_none(sock: socket.socket):
    try:
        return sock.recv(100)
    except socket.timeout:
        return None


def wait_for(read, value, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while read() != value and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("legacy", [False, True], ids=["link", "prog_attach"])
def test_sk_skb_stream_verdict_passes_and_drops_received_data(no_fd_leak, no_leftovers, legacy):
    with Netns() as ns, pybpf.load(OBJ) as obj:
        counters, socks = obj.maps["counters"], obj.maps["skb_socks"]
        verdict = obj.programs["skb_verdict"]
        with ns.entered():
            listener = socket.socket()
        with listener:
            listener.settimeout(5)
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            link = attach_sockmap(verdict, socks, legacy=legacy)
            try:
                assert map_progs(socks, AttachType.SK_SKB_STREAM_VERDICT) == [prog_id(verdict)]
                if legacy:
                    assert isinstance(link, SockmapProgLink)
                    with pytest.raises(pybpf.NotSupportedError, match="BPF_PROG_ATTACH"):
                        link.info()
                else:
                    info = link.info()
                    assert (info.type, info.attach_type) == (LinkType.SOCKMAP, AttachType.SK_SKB_STREAM_VERDICT)
                with pytest.raises(pybpf.Error, match="already runs"):     # would replace it silently
                    verdict.attach_sockmap(socks)

                client, server = tcp_pair(ns, listener)
                with client, server:
                    socks[0] = server.fileno()
                    client.sendall(b"first")
                    assert recv_or_none(server) == b"first"
                    client.sendall(b"\xffdropped")
                    wait_for(lambda: counters[C_SKB_DROPPED], 1)
                    assert recv_or_none(server) is None
                    client.sendall(b"third")
                    assert recv_or_none(server) == b"third"
                    assert (counters[C_SKB_SEEN], counters[C_SKB_DROPPED]) == (3, 1)
            finally:
                link.close()
            assert map_progs(socks, AttachType.SK_SKB_STREAM_VERDICT) == []
            if not legacy:
                assert link_gone(info.id)
            # a socket added after close gets no program (sockets already in the map keep theirs:
            # net/core/sock_map.c copies the map's programs into a socket when it is added)
            client, server = tcp_pair(ns, listener)
            with client, server:
                socks[1] = server.fileno()
                client.sendall(b"\xffkept")
                assert recv_or_none(server) == b"\xffkept"
            assert counters[C_SKB_SEEN] == 3


@pytest.mark.parametrize("legacy", [False, True], ids=["link", "prog_attach"])
def test_sockmap_link_update_and_detach(no_fd_leak, no_leftovers, legacy):
    with Netns() as ns, pybpf.load(OBJ) as obj, pybpf.load(OBJ) as obj2:
        socks = obj.maps["skb_socks"]
        with ns.entered():
            listener = socket.socket()
        with listener:
            listener.settimeout(5)
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            with attach_sockmap(obj.programs["skb_verdict"], socks, legacy=legacy) as link:
                link.update(obj2.programs["skb_verdict"])
                assert map_progs(socks, AttachType.SK_SKB_STREAM_VERDICT) == [prog_id(obj2.programs["skb_verdict"])]
                with pytest.raises(pybpf.Error):
                    link.update(obj.programs["skb_verdict"], old=obj.programs["skb_verdict"])
                client, server = tcp_pair(ns, listener)
                with client, server:
                    socks[0] = server.fileno()
                    client.sendall(b"x")
                    assert recv_or_none(server) == b"x"
                assert (obj.maps["counters"][C_SKB_SEEN], obj2.maps["counters"][C_SKB_SEEN]) == (0, 1)
                with pytest.raises(pybpf.Error, match="program type|only sk_msg"):
                    link.update(obj.programs["drop_ff"])
                link.detach()
                assert map_progs(socks, AttachType.SK_SKB_STREAM_VERDICT) == []
                if not legacy:
                    assert link.info().map_id == 0                    # a detached sockmap link
                # the program of this attach type can be attached again meanwhile
                with attach_sockmap(obj.programs["skb_verdict"], socks, legacy=legacy):
                    assert map_progs(socks, AttachType.SK_SKB_STREAM_VERDICT) == \
                        [prog_id(obj.programs["skb_verdict"])]
            assert map_progs(socks, AttachType.SK_SKB_STREAM_VERDICT) == []


def test_attach_sockmap_refusals(no_fd_leak):
    with pybpf.load(OBJ) as obj:
        with pytest.raises(pybpf.Error, match="only sk_msg and sk_skb"):
            obj.programs["drop_ff"].attach_sockmap(obj.maps["skb_socks"])
        with pytest.raises(pybpf.Error, match="SOCKMAP or SOCKHASH"):
            obj.programs["skb_verdict"].attach_sockmap(obj.maps["counters"])
        with pytest.raises(pybpf.Error, match="SOCKMAP or SOCKHASH"):
            obj.programs["redirect_to_peer"].attach_sockmap(obj.maps["lookup_port"])
