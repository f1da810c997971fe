"""Live kernel objects (issue 13): pybpf.programs()/maps()/links()/btfs() against bpftool's
listings taken at the same moment, Program/Map/Link.from_id, xlated()/jited() against bpftool,
pybpf.stats() counting a tracepoint program's runs, and the one-line error for opening by id
without CAP_SYS_ADMIN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import pybpf
from conftest import ROOT, program
from pybpf.kernel.constants import LinkType, MapType, ProgType

pytestmark = pytest.mark.kernel

BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"
needs_bpftool = pytest.mark.skipif(not os.path.exists(BPFTOOL), reason="needs bpftool")


def bpftool_json(*args: str):
    out = subprocess.run([BPFTOOL, "-j", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def bpftool_text(*args: str) -> str:
    out = subprocess.run([BPFTOOL, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


ENUMS = {"prog": ProgType, "map": MapType, "link": LinkType}


def normalized(kind: str, record: dict) -> dict:
    """A bpftool record as a newer bpftool prints it: bpftool 7.1 prints the number of a type its
    libbpf does not know (netfilter programs, arena maps, tcx links...), we print the name."""
    out = dict(record)
    if isinstance(out.get("type"), int) and kind in ENUMS:
        out["type"] = ENUMS[kind](out["type"]).name.lower()
    out.pop("pids", None)            # bpftool built with skeletons adds the holders' pids
    return out


# -- listings against bpftool ----------------------------------------------------------------------


def listing(kind: str) -> dict[int, object]:
    records = {"prog": pybpf.programs, "map": pybpf.maps, "link": pybpf.links, "btf": pybpf.btfs}[kind]()
    return {r.id: r for r in records}


def same_moment(kind: str, attempts: int = 8):
    """(ours before, bpftool's, ours after) of one kind, retried until the three agree on the set of
    ids (other processes load and unload objects meanwhile); the last try if they never do."""
    for _ in range(attempts):
        before = listing(kind)
        tool = {r["id"]: r for r in bpftool_json(kind, "list")}
        after = listing(kind)
        if set(before) == set(tool) == set(after):
            break
    return before, tool, after


@needs_bpftool
def test_listings_match_bpftool(no_fd_leak):
    with pybpf.load(program("pin_test")) as obj:
        link = obj.programs["count_getppid"].attach()
        with link:
            ours = {"prog": {p.id for p in obj.programs.values()}, "map": {m.id for m in obj.maps.values()},
                    "link": {link.info().id}}
            btf_id = obj.programs["write_shared"].info().btf_id
            ours["btf"] = {btf_id}
            for kind in ("prog", "map", "link", "btf"):
                before, tool, after = same_moment(kind)
                # every id both our listings saw is in bpftool's, and bpftool saw nothing that
                # neither listing did, unless it was made after the first one and gone by the second
                steady = set(before) & set(after)
                assert steady <= set(tool), kind
                first_max = max(before, default=0)
                assert all(i > first_max for i in set(tool) - set(before) - set(after)), kind
                assert ours[kind] <= steady, kind
                for object_id in ours[kind]:
                    record = after[object_id]
                    theirs = normalized(kind, tool[object_id])
                    if kind == "btf":
                        users = pybpf.live.btf_users()[object_id]
                        mine = pybpf.live.to_bpftool(record, prog_ids=users[0], map_ids=users[1])
                        assert sorted(mine.pop("prog_ids")) == sorted(theirs.pop("prog_ids"))
                        assert sorted(mine.pop("map_ids")) == sorted(theirs.pop("map_ids"))
                    else:
                        mine = pybpf.live.to_bpftool(record)
                    if kind == "prog":
                        # bpftool subtracts whole seconds of two clocks: a second either way
                        assert abs(mine.pop("loaded_at") - theirs.pop("loaded_at")) <= 1
                    assert mine == theirs, (kind, object_id)
            # the records themselves, for what a user reads first
            progs = listing("prog")
            for name, p in obj.programs.items():
                info = progs[p.id]
                assert (info.name, info.type, info.tag) == (name, p.type, p.info().tag)
                assert set(info.map_ids) <= ours["map"] and info.btf_id == btf_id and info.uid == os.getuid()
                assert info.xlated_size > 0 and info.jited and info.jited_size > 0
            maps = listing("map")
            for name, m in obj.maps.items():
                info = maps[m.id]
                assert (info.name, info.type, info.key_size, info.value_size, info.max_entries) == \
                       (name[:15], m.type, m.key_size, m.value_size, m.max_entries)
            assert listing("link")[link.info().id].prog_id == obj.programs["count_getppid"].id
            vmlinux = [b for b in pybpf.btfs() if b.name == "vmlinux"]
            assert len(vmlinux) == 1 and vmlinux[0].kernel and vmlinux[0].size == os.path.getsize(
                "/sys/kernel/btf/vmlinux")
            assert not listing("btf")[btf_id].kernel


def test_program_name_longer_than_the_kernel_keeps(no_fd_leak):
    with pybpf.load(program("net_cgroup")) as obj:
        prog = obj.programs["sock_create_count"]
        info = prog.info()
        assert info.kernel_name == "sock_create_cou"          # BPF_OBJ_NAME_LEN - 1 characters
        assert info.name == "sock_create_count"               # the rest from its BTF func_info
        with pybpf.Program.from_id(prog.id) as opened:
            assert opened.name == "sock_create_count"


# -- opening by id ---------------------------------------------------------------------------------


def test_objects_opened_by_id(no_fd_leak):
    with pybpf.load(program("pin_test")) as obj:
        prog = obj.programs["write_shared"]
        with pybpf.Program.from_id(prog.id) as opened:
            assert (opened.name, opened.type, opened.id) == ("write_shared", ProgType.SYSCALL, prog.id)
            assert opened.info() == prog.info()
            assert opened.insn_cnt == prog.info().xlated_size // 8
            # it runs: the program writes the object's map
            assert opened.test_run(ctx=b"\x03\0\0\0\0\0\0\0\x05\0\0\0\0\0\0\0").retval == 0
        assert obj.maps["shared"][3].total == 5
        with pybpf.Map.from_id(obj.maps["shared"].id) as shared:
            assert shared[3].to_python() == {"total": 5, "writer": os.getpid(), "writes": 1}
            assert shared.info().btf_id == prog.info().btf_id
        with obj.programs["count_getppid"].attach() as link:
            with pybpf.Link.from_id(link.info().id) as opened:
                assert opened.info() == link.info()
                assert opened.kind == "perf_event"
        with pytest.raises(pybpf.Error, match="there is no BPF program with id"):
            pybpf.Program.from_id(max(p.id for p in pybpf.programs()) + 100000)
        with pytest.raises(pybpf.Error, match="positive 32-bit integer"):
            pybpf.Map.from_id(0)


NO_SYS_ADMIN = r"""
import sys
import pybpf
prog_id, map_id = int(sys.argv[1]), int(sys.argv[2])
for what, call in (("program", lambda: pybpf.Program.from_id(prog_id)), ("map", lambda: pybpf.Map.from_id(map_id)),
                   ("listing", lambda: list(pybpf.programs())), ("stats", lambda: pybpf.stats())):
    try:
        call()
    except pybpf.PermissionError as e:
        print(what, "|", e)
    else:
        print(what, "| no error")
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_opening_by_id_without_cap_sys_admin_says_so_in_one_line(no_fd_leak):
    with pybpf.load(program("pin_test")) as obj:
        prog_id, map_id = obj.programs["write_shared"].id, obj.maps["shared"].id
        out = subprocess.run(["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin",
                              sys.executable, "-c", NO_SYS_ADMIN, str(prog_id), str(map_id)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["program", "map", "listing", "stats"]
    for line in lines:
        what, message = line.split(" | ", 1)
        assert "needs CAP_SYS_ADMIN" in message and "\n" not in message, line
    assert "opening a BPF program by id needs CAP_SYS_ADMIN" in lines[0]
    assert "opening a BPF map by id needs CAP_SYS_ADMIN" in lines[1]
    assert "listing BPF programs needs CAP_SYS_ADMIN" in lines[2]


# -- instructions ----------------------------------------------------------------------------------


@needs_bpftool
@pytest.mark.parametrize("name", ["write_shared", "bump_locked", "count_getppid"])
def test_xlated_equals_bpftool(name, no_fd_leak, tmp_path):
    with pybpf.load(program("pin_test")) as obj:
        prog_id = obj.programs[name].id
        with pybpf.Program.from_id(prog_id) as prog:
            dump = prog.xlated()
            assert dump == bpftool_text("prog", "dump", "xlated", "id", str(prog_id))
            assert dump.lines == bpftool_text("prog", "dump", "xlated", "id", str(prog_id)).splitlines()
            assert prog.xlated(linum=True) == bpftool_text("prog", "dump", "xlated", "id", str(prog_id), "linum")
            # with the source lines the kernel keeps (line_info), and the function's prototype
            assert dump.lines[0].endswith(f"{name}(") or f" {name}(" in dump.lines[0]
            assert any(line.startswith("; ") for line in dump.lines)
            raw = tmp_path / "xlated.bin"
            bpftool_text("prog", "dump", "xlated", "id", str(prog_id), "file", str(raw))
            assert bytes(dump) == raw.read_bytes() and dump == raw.read_bytes()
            code = prog.jited()
            info = prog.info()
            assert len(code) == info.jited_size > 0
            assert [f[0] for f in code.functions] == [f"bpf_prog_{info.tag}_{name}"]
            assert code.functions[0][2] == len(code)


# -- statistics ------------------------------------------------------------------------------------


def test_stats_count_a_tracepoint_programs_runs(no_fd_leak):
    calls = 500
    with pybpf.load(program("pin_test")) as obj:
        prog = obj.programs["count_getppid"]
        counter = obj.variables["getppid_calls"]
        with pybpf.stats() as on:
            assert not on.closed
            with prog.attach():
                for _ in range(calls):
                    os.getppid()
            runs = counter.get()
            info = prog.info()
        assert on.closed
        # the program counts every getppid() on the machine, and so does the kernel while
        # statistics are on: the two agree, and include ours
        assert info.run_cnt == runs >= calls
        assert info.run_time_ns > 0
        assert pybpf.live.to_bpftool(info)["run_cnt"] == runs
        # and without statistics the kernel stops counting (unless someone else turned them on)
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            others = f.read().strip() != "0"
        with prog.attach():
            for _ in range(calls):
                os.getppid()
        if not others:
            assert prog.info().run_cnt == runs
        assert counter.get() >= runs + calls
