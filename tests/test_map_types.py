"""Every map type this kernel has (programs/map_types.bpf.c), created with the right
attributes and used the way a program and its user space use it.

Expected attributes come from the C source (the declarations) and the kernel's
rules (BPF_F_NO_PREALLOC for LPM tries and local storage, perf event arrays
sized to the possible CPUs, no BTF for the map types libbpf creates without).
The kernel's own view of each map (BPF_OBJ_GET_INFO_BY_FD) is what is checked.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import subprocess
import sys
import uuid

import pytest

import pybpf
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import MapInfo
from pybpf.kernel.constants import AttachType, MapType
from pybpf.links import cgroup2_mount
from pybpf.loader import map_create_attr, possible_cpus

from conftest import prog_id, program

N = 23
BPF_F_NO_PREALLOC = 1
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10
BPF_EXIST = 2
BPF_F_TEST_RUN_ON_CPU = 1
SO_COOKIE = 57
STACK_DEPTH = 127

OP_LPM, OP_INNER, OP_INNER_HASH, OP_PUSH, OP_BLOOM, OP_PERCPU = 1, 2, 3, 4, 5, 6

# name -> (type, key_size, value_size, max_entries, flags that must be set, BTF key/value passed)
DECLARED = {
    "hash": (MapType.HASH, 4, 8, 64, 0, True),
    "array": (MapType.ARRAY, 4, 8, 4, 0, True),
    "percpu_hash": (MapType.PERCPU_HASH, 4, 8, 16, 0, True),
    "percpu_array": (MapType.PERCPU_ARRAY, 4, 8, 4, 0, True),
    "lru": (MapType.LRU_HASH, 4, 8, 32, 0, True),
    "lru_percpu": (MapType.LRU_PERCPU_HASH, 4, 8, 32, 0, True),
    "routes": (MapType.LPM_TRIE, 8, 4, 64, BPF_F_NO_PREALLOC, True),
    "queue": (MapType.QUEUE, 0, 4, 8, 0, False),
    "stack": (MapType.STACK, 0, 4, 8, 0, False),
    "bloom": (MapType.BLOOM_FILTER, 0, 4, 128, 0, True),
    "inner_a": (MapType.ARRAY, 4, 8, 1, 0, True),
    "inner_b": (MapType.ARRAY, 4, 8, 1, 0, True),
    "outer": (MapType.ARRAY_OF_MAPS, 4, 4, 4, 0, False),
    "outer_hash": (MapType.HASH_OF_MAPS, 4, 4, 8, 0, False),
    "jump_table": (MapType.PROG_ARRAY, 4, 4, 4, 0, False),
    "stacks": (MapType.STACK_TRACE, 4, STACK_DEPTH * 8, 64, 0, False),
    "perf_events": (MapType.PERF_EVENT_ARRAY, 4, 4, possible_cpus(), 0, False),
    "task_store": (MapType.TASK_STORAGE, 4, 16, 0, BPF_F_NO_PREALLOC, True),
    "inode_store": (MapType.INODE_STORAGE, 4, 16, 0, BPF_F_NO_PREALLOC, True),
    "sk_store": (MapType.SK_STORAGE, 4, 16, 0, BPF_F_NO_PREALLOC, True),
    "cgrp_store": (MapType.CGRP_STORAGE, 4, 16, 0, BPF_F_NO_PREALLOC, True),
    "cg_packets": (MapType.CGROUP_STORAGE, 16, 8, 0, 0, True),
    "cg_bytes": (MapType.PERCPU_CGROUP_STORAGE, 16, 8, 0, 0, True),
    "cgroups": (MapType.CGROUP_ARRAY, 4, 4, 1, 0, False),
    "devmap": (MapType.DEVMAP, 4, 4, 4, 0, False),
    "devmap_hash": (MapType.DEVMAP_HASH, 4, 8, 4, 0, False),
    "cpumap": (MapType.CPUMAP, 4, 8, 2, 0, False),
    "xskmap": (MapType.XSKMAP, 4, 4, 2, 0, False),
    "sockmap": (MapType.SOCKMAP, 4, 8, 2, 0, False),
    "sockhash": (MapType.SOCKHASH, 4, 8, 2, 0, False),
    "reuseport": (MapType.REUSEPORT_SOCKARRAY, 4, 8, 2, 0, False),
}
# the arena map is an object of its own, programs/map_arena.o: a kernel that refuses
# arena maps (EPERM even for root on some builds) refuses that object only
ARENA = (MapType.ARENA, 0, 0, 4, BPF_F_MMAPABLE, False)


def spec():
    return pybpf.open(program("map_types"))


def arena_spec():
    return pybpf.open(program("map_arena"))


def load(**programs_autoload):
    s = spec()
    s.variables["target_tgid"].set(os.getpid())
    for name, on in programs_autoload.items():
        s.programs[name].autoload = on
    return s.load()


def map_info(m) -> MapInfo:
    return sc.obj_get_info_by_fd(m.fd, MapInfo())


def u32(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def run(obj, op: int, key: int = 0, value: int = 0, cpu: int | None = None) -> int:
    ctx = struct.pack("<QQQ", op, key, value)
    if cpu is None:
        return obj.programs["run"].test_run(ctx=ctx).retval
    return obj.programs["run"].test_run(ctx=ctx, flags=BPF_F_TEST_RUN_ON_CPU, cpu=cpu).retval


# -- offline: what the object declares and what the loader would ask for ---------------------------

def test_every_map_type_is_declared():
    declared = {m.type for m in spec().maps.values()} | {m.type for m in arena_spec().maps.values()}
    # every map type but the ring buffers (programs/ringbuf_test, user_ringbuf) and struct_ops
    missing = set(MapType) - declared - {MapType.UNSPEC, MapType.RINGBUF, MapType.USER_RINGBUF,
                                         MapType.STRUCT_OPS}
    assert not missing, sorted(t.name for t in missing)


def test_values_from_rel_maps():
    s = spec()
    assert s.maps["outer"].values == {0: "inner_a", 2: "inner_b"}
    assert s.maps["outer_hash"].values == {1: "inner_b"}
    assert s.maps["jump_table"].values == {0: "tail_zero", 2: "tail_two"}
    for name in ("outer", "outer_hash"):
        inner = s.maps[name].inner
        assert (inner.name, inner.type, inner.key_size, inner.value_size, inner.max_entries) == \
            (f"{name}.inner", MapType.ARRAY, 4, 8, 1)
    assert s.maps["jump_table"].inner is None
    for name in ("outer", "outer_hash", "jump_table"):
        assert s.maps[name].value_size == 4          # slots hold fds


@pytest.mark.parametrize("name", sorted(DECLARED) + ["arena"])
def test_create_attributes_offline(name):
    mtype, key_size, value_size, max_entries, flags, with_btf = DECLARED.get(name, ARENA)
    m = (arena_spec() if name == "arena" else spec()).maps[name]
    a = map_create_attr(m, btf_fd=99)
    assert (a.map_type, a.key_size, a.value_size, a.max_entries) == (mtype, key_size, value_size, max_entries)
    assert a.map_flags & flags == flags
    assert bool(a.btf_fd) == with_btf
    assert a.map_extra == (3 if name == "bloom" else 0)


def test_required_flags_added_when_missing():
    m = spec().maps["routes"]
    m.flags = 0                               # forgot BPF_F_NO_PREALLOC: the kernel requires it
    assert map_create_attr(m).map_flags == BPF_F_NO_PREALLOC
    a = arena_spec().maps["arena"]
    a.flags = 0
    assert map_create_attr(a).map_flags == BPF_F_MMAPABLE


# -- in the kernel -----------------------------------------------------------------------------------

@pytest.mark.kernel
def test_kernel_sees_the_declared_attributes(no_fd_leak):
    with load() as obj:
        assert set(obj.maps) - {"map_type.rodata"} == set(DECLARED)
        for name, (mtype, key_size, value_size, max_entries, flags, with_btf) in DECLARED.items():
            info = map_info(obj.maps[name])
            assert (info.type, info.key_size, info.value_size, info.max_entries) == \
                (mtype, key_size, value_size, max_entries), name
            assert info.map_flags & flags == flags, name
            assert bool(info.btf_value_type_id) == with_btf, name
            assert info.name == name[:15].encode()
        assert map_info(obj.maps["bloom"]).map_extra == 3


@pytest.mark.kernel
def test_hash_and_array(no_fd_leak):
    with load() as obj:
        h, a = obj.maps["hash"], obj.maps["array"]
        for i in range(10):
            h[i] = i * 3
        assert dict(h.items()) == {i: i * 3 for i in range(10)}
        a[3] = 7
        assert [a[i] for i in range(4)] == [0, 0, 0, 7]
        with pytest.raises(pybpf.SyscallError):
            a[4] = 1                                      # E2BIG: outside the array


@pytest.mark.kernel
def test_percpu_values_land_on_the_cpu_that_ran(no_fd_leak):
    ncpus = possible_cpus()
    with load() as obj:
        for cpu in range(min(ncpus, 2)):
            assert run(obj, OP_PERCPU, key=1, value=10 + cpu, cpu=cpu) == 0
        expected = [10 + c if c < 2 else 0 for c in range(ncpus)]
        assert obj.maps["percpu_hash"][1] == expected
        assert obj.maps["percpu_array"][1] == expected
        obj.maps["percpu_array"][2] = list(range(ncpus))
        assert obj.maps["percpu_array"][2] == list(range(ncpus))


@pytest.mark.kernel
def test_lru_evicts_when_full(no_fd_leak):
    with load() as obj:
        lru, lru_pc = obj.maps["lru"], obj.maps["lru_percpu"]
        for i in range(200):
            lru[i] = i
        keys = set(lru.keys())
        assert 0 < len(keys) <= 32 and 199 in keys and 0 not in keys
        lru_pc[5] = [5] * possible_cpus()
        assert lru_pc[5] == [5] * possible_cpus()


def ip(text: str) -> int:
    """An IPv4 address as the u32 the program copies into the key (network byte order in memory)."""
    return struct.unpack("<I", socket.inet_aton(text))[0]


@pytest.mark.kernel
def test_lpm_longest_prefix_from_a_program(no_fd_leak):
    with load() as obj:
        routes = obj.maps["routes"]
        for prefix, plen, value in (("10.0.0.0", 8, 1), ("10.1.0.0", 16, 2), ("10.1.2.0", 24, 3),
                                    ("0.0.0.0", 0, 9)):
            routes[{"prefixlen": plen, "addr": socket.inet_aton(prefix)}] = value
        for addr, expected in (("10.1.2.3", 3), ("10.1.9.9", 2), ("10.200.0.1", 1), ("192.168.1.1", 9)):
            assert run(obj, OP_LPM, key=ip(addr)) == expected, addr
        # user space lookups match the longest prefix too
        assert routes[{"prefixlen": 32, "addr": socket.inet_aton("10.1.2.200")}] == 3
        del routes[{"prefixlen": 0, "addr": bytes(4)}]
        assert run(obj, OP_LPM, key=ip("192.168.1.1")) == -1


@pytest.mark.kernel
def test_queue_and_stack(no_fd_leak):
    with load() as obj:
        q, st = obj.maps["queue"], obj.maps["stack"]
        for v in (1, 2, 3):
            q.push(v)
            st.push(v)
        assert run(obj, OP_PUSH, value=4) == 0           # the program pushes onto both
        assert q.peek() == 1 and st.peek() == 4
        assert [q.pop() for _ in range(4)] == [1, 2, 3, 4]
        assert [st.pop() for _ in range(4)] == [4, 3, 2, 1]
        assert q.pop(None) is None
        with pytest.raises(KeyError, match="is empty"):
            st.pop()
        for v in range(8):
            q.push(v)
        with pytest.raises(pybpf.SyscallError):
            q.push(8)                                   # full
        assert run(obj, OP_PUSH, value=9) == -1
        q.push(8, BPF_EXIST)                            # full: drop the oldest
        assert [q.pop() for _ in range(8)] == list(range(1, 9))
        with pytest.raises(pybpf.Error, match="push\\(\\) is for"):
            obj.maps["hash"].push(1)


@pytest.mark.kernel
def test_bloom_filter(no_fd_leak):
    with load() as obj:
        bloom = obj.maps["bloom"]
        assert run(obj, OP_BLOOM, value=1234) == 0
        assert not bloom.may_contain(1234)
        for v in (1234, 99, 7):
            bloom.push(v)
        assert run(obj, OP_BLOOM, value=1234) == 1
        assert bloom.may_contain(99) and bloom.may_contain(7)
        assert sum(bloom.may_contain(v) for v in range(10000, 10100)) < 20   # few false positives


@pytest.mark.kernel
def test_map_in_map_initial_slots_and_updates(no_fd_leak):
    with load() as obj:
        a, b, outer, outer_hash = (obj.maps[n] for n in ("inner_a", "inner_b", "outer", "outer_hash"))
        a[0], b[0] = 111, 222
        # slots from `values`: outer[0] = inner_a, outer[2] = inner_b, outer_hash[1] = inner_b
        assert [run(obj, OP_INNER, key=k) for k in range(4)] == [111, -1, 222, -1]
        assert [run(obj, OP_INNER_HASH, key=k) for k in range(3)] == [-1, 222, -1]
        # user space reads map ids (raw u32 values: no BTF for the slots) and stores map fds
        assert u32(outer[0]) == map_info(a).id and u32(outer[2]) == map_info(b).id
        assert u32(outer_hash[1]) == map_info(b).id
        outer[1] = a.fd
        outer_hash[2] = a.fd
        assert run(obj, OP_INNER, key=1) == 111 and run(obj, OP_INNER_HASH, key=2) == 111
        del outer[0]
        assert run(obj, OP_INNER, key=0) == -1


@pytest.mark.kernel
def test_tail_calls_through_the_prog_array(no_fd_leak):
    with load() as obj:
        table, caller = obj.maps["jump_table"], obj.programs["tail_caller"]

        def call(index):
            return caller.test_run(ctx=struct.pack("<Q", index)).retval

        assert [call(i) for i in range(4)] == [100, -1, 102, -1]
        assert u32(table[0]) == prog_id(obj.programs["tail_zero"])    # user space reads program ids
        table[1] = obj.programs["tail_two"].fd
        del table[0]
        assert [call(i) for i in range(3)] == [-1, 102, 102]


@pytest.mark.kernel
def test_values_naming_a_program_not_loaded_is_an_error(no_fd_leak):
    with pytest.raises(pybpf.Error, match=r"map 'jump_table': values\[2\] is program 'tail_two', which is not "
                                          r"loaded \(autoload is off\)"):
        load(tail_two=False)


def kallsyms() -> list[tuple[int, str]]:
    out = []
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, _, name = line.split()[:3]
            out.append((int(addr, 16), name))
    out.sort()
    return out


@pytest.mark.kernel
def test_task_storage_and_stack_traces(no_fd_leak):
    with load() as obj:
        pid = os.getpid()
        obj.programs["count_in_task"].attach()
        for _ in range(N):
            os.getpid()
        pidfd = os.pidfd_open(pid)
        try:
            c = obj.maps["task_store"][pidfd]           # task storage: keyed by a pidfd
        finally:
            os.close(pidfd)
        assert c.calls == N
        frames = [f for f in struct.unpack(f"<{STACK_DEPTH}Q", bytes(obj.maps["stacks"][c.last_stack_id])) if f]
        assert len(frames) >= 2 and all(f >= 0xFFFF800000000000 for f in frames)
        syms = kallsyms()
        if syms[-1][0]:                                  # addresses visible (root, kptr_restrict off)
            import bisect
            names = [syms[bisect.bisect_right(syms, (f, "\xff")) - 1][1] for f in frames]
            assert any("syscall" in n or "sys_" in n for n in names), names


@pytest.mark.kernel
def test_socket_inode_and_cgroup_local_storage_from_user_space(no_fd_leak, tmp_path):
    with load() as obj:
        with socket.socket() as sk:
            obj.maps["sk_store"][sk.fileno()] = {"calls": 6}
            assert obj.maps["sk_store"][sk.fileno()].calls == 6
            assert obj.maps["sk_store"].delete(sk.fileno())
        with open(tmp_path / "f", "w") as f:
            obj.maps["inode_store"][f.fileno()] = {"calls": 5}
            assert obj.maps["inode_store"][f.fileno()].calls == 5
        fd = os.open(cgroup2_mount(), os.O_RDONLY | os.O_DIRECTORY)
        try:
            obj.maps["cgrp_store"][fd] = {"calls": 7, "last_stack_id": 1}
            assert obj.maps["cgrp_store"][fd].last_stack_id == 1
            obj.maps["cgroups"][0] = fd                  # cgroup array: stores cgroup fds
        finally:
            os.close(fd)


CHILD = """
import os, socket, sys
with open(sys.argv[1] + "/cgroup.procs", "w") as f:
    f.write(str(os.getpid()))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"x" * int(sys.argv[3]), ("127.0.0.1", 9))
