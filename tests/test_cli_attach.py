"""``python -m pybpf load --iface IFACE --cgroup PATH``: the XDP and tc programs of the object
attach to the interface, its cgroup programs to the cgroup, they act while the session runs,
and after Ctrl-C the interface has no XDP/tc program and the cgroup no program.  An object
none of whose programs could attach is an error, not a silent session.

The --iface sessions run inside a network namespace of the test's own (``ip netns exec``),
on one end of a veth pair; traffic goes between that namespace and the other end's.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import ProgInfo, ProgQueryAttr
from pybpf.kernel.constants import AttachType, Cmd

from conftest import ROOT, program
from netns import Netns
from test_attach_cgroup import (SOCKET_BODY, attached_ids, bound, cgroup, cgroup_progs,  # noqa: F401 - fixtures
                                in_cgroup, net)

pytestmark = pytest.mark.kernel

PYTHON = sys.executable
OBJ = program("net_cgroup")
CGROUP_PROGRAMS = 25        # programs/net_cgroup.bpf.c: all but xdp_count and tc_count


class CliSession:
    """``python -m pybpf ARGS`` (inside ``ns`` if given) with its stderr read line by line;
    killed at the end if still running."""

    def __init__(self, args: list, ns: Netns | None = None, netns_path: str | None = None):
        argv = [PYTHON, "-m", "pybpf", *args]
        kwargs = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if ns is not None:
            self.proc = ns.popen(argv, **kwargs)
        elif netns_path is not None:
            self.proc = subprocess.Popen(["nsenter", f"--net={netns_path}", *argv], **kwargs)
        else:
            self.proc = subprocess.Popen(argv, **kwargs)
        self.err_lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def err(self) -> str:
        return "\n".join(self.err_lines)

    def wait_err(self, predicate, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.err_lines.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such stderr line; got {self.err!r} (exit {self.proc.poll()})")

    def interrupt(self, timeout: float = 20) -> int:
        """Ctrl-C; returns the exit code once the session ended (its stderr all read)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout)
        while True:
            line = self._lines.get(timeout=5)
            if line is None:
                break
            self.err_lines.append(line)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:        # a failed test: the session must not outlive it
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()


def prog_name(prog_id: int) -> str:
    fd = sc.get_fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id)
    try:
        return sc.obj_get_info_by_fd(fd, ProgInfo()).name.decode()
    finally:
        os.close(fd)


def iface_progs(ns: Netns, iface: str) -> dict:
    """What runs on ``iface`` inside ``ns``: the XDP program (``ip -d link``), the tcx ingress
    and egress programs (BPF_PROG_QUERY on the ifindex, from inside the namespace; this
    bpftool does not list tcx) and the tc filters of the clsact hooks (``tc filter show``)."""
    found = {"xdp": re.findall(r"prog/xdp id \d+ name (\S+)", ns.ip("-d", "link", "show", "dev", iface).stdout)}
    ifindex = ns.ifindex(iface)
    for direction, atype in (("ingress", AttachType.TCX_INGRESS), ("egress", AttachType.TCX_EGRESS)):
        ids = (ctypes.c_uint32 * 64)()
        attr = ProgQueryAttr(target_ifindex=ifindex, attach_type=atype, prog_ids=ctypes.addressof(ids), prog_cnt=64)
        with ns.entered():
            sc.bpf(Cmd.PROG_QUERY, attr)
        found[f"tcx_{direction}"] = [prog_name(i) for i in ids[:attr.prog_cnt]]
        found[f"tc_{direction}"] = ns.run(["tc", "filter", "show", "dev", iface, direction]).stdout.strip()
    return found


NOTHING = {"xdp": [], "tcx_ingress": [], "tc_ingress": "", "tcx_egress": [], "tc_egress": ""}


def udp_received(rx: socket.socket, timeout: float = 1.0) -> list:
    rx.settimeout(timeout)
    got = []
    try:
        while True:
            got.append(rx.recv(100))
    except socket.timeout:
        return got


