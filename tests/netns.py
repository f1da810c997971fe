"""Networks the tests build for themselves: network namespaces and veth pairs.

Rules (README, "Network tests"): traffic only between namespaces a test creates,
addresses from 192.0.2.0/24 and 2001:db8::/32, no default route, every loop
bounded, and everything removed afterwards.  ``ip`` (iproute2) does the set-up.

    with Netns() as a, Netns() as b:
        veth = veth_pair(a, b)                  # a: 192.0.2.1, b: 192.0.2.2
        b.run([sys.executable, "-c", receiver])  # a process inside b
        with a.entered():                        # this thread inside a (setns)
            ...

A namespace's name starts with ``pybpf-t``, so :func:`leftovers` can tell whether a
test left one behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess

PREFIX = "pybpf-t"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Netns:
    """A network namespace of the test's own, with ``lo`` up; deleted on close."""

    def __init__(self, name: str | None = None):
        self.name = name or f"{PREFIX}{os.getpid()}-{next(_counter)}"
        ip("netns", "add", self.name)
        self.path = os.path.join(NETNS_DIR, self.name)
        ip("-n", self.name, "link", "set", "lo", "up")

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.name and os.path.exists(self.path):
            ip("netns", "delete", self.name, check=False)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return ip("-n", self.name, *args, check=check)

    def run(self, argv: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace and wait for it (bounded by ``timeout``)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], timeout=timeout, **kwargs)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside the namespace; the caller waits for it (with a timeout)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def ifindex(self, iface: str) -> int:
        """The ifindex of ``iface`` inside the namespace."""
        import socket
        with self.entered():
            return socket.if_nametoindex(iface)

    @contextlib.contextmanager
    def entered(self):
        """This thread inside the namespace for the block (setns), then back where it was.
        Sockets made in the block stay in the namespace."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield self
            finally:
                _setns(back)
        finally:
            os.close(target)
            os.close(back)


class Veth:
    """Two ends of a veth pair: ``a`` (name ``a_if`` in namespace ``ns_a``) and ``b``."""

    def __init__(self, ns_a: Netns, a_if: str, addr_a: str, ns_b: Netns, b_if: str, addr_b: str,
                 addr6_a: str, addr6_b: str):
        self.ns_a, self.a_if, self.addr_a, self.addr6_a = ns_a, a_if, addr_a, addr6_a
        self.ns_b, self.b_if, self.addr_b, self.addr6_b = ns_b, b_if, addr_b, addr6_b


def veth_pair(ns_a: Netns, ns_b: Netns, addr_a: str = "192.0.2.1", addr_b: str = "192.0.2.2",
              addr6_a: str = "2001:db8::1", addr6_b: str = "2001:db8::2") -> Veth:
    """A veth pair between two namespaces, both ends up, with /24 and /64 addresses from
    the documentation ranges and no default route.  It goes with the namespaces."""
    n = next(_counter)
    a_if, b_if = f"pva{n}", f"pvb{n}"
    ip("link", "add", a_if, "netns", ns_a.name, "type", "veth", "peer", "name", b_if, "netns", ns_b.name)
    for ns, iface, addr, addr6 in ((ns_a, a_if, addr_a, addr6_a), (ns_b, b_if, addr_b, addr6_b)):
        ns.ip("addr", "add", f"{addr}/24", "dev", iface)
        ns.ip("-6", "addr", "add", f"{addr6}/64", "dev", iface, "nodad")
        ns.ip("link", "set", iface, "up")
    return Veth(ns_a, a_if, addr_a, ns_b, b_if, addr_b, addr6_a, addr6_b)


def leftovers() -> list[str]:
    """Namespaces of the tests (name ``pybpf-t...``) that still exist."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []
