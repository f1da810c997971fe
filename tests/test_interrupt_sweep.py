"""A real SIGINT at every kernel call of an attach cycle: nothing stays in the kernel.

One cycle attaches what the library cycle of tools/sigint_trials.py does not: tcx and
legacy tc (clsact + cls_bpf over netlink) and XDP on a veth end in a namespace of the
test's own, cgroup programs by link and by BPF_PROG_ATTACH ("multi", "override"), an
sk_lookup netns link swapped to another program, a netfilter link, sockmap programs by
link and by BPF_PROG_ATTACH, a load with pin_root= (two maps pinned by name), and pins of a
map, a program and a link, removed again.

The cycle runs once for each of its calls that made or changed something (every bpf()
that succeeded, every rtnetlink request, every unlink of a pin), with a SIGINT sent just as
that call returned.  The KeyboardInterrupt must reach the caller; once the caller has done
what a user does (unpin what says it is pinned, close everything), the process holds no
BPF fd it did not hold before, bpftool sees nothing on the device, the namespace or the
cgroup, the clsact qdisc is gone and the pin directory is empty.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback

import pytest

import pybpf
from pybpf.kernel import netlink as nl
from pybpf.kernel import syscall as sc
from pybpf.kernel.constants import Cmd
from pybpf.links.cgroup import cgroup2_mount
from pybpf.links.sockmap import attach_sockmap

from conftest import bpftool_json, open_fds, program
from netns import Netns, leftovers, veth_pair

pytestmark = pytest.mark.kernel

BPFFS = "/sys/fs/bpf"


def _bpf_fds() -> dict:
    """anon-inode fds of this process by kind (bpf-map, bpf-prog, bpf_link...)."""
    kinds: dict = {}
    for fd in open_fds():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:"):
            kinds[target] = kinds.get(target, 0) + 1
    return kinds


class _Place:
    """Where the cycle attaches: two namespaces with a veth pair, a cgroup, a pin directory;
    ``state()`` is what the kernel shows of them, through bpftool and ip."""

    def __init__(self, a: Netns, b: Netns, cgroup: str, pins: str):
        self.a, self.b = a, b
        self.net = veth_pair(a, b)
        self.cgroup, self.pins = cgroup, pins

    def state(self) -> dict:
        bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
        net = json.loads(self.b.run([bpftool, "-j", "net", "show"], check=True).stdout)[0]
        qdiscs = self.b.run(["tc", "qdisc", "show", "dev", self.net.b_if], check=True).stdout
        return {"net": {k: v for k, v in net.items() if v}, "clsact": "clsact" in qdiscs,
                "cgroup": bpftool_json("cgroup", "show", self.cgroup), "pins": sorted(os.listdir(self.pins))}


def _remove_tree(path: str, keep_top: bool = False, unlink=os.unlink) -> None:
    """rm -r of a directory of pins (``keep_top``: empty it only)."""
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            unlink(os.path.join(top, name))
        for name in dirs:
            os.rmdir(os.path.join(top, name))
    if not keep_top:
        os.rmdir(path)


@pytest.fixture
def place():
    before = leftovers()
    root = cgroup2_mount()
    cgroup = os.path.join(root, f"pybpf-t{os.getpid()}-sweep")
    os.mkdir(cgroup)
    pins = tempfile.mkdtemp(dir=BPFFS, prefix="pybpf-t-")
    try:
        with Netns() as a, Netns() as b:
            yield _Place(a, b, cgroup, pins)
    finally:
        _remove_tree(pins)
        os.rmdir(cgroup)
    assert leftovers() == before


def _cycle(place: _Place, held: list, pinned: list) -> None:
    b, iface = place.net.ns_b, place.net.b_if
    tc = pybpf.load(program("net_tc"))
    held.append(tc)
    with b.entered():
        held.append(tc.programs["tc_ingress"].attach_tc(iface, "ingress"))                 # tcx
        held.append(tc.programs["tc_egress"].attach_tc(iface, "egress", legacy=True))      # clsact made
        held.append(tc.programs["tc_pass"].attach_tc(iface, "ingress", legacy=True))       # clsact shared
    xdp = pybpf.load(program("net_xdp"))
    held.append(xdp)
    with b.entered():
        held.append(xdp.programs["xdp_count_drop"].attach_xdp(iface))
    cg = pybpf.load(program("net_cgroup"))
    held.append(cg)
    held.append(cg.programs["skb_ingress"].attach_cgroup(place.cgroup))
    held.append(cg.programs["skb_egress"].attach_cgroup(place.cgroup, flags="multi"))
    held.append(cg.programs["sock_create_deny"].attach_cgroup(place.cgroup, flags="override"))
    s1, s2 = pybpf.load(program("net_sock")), None
    held.append(s1)
    s2 = pybpf.load(program("net_sock"))
    held.append(s2)
    lookup = s1.programs["steer"].attach_netns(b.path)
    held.append(lookup)
    lookup.update(s2.programs["steer"])
    with b.entered():
        held.append(s1.programs["nf_count"].attach_netfilter("ipv4", "local_in", 0))
    held.append(attach_sockmap(s1.programs["skb_verdict"], s1.maps["skb_socks"]))
    held.append(attach_sockmap(s2.programs["skb_verdict"], s2.maps["skb_socks"], legacy=True))
    root = os.path.join(place.pins, "root")
    pt = pybpf.load(program("pin_test"), pin_root=root)         # two maps pinned by name
    held.append(pt)
    by_name = [pt.maps["shared"], pt.maps["shared_seen"]]
    pinned.extend(by_name)
    for m in by_name:
        m.unpin()
    os.rmdir(root)
    things = (s1.maps["counters"], s1.programs["drop_ff"], lookup)
    for name, thing in zip("mpl", things):
        pinned.append(thing)
        thing.pin(os.path.join(place.pins, name))
    for thing in things:
        thing.unpin()
    pinned.clear()
    while held:
        held[-1].close()        # a with block's way: held until close() returns
        held.pop()


def _clean_up(place: _Place, held: list, pinned: list) -> list:
    """What a user does after Ctrl-C: unpin what says it is pinned (and remove the emptied
    pin_root), close everything (twice, as allowed).  Returns what raised."""
    errors = []
    for thing in pinned:
        if thing.pin_path is not None:
            try:
                thing.unpin()
            except BaseException as e:
                errors.append(f"unpin {thing!r}: {type(e).__name__}: {e}")
    pinned.clear()
    root = os.path.join(place.pins, "root")
    if os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    for _ in range(2):
        for r in reversed(held):
            try:
                r.close()
            except BaseException as e:
                errors.append(f"close {r!r}: {type(e).__name__}: {e}")
    held.clear()
    gc.collect()
    return errors


def test_sigint_at_every_call_of_an_attach_cycle_leaves_nothing(place, monkeypatch, no_fd_leak):
    """The module's sweep: 151 calls on this kernel, among them LINK_CREATE, PROG_ATTACH,
    LINK_UPDATE, OBJ_PIN, unpins and rtnetlink requests (before pins were recorded in the
    section that makes them, the trials at BPF_OBJ_PIN left their pins; without the loader's
    undo of pin_root pins, the trials after its first pin leave them)."""
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    count, target, fired = [0], [-1], [None]

    def after(result, what):
        count[0] += 1               # before the signal: its KeyboardInterrupt leaves at once
        if count[0] - 1 == target[0]:
            fired[0] = what
            os.kill(os.getpid(), signal.SIGINT)
        return result

    real_bpf, real_request, real_unlink = sc._bpf_syscall, nl.RtNetlink.request, os.unlink

    def bpf(nr, cmd, addr, size):
        r = real_bpf(nr, cmd, addr, size)
        return after(r, f"bpf({Cmd(cmd).name})") if r >= 0 else r

    def request(self, msg_type, *args, **kwargs):
        return after(real_request(self, msg_type, *args, **kwargs), f"rtnetlink {msg_type}")

    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        if os.fspath(path).startswith(place.pins):
            after(None, "unlink of a pin")

    monkeypatch.setattr(sc, "_bpf_syscall", bpf)
    monkeypatch.setattr(nl.RtNetlink, "request", request)
    monkeypatch.setattr(os, "unlink", unlink)
    held, pinned, bad = [], [], []
    try:
        _cycle(place, held, pinned)             # warm-up: kernel facts, lazy imports
        gc.collect()
        empty = place.state()
        assert empty == {"net": {}, "clsact": False, "cgroup": [], "pins": []}, empty   # a whole cycle cleans up
        fds = _bpf_fds()
        count[0] = 0
        _cycle(place, held, pinned)
        total = count[0]
        kinds = {}
        for n in range(total):
            count[0], target[0], fired[0], where = 0, n, None, None
            try:
                _cycle(place, held, pinned)
            except KeyboardInterrupt:
                frames = [f for f in traceback.extract_tb(sys.exc_info()[2]) if "pybpf" in f.filename]
                where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            errors = _clean_up(place, held, pinned)
            kinds[fired[0]] = kinds.get(fired[0], 0) + 1
            left_fds = {k: v - fds.get(k, 0) for k, v in _bpf_fds().items() if v != fds.get(k, 0)}
            state = place.state()
            if where is None or errors or left_fds or state != empty:
                bad.append({"call": n, "what": fired[0], "interrupted at": where, "close": errors,
                            "fds": left_fds, "kernel": state})
                _remove_tree(place.pins, keep_top=True, unlink=real_unlink)
    finally:
        signal.signal(signal.SIGINT, old_handler)
        _clean_up(place, held, pinned)
    assert total >= 60, (total, kinds)
    for what in ("bpf(LINK_CREATE)", "bpf(PROG_ATTACH)", "bpf(OBJ_PIN)", "bpf(LINK_UPDATE)", "unlink of a pin"):
        assert what in kinds, (what, kinds)
    assert any(k.startswith("rtnetlink") for k in kinds), kinds
    assert not bad, bad