"""


@pytest.mark.kernel
def test_cgroup_storage_counts_a_cgroups_packets(no_fd_leak, not_supported_skip):
    with not_supported_skip:
        root = cgroup2_mount()
    cg = os.path.join(root, f"pybpf-{uuid.uuid4().hex[:8]}")
    os.mkdir(cg)
    try:
        with load() as obj:
            link = obj.programs["count_egress"].attach_cgroup(cg)
            assert link.kind == "cgroup"
            packets, payload = 5, 100
            subprocess.run([sys.executable, "-c", CHILD, cg, str(packets), str(payload)], check=True)
            key = {"cgroup_inode_id": os.stat(cg).st_ino, "attach_type": AttachType.CGROUP_INET_EGRESS}
            assert obj.maps["cg_packets"][key] == packets
            # skb->len at cgroup egress: IPv4 (20) + UDP (8) headers + payload, per packet
            assert sum(obj.maps["cg_bytes"][key]) == packets * (20 + 8 + payload)
    finally:
        os.rmdir(cg)


@pytest.mark.kernel
def test_devmap_and_cpumap(no_fd_leak):
    lo = socket.if_nametoindex("lo")
    with load() as obj:
        obj.maps["devmap"][0] = lo
        assert obj.maps["devmap"][0] == lo
        obj.maps["devmap_hash"][77] = {"ifindex": lo}
        assert obj.maps["devmap_hash"][77].ifindex == lo
        obj.maps["cpumap"][0] = {"qsize": 192}
        assert obj.maps["cpumap"][0].qsize == 192


def cookie(sock) -> int:
    return struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


@pytest.mark.kernel
def test_sockmap_sockhash_reuseport_and_xskmap(no_fd_leak):
    with load() as obj, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            with server:
                obj.maps["sockmap"][0] = client.fileno()       # store a socket fd, read its cookie
                obj.maps["sockhash"][42] = server.fileno()
                assert obj.maps["sockmap"][0] == cookie(client)
                assert obj.maps["sockhash"][42] == cookie(server)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            udp.bind(("127.0.0.1", 0))
            obj.maps["reuseport"][1] = udp.fileno()
            assert obj.maps["reuseport"][1] == cookie(udp)
            with pytest.raises(pybpf.SyscallError):
                obj.maps["xskmap"][0] = udp.fileno()           # only AF_XDP sockets


@pytest.mark.kernel
def test_arena_is_mmapable(no_fd_leak, not_supported_skip):
    # the loader maps the arena before loading programs (the kernel fixes its user address at
    # the first mmap): Map.mmap() is that mapping, and a second one elsewhere is refused
    with not_supported_skip, arena_spec().load() as obj:
        arena = obj.maps["arena"]
        info = map_info(arena)
        assert (info.type, info.max_entries) == (ARENA[0], ARENA[3]) and info.map_flags & ARENA[4]
        mm = arena.mmap()
        assert len(mm) == 4 * mmap.PAGESIZE
        mm[:5] = b"arena"
        mm[3 * mmap.PAGESIZE:3 * mmap.PAGESIZE + 3] = b"end"
        assert mm[:5] == b"arena" and mm[3 * mmap.PAGESIZE:3 * mmap.PAGESIZE + 3] == b"end"
        with pytest.raises(OSError):
            mmap.mmap(arena.fd, 4 * mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        del mm


# -- ObjectSpec adjustments before load -------------------------------------------------------------

@pytest.mark.kernel
def test_max_entries_value_size_and_autoload_take_effect(no_fd_leak):
    s = spec()
    s.maps["hash"].max_entries = 7
    s.maps["queue"].max_entries = 3
    s.maps["stacks"].value_size = 20 * 8          # a shallower stack trace map
    s.maps["perf_events"].max_entries = 1
    s.programs["count_egress"].autoload = False
    with s.load() as obj:
        assert map_info(obj.maps["hash"]).max_entries == 7
        assert obj.maps["hash"].max_entries == 7
        assert map_info(obj.maps["stacks"]).value_size == 160
        assert map_info(obj.maps["perf_events"]).max_entries == 1
        assert "count_egress" not in obj.programs and "run" in obj.programs
        for i in range(7):
            obj.maps["hash"][i] = i
        with pytest.raises(pybpf.SyscallError):
            obj.maps["hash"][7] = 7                   # E2BIG: the map holds 7
        for v in range(3):
            obj.maps["queue"].push(v)
        with pytest.raises(pybpf.SyscallError):
            obj.maps["queue"].push(3)


@pytest.mark.kernel
def test_values_adjusted_before_load(no_fd_leak):
    s = spec()
    s.maps["jump_table"].values = {3: "tail_zero"}
    s.maps["outer"].values[1] = "inner_b"
    with s.load() as obj:
        caller = obj.programs["tail_caller"]
        assert [caller.test_run(ctx=struct.pack("<Q", i)).retval for i in range(4)] == [-1, -1, -1, 100]
        obj.maps["inner_b"][0] = 5
        assert run(obj, OP_INNER, key=1) == 5