def test_iface_attaches_xdp_and_tc_and_ctrl_c_removes_them(net):
    a, b, iface = net.ns_a, net.ns_b, net.a_if
    rx_drop = bound(a, 4, "192.0.2.1", 6600)
    rx_pass = bound(a, 4, "192.0.2.1", 6601)
    with b.entered():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with CliSession(["load", OBJ, "--iface", iface, "--set", "xdp_drop_port=6600"], ns=a) as s:
            s.wait_err(lambda line: "Ctrl-C to unload" in line)
            assert f"pybpf: attached xdp_count (xdp) to {iface}" in s.err
            assert "pybpf: attached tc_count (tc/ingress) to" in s.err
            assert "not attached:" in s.err and "give --cgroup PATH" in s.err
            progs = iface_progs(a, iface)
            assert progs["xdp"] == ["xdp_count"], progs
            assert progs["tcx_ingress"] == ["tc_count"] or "tc_count" in progs["tc_ingress"], progs
            # the XDP program acts: UDP to port 6600 is dropped, to 6601 it passes
            for _ in range(3):
                tx.sendto(b"dropped", ("192.0.2.1", 6600))
            tx.sendto(b"passed", ("192.0.2.1", 6601))
            assert udp_received(rx_pass) == [b"passed"]
            assert udp_received(rx_drop) == []
            code = s.interrupt()
            assert code == 130, s.err
            assert "Traceback" not in s.err
        # nothing left on the interface
        assert iface_progs(a, iface) == NOTHING
        tx.sendto(b"after", ("192.0.2.1", 6600))
        assert udp_received(rx_drop) == [b"after"]
    finally:
        for sock in (tx, rx_drop, rx_pass):
            sock.close()


def test_cgroup_attaches_cgroup_programs_and_ctrl_c_detaches_them(cgroup):
    with CliSession(["load", OBJ, "--cgroup", cgroup, "--set", "deny_sock_type=2"]) as s:
        s.wait_err(lambda line: "Ctrl-C to unload" in line)
        assert "pybpf: not attached: xdp_count, tc_count: give --iface IFACE" in s.err, s.err
        assert f"pybpf: attached connect4 (cgroup/connect4) to {cgroup}" in s.err
        assert len(attached_ids(cgroup)) == CGROUP_PROGRAMS
        assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "EPERM"}       # sock_create_deny acts
        code = s.interrupt()
        assert code == 130, s.err
        assert "Traceback" not in s.err
    assert cgroup_progs(cgroup) == [] and attached_ids(cgroup) == []
    assert in_cgroup(cgroup, SOCKET_BODY) == {"udp": "ok"}


def test_iface_and_cgroup_together(net, cgroup):
    """Both at once.  The session enters the namespace with nsenter --net: `ip netns exec`
    mounts the namespace's own /sys, which has no cgroup hierarchy to name with --cgroup."""
    a, iface = net.ns_a, net.a_if
    with CliSession(["load", OBJ, "--iface", iface, "--cgroup", cgroup], netns_path=a.path) as s:
        s.wait_err(lambda line: "Ctrl-C to unload" in line)
        assert "not attached" not in s.err
        assert len(attached_ids(cgroup)) == CGROUP_PROGRAMS
        progs = iface_progs(a, iface)
        assert progs["xdp"] == ["xdp_count"], progs
        assert progs["tcx_ingress"] == ["tc_count"] or "tc_count" in progs["tc_ingress"], progs
        assert s.interrupt() == 130, s.err
    assert cgroup_progs(cgroup) == [] and attached_ids(cgroup) == []
    assert iface_progs(a, iface) == NOTHING


def test_nothing_attached_is_an_error_not_a_silent_session():
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", OBJ], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "give --cgroup PATH" in proc.stderr and "give --iface IFACE" in proc.stderr
    assert "pybpf: error: nothing attached" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_targets_are_one_clear_error(net, tmp_path):
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", OBJ, "--cgroup", str(tmp_path / "none")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--cgroup" in proc.stderr and "no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = net.ns_a.run([PYTHON, "-m", "pybpf", "load", OBJ, "--iface", "nosuchif0"], cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "nosuchif0" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", OBJ, "--no-attach", "--cgroup", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--no-attach" in proc.stderr


def test_iface_for_an_object_without_xdp_or_tc_says_so(net):
    proc = net.ns_a.run([PYTHON, "-m", "pybpf", "load", program("user_ringbuf"), "--iface", "lo",
                         "--duration", "0.5"], cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--iface lo:" in proc.stderr and "has no XDP or tc program" in proc.stderr
