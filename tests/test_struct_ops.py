"""struct_ops: a BPF TCP congestion control of our own (programs/tcp_cc.bpf.c).

Offline: the kernel value's layout (bpf_struct_ops_tcp_congestion_ops.data) against the
kernel's BTF.  Kernel: registered (.struct_ops by map update, .struct_ops.link by a BPF
link), listed in tcp_available_congestion_control, chosen with TCP_CONGESTION on a loopback
connection inside a namespace of the test's own, its callbacks counted while 4 MB go
through, swapped by link.update(map), and gone after close.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

import pybpf
from pybpf.kernel.btf import vmlinux_btf
from pybpf.kernel.constants import MapType, ProgType
from pybpf.loader.struct_ops import create_attr, layout, plan
from pybpf.spec.btf import Kind

from netns import Netns, leftovers
from conftest import ROOT, program

OBJ = Path(__file__).resolve().parent.parent / "programs" / "tcp_cc.o"
AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
PAYLOAD = 4 << 20


def available() -> list:
    with open(AVAILABLE) as f:
        return f.read().split()


def kernel_member(kbtf, struct, name):
    for i, m in enumerate(struct.members):
        if m.name == name:
            return i, m
    raise AssertionError(name)


# -- offline ------------------------------------------------------------------------------------

def test_spec_has_three_struct_ops_maps():
    spec = pybpf.open(OBJ)
    assert spec.struct_ops == {"cc_plain": (".struct_ops", "tcp_congestion_ops"),
                               "cc_link": (".struct_ops.link", "tcp_congestion_ops"),
                               "cc_link_v2": (".struct_ops.link", "tcp_congestion_ops")}
    for name, flags in (("cc_plain", 0), ("cc_link", 1 << 13), ("cc_link_v2", 1 << 13)):
        m = spec.maps[name]
        assert (m.type, m.key_size, m.max_entries, m.flags) == (MapType.STRUCT_OPS, 4, 1, flags)
        assert not m.internal
    assert spec.maps["cc_link_v2"].struct_ops.funcs["cong_avoid"] == "pybpf_cong_avoid_v2"
    assert spec.maps["cc_plain"].struct_ops.funcs == {"init": "pybpf_init", "ssthresh": "pybpf_ssthresh",
                                                      "cong_avoid": "pybpf_cong_avoid",
                                                      "undo_cwnd": "pybpf_undo_cwnd"}


def test_value_layout_follows_the_kernel_btf():
    kbtf = vmlinux_btf()
    spec = pybpf.open(OBJ)
    wrapper = kbtf.by_name("bpf_struct_ops_tcp_congestion_ops", Kind.STRUCT)[0]
    data = next(m for m in wrapper.members if m.name == "data")
    kern = kbtf.resolve(data.type_id)
    assert kern.name == "tcp_congestion_ops"
    lay = layout(spec.maps["cc_plain"], spec.btf, kbtf)
    assert (lay.value_type_id, lay.value_size, lay.type_id, lay.data_offset) == \
        (wrapper.id, wrapper.size, kern.id, data.offset)
    # each function pointer at data + its kernel offset, with its kernel member index
    for member, prog in spec.maps["cc_plain"].struct_ops.funcs.items():
        idx, km = kernel_member(kbtf, kern, member)
        assert lay.funcs[member] == (data.offset + km.offset, idx, prog)
    # data members copied by name: the name at data + offsetof(name)
    _, name_m = kernel_member(kbtf, kern, "name")
    start = data.offset + name_m.offset
    assert lay.template[start:start + 9] == b"pybpf_cc\0"
    # the value with fds: each fd as a u64 at its slot, nothing else changed
    fds = {p: 100 + i for i, p in enumerate(sorted(set(spec.maps["cc_plain"].struct_ops.funcs.values())))}
    value = lay.value(fds)
    assert len(value) == wrapper.size
    for member, (off, _, prog) in lay.funcs.items():
        assert int.from_bytes(value[off:off + 8], "little") == fds[prog]
        value[off:off + 8] = bytes(8)
    assert bytes(value) == lay.template
    # the map as created: libbpf's attributes
    a = create_attr(spec.maps["cc_plain"], lay, 7)
    assert (a.map_type, a.key_size, a.value_size, a.max_entries, a.btf_fd, a.btf_key_type_id,
            a.btf_value_type_id, a.btf_vmlinux_value_type_id) == \
        (MapType.STRUCT_OPS, 4, wrapper.size, 1, 7, 0, 0, wrapper.id)


def test_programs_get_struct_id_and_member_index():
    kbtf = vmlinux_btf()
    spec = pybpf.open(OBJ)
    kern = kbtf.by_name("tcp_congestion_ops", Kind.STRUCT)[0]
    _, progs = plan(spec, kbtf)
    for prog, member in (("pybpf_init", "init"), ("pybpf_ssthresh", "ssthresh"),
                         ("pybpf_cong_avoid", "cong_avoid"), ("pybpf_cong_avoid_v2", "cong_avoid"),
                         ("pybpf_undo_cwnd", "undo_cwnd")):
        assert progs[prog] == (kern.id, kernel_member(kbtf, kern, member)[0])
        req = pybpf.loader.program_load_request(spec, prog)
        assert req.attr.prog_type == ProgType.STRUCT_OPS
        assert (req.attr.attach_btf_id, req.attr.expected_attach_type) == progs[prog]


# -- kernel -------------------------------------------------------------------------------------

def _transfer(ns: Netns, algo: bytes) -> tuple[int, bytes]:
    """Send PAYLOAD bytes over lo in ``ns`` from a socket using ``algo``; returns (bytes
    received, the algorithm the sender's socket reports)."""
    received = [0]
    with ns.entered():
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        srv.settimeout(10)
        cli.settimeout(10)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def receive():
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                while received[0] < PAYLOAD:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    received[0] += len(chunk)

        t = threading.Thread(target=receive, daemon=True)
        t.start()
        cli.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, algo)
        cli.connect(srv.getsockname())
        chosen = cli.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0")
        block = bytes(1 << 16)
        for _ in range(PAYLOAD // len(block)):
            cli.sendall(block)
        cli.shutdown(socket.SHUT_WR)
        t.join(20)
        assert not t.is_alive()
    finally:
        cli.close()
        srv.close()
    return received[0], chosen


def counters(obj) -> dict:
    return {n: obj.variables[n].get() for n in ("init_calls", "ssthresh_calls", "cong_avoid_calls",
                                                 "cong_avoid_v2_calls", "undo_calls")}


@pytest.mark.kernel
def test_struct_ops_map_registers_a_congestion_control(no_fd_leak, not_supported_skip):
    assert "pybpf_cc" not in available()
    with not_supported_skip:
        obj = pybpf.open(OBJ).load()
    try:
        with Netns() as ns:
            with not_supported_skip:
                reg = obj.maps["cc_plain"].attach_struct_ops()
            assert "pybpf_cc" in available()
            n, chosen = _transfer(ns, b"pybpf_cc")
            assert (n, chosen) == (PAYLOAD, b"pybpf_cc")
            c = counters(obj)
            assert c["init_calls"] >= 1          # the connecting socket
            assert c["cong_avoid_calls"] > 0     # acks in slow start
            assert c["cong_avoid_v2_calls"] == 0
            with pytest.raises(pybpf.Error, match="registered already"):
                obj.maps["cc_plain"].attach_struct_ops()
            reg.close()
            reg.close()                          # idempotent
            assert "pybpf_cc" not in available()
    finally:
        obj.close()
    assert "pybpf_cc" not in available()
    assert leftovers() == []


@pytest.mark.kernel
def test_struct_ops_link_registers_and_update_swaps_the_map(no_fd_leak, not_supported_skip):
    assert "pybpf_cc_link" not in available()
    with not_supported_skip:
        obj = pybpf.open(OBJ).load()
    try:
        with Netns() as ns:
            with not_supported_skip:
                link = obj.maps["cc_link"].attach_struct_ops()
            assert "pybpf_cc_link" in available()
            info = link.info()
            assert info.type.name == "STRUCT_OPS"
            assert info.map_id == obj.maps["cc_link"].id
            assert _transfer(ns, b"pybpf_cc_link") == (PAYLOAD, b"pybpf_cc_link")
            before = counters(obj)
            assert before["cong_avoid_calls"] > 0 and before["cong_avoid_v2_calls"] == 0

            link.update(obj.maps["cc_link_v2"])
            assert link.info().map_id == obj.maps["cc_link_v2"].id
            assert "pybpf_cc_link" in available()
            assert _transfer(ns, b"pybpf_cc_link") == (PAYLOAD, b"pybpf_cc_link")
            after = counters(obj)
            assert after["cong_avoid_v2_calls"] > 0                  # the new map's program runs
            assert after["cong_avoid_calls"] == before["cong_avoid_calls"]   # the old one no more
            # a .struct_ops map is no BPF_F_LINK map: refused by name
            with pytest.raises(pybpf.Error, match="not .struct_ops.link"):
                link.update(obj.maps["cc_plain"])
            link.close()
            assert "pybpf_cc_link" not in available()
    finally:
        obj.close()
    assert "pybpf_cc_link" not in available()
    assert leftovers() == []


@pytest.mark.kernel
def test_object_close_unregisters(no_fd_leak):
    obj = pybpf.open(OBJ).load()
    with obj:
        reg = obj.maps["cc_plain"].attach_struct_ops()
        link = obj.maps["cc_link"].attach_struct_ops()
        assert {"pybpf_cc", "pybpf_cc_link"} <= set(available())
    assert reg.closed and link.closed
    assert not {"pybpf_cc", "pybpf_cc_link"} & set(available())


def _available() -> list[str]:
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        return f.read().split()


def test_obj_attach_registers_the_struct_ops_maps(no_fd_leak):
    """Object.attach() registers struct_ops maps as libbpf's skeleton attach does; their
    programs are not listed as left unattached."""
    with pybpf.load(program("struct_ops_test")) as obj:
        assert "pybpf_ca" not in _available()
        made = obj.attach()
        assert "pybpf_ca" in _available()
        assert not made.not_attached, made.not_attached
        assert [type(link).__name__ for link in made] == ["StructOpsLink"]
    assert "pybpf_ca" not in _available()


def test_cli_load_registers_struct_ops_and_unregisters_on_ctrl_c():
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "pybpf", "load", program("struct_ops_test")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("pybpf: registered struct_ops map pybpf_ca (struct tcp_congestion_ops)"), line
        assert "pybpf_ca" in _available()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "pybpf_ca" not in _available()
