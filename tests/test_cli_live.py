"""The CLI's live-object commands (issue 13, pybpf/cli_live.py): ``prog|map|link list/show``
against ``bpftool -j`` and bpftool's plain output run at the same moment (whole output parsed,
and byte for byte), ``map dump --json`` byte for byte, ``prog dump`` = bpftool prog dump xlated,
``map peek`` on a ring filled by test_run (decoded by the pybpf:record= tag, discards shown,
nothing consumed: a RingBuffer afterwards gets every record), ``pin OBJECT DIR`` then opening
the pins, and the one-line error without CAP_SYS_ADMIN.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import uuid

import pytest

import pybpf
from conftest import ROOT, program
from test_live import BPFTOOL, normalized
from ringbuf_common import produce

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(not os.path.exists(BPFTOOL), reason="needs bpftool")]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "pybpf", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def tool(*args: str) -> str:
    out = subprocess.run([BPFTOOL, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def same_bytes(ours_args: tuple, tool_args: tuple, attempts: int = 6) -> tuple[str, str]:
    """Our output and bpftool's for the same object; retried while they differ, because
    bpftool's loaded_at (two clocks read one after the other, then floored to seconds) may change
    by one second from one run to the next when a load time sits on a second boundary.  The last pair if they never agree."""
    for _ in range(attempts):
        ours, theirs = cli(*ours_args).stdout, tool(*tool_args)
        if ours == theirs:
            break
    return ours, theirs


def own(records: list, ids: set) -> list:
    return [r for r in records if r["id"] in ids]


def close_enough(ours: list, theirs: list) -> None:
    assert [r["id"] for r in ours] == [r["id"] for r in theirs]
    for a, b in zip(ours, theirs):
        if "loaded_at" in b:
            assert abs(a["loaded_at"] - b["loaded_at"]) <= 1
            a = dict(a, loaded_at=b["loaded_at"])
        assert a == b


@pytest.fixture
def pin_test():
    with pybpf.load(program("pin_test")) as obj:
        with obj.programs["count_getppid"].attach() as link:
            yield obj, link


def test_list_and_show_match_bpftool(pin_test, no_fd_leak):
    obj, link = pin_test
    progs = {p.id for p in obj.programs.values()}
    maps = {m.id for m in obj.maps.values()}
    link_id = link.info().id
    # listings: the whole JSON parsed, restricted to our ids (others load and unload meanwhile)
    ours = own(json.loads(cli("prog", "list", "--json").stdout), progs)
    theirs = own([normalized("prog", r) for r in json.loads(tool("-j", "prog", "list"))], progs)
    assert len(ours) == 3
    close_enough(ours, theirs)
    ours = own(json.loads(cli("map", "list", "--json").stdout), maps)
    theirs = own([normalized("map", r) for r in json.loads(tool("-j", "map", "list"))], maps)
    assert len(ours) == len(maps) and ours == theirs
    ours = own(json.loads(cli("link", "list", "--json").stdout), {link_id})
    theirs = own([normalized("link", r) for r in json.loads(tool("-j", "link", "list"))], {link_id})
    assert ours == theirs == [{"id": link_id, "type": "perf_event", "prog_id": obj.programs["count_getppid"].id}]
    # show: byte for byte, JSON and plain
    for pid in progs:
        ours, theirs = same_bytes(("prog", "show", str(pid), "--json"), ("-j", "prog", "show", "id", str(pid)))
        assert ours == theirs
        ours, theirs = same_bytes(("prog", "show", str(pid)), ("prog", "show", "id", str(pid)))
        assert ours == theirs and "\tbtf_id " in ours
    for mid in maps:
        assert cli("map", "show", str(mid), "--json").stdout == tool("-j", "map", "show", "id", str(mid))
        assert cli("map", "show", str(mid)).stdout == tool("map", "show", "id", str(mid))
    assert cli("link", "show", str(link_id), "--json").stdout == tool("-j", "link", "show", "id", str(link_id))
    assert cli("link", "show", str(link_id)).stdout == tool("link", "show", "id", str(link_id))


def test_map_dump_json_is_bpftools_byte_for_byte(pin_test, no_fd_leak):
    obj, _ = pin_test
    obj.maps["shared"][1] = {"total": 7, "writer": 2, "writes": 3}
    obj.maps["shared_seen"][5] = 99
    from pybpf.loader import possible_cpus
    obj.maps["batch_percpu"][3] = list(range(10, 10 + possible_cpus()))
    for _ in range(4):
        os.getppid()            # count_getppid counts into .bss
    for name in ("shared", "shared_seen", "batch_percpu", "batch_points", "locked", "pin_test.bss"):
        mid = str(obj.maps[name].id)
        ours = cli("map", "dump", mid, "--json").stdout
        assert ours == tool("-j", "map", "dump", "id", mid), name
    dumped = json.loads(cli("map", "dump", str(obj.maps["shared"].id), "--json").stdout)
    assert dumped[1]["formatted"] == {"key": 1, "value": {"total": 7, "writer": 2, "writes": 3}}
    bss = json.loads(cli("map", "dump", str(obj.maps["pin_test.bss"].id), "--json").stdout)
    assert bss[0]["formatted"]["value"][".bss"][0]["getppid_calls"] >= 4
    plain = cli("map", "dump", str(obj.maps["shared_seen"].id)).stdout
    assert plain == "key: 5  value: 99\nFound 1 element\n"


def test_prog_dump_is_bpftools_xlated(pin_test, no_fd_leak):
    obj, _ = pin_test
    for name in ("write_shared", "bump_locked"):
        pid = str(obj.programs[name].id)
        ours = cli("prog", "dump", pid).stdout
        assert ours == tool("prog", "dump", "xlated", "id", pid)
        assert f"int {name}(" in ours and "; " in ours          # function name and source lines


def test_map_peek_shows_records_without_consuming_them(no_fd_leak):
    with pybpf.load(program("bench_ringbuf")) as obj:
        ring = obj.maps["rb"]
        assert obj.programs["produce"].test_run(ctx=struct.pack("<IIQ", 5, 40, 0)).retval == 5
        first = cli("map", "peek", str(ring.id), "--json").stdout.splitlines()
        assert cli("map", "peek", str(ring.id), "--json").stdout.splitlines() == first   # nothing moved
        records = [json.loads(line) for line in first]
        assert [r["state"] for r in records] == ["committed"] * 5
        assert [r["pos"] for r in records] == [32 * i for i in range(5)]
        # decoded through the pybpf:record=struct bench_event tag the kernel keeps in the BTF
        assert [r["value"]["seq"] for r in records] == [40, 41, 42, 43, 44]
        assert [r["value"]["value"] for r in records] == [0, 3, 6, 9, 12]
        assert [r["value"] for r in json.loads("[" + ",".join(
            cli("map", "peek", str(ring.id), "--count", "2", "--json").stdout.splitlines()) + "]")] == \
            [r["value"] for r in records[:2]]
        text = cli("map", "peek", str(ring.id)).stdout.splitlines()
        assert text[0] == f"map {ring.id} (rb): consumer_pos 0  producer_pos 160  160 bytes unconsumed"
        assert text[1].startswith('0: 24 bytes: {"seq": 40, ')
        got = []
        with pybpf.RingBuffer(ring, lambda r: got.append(bytes(r)), type=memoryview) as rb:
            rb.consume()
        assert [struct.unpack_from("<Q", r)[0] for r in got] == [40, 41, 42, 43, 44]
        assert json.loads(cli("map", "peek", str(ring.id), "--json").stdout or "null") is None   # consumed now


def test_map_peek_shows_discards_and_hex_without_a_record_type(no_fd_leak):
    with pybpf.load(program("ringbuf_test")) as obj:
        ring = obj.maps["rb"]
        assert produce(obj, 4, 12, discard_every=2, start_seq=7) == 2
        records = [json.loads(line) for line in cli("map", "peek", str(ring.id), "--json").stdout.splitlines()]
        assert [r["state"] for r in records] == ["committed", "discarded", "committed", "discarded"]
        assert all(r["len"] == 12 and "value" not in r for r in records)
        assert [int.from_bytes(bytes.fromhex(r["hex"])[:4], "little") for r in records][::2] == [7, 9]
        assert "DISCARDED 12 bytes" in cli("map", "peek", str(ring.id)).stdout
        got = []
        with pybpf.RingBuffer(ring, lambda r: got.append(bytes(r)), type=memoryview) as rb:
            rb.consume()
        assert [int.from_bytes(r[:4], "little") for r in got] == [7, 9]


def test_pin_object_dir_then_open_the_pins(no_fd_leak):
    d = f"/sys/fs/bpf/pybpf-cli-live-{uuid.uuid4().hex[:8]}"
    try:
        out = cli("pin", program("pin_test"), d).stdout
        names = sorted(os.listdir(d))
        spec = pybpf.open(program("pin_test"))
        assert names == sorted([n.replace(".", "_") for n in spec.maps] + list(spec.programs))
        assert "pin_test_bss" in names
        assert "pinned program write_shared" in out
        with pybpf.Program.from_pinned(f"{d}/write_shared") as p:
            p.test_run(ctx=struct.pack("<IIQ", 2, 0, 5))
        ours = cli("map", "dump", f"{d}/shared", "--json").stdout
        assert ours == tool("-j", "map", "dump", "pinned", f"{d}/shared")
        pid_show = json.loads(cli("prog", "show", f"{d}/write_shared", "--json").stdout)
        theirs = json.loads(tool("-j", "prog", "show", "pinned", f"{d}/write_shared"))
        close_enough([pid_show], [theirs])
        assert pid_show["name"] == "write_shared"
        prog_id = pid_show["id"]
    finally:
        if os.path.isdir(d):
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
            os.rmdir(d)
    assert not os.path.exists(d)
    out = cli("prog", "show", str(prog_id), check=False)
    assert out.returncode == 1 and "there is no BPF program with id" in out.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_by_id_without_cap_sys_admin_is_one_line(pin_test, no_fd_leak):
    obj, _ = pin_test
    for args in (("prog", "show", str(obj.programs["write_shared"].id)), ("map", "dump", str(obj.maps["shared"].id)),
                 ("prog", "list"), ("link", "list", "--json")):
        out = subprocess.run(["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable,
                              "-m", "pybpf", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, args
        assert out.stdout == ""
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and "needs CAP_SYS_ADMIN" in lines[0] and "Traceback" not in out.stderr, out.stderr
