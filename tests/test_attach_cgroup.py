"""cgroup programs (pybpf.links.cgroup), each shown to act on a process of a cgroup the test
makes: every cgroup attach type of programs/net_cgroup.bpf.c (skb ingress/egress, sock_create,
sock_ops, connect4/6, bind4/6, sendmsg4/6, recvmsg4/6, getsockopt/setsockopt, sysctl,
device), the BPF_PROG_ATTACH modes (multi, override, none) and their ordering, link
update/detach, info() against bpftool, Object.attach(cgroup=...), and nothing left behind.

The process in the cgroup is a child Python that writes its pid to cgroup.procs, then makes
the syscalls and prints what happened as JSON.  Network traffic stays between two network
namespaces of the test's own (192.0.2.1/2001:db8::1 in one, .2/::2 in the other); the
child runs in the first one *and* in the cgroup.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import pybpf
from pybpf.kernel.constants import AttachType, Cmd, LinkType, ProgType
from pybpf.links.base import link_info
from pybpf.links.cgroup import CgroupAttachment, cgroup2_mount, query_cgroup
from pybpf.spec.sections import match_section

from conftest import bpftool_json, prog_id, program
from netns import PREFIX, Netns, leftovers, veth_pair

pytestmark = pytest.mark.kernel

PYTHON = sys.executable
OBJ = program("net_cgroup")
_counter = itertools.count()

ADDRS = {  # family: (ours, peer's, an address nobody has, a fake source)
    4: ("192.0.2.1", "192.0.2.2", "192.0.2.9", "192.0.2.99"),
    6: ("2001:db8::1", "2001:db8::2", "2001:db8::9", "2001:db8::99"),
}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


# -- helpers -------------------------------------------------------------------------------------

def cgroup_progs(path: str) -> list:
    """bpftool's list of the programs attached to cgroup PATH (every attach type)."""
    return bpftool_json("cgroup", "show", path)


CGROUP_ATTACH_TYPES = [t for t in AttachType if t.name.startswith("CGROUP_")]


def attached_ids(path: str) -> list:
    """Ids of the programs on every cgroup hook of ``path`` (BPF_PROG_QUERY per attach type:
    this bpftool lists only the attach types it knows, not the AF_UNIX ones)."""
    ids = []
    for t in CGROUP_ATTACH_TYPES:
        ids += query_cgroup(path, t).prog_ids
    return ids


