"""``python -m pybpf load OBJECT --iface IFACE`` for socket filters, as the packet-watching
socket filter lessons (the eunomia tutorial's 23-http sockfilter) run them: an AF_PACKET raw
socket bound to the interface with the program attached (SO_ATTACH_BPF), its ring buffer
records streamed until Ctrl-C, which closes the socket.

programs/sock_iface.bpf.c describes every IPv4 frame in a record and keeps none (returns 0),
so the stack's own traffic is untouched.  The session runs inside a network namespace of
the test's own, on one end of a veth pair.
"""

from __future__ import annotations

import queue
import subprocess
import re
import socket
import threading
import time

import pytest

from conftest import ROOT, program
from test_attach_cgroup import bound, ip4_word, net  # noqa: F401 - fixture
from test_cli_attach import PYTHON, CliSession, udp_received

pytestmark = pytest.mark.kernel

OBJ = program("sock_iface")
DATAGRAMS = 5
PAYLOAD = b"hello"
FIELDS = re.compile(r"(\w+)=(\d+)")


def stdout_lines(proc) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return q


def records_until(q: queue.Queue, predicate, timeout: float = 20) -> list:
    """Records (as dicts of their fields) read until ``predicate(records)`` holds."""
    got, deadline = [], time.monotonic() + timeout
    while not predicate(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; records: {got}")
        try:
            line = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"the CLI's stdout ended; records: {got}")
        fields = {k: int(v) for k, v in FIELDS.findall(line)}
        if "dport" in fields:
            got.append(fields)
    return got


def packet_sockets(ns) -> list:
    """The AF_PACKET sockets of namespace ``ns`` (/proc/net/packet, read from inside it)."""
    return ns.run(["cat", "/proc/net/packet"]).stdout.strip().splitlines()[1:]


def test_iface_attaches_a_socket_filter_to_a_packet_socket_on_it(net, no_fd_leak):
    a, b, iface = net.ns_a, net.ns_b, net.a_if
    rx = bound(a, 4, "192.0.2.1", 7000)
    with b.entered():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("192.0.2.2", 0))
    sport = tx.getsockname()[1]
    try:
        assert packet_sockets(a) == []
        s = CliSession(["load", OBJ, "--iface", iface], ns=a)
        try:
            with s:
                q = stdout_lines(s.proc)
                s.wait_err(lambda line: "attached watch_frames" in line)
                assert f"attached watch_frames (socket) to {iface} (an AF_PACKET socket bound to it)" in s.err
                sockets = packet_sockets(a)
                assert len(sockets) == 1, sockets
                # /proc/net/packet: sk RefCnt Type Proto Iface ...: SOCK_RAW (3), ETH_P_ALL, on the interface
                assert sockets[0].split()[2:5] == ["3", "0003", str(a.ifindex(iface))], sockets
                for _ in range(DATAGRAMS):
                    tx.sendto(PAYLOAD, ("192.0.2.1", 7000))
                ours = lambda r: r["dport"] == 7000 and r["sport"] == sport
                recs = records_until(q, lambda got: sum(map(ours, got)) >= DATAGRAMS)
                mine = [r for r in recs if ours(r)]
                assert len(mine) == DATAGRAMS
                for r in mine:
                    assert r["ifindex"] == a.ifindex(iface) and r["pkt_type"] == 0      # PACKET_HOST
                    assert r["proto"] == 17 and r["len"] == 14 + 20 + 8 + len(PAYLOAD)
                    assert (r["saddr"], r["daddr"]) == (ip4_word("192.0.2.2"), ip4_word("192.0.2.1"))
                # the filter keeps no frame for its socket, and the stack's traffic is untouched
                assert udp_received(rx) == [PAYLOAD] * DATAGRAMS
                code = s.interrupt()
                assert code == 130, s.err
                assert "Traceback" not in s.err
        finally:
            s.proc.stderr.close()     # the process is gone: its reader is at end of file
        assert packet_sockets(a) == []
    finally:
        tx.close()
        rx.close()


def test_a_socket_filter_without_iface_says_what_it_needs():
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", OBJ, "--duration", "0.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "not attached: watch_frames: give --iface IFACE (a packet socket on it)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_iface_is_one_clear_error(net):
    proc = net.ns_a.run([PYTHON, "-m", "pybpf", "load", OBJ, "--iface", "nosuchif0", "--duration", "0.5"],
                        cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert "--iface nosuchif0: no such interface" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
