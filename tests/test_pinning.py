"""Pinning (issue 13): spec.load(pin_root=) with LIBBPF_PIN_BY_NAME maps shared between two
processes, libbpf's reuse rules (an incompatible pin names the field and leaves nothing behind),
Map/Program/Link.pin/unpin/from_pinned/from_id, and maps that bpftool made and filled opened and
typed through their kernel BTF.  Every pin lives in a directory under /sys/fs/bpf that the test
makes and removes (asserted gone).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import pytest

import pybpf
from conftest import ROOT, program
from pybpf.kernel.constants import MapType, ProgType

pytestmark = pytest.mark.kernel

BPFFS = "/sys/fs/bpf"
BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"


def write_args(slot: int, add: int) -> bytes:
    """struct write_args of programs/pin_test.bpf.c."""
    return struct.pack("<IIQ", slot, 0, add)


def remove_tree(path: str) -> None:
    """rm -r of a directory of pins (unlink every pin, then the directories)."""
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(top, name))
        for name in dirs:
            os.rmdir(os.path.join(top, name))
    os.rmdir(path)


@pytest.fixture
def pin_dir():
    """A fresh directory under /sys/fs/bpf; removed afterwards, and the test fails if the
    removal was needed for anything but what the test pinned on purpose."""
    path = tempfile.mkdtemp(dir=BPFFS, prefix="pybpf-t-")
    try:
        yield path
    finally:
        if os.path.exists(path):
            remove_tree(path)
        assert not os.path.exists(path)


@pytest.fixture
def made(monkeypatch):
    """The ids of the maps and programs pybpf's loader makes from now on (its create_map and
    load_program, watched: the kernel still does the work), to check that a failed load left
    none of them (other processes may load the same object meanwhile)."""
    import pybpf.loader as loader
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.attrs import MapInfo, ProgInfo
    ids = {"map": [], "program": []}

    def watch(real, kind, info):
        def call(*args, **kwargs):
            fd = real(*args, **kwargs)
            ids[kind].append(sc.obj_get_info_by_fd(fd, info()).id)
            return fd
        return call

    monkeypatch.setattr(loader, "create_map", watch(loader.create_map, "map", MapInfo))
    monkeypatch.setattr(loader, "load_program", watch(loader.load_program, "program", ProgInfo))
    return ids


def still_live(ids: dict) -> set:
    """Which of ``ids`` (from the ``made`` fixture) are still in the kernel."""
    live = {("map", m.id) for m in pybpf.maps()} | {("program", p.id) for p in pybpf.programs()}
    return {(kind, i) for kind, found in ids.items() for i in found} & live


def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- spec.load(pin_root=) -------------------------------------------------------------------------


def test_pinning_attribute_is_a_string():
    spec = pybpf.open(program("pin_test"))
    assert spec.maps["shared"].pinning == "by_name"
    assert spec.maps["shared_seen"].pinning == "by_name"
    assert spec.maps["locked"].pinning == "none"
    assert spec.maps["pin_test.bss"].pinning == "none"


CHILD = r"""
import json, struct, sys
import pybpf
root = sys.argv[1]
with pybpf.load(sys.argv[2], pin_root=root) as obj:
    shared = obj.maps["shared"]
    before = shared[2]
    # this process's program writes the same map: the parent sees it
    assert obj.programs["write_shared"].test_run(ctx=struct.pack("<IIQ", 2, 0, 1)).retval == 0
    print(json.dumps({"id": shared.id, "total": before.total, "writer": before.writer,
                      "writes": before.writes, "pin_path": shared.pin_path}))