def ip4_word(addr: str) -> int:
    """An IPv4 address as the u32 a struct bpf_sock_addr holds (network order in memory)."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "little")


def ip6_words(addr: str) -> list:
    raw = socket.inet_pton(socket.AF_INET6, addr)
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 16, 4)]


def set_ip(variables, name: str, family: int, addr: str) -> None:
    if family == 4:
        variables[name + "_ip4"].set(ip4_word(addr))
    else:
        variables[name + "_ip6"].set(ip6_words(addr))


# the child joins the cgroup through an fd of its cgroup.procs that it inherits: inside
# `ip netns exec` /sys is the namespace's own sysfs, without the cgroup mounts
CHILD_PRELUDE = """
import errno, json, os, socket, sys
os.write(int(sys.argv[1]), str(os.getpid()).encode())
os.close(int(sys.argv[1]))
socket.setdefaulttimeout(5)
out = {}
def attempt(name, fn):
    try:
        out[name] = fn()
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, e.errno)
"""


def _child_argv(procs_fd: int, body: str) -> list:
    return [PYTHON, "-c", CHILD_PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out), flush=True)\n",
            str(procs_fd)]


def _procs_fd(cg: str) -> int:
    return os.open(os.path.join(cg, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)


def in_cgroup(cg: str, body: str, ns: Netns | None = None, timeout: float = 30) -> dict:
    """Run ``body`` in a child Python inside cgroup ``cg`` (and network namespace ``ns``);
    returns its ``out`` dict."""
    fd = _procs_fd(cg)
    try:
        argv = _child_argv(fd, body)
        if ns is not None:
            proc = ns.run(argv, timeout=timeout, pass_fds=(fd,))
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Child:
    """A child in the cgroup that runs while the test talks to it; killed if the test fails."""

    def __init__(self, cg: str, body: str, ns: Netns):
        fd = _procs_fd(cg)
        try:
            self.proc = ns.popen(_child_argv(fd, body), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 pass_fds=(fd,))
        finally:
            os.close(fd)

    def result(self, timeout: float = 30) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)               # reaps it and closes the pipes


def _remove_cgroup(path: str) -> None:
    """rmdir the cgroup and those below it, once their processes are gone (bounded)."""
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in [os.path.join(root, d) for d in dirs] + ([path] if root == path else []):
            deadline = time.monotonic() + 10
            while True:
                try:
                    with open(os.path.join(d, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.fixture
def cgroup(not_supported_skip):
    """A cgroup v2 directory of the test's own; at the end it must hold no program (bpftool's
    view), and it is removed."""
    with not_supported_skip:
        root = cgroup2_mount()
    path = os.path.join(root, f"pybpf-t{os.getpid()}-{next(_counter)}")
    os.mkdir(path)
    try:
        yield path
        assert cgroup_progs(path) == [] and attached_ids(path) == [], "programs left attached to the test cgroup"
    finally:
        _remove_cgroup(path)
    assert not os.path.exists(path)


def our_namespaces() -> list:
    return [n for n in leftovers() if n.startswith(f"{PREFIX}{os.getpid()}-")]


@pytest.fixture
def net():
    """Two namespaces with a veth pair: ns_a (192.0.2.1, 2001:db8::1) and ns_b (.2, ::2)."""
    before = our_namespaces()
    with Netns() as a, Netns() as b:
        yield veth_pair(a, b)
    assert our_namespaces() == before


def bound(ns: Netns, family: int, addr: str, port: int, kind=socket.SOCK_DGRAM) -> socket.socket:
    """A socket of the test in namespace ``ns``, bound to addr:port (5 s timeout)."""
    with ns.entered():
        s = socket.socket(AF[family], kind)
    s.settimeout(5)
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen(8)
    return s


# -- the section table -------------------------------------------------------------------------

# libbpf's section_defs rows (src/libbpf.c) for cgroup programs, and one row pybpf lacked
LIBBPF_ROWS = [
    ("cgroup_skb/ingress", "CGROUP_SKB", "CGROUP_INET_INGRESS"),
    ("cgroup_skb/egress", "CGROUP_SKB", "CGROUP_INET_EGRESS"),
    ("cgroup/skb", "CGROUP_SKB", None),
    ("cgroup/sock_create", "CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE"),
    ("cgroup/sock_release", "CGROUP_SOCK", "CGROUP_INET_SOCK_RELEASE"),
    ("cgroup/sock", "CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE"),
    ("cgroup/post_bind4", "CGROUP_SOCK", "CGROUP_INET4_POST_BIND"),
    ("cgroup/post_bind6", "CGROUP_SOCK", "CGROUP_INET6_POST_BIND"),
    ("cgroup/bind4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_BIND"),
    ("cgroup/bind6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_BIND"),
    ("cgroup/connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT"),
    ("cgroup/connect6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT"),
    ("cgroup/connect_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_CONNECT"),
    ("cgroup/sendmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_SENDMSG"),
    ("cgroup/sendmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_SENDMSG"),
    ("cgroup/sendmsg_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_SENDMSG"),
    ("cgroup/recvmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_RECVMSG"),
    ("cgroup/recvmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_RECVMSG"),
    ("cgroup/recvmsg_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_RECVMSG"),
    ("cgroup/getpeername4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETPEERNAME"),
    ("cgroup/getpeername6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_GETPEERNAME"),
    ("cgroup/getpeername_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_GETPEERNAME"),
    ("cgroup/getsockname4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETSOCKNAME"),
    ("cgroup/getsockname6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_GETSOCKNAME"),
    ("cgroup/getsockname_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_GETSOCKNAME"),
    ("cgroup/sysctl", "CGROUP_SYSCTL", "CGROUP_SYSCTL"),
    ("cgroup/getsockopt", "CGROUP_SOCKOPT", "CGROUP_GETSOCKOPT"),
    ("cgroup/setsockopt", "CGROUP_SOCKOPT", "CGROUP_SETSOCKOPT"),
    ("cgroup/dev", "CGROUP_DEVICE", "CGROUP_DEVICE"),
    ("sockops", "SOCK_OPS", "CGROUP_SOCK_OPS"),
    ("lsm_cgroup/socket_bind", "LSM", "LSM_CGROUP"),
    ("uprobe.session.s//bin/true:main", "KPROBE", "TRACE_UPROBE_SESSION"),
]


@pytest.mark.parametrize("section, prog_type, attach_type", LIBBPF_ROWS)
def test_section_table_matches_libbpf(section, prog_type, attach_type):
    d = match_section(section)
    assert d is not None and (d.prog_type, d.attach_type) == (prog_type, attach_type)


# -- every attach type: attached, reported as bpftool reports it, gone after close ---------------

CGROUP_PROGRAMS = [
    "skb_ingress", "skb_egress", "sock_create_deny", "sockops_count", "connect4", "connect6", "bind4", "bind6",
    "sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6", "getsockopt_override", "setsockopt_override",
    "sysctl_deny", "dev_deny", "post_bind4_deny", "sock_release_count", "getsockname4", "getpeername4",
    "connect_unix",
]


@pytest.mark.parametrize("name", CGROUP_PROGRAMS)
def test_link_info_matches_bpftool_for_each_attach_type(name, cgroup, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        prog = obj.programs[name]
        atype = AttachType(prog.spec.expected_attach_type)
        with prog.attach_cgroup(cgroup) as link:
            info = link.info()
            assert (info.type, info.prog_id, info.attach_type) == (LinkType.CGROUP, prog_id(prog), atype)
            assert info.cgroup_id == os.stat(cgroup).st_ino          # a cgroup v2 id is its inode number
            tool = bpftool_json("link", "show", "id", str(info.id))
            assert (tool["type"], tool["prog_id"], tool["cgroup_id"]) == ("cgroup", info.prog_id, info.cgroup_id)
            # this bpftool (v7.1) names the attach types it knows, numbers the newer ones
            assert tool["attach_type"] in (atype.name.lower(), int(atype))
            if isinstance(tool["attach_type"], str):
                assert [p["id"] for p in cgroup_progs(cgroup)] == [info.prog_id]
            assert query_cgroup(cgroup, atype).prog_ids == attached_ids(cgroup) == [info.prog_id]
        assert attached_ids(cgroup) == []
        assert cgroup_progs(cgroup) == []


# -- each attach type acts ------------------------------------------------------------------------

def test_cgroup_skb_counts_packets_and_drops_a_port(net, cgroup, no_fd_leak):
    """Ingress and egress counters see exactly the child's datagrams (skb->len from the IP
    header: 20 + 8 + payload); with ingress_drop_port set, datagrams to that port never
    reach the child."""
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        for name in ("skb_ingress", "skb_egress"):
            obj.programs[name].attach_cgroup(cgroup)
        peer = bound(net.ns_b, 4, "192.0.2.2", 6000)
        try:
            with Child(cgroup, """
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("192.0.2.1", 6001))
                for _ in range(5):
                    s.sendto(b"e" * 100, ("192.0.2.2", 6000))
                out["received"] = [len(s.recv(2000)) for _ in range(3)]
            """, net.ns_a) as child:
                for _ in range(5):
                    data, addr = peer.recvfrom(2000)
                    assert (data, addr) == (b"e" * 100, ("192.0.2.1", 6001))
                for _ in range(3):
                    peer.sendto(b"i" * 200, addr)
                assert child.result() == {"received": [200, 200, 200]}
            assert (v["egress_packets"].get(), v["egress_bytes"].get()) == (5, 5 * 128)
            assert (v["ingress_packets"].get(), v["ingress_bytes"].get()) == (3, 3 * 228)

            v["ingress_drop_port"].set(6002)
            with Child(cgroup, """
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("192.0.2.1", 6002))
                s.sendto(b"ready", ("192.0.2.2", 6000))
                s.settimeout(1.5)
                got = []
                try:
                    while True:
                        got.append(s.recv(2000).decode())
                except socket.timeout:
                    pass
                out["received"] = got
            """, net.ns_a) as child:
                data, addr = peer.recvfrom(2000)
                assert data == b"ready"
                for _ in range(3):
                    peer.sendto(b"dropped", addr)
                assert child.result() == {"received": []}
            assert (v["ingress_packets"].get(), v["ingress_dropped"].get()) == (6, 3)
        finally:
            peer.close()


def test_sock_create_refuses_one_socket_type(cgroup, no_fd_leak):
    body = """
        attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close() or "ok")
        attempt("udp6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close() or "ok")
        attempt("tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close() or "ok")
    """
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["deny_sock_type"].set(socket.SOCK_DGRAM)
        with obj.programs["sock_create_deny"].attach_cgroup(cgroup):
            assert in_cgroup(cgroup, body) == {"udp": "EPERM", "udp6": "EPERM", "tcp": "ok"}
        assert v["sock_denied"].get() == 2
        assert in_cgroup(cgroup, body) == {"udp": "ok", "udp6": "ok", "tcp": "ok"}     # detached
        assert v["sock_denied"].get() == 2


def test_sockops_counts_the_tcp_events_of_a_connect(net, cgroup, no_fd_leak):
    """One connect from the cgroup: one TCP_CONNECT_CB (3) and one ACTIVE_ESTABLISHED_CB (4);
    the accepting side is outside the cgroup: no PASSIVE_ESTABLISHED_CB (5)."""
    with pybpf.load(OBJ) as obj:
        srv = bound(net.ns_b, 4, "192.0.2.2", 6100, socket.SOCK_STREAM)
        try:
            with obj.programs["sockops_count"].attach_cgroup(cgroup):
                out = in_cgroup(cgroup, """
                    c = socket.create_connection(("192.0.2.2", 6100))
                    c.sendall(b"hello")
                    c.close()
                    out["sent"] = 5
                """, net.ns_a)
                conn, _ = srv.accept()
                with conn:
                    conn.settimeout(5)
                    assert conn.recv(100) == b"hello"
            assert out == {"sent": 5}
            ops = obj.variables["sockops_ops"].get()
            assert (ops[3], ops[4], ops[5]) == (1, 1, 0), ops
        finally:
            srv.close()


@pytest.mark.parametrize("family", [4, 6])
def test_connect_refuses_a_port_and_redirects_another(family, net, cgroup, no_fd_leak):
    """connect() to port 6201 fails with EPERM; connect() to nobody's address on port 6202
    reaches the peer's listener on 6200, which receives what the child sent."""
    ours, peer_addr, nobody, _ = ADDRS[family]
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["connect_deny_port"].set(6201)
        v["connect_from_port"].set(6202)
        v["connect_to_port"].set(6200)
        set_ip(v, "connect_to", family, peer_addr)
        srv = bound(net.ns_b, family, peer_addr, 6200, socket.SOCK_STREAM)
        try:
            with obj.programs[f"connect{family}"].attach_cgroup(cgroup):
                out = in_cgroup(cgroup, f"""
                    attempt("denied", lambda: socket.create_connection(({peer_addr!r}, 6201)) and "connected")
                    c = socket.create_connection(({nobody!r}, 6202))
                    out["peer"] = list(c.getpeername()[:2])
                    c.sendall(b"redirected")
                    c.close()
                """, net.ns_a)
                conn, (addr, *_) = srv.accept()
                with conn:
                    conn.settimeout(5)
                    assert (conn.recv(100), addr) == (b"redirected", ours)
            assert out == {"denied": "EPERM", "peer": [peer_addr, 6200]}
            assert (v["connect_denied"].get(), v["connect_redirected"].get()) == (1, 1)
        finally:
            srv.close()


@pytest.mark.parametrize("family", [4, 6])
def test_bind_rewrites_the_port(family, net, cgroup, no_fd_leak):
    ours = ADDRS[family][0]
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["bind_from_port"].set(6301)
        v["bind_to_port"].set(6302)
        with obj.programs[f"bind{family}"].attach_cgroup(cgroup):
            out = in_cgroup(cgroup, f"""
                s = socket.socket(socket.{AF[family].name}, socket.SOCK_DGRAM)
                s.bind(({ours!r}, 6301))
                t = socket.socket(socket.{AF[family].name}, socket.SOCK_DGRAM)
                t.bind(({ours!r}, 6303))
                out["asked_6301"], out["asked_6303"] = s.getsockname()[1], t.getsockname()[1]
            """, net.ns_a)
        assert out == {"asked_6301": 6302, "asked_6303": 6303}
        assert v["bind_rewritten"].get() == 1


@pytest.mark.parametrize("family", [4, 6])
def test_sendmsg_rewrites_the_destination(family, net, cgroup, no_fd_leak):
    """A datagram sent to nobody's address, port 6409, arrives at the peer's socket on 6400."""
    ours, peer_addr, nobody, _ = ADDRS[family]
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["send_from_port"].set(6409)
        v["send_to_port"].set(6400)
        set_ip(v, "send_to", family, peer_addr)
        peer = bound(net.ns_b, family, peer_addr, 6400)
        try:
            with obj.programs[f"sendmsg{family}"].attach_cgroup(cgroup):
                in_cgroup(cgroup, f"""
                    s = socket.socket(socket.{AF[family].name}, socket.SOCK_DGRAM)
                    out["sent"] = s.sendto(b"rewritten", ({nobody!r}, 6409))
                """, net.ns_a)
            data, addr = peer.recvfrom(100)
            assert (data, addr[0]) == (b"rewritten", ours)
            assert v["send_rewritten"].get() == 1
        finally:
            peer.close()


@pytest.mark.parametrize("family", [4, 6])
def test_recvmsg_rewrites_the_source(family, net, cgroup, no_fd_leak):
    """The peer answers from port 6501; the child's recvfrom() says the answer came from the
    fake address, port 53."""
    ours, peer_addr, _, fake = ADDRS[family]
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["recv_from_port"].set(6501)
        v["recv_as_port"].set(53)
        set_ip(v, "recv_as", family, fake)
        peer = bound(net.ns_b, family, peer_addr, 6501)
        try:
            with obj.programs[f"recvmsg{family}"].attach_cgroup(cgroup):
                with Child(cgroup, f"""
                    s = socket.socket(socket.{AF[family].name}, socket.SOCK_DGRAM)
                    s.bind(({ours!r}, 6502))
                    s.sendto(b"ready", ({peer_addr!r}, 6501))
                    data, addr = s.recvfrom(100)
                    out["data"], out["from"] = data.decode(), list(addr[:2])
                """, net.ns_a) as child:
                    data, addr = peer.recvfrom(100)
                    assert data == b"ready"
                    peer.sendto(b"pong", addr)
                    assert child.result() == {"data": "pong", "from": [fake, 53]}
            assert v["recv_rewritten"].get() == 1
        finally:
            peer.close()


def test_sockopt_programs_override_ip_ttl(cgroup, no_fd_leak):
    body = """
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 5)
        out["ttl"] = s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
    """
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["setsockopt_ttl"].set(99)
        v["getsockopt_ttl"].set(42)
        with obj.programs["setsockopt_override"].attach_cgroup(cgroup):
            assert in_cgroup(cgroup, body) == {"ttl": 99}            # set 5, the program made it 99
        with obj.programs["getsockopt_override"].attach_cgroup(cgroup):
            assert in_cgroup(cgroup, body) == {"ttl": 42}            # set 5, the program reports 42
        assert in_cgroup(cgroup, body) == {"ttl": 5}
        assert v["sockopt_overridden"].get() == 2


def test_sysctl_read_of_one_sysctl_refused(cgroup, no_fd_leak):
    body = """
        attempt("ostype", lambda: open("/proc/sys/kernel/ostype").read().strip())
        attempt("osrelease", lambda: open("/proc/sys/kernel/osrelease").read().strip())
    """
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["sysctl_deny_on"].set(1)
        with obj.programs["sysctl_deny"].attach_cgroup(cgroup):
            assert in_cgroup(cgroup, body) == {"ostype": "EPERM", "osrelease": os.uname().release}
        assert v["sysctl_denied"].get() == 1
        assert in_cgroup(cgroup, body) == {"ostype": "Linux", "osrelease": os.uname().release}


def test_device_open_refused(cgroup, tmp_path, no_fd_leak):
    """A char device node 1:3 (/dev/null's numbers) made in a temporary directory cannot be
    opened from the cgroup; 1:5 (/dev/zero's) can."""
    null, zero = tmp_path / "null", tmp_path / "zero"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    body = f"""
        attempt("null", lambda: open({str(null)!r}, "rb").close() or "ok")
        attempt("zero", lambda: len(open({str(zero)!r}, "rb").read(4)))
    """
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["dev_deny_on"].set(1)
        v["dev_deny_major"].set(1)
        v["dev_deny_minor"].set(3)
        with obj.programs["dev_deny"].attach_cgroup(cgroup):
            assert in_cgroup(cgroup, body) == {"null": "EPERM", "zero": 4}
        assert v["dev_denied"].get() == 1
        assert in_cgroup(cgroup, body) == {"null": "ok", "zero": 4}


def test_post_bind_refuses_a_port_after_the_bind(net, cgroup, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["post_bind_deny_port"].set(6700)
        with obj.programs["post_bind4_deny"].attach_cgroup(cgroup):
            out = in_cgroup(cgroup, """
                attempt("6700", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("192.0.2.1", 6700)))
                attempt("6701", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("192.0.2.1", 6701)))
            """, net.ns_a)
        assert out == {"6700": "EPERM", "6701": None}
        assert v["post_bind_denied"].get() == 1


def test_sock_release_counts_closed_sockets(cgroup, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        with obj.programs["sock_release_count"].attach_cgroup(cgroup):
            in_cgroup(cgroup, """
                for family in (socket.AF_INET, socket.AF_INET6, socket.AF_INET):
                    socket.socket(family, socket.SOCK_DGRAM).close()
            """)
        assert obj.variables["sock_released"].get() == 3


def test_getsockname_and_getpeername_answers_rewritten(net, cgroup, no_fd_leak):
    """The answers change, not the sockets: the child still receives on the port it bound."""
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        v["sockname_from_port"].set(6801)
        v["sockname_as_port"].set(6802)
        v["peername_from_port"].set(6803)
        v["peername_as_port"].set(6804)
        peer = bound(net.ns_b, 4, "192.0.2.2", 6803)
        try:
            with obj.programs["getsockname4"].attach_cgroup(cgroup), \
                    obj.programs["getpeername4"].attach_cgroup(cgroup):
                with Child(cgroup, """
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind(("192.0.2.1", 6801))
                    s.connect(("192.0.2.2", 6803))
                    out["sockname"], out["peername"] = s.getsockname()[1], s.getpeername()[1]
                    s.send(b"ready")
                    out["received"] = s.recv(100).decode()
                """, net.ns_a) as child:
                    data, addr = peer.recvfrom(100)
                    assert (data, addr) == (b"ready", ("192.0.2.1", 6801))
                    peer.sendto(b"to 6801", addr)
                    assert child.result() == {"sockname": 6802, "peername": 6804, "received": "to 6801"}
        finally:
            peer.close()


def test_connect_unix_refused(cgroup, no_fd_leak):
    name = f"\0pybpf-test-{os.getpid()}-{next(_counter)}"
    body = f"""
        attempt("connect", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect({name!r}))
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(name)
        listener.listen(4)
        with pybpf.load(OBJ) as obj:
            obj.variables["unix_deny_on"].set(1)
            with obj.programs["connect_unix"].attach_cgroup(cgroup):
                assert in_cgroup(cgroup, body) == {"connect": "EPERM"}
            assert obj.variables["unix_denied"].get() == 1
            assert in_cgroup(cgroup, body) == {"connect": None}
    finally:
        listener.close()


def test_attach_types_this_kernel_lacks_are_named():
    """The running kernel's BTF knows every cgroup attach type pybpf names; one taken out of
    that list gives a NotSupportedError naming it and the release that brought it."""
    import pybpf.links.cgroup as cg_mod
    known = cg_mod._kernel_enum("bpf_attach_type")
    assert known is not None
    assert [t for t in cg_mod._SINCE if cg_mod.missing_attach_type(t, known) is not None] == []
    err = cg_mod.missing_attach_type(AttachType.CGROUP_UNIX_CONNECT, known - {"BPF_CGROUP_UNIX_CONNECT"})
    assert isinstance(err, pybpf.NotSupportedError)
    assert "BPF_CGROUP_UNIX_CONNECT" in str(err) and "Linux 6.7" in str(err)
    assert cg_mod._has_cgroup_mprog()       # this kernel orders cgroup programs (link_create.cgroup)


# -- several programs on one hook ------------------------------------------------------------------

SOCKET_BODY = 'attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close() or "ok")'


def run_order(obj, cg: str) -> list:
    """The numbers the order_* programs logged for one socket() in cgroup ``cg``."""
    v = obj.variables
    v["order_n"].set(0)
    v["order_log"].set([0] * 8)
    in_cgroup(cg, SOCKET_BODY)
    return v["order_log"].get()[:v["order_n"].get()]


def test_allow_multi_programs_run_in_attach_order(cgroup, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        a, b, c = (obj.programs[n] for n in ("order_first", "order_second", "order_third"))
        with a.attach_cgroup(cgroup, flags="multi") as la, b.attach_cgroup(cgroup, flags="multi"), \
                c.attach_cgroup(cgroup, flags=pybpf.kernel.constants.BPF_F_ALLOW_MULTI):
            assert isinstance(la, CgroupAttachment) and la.mode == "multi" and la.kind == "cgroup"
            q = query_cgroup(cgroup, "sock_create")
            assert (q.mode, q.prog_ids) == ("multi", [prog_id(a), prog_id(b), prog_id(c)])
            assert run_order(obj, cgroup) == [1, 2, 3]
            assert [p["id"] for p in cgroup_progs(cgroup)] == q.prog_ids
        assert query_cgroup(cgroup, "sock_create").prog_ids == []


def test_before_after_and_first_place_programs_and_links(cgroup, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        a, b, c = (obj.programs[n] for n in ("order_first", "order_second", "order_third"))
        # BPF_PROG_ATTACH: relative to programs
        with a.attach_cgroup(cgroup, flags="multi"):
            lb = b.attach_cgroup(cgroup, flags="multi", before=a)
            c.attach_cgroup(cgroup, flags="multi", after=lb)            # after b's attachment
            assert run_order(obj, cgroup) == [2, 3, 1]
            for link in obj.links:
                link.close()
        # BPF links: relative to links
        with a.attach_cgroup(cgroup):
            lc = c.attach_cgroup(cgroup, first=True)
            b.attach_cgroup(cgroup, after=lc)
            assert run_order(obj, cgroup) == [3, 2, 1]
            with pytest.raises(pybpf.Error, match="relative to another cgroup link"):
                b.attach_cgroup(cgroup, before=a)                     # a program: refused, said why
            rev = query_cgroup(cgroup, "sock_create").revision
            with pytest.raises(pybpf.SyscallError) as exc:
                obj.programs["sock_create_count"].attach_cgroup(cgroup, expected_revision=rev + 7)
            assert exc.value.errno == errno.ESTALE and "revision" in str(exc.value)
            with obj.programs["sock_create_count"].attach_cgroup(cgroup, expected_revision=rev):
                assert len(query_cgroup(cgroup, "sock_create").prog_ids) == 4
            for link in obj.links:
                link.close()
        assert cgroup_progs(cgroup) == []


def test_multi_runs_the_sub_cgroups_programs_first_override_replaces_the_parents(cgroup, no_fd_leak):
    """ALLOW_MULTI: a process of a sub-cgroup runs its cgroup's programs, then the parent's.
    ALLOW_OVERRIDE: the sub-cgroup's program runs instead of the parent's.  Mode none on
    the parent refuses any program below it."""
    sub = os.path.join(cgroup, "sub")
    os.mkdir(sub)
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        p = obj.programs
        with p["order_first"].attach_cgroup(cgroup, flags="multi"), \
                p["order_second"].attach_cgroup(sub, flags="multi"):
            assert run_order(obj, sub) == [2, 1]
            assert run_order(obj, cgroup) == [1]
        v["deny_sock_type"].set(socket.SOCK_DGRAM)
        with p["sock_create_deny"].attach_cgroup(cgroup, flags="override"), \
                p["sock_create_count"].attach_cgroup(sub, flags="override"):
            assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "EPERM"}
            assert in_cgroup(sub, SOCKET_BODY) == {"udp": "ok"}       # the parent's program overridden
            assert (v["sock_denied"].get(), v["sock_allowed"].get()) == (1, 1)
        with p["sock_create_deny"].attach_cgroup(cgroup, flags="none"):
            for flags in ("override", None):
                with pytest.raises(pybpf.SyscallError) as exc:
                    p["sock_create_count"].attach_cgroup(sub, flags=flags)
                assert exc.value.errno == errno.EPERM and "parent cgroup" in str(exc.value)
            assert in_cgroup(sub, SOCKET_BODY) == {"udp": "EPERM"}    # the parent's program applies
        assert cgroup_progs(sub) == []


def test_mode_none_never_replaces_a_program_silently(cgroup, no_fd_leak):
    """A second attach in mode none would replace the first program (the kernel's rule):
    pybpf refuses unless replace= names it; closing the replaced attachment then leaves the
    new program alone (the kernel would detach whatever is there)."""
    with pybpf.load(OBJ) as obj:
        a, b = obj.programs["order_first"], obj.programs["order_second"]
        first = a.attach_cgroup(cgroup, flags="none")
        with pytest.raises(pybpf.Error, match="would replace it"):
            b.attach_cgroup(cgroup, flags="none")
        assert run_order(obj, cgroup) == [1]
        second = b.attach_cgroup(cgroup, flags="none", replace=a)
        assert run_order(obj, cgroup) == [2]
        assert (first.attached, second.attached) == (False, True)
        first.close()
        assert query_cgroup(cgroup, "sock_create").prog_ids == [prog_id(b)]
        assert run_order(obj, cgroup) == [2]
        # another mode on the same hook: the kernel refuses, pybpf says what is there
        with pytest.raises(pybpf.SyscallError) as exc:
            a.attach_cgroup(cgroup, flags="multi")
        assert exc.value.errno == errno.EPERM and "mode 'none'" in str(exc.value)
        with pytest.raises(pybpf.SyscallError):
            a.attach_cgroup(cgroup)                                  # a BPF link needs mode multi
        second.close()
        assert query_cgroup(cgroup, "sock_create").prog_ids == []


# -- update, detach, and closing ----------------------------------------------------------------

def test_link_update_swaps_the_program_without_a_detach(cgroup, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        v = obj.variables
        deny, count = obj.programs["sock_create_deny"], obj.programs["sock_create_count"]
        v["deny_sock_type"].set(socket.SOCK_DGRAM)
        with deny.attach_cgroup(cgroup) as link:
            before = link.info()
            assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "EPERM"}
            link.update(count)
            after = link.info()
            assert (after.id, after.prog_id) == (before.id, prog_id(count))
            assert query_cgroup(cgroup, "sock_create").prog_ids == [prog_id(count)]
            assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "ok"}
            assert (v["sock_denied"].get(), v["sock_allowed"].get()) == (1, 1)
            with pytest.raises(pybpf.SyscallError) as exc:
                link.update(deny, old=deny)                          # it runs count now
            assert exc.value.errno == errno.EPERM
            assert link.program is count


def test_prog_attach_update_keeps_the_programs_place(cgroup, no_fd_leak):
    """update() of a BPF_PROG_ATTACH attachment (BPF_F_REPLACE): the new program runs where
    the old one did, between the same neighbours."""
    with pybpf.load(OBJ) as obj:
        p = obj.programs
        with p["order_first"].attach_cgroup(cgroup, flags="multi"), \
                p["order_second"].attach_cgroup(cgroup, flags="multi") as middle, \
                p["order_third"].attach_cgroup(cgroup, flags="multi"):
            assert run_order(obj, cgroup) == [1, 2, 3]
            middle.update(p["sock_create_count"])
            ids = [prog_id(p[n]) for n in ("order_first", "sock_create_count", "order_third")]
            assert query_cgroup(cgroup, "sock_create").prog_ids == ids
            assert run_order(obj, cgroup) == [1, 3]
            assert obj.variables["sock_allowed"].get() == 1
            assert middle.info().prog_id == ids[1]
        assert query_cgroup(cgroup, "sock_create").prog_ids == []


def test_link_detach_while_another_fd_of_it_is_open(cgroup, no_fd_leak):
    """detach() stops the program at once, though a second fd of the link (a dup, as another
    holder would have) keeps the link itself alive: its info then names no cgroup."""
    with pybpf.load(OBJ) as obj:
        obj.variables["deny_sock_type"].set(socket.SOCK_DGRAM)
        link = obj.programs["sock_create_deny"].attach_cgroup(cgroup)
        other = os.dup(link.fd)
        try:
            link_id = link.info().id
            assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "EPERM"}
            link.detach()
            assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "ok"}
            assert query_cgroup(cgroup, "sock_create").prog_ids == []
            held = link_info(other)
            assert (held.id, held.cgroup_id) == (link_id, 0)
            assert bpftool_json("link", "show", "id", str(link_id))["id"] == link_id
            link.close()
            assert link_info(other).id == link_id                    # still alive through the dup
        finally:
            os.close(other)
        with pytest.raises(subprocess.CalledProcessError):
            bpftool_json("link", "show", "id", str(link_id))         # gone with its last fd

        # the same for a BPF_PROG_ATTACH attachment
        att = obj.programs["sock_create_deny"].attach_cgroup(cgroup, flags="multi")
        assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "EPERM"}
        att.detach()
        assert (att.attached, att.info().prog_id, att.closed) == (False, 0, False)
        assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "ok"}
        att.close()


def test_object_close_detaches_prog_attach_attachments(cgroup, no_fd_leak):
    """BPF_PROG_ATTACH attachments outlive the process that made them: Object.close() detaches
    them (and its links), so nothing stays on the cgroup."""
    obj = pybpf.load(OBJ)
    try:
        for name in ("order_first", "order_second", "sock_create_count"):
            obj.programs[name].attach_cgroup(cgroup, flags="multi")
        obj.programs["connect4"].attach_cgroup(cgroup, flags="override")
        obj.programs["skb_egress"].attach_cgroup(cgroup)
        assert len(obj.links) == 5 and len(cgroup_progs(cgroup)) == 5
        obj.programs["order_first"].close()     # the attachment keeps its own fd of the program
    finally:
        obj.close()
    assert cgroup_progs(cgroup) == []


def test_interrupt_right_after_prog_attach_leaves_nothing(cgroup, monkeypatch, no_fd_leak):
    """A SIGINT that lands right after BPF_PROG_ATTACH returns: the KeyboardInterrupt comes at
    the end of the section, after the attachment detached itself."""
    import pybpf.links.cgroup as cg_mod
    real = cg_mod.sc.bpf

    def bpf(cmd, attr, *args):
        r = real(cmd, attr, *args)
        if cmd == Cmd.PROG_ATTACH:
            os.kill(os.getpid(), signal.SIGINT)
        return r

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pybpf.load(OBJ) as obj:
            monkeypatch.setattr(cg_mod.sc, "bpf", bpf)
            with pytest.raises(KeyboardInterrupt):
                obj.programs["order_first"].attach_cgroup(cgroup, flags="multi")
            monkeypatch.setattr(cg_mod.sc, "bpf", real)
            assert query_cgroup(cgroup, "sock_create").prog_ids == []
            assert obj.links == []
    finally:
        signal.signal(signal.SIGINT, old)


# -- refusals ---------------------------------------------------------------------------------------

def test_attach_refusals_say_what_is_wrong(cgroup, tmp_path, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        p = obj.programs
        with pytest.raises(pybpf.Error, match="not a cgroup program"):
            p["xdp_count"].attach_cgroup(cgroup)
        with pytest.raises(pybpf.Error, match="loaded for CGROUP_INET_INGRESS"):
            p["skb_ingress"].attach_cgroup(cgroup, attach_type="egress")
        with pytest.raises(pybpf.SyscallError) as exc:
            p["skb_ingress"].attach_cgroup(str(tmp_path))           # a directory, not a cgroup
        assert exc.value.errno == errno.EBADF and "not a cgroup v2 directory" in str(exc.value)
        with pytest.raises(pybpf.Error, match="cannot open cgroup"):
            p["skb_ingress"].attach_cgroup(str(tmp_path / "missing"))
        with pytest.raises(pybpf.Error, match="exclude each other"):
            p["skb_ingress"].attach_cgroup(cgroup, flags=3)
        with pytest.raises(pybpf.Error, match="flags='multi'"):
            p["order_first"].attach_cgroup(cgroup, flags="override", first=True)
        with pytest.raises(pybpf.Error, match="unknown cgroup attach mode"):
            p["order_first"].attach_cgroup(cgroup, flags="many")
        with p["order_first"].attach_cgroup(cgroup) as link:
            with pytest.raises(pybpf.Error, match="BPF link"):
                p["order_second"].attach_cgroup(cgroup, flags="multi", before=link)
        assert obj.links == [] and cgroup_progs(cgroup) == []


# -- Object.attach --------------------------------------------------------------------------------

def test_object_attach_with_a_cgroup_attaches_the_cgroup_programs(cgroup, no_fd_leak):
    with pybpf.load(OBJ) as obj:
        bare = obj.attach()
        assert bare == [] and sorted(bare.not_attached) == sorted(obj.programs)
        assert "an interface" in bare.not_attached["xdp_count"]
        assert "cgroup" in bare.not_attached["connect4"]
        obj.variables["deny_sock_type"].set(socket.SOCK_DGRAM)
        made = obj.attach(cgroup=cgroup)
        cgroup_names = {n for n, prog in obj.programs.items() if prog.type != ProgType.XDP
                        and prog.type != ProgType.SCHED_CLS}
        assert {link.program.name for link in made} == cgroup_names
        assert sorted(made.not_attached) == ["tc_count", "xdp_count"]
        assert "xdp_count: not attached: needs an interface" in made.summary()
        assert sorted(attached_ids(cgroup)) == sorted(prog_id(obj.programs[n]) for n in cgroup_names)
        assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "EPERM"}    # sock_create_deny acts
    assert cgroup_progs(cgroup) == [] and attached_ids(cgroup) == []
