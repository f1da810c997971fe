"""netfilter programs (pybpf/links/netfilter.py) on hooks of a network namespace of the
test's own: the program counts exactly the packets of its hook there, info() agrees with
bpftool and the kernel's fdinfo, values the kernel refuses are named, and closing
unregisters the hook."""

from __future__ import annotations

import errno
import os
import re
import socket

import pytest

import pybpf
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import LinkCreateAttr
from pybpf.kernel.constants import AttachType, Cmd, LinkType
from pybpf.links.netfilter import attach_netfilter

from conftest import bpftool_link, link_gone, prog_id, program
from netns import PREFIX, Netns, leftovers

pytestmark = pytest.mark.kernel

OBJ = program("net_sock")
C_NF_IPV4 = 10                 # counters[C_NF_IPV4 + hook], programs/net_sock.bpf.c
C_NF_IPV6 = 15
HOOKS = ("prerouting", "local_in", "forward", "local_out", "postrouting")


def fdinfo(fd: int) -> dict:
    """The kernel's own text view of a link fd; a netfilter link adds
    ``pf:\\t2\\thooknum:\\t1\\tprio:\\t0`` (bpf_nf_link_show_info)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        text = f.read()
    return {k: v for k, v in re.findall(r"(\w+):\s+(-?\w+)", text)}


@pytest.fixture
def no_leftovers():
    yield
    mine = f"{PREFIX}{os.getpid()}-"           # other test processes may have theirs meanwhile
    assert [n for n in leftovers() if n.startswith(mine)] == [], "a test network namespace was left behind"


def send_loopback(ns: Netns, family: int, n: int, size: int = 8) -> None:
    """``n`` UDP datagrams over the namespace's loopback, each received (bounded by timeouts)."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with ns.entered():
        rx = socket.socket(family, socket.SOCK_DGRAM)
        tx = socket.socket(family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.settimeout(5)
        rx.bind((host, 0))
        for i in range(n):
            tx.sendto(bytes([i % 256]) * size, rx.getsockname())
            assert len(rx.recv(size + 1)) == size


def counts(obj, base: int) -> dict:
    c = obj.maps["counters"]
    return {hook: c[base + i] for i, hook in enumerate(HOOKS)}


def test_netfilter_counts_local_in_packets_of_its_namespace_until_closed(no_fd_leak, no_leftovers):
    n = 25
    with Netns() as ns, Netns() as other, pybpf.load(OBJ) as obj:
        prog = obj.programs["nf_count"]
        with ns.entered():
            link = prog.attach_netfilter("ipv4", "local_in", 0)
        try:
            info = link.info()
            assert (info.type, info.prog_id, info.pf, info.hooknum, info.priority, info.flags) == \
                (LinkType.NETFILTER, prog_id(prog), 2, 1, 0, 0)
            tool = bpftool_link(info.id)                      # bpftool 7.1 names no netfilter fields
            assert (tool["id"], tool["prog_id"], tool["type"] in (10, "netfilter")) == (info.id, info.prog_id, True)
            fields = fdinfo(link.fd)
            assert (int(fields["pf"]), int(fields["hooknum"]), int(fields["prio"])) == \
                (info.pf, info.hooknum, info.priority)

            send_loopback(ns, socket.AF_INET, n)
            # loopback: each datagram passes local_out, postrouting, prerouting and local_in;
            # only the attached hook runs the program, once per packet
            assert counts(obj, C_NF_IPV4) == {**dict.fromkeys(HOOKS, 0), "local_in": n}
            send_loopback(ns, socket.AF_INET6, 3)             # an IPv4 hook: IPv6 does not reach it
            send_loopback(other, socket.AF_INET, 3)           # nor does another namespace's traffic
            assert counts(obj, C_NF_IPV4)["local_in"] == n
            assert sum(counts(obj, C_NF_IPV6).values()) == 0
        finally:
            link.close()
        assert link_gone(info.id)
        send_loopback(ns, socket.AF_INET, n)
        assert counts(obj, C_NF_IPV4)["local_in"] == n        # the hook is gone


def test_netfilter_ipv6_local_out_with_a_priority(no_fd_leak, no_leftovers):
    with Netns() as ns, pybpf.load(OBJ) as obj:
        with ns.entered():
            link = obj.programs["nf_count"].attach_netfilter("ipv6", "local_out", priority=-150)
        with link:
            info = link.info()
            assert (info.pf, info.hooknum, info.priority) == (10, 3, -150)
            send_loopback(ns, socket.AF_INET6, 7)
            assert counts(obj, C_NF_IPV6) == {**dict.fromkeys(HOOKS, 0), "local_out": 7}


def test_netfilter_defrag_flag_gives_the_program_whole_datagrams(no_fd_leak, no_leftovers, not_supported_skip):
    """At prerouting a program sees each IP fragment, unless the link asks for defrag
    (BPF_F_NETFILTER_IP_DEFRAG): then the kernel's defragmenter runs first (at -400) and the
    program sees one reassembled datagram."""
    with Netns() as ns, pybpf.load(OBJ) as obj:
        ns.ip("link", "set", "lo", "mtu", "1280")
        prog = obj.programs["nf_count"]
        with ns.entered():
            plain = prog.attach_netfilter("ipv4", "prerouting", -100)
        with plain:
            send_loopback(ns, socket.AF_INET, 4, size=3000)   # 3 fragments each at MTU 1280
            assert counts(obj, C_NF_IPV4)["prerouting"] == 4 * 3
        with ns.entered(), not_supported_skip:
            link = attach_netfilter(prog, "ipv4", "prerouting", -100, defrag=True)
        with link:
            assert link.info().flags == 1
            send_loopback(ns, socket.AF_INET, 4, size=3000)
            assert counts(obj, C_NF_IPV4)["prerouting"] == 4 * 3 + 4


def test_netfilter_update_is_refused_and_detach_unregisters(no_fd_leak, no_leftovers):
    with Netns() as ns, pybpf.load(OBJ) as obj, pybpf.load(OBJ) as obj2:
        with ns.entered():
            link = obj.programs["nf_count"].attach_netfilter()
        with link:
            assert (link.info().pf, link.info().hooknum) == (2, 1)    # defaults: ipv4, local_in
            with pytest.raises(pybpf.SyscallError, match="cannot swap") as e:
                link.update(obj2.programs["nf_count"])          # nf_bpf_link: no update_prog
            assert e.value.errno == errno.EOPNOTSUPP
            send_loopback(ns, socket.AF_INET, 2)
            link.detach()
            send_loopback(ns, socket.AF_INET, 2)
            assert counts(obj, C_NF_IPV4)["local_in"] == 2


@pytest.mark.parametrize("args, words", [
    (("ipx", "local_in", 0), ["'ipx'", "ipv4, ipv6"]),
    (("ipv4", "input", 0), ["'input'", "prerouting, local_in"]),
    (("ipv4", 7, 0), ["7", "hook"]),
    (("ipv4", "local_in", -(1 << 31)), ["-2147483648", "NF_IP_PRI_FIRST"]),
    (("ipv4", "local_in", (1 << 31) - 1), ["2147483647", "NF_IP_PRI_LAST"]),
    (("ipv4", "local_in", 1 << 40), ["1099511627776"]),
    (("ipv4", "local_in", "0"), ["'0'", "integer"]),
])
def test_netfilter_refuses_values_naming_them(no_fd_leak, args, words):
    with pybpf.load(OBJ) as obj:
        with pytest.raises(pybpf.Error) as e:
            obj.programs["nf_count"].attach_netfilter(*args)
        for w in words:
            assert w in str(e.value)


def test_netfilter_defrag_priority_rule_matches_the_kernel(no_fd_leak, no_leftovers):
    """pybpf's own checks are the kernel's: the same values straight to BPF_LINK_CREATE
    fail with ERANGE (bpf_nf_check_pf_and_hooks)."""
    with Netns() as ns, pybpf.load(OBJ) as obj:
        prog = obj.programs["nf_count"]
        with pytest.raises(pybpf.Error, match="-400"):
            attach_netfilter(prog, "ipv4", "prerouting", -400, defrag=True)
        for priority, flags in ((-400, 1), (-(1 << 31), 0), ((1 << 31) - 1, 0)):
            attr = LinkCreateAttr(prog_fd=prog.fd, attach_type=AttachType.NETFILTER)
            attr.netfilter.pf, attr.netfilter.hooknum = 2, 0
            attr.netfilter.priority, attr.netfilter.flags = priority, flags
            with ns.entered(), pytest.raises(pybpf.SyscallError) as e:
                os.close(sc.bpf(Cmd.LINK_CREATE, attr))
            assert e.value.errno == errno.ERANGE
        with pytest.raises(pybpf.Error, match="only netfilter programs"):
            obj.programs["steer"].attach_netfilter()