"""


def test_two_processes_share_a_pinned_map(pin_dir, no_fd_leak):
    root = os.path.join(pin_dir, "root")          # made by the load, as libbpf makes it
    with pybpf.load(program("pin_test"), pin_root=root) as obj:
        shared = obj.maps["shared"]
        assert sorted(os.listdir(root)) == ["shared", "shared_seen"]
        assert shared.pin_path == os.path.join(root, "shared")
        assert obj.maps["locked"].pin_path is None and not os.path.exists(os.path.join(root, "locked"))
        assert obj.programs["write_shared"].test_run(ctx=write_args(2, 41)).retval == 0
        assert shared[2].total == 41 and shared[2].writer == os.getpid()

        child = subprocess.run([sys.executable, "-c", CHILD, root, program("pin_test")], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert child.returncode == 0, child.stderr
        seen = json.loads(child.stdout)
        # the child reused this map (same kernel map) and read what this process's program wrote
        assert seen["id"] == shared.id
        assert (seen["total"], seen["writer"], seen["writes"]) == (41, os.getpid(), 1)
        assert seen["pin_path"] == os.path.join(root, "shared")
        # and what the child's program wrote is here
        value = shared[2]
        assert value.total == 42 and value.writes == 2 and value.writer != os.getpid()
        map_id = shared.id
    # closing the object leaves the pins (they outlive the process, as with libbpf)
    assert sorted(os.listdir(root)) == ["shared", "shared_seen"]
    with pybpf.Map.from_pinned(os.path.join(root, "shared")) as again:
        assert again.id == map_id and again[2].total == 42
        again.unpin()
    assert os.listdir(root) == ["shared_seen"]


def test_reused_map_keeps_its_values_and_is_not_pinned_again(pin_dir, no_fd_leak):
    with pybpf.load(program("pin_test"), pin_root=pin_dir) as first:
        first.maps["shared_seen"][5] = 500
        first_id = first.maps["shared_seen"].id
    inode = os.stat(os.path.join(pin_dir, "shared_seen")).st_ino
    with pybpf.load(program("pin_test"), pin_root=pin_dir) as second:
        assert second.maps["shared_seen"].id == first_id
        assert second.maps["shared_seen"][5] == 500
        # a map that is not pinned by name is new in each load
        assert second.maps["locked"].lookup(5) is None
    assert os.stat(os.path.join(pin_dir, "shared_seen")).st_ino == inode


# the second pinned map of pin_test (shared_seen: HASH u32 -> u64, 16 entries), changed one
# field at a time; each must make the load fail naming that field
INCOMPATIBLE = [
    ("max_entries", {"max_entries": 32}),
    ("type", {"type": MapType.LRU_HASH}),
    ("value_size", {"value_size": 16, "value_type_id": 0}),
    ("key_size", {"key_size": 8, "key_type_id": 0}),
    ("map_flags", {"flags": 1}),                  # BPF_F_NO_PREALLOC
]


@pytest.mark.parametrize("field,change", INCOMPATIBLE, ids=[f for f, _ in INCOMPATIBLE])
def test_incompatible_pin_names_the_field_and_leaves_nothing(pin_dir, no_fd_leak, made, field, change):
    spec = pybpf.open(program("pin_test"))
    pinned = [name for name, m in spec.maps.items() if m.pinning == "by_name"]
    assert len(pinned) == 2
    first, second = pinned                       # the order in which the loader creates them
    other = pybpf.open(program("pin_test"))
    for attr, value in change.items():
        setattr(other.maps[second], attr, value)
    for prog in other.programs.values():      # only its maps: the programs expect the right map
        prog.autoload = False
    with other.load(pin_root=pin_dir) as obj:   # pins both, `second` with the changed field
        obj.maps[first].unpin()
        mark = (7).to_bytes(obj.maps[second].value_size, "little")
        obj.maps[second][1] = mark
    assert os.listdir(pin_dir) == [second]

    made["map"].clear()
    with pytest.raises(pybpf.Error) as err:
        spec.load(pin_root=pin_dir)
    message = str(err.value)
    assert f"map {second!r}" in message and os.path.join(pin_dir, second) in message
    assert f"its {field} differs" in message
    assert not isinstance(err.value, pybpf.SyscallError)
    # `first` was created and pinned by this load before `second` failed: unpinned again,
    # and gone from the kernel with every other map the load made; no program was loaded
    assert os.listdir(pin_dir) == [second]
    assert made["map"] and not made["program"]
    wait_for(lambda: not still_live(made), "the failed load's maps to go")
    # the pinned map is untouched
    with pybpf.Map.from_pinned(os.path.join(pin_dir, second)) as kept:
        value = kept[1]
        assert value == 7 if isinstance(value, int) else value == mark


def test_without_pin_root_nothing_is_pinned(no_fd_leak, monkeypatch):
    from pybpf.kernel import syscall as sc
    pins = []
    real = sc.obj_pin
    monkeypatch.setattr(sc, "obj_pin", lambda fd, path: (pins.append(path), real(fd, path)))
    with pybpf.load(program("pin_test")) as obj:
        assert obj.maps["shared"].pin_path is None and obj.maps["shared_seen"].pin_path is None
        # libbpf would pin at /sys/fs/bpf/<name>; pybpf pins only under a pin_root it is given
        assert not pins
        assert not os.path.exists(os.path.join(BPFFS, "shared"))


def test_pin_root_off_bpffs_is_refused_and_leaves_nothing(tmp_path, no_fd_leak, made):
    root = tmp_path / "pins"
    with pytest.raises(pybpf.Error, match=r"is not on a BPF filesystem.*mount -t bpf"):
        pybpf.load(program("pin_test"), pin_root=root)
    assert not root.exists()
    assert made["map"] and not made["program"]
    wait_for(lambda: not still_live(made), "the failed load's maps to go")


# -- Map / Program / Link pins ---------------------------------------------------------------------


def test_map_pin_unpin_and_open(pin_dir, no_fd_leak):
    path = os.path.join(pin_dir, "sub", "points")
    with pybpf.load(program("pin_test")) as obj:
        points = obj.maps["batch_points"]
        points[3] = {"x": 1, "y": -2, "tag": "ab"}
        points.pin(path)                        # its directory is made, as libbpf does
        assert points.pin_path == path and os.path.exists(path)
        points.pin(path)                        # again at the same path: nothing to do
        with pytest.raises(pybpf.Error, match="unpin"):
            points.pin(os.path.join(pin_dir, "elsewhere"))
        with pybpf.Map.from_pinned(path) as opened:
            assert opened.id == points.id and opened.type == points.type
            # typed through the map's kernel BTF: the struct point of the object
            value = opened[3]
            assert value.to_python() == {"x": 1, "y": -2, "tag": "ab"}
            assert opened.key_type.name == "__u64" and opened.value_type.name == "point"
            opened[4] = (5, 6, "cd")
        assert points[4].to_python() == {"x": 5, "y": 6, "tag": "cd"}
        with pybpf.Map.from_pinned(path, readonly=True) as ro:
            assert ro[3] == points[3]
            with pytest.raises(pybpf.PermissionError):
                ro[9] = (0, 0, "")
        points.unpin()
        assert points.pin_path is None and not os.path.exists(path)
    with pytest.raises(pybpf.Error, match="nothing is pinned at"):
        pybpf.Map.from_pinned(path)


def test_pinned_program_outlives_its_object(pin_dir, no_fd_leak):
    path = os.path.join(pin_dir, "write_shared")
    with pybpf.load(program("pin_test")) as obj:
        prog = obj.programs["write_shared"]
        prog.pin(path)
        prog_id, tag = prog.id, prog.info().tag
    # the object is closed: the pin keeps the program (and the maps it uses) in the kernel
    with pytest.raises(pybpf.Error, match=r"is a pinned BPF program, not a map: open it with "
                                          r"pybpf\.Program\.from_pinned"):
        pybpf.Map.from_pinned(path)
    with pybpf.Program.from_pinned(path) as prog:
        info = prog.info()
        assert (prog.id, info.tag, prog.name, prog.type) == (prog_id, tag, "write_shared",
                                                             ProgType.SYSCALL)
        assert prog.test_run(ctx=write_args(1, 9)).retval == 0
        names = {m.id: m.name for m in pybpf.maps()}
        shared_id = next(i for i in info.map_ids if names.get(i) == "shared")
        with pybpf.Map.from_id(shared_id) as shared:
            assert shared[1].total == 9 and shared[1].writer == os.getpid()
        prog.unpin()
        assert not os.path.exists(path)
    wait_for(lambda: prog_id not in {p.id for p in pybpf.programs()}, "the unpinned program to go")


def test_pinned_link_stays_attached_until_unpinned(pin_dir, no_fd_leak):
    path = os.path.join(pin_dir, "getppid_link")
    with pybpf.load(program("pin_test")) as obj:
        calls = obj.variables["getppid_calls"]
        prog = obj.programs["count_getppid"]
        link = prog.attach()
        link.pin(path)
        link_id = link.info().id
        link.close()                              # the pin keeps the program attached
        start = calls.get()
        for _ in range(50):
            os.getppid()
        assert calls.get() - start >= 50
        with pybpf.Link.from_pinned(path) as pinned:
            info = pinned.info()
            assert (info.id, info.prog_id) == (link_id, prog.id)
            assert pinned.program is None and f"prog_id={prog.id}" in repr(pinned)
            with pybpf.Link.from_id(link_id) as by_id:
                assert by_id.info() == info
            pinned.unpin()
            assert not os.path.exists(path)
        # the last fd is gone: the program is detached
        wait_for(lambda: link_id not in {li.id for li in pybpf.links()}, "the unpinned link to go")
        stop = calls.get()
        for _ in range(50):
            os.getppid()
        assert calls.get() == stop
        with pytest.raises(pybpf.Error, match="there is no BPF link with id"):
            pybpf.Link.from_id(link_id)


# -- maps bpftool made ----------------------------------------------------------------------------


def bpftool(*args: str) -> str:
    out = subprocess.run([BPFTOOL, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def hex_bytes(items) -> bytes:
    return bytes(int(b, 16) for b in items)


@pytest.mark.skipif(not os.path.exists(BPFTOOL), reason="needs bpftool")
def test_maps_bpftool_made_and_filled_are_typed_through_their_btf(pin_dir, no_fd_leak):
    progs, maps = os.path.join(pin_dir, "progs"), os.path.join(pin_dir, "maps")
    bpftool("prog", "loadall", program("maps_test"), progs, "pinmaps", maps)
    hash_pin = os.path.join(maps, "hash")
    # struct val {u64 a; u32 b; char tag[4]} under u32 keys 7 and 8
    bpftool("map", "update", "pinned", hash_pin, "key", "7", "0", "0", "0",
            "value", "1", "2", "0", "0", "0", "0", "0", "0", "9", "0", "0", "0", "0x41", "0x42", "0", "0")
    bpftool("map", "update", "pinned", hash_pin, "key", "8", "0", "0", "0",
            "value", "0xff", "0", "0", "0", "0", "0", "0", "0", "1", "0", "0", "0", "0x7a", "0", "0", "0")
    bpftool("map", "update", "pinned", os.path.join(maps, "percpu"), "key", "1", "0", "0", "0",
            "value", "5", "0", "0", "0", "0", "0", "0", "0")
    dump = json.loads(bpftool("-j", "map", "dump", "pinned", hash_pin))
    assert len(dump) == 2
    expected = {d["formatted"]["key"]: d["formatted"]["value"] for d in dump}
    raw = {hex_bytes(d["key"]): hex_bytes(d["value"]) for d in dump}

    with pybpf.Map.from_pinned(hash_pin) as by_pin:
        map_id = by_pin.id
        assert by_pin.name == "hash" and by_pin.key_type.name == "__u32" and by_pin.value_type.name == "val"
        got = {k: v.to_python() for k, v in by_pin.items()}
        assert got == expected == {7: {"a": 513, "b": 9, "tag": "AB"}, 8: {"a": 255, "b": 1, "tag": "z"}}
        assert {struct.pack("<I", k): bytes(v) for k, v in by_pin.items()} == raw
        assert dict((k, v.to_python()) for k, v in by_pin.lookup_batch()) == expected
    with pybpf.Map.from_id(map_id) as by_id:
        assert by_id.pin_path is None
        assert {k: v.to_python() for k, v in by_id.items()} == expected
    percpu_dump = json.loads(bpftool("-j", "map", "dump", "pinned", os.path.join(maps, "percpu")))
    with pybpf.Map.from_pinned(os.path.join(maps, "percpu")) as percpu:
        assert dict(percpu.items()) == {d["formatted"]["key"]: [c["value"] for c in d["formatted"]["values"]]
                                        for d in percpu_dump}
        assert percpu[1][0] == 5
    # a program bpftool pinned opens as a Program, and runs
    with pybpf.Program.from_pinned(os.path.join(progs, "fill")) as fill:
        assert fill.name == "fill" and fill.test_run().retval == 0
    with pybpf.Map.from_pinned(hash_pin) as after:
        assert after[1].to_python() == {"a": 10, "b": 1, "tag": "t"}     # written by fill

    # a map without BTF: raw bytes, as bpftool shows them
    raw_pin = os.path.join(pin_dir, "raw")
    bpftool("map", "create", raw_pin, "type", "hash", "key", "4", "value", "8", "entries", "4", "name", "rawmap")
    bpftool("map", "update", "pinned", raw_pin, "key", "1", "0", "0", "0", "value", "1", "2", "3", "4", "5", "6",
            "7", "8")
    with pybpf.Map.from_pinned(raw_pin) as rawmap:
        assert rawmap.btf is None and rawmap.name == "rawmap"
        dumped = json.loads(bpftool("-j", "map", "dump", "pinned", raw_pin))
        assert dict(rawmap.items()) == {hex_bytes(d["key"]): hex_bytes(d["value"]) for d in dumped}
        assert rawmap[1] == bytes(range(1, 9))
    remove_tree(pin_dir)
    assert not os.path.exists(pin_dir)
    wait_for(lambda: map_id not in {m.id for m in pybpf.maps()}, "bpftool's maps to go with their pins")
