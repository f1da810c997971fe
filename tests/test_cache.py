"""pybpf's disk caches (pybpf/_cache.py): parsed objects and CO-RE resolutions.

A cached result must be the result: the same spec and relocations as without the
cache, found again only for the same object content, path, parser code and
kernel; never read when someone else could have written it; never needed
(PYBPF_CACHE=0, a broken entry, an unwritable folder).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import pytest

import pybpf
from pybpf import _cache
from pybpf.loader import core
from pybpf.loader.facts import KernelFacts
from pybpf.spec.object import ObjectSpec

from conftest import ROOT, program


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of our own for one test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYBPF_CACHE", raising=False)
    return tmp_path / "cache" / "pybpf"


def spec_summary(spec: ObjectSpec) -> dict:
    """What a user reads from a spec: programs (bytes, section, type), maps, variables, BTF."""
    return {
        "programs": {n: (p.section, bytes(p.function.insns), p.prog_type, p.license, p.autoload,
                         p.attach_target) for n, p in spec.programs.items()},
        "maps": {n: (m.type, m.key_size, m.value_size, m.max_entries, m.flags, bytes(m.data or b""))
                 for n, m in spec.maps.items()},
        "variables": {n: (v.map, v.offset, v.size, v.type_id) for n, v in spec.variables.items()},
        "btf": spec.btf.to_bytes() if spec.btf else None,
        "core_relos": {s: [(r.insn_off, r.type_id, r.access_str_off, r.kind) for r in recs]
                       for s, recs in spec.btf_ext.core_relos.items()} if spec.btf_ext else None,
    }


def copy_object(name: str, tmp_path) -> str:
    dst = tmp_path / f"{name}.o"
    shutil.copyfile(program(name), dst)
    return str(dst)


def forbid_parsing(monkeypatch):
    def refuse(self, data):
        raise AssertionError("parsed although the object is in the cache")
    monkeypatch.setattr(ObjectSpec, "_parse", refuse)


# -- parsed objects ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["user_ringbuf", "core_heavy", "globals_test", "calls_test", "map_types"])
def test_cached_spec_is_the_parsed_spec(name, cache, tmp_path, monkeypatch):
    path = copy_object(name, tmp_path)
    first = ObjectSpec.from_file(path)
    entries = list((cache / "spec").iterdir())
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == 0o600
    fresh = spec_summary(ObjectSpec(open(path, "rb").read(), path=path))
    forbid_parsing(monkeypatch)
    again = ObjectSpec.from_file(path)
    assert again is not first and again.path == path
    assert spec_summary(again) == fresh == spec_summary(first)


def test_a_changed_object_is_parsed_again(cache, tmp_path, monkeypatch):
    path = str(tmp_path / "obj.o")
    shutil.copyfile(program("globals_test"), path)
    a = ObjectSpec.from_file(path)
    shutil.copyfile(program("calls_test"), path)          # same path, other content
    b = ObjectSpec.from_file(path)
    assert set(b.programs) == set(ObjectSpec(open(program("calls_test"), "rb").read()).programs)
    assert set(a.programs) != set(b.programs)
    assert len(list((cache / "spec").iterdir())) == 2


def test_the_same_content_at_another_path_keeps_its_own_name(cache, tmp_path):
    """Internal map names come from the object's file name (libbpf): the path is in the key."""
    a = copy_object("globals_test", tmp_path)
    other = tmp_path / "sub"
    other.mkdir()
    b = str(other / "renamed.o")
    shutil.copyfile(a, b)
    sa, sb = ObjectSpec.from_file(a), ObjectSpec.from_file(b)
    assert sb.path == b and sb.name == "renamed"
    assert {m.name for m in sb.maps.values() if m.name.startswith("renamed")}
    assert not {m.name for m in sa.maps.values() if m.name.startswith("renamed")}


def test_parser_code_changes_are_never_served_old_entries(cache, tmp_path, monkeypatch):
    path = copy_object("globals_test", tmp_path)
    ObjectSpec.from_file(path)
    monkeypatch.setitem(_cache._stamps, ("spec",), b"another-parser")
    ObjectSpec.from_file(path)
    assert len(list((cache / "spec").iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_class", "group_writable"])
def test_an_untrustworthy_entry_is_ignored(damage, cache, tmp_path):
    path = copy_object("globals_test", tmp_path)
    expected = spec_summary(ObjectSpec.from_file(path))
    (entry,) = (cache / "spec").iterdir()
    if damage == "garbage":
        entry.write_bytes(b"\x80\x05not a pickle")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:100])
    elif damage == "other_class":
        entry.write_bytes(pickle.dumps({"not": "a spec"}))
    else:
        # someone else could have written it: a well-formed planted entry is not even unpickled
        entry.write_bytes(planted_entry(path))
        entry.chmod(0o664)
    assert spec_summary(ObjectSpec.from_file(path)) == expected


def planted_entry(path: str) -> bytes:
    """A valid entry for ``path`` holding another object (calls_test) than the file."""
    return pickle.dumps(ObjectSpec(open(program("calls_test"), "rb").read(), path=path))


def test_an_entry_of_another_user_is_ignored(cache, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = copy_object("globals_test", tmp_path)
    ObjectSpec.from_file(path)
    (entry,) = (cache / "spec").iterdir()
    _cache.write("spec", entry.name, planted_entry(path))     # well-formed, with a valid MAC
    entry.chmod(0o600)
    assert set(ObjectSpec.from_file(path).programs) == set(pybpf.open(program("calls_test")).programs)
    os.chown(entry, 65534, 65534)                            # the same entry, someone else's
    assert set(ObjectSpec.from_file(path).programs) == set(pybpf.open(program("globals_test")).programs)


def test_pybpf_cache_0_reads_and_writes_nothing(cache, tmp_path, monkeypatch):
    path = copy_object("globals_test", tmp_path)
    monkeypatch.setenv("PYBPF_CACHE", "0")
    ObjectSpec.from_file(path)
    ObjectSpec.from_file(path)
    assert not cache.exists()


def test_an_unwritable_cache_folder_is_not_an_error(tmp_path, monkeypatch):
    """The spec read with a cache folder that cannot be made is the spec read without any cache,
    every time, and nothing is written in place of the folder."""
    path = copy_object("globals_test", tmp_path)
    monkeypatch.setenv("PYBPF_CACHE", "0")
    uncached = spec_summary(ObjectSpec.from_file(path))
    monkeypatch.delenv("PYBPF_CACHE")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))       # pybpf/ cannot be made under a file
    for _ in range(2):
        assert spec_summary(ObjectSpec.from_file(path)) == uncached
    assert blocked.is_file() and blocked.read_text() == ""
    assert uncached["programs"]                              # the object was read, not an empty spec


def test_errors_are_not_cached(cache, tmp_path):
    path = tmp_path / "bad.o"
    path.write_bytes(open(program("globals_test"), "rb").read()[:300])
    for _ in range(2):
        with pytest.raises(pybpf.ObjectError):
            ObjectSpec.from_file(str(path))
    assert not (cache / "spec").exists()


# -- CO-RE resolutions for the running kernel -------------------------------------------------------

def resolution_values(out: dict) -> dict:
    return {k: (r.kind, r.orig, r.new, r.poison, r.validate, r.orig_sz, r.new_sz, r.reason, r.error,
                r.local.format() if r.local else None) for k, r in out.items()}


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["core_read", "core_fail", "core_heavy"])
def test_cached_resolutions_are_the_resolutions(name, cache, monkeypatch):
    spec = pybpf.open(program(name))
    programs = {p.name for p in spec.programs.values() if p.autoload}
    fresh = core.resolve_object(spec, KernelFacts.running(), programs)
    assert len(list((cache / "core").glob("*.pickle"))) == 1

    def refuse(*args):
        raise AssertionError("resolved although the resolutions are in the cache")
    monkeypatch.setattr(core, "_resolve_object", refuse)
    facts = KernelFacts.running()
    cached = core.resolve_object(pybpf.open(program(name)), facts, programs)
    assert resolution_values(cached) == resolution_values(fresh)
    assert facts._btf is None                       # vmlinux BTF was not even read
    assert all(r.target is None for r in cached.values())


@pytest.mark.kernel
def test_resolutions_are_cached_only_for_the_running_kernels_own_btf(cache):
    from pybpf.kernel.btf import vmlinux_btf
    spec = pybpf.open(program("core_read"))
    programs = {p.name for p in spec.programs.values() if p.autoload}
    core.resolve_object(spec, KernelFacts(btf=vmlinux_btf()), programs)
    core.resolve_object(spec, KernelFacts.running(btf=vmlinux_btf()), programs)
    assert not list((cache / "core").glob("*.pickle")) if (cache / "core").exists() else True
    assert KernelFacts.running().kernel_btf_identity().split()[0] == \
        open("/proc/sys/kernel/random/boot_id").read().strip()


@pytest.mark.kernel
def test_another_kernel_btf_set_misses(cache, monkeypatch):
    spec = pybpf.open(program("core_read"))
    programs = {p.name for p in spec.programs.values() if p.autoload}
    core.resolve_object(spec, KernelFacts.running(), programs)
    # a module loaded since (or a reboot): another identity, another entry
    monkeypatch.setattr(KernelFacts, "kernel_btf_identity", lambda self: "other-boot vmlinux:1 mod:2")
    core.resolve_object(pybpf.open(program("core_read")), KernelFacts.running(), programs)
    assert len(list((cache / "core").glob("*.pickle"))) == 2


@pytest.mark.kernel
def test_a_second_process_loads_without_pyelftools_or_vmlinux_btf(cache, no_fd_leak):
    """The point of the caches: loading the same CO-RE object again neither parses the ELF
    nor reads the kernel's BTF, and the program loaded from cache is the same program."""
    script = ("import sys, pybpf\n"
              "from pybpf.kernel import syscall as sc\n"
              "from pybpf.kernel.attrs import ProgInfo\n"
              "tags = []\n"
              "with pybpf.load(sys.argv[1]) as obj:\n"
              "    for p in obj.programs.values():\n"
              "        info = ProgInfo()\n"
              "        sc.obj_get_info_by_fd(p.fd, info)\n"
              "        tags.append(bytes(info.tag).hex())\n"
              "print(' '.join(sorted(tags)))\n"
              "print(any(m.startswith('elftools') for m in sys.modules))\n"
              "from pybpf.kernel import btf\n"
              "print(bool(btf._by_path))\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))

    def run():
        proc = subprocess.run([sys.executable, "-c", script, program("core_heavy")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split("\n")
    tags1, elf1, btf1, _ = run()
    tags2, elf2, btf2, _ = run()
    assert (elf1, btf1) == ("True", "True")           # the first process parsed and read vmlinux
    assert (elf2, btf2) == ("False", "False")         # the second did neither
    assert tags1 == tags2 and tags1                     # and loaded the very same instructions


def test_each_cache_keeps_the_most_recently_used_entries(cache, monkeypatch):
    """A lab recompiles an object hundreds of times: the folder stays bounded, dropping
    what was used longest ago (a read counts as a use)."""
    monkeypatch.setitem(_cache.LIMITS, "spec", 5)
    base = 1_000_000_000
    for i in range(5):
        _cache.write("spec", f"e{i}.pickle", b"x")
        os.utime(cache / "spec" / f"e{i}.pickle", ns=(base + i, base + i))   # e0 oldest ... e4 newest
    assert _cache.read("spec", "e0.pickle") == b"x"                            # e0 used: now the newest
    _cache.write("spec", "e5.pickle", b"y")
    _cache.write("spec", "e6.pickle", b"z")
    assert sorted(p.name[:2] for p in (cache / "spec").iterdir()) == ["e0", "e3", "e4", "e5", "e6"]


def test_a_full_folder_loses_its_oldest_eighth_at_once(cache, monkeypatch):
    """Over its bound, a folder is trimmed to 7/8 of it, oldest first: the pass that stats
    every entry then runs once per bound/8 writes, not on every write."""
    monkeypatch.setitem(_cache.LIMITS, "spec", 16)
    base = 1_000_000_000
    for i in range(16):
        _cache.write("spec", f"e{i:02}.pickle", b"x")
        os.utime(cache / "spec" / f"e{i:02}.pickle", ns=(base + i, base + i))
    stats = []
    real_scandir = os.scandir
    monkeypatch.setattr(_cache.os, "scandir", lambda fd: stats.append(fd) or real_scandir(fd))
    _cache.write("spec", "e16.pickle", b"x")                 # 17 > 16: down to 14, the newest
    assert sorted(p.name for p in (cache / "spec").iterdir()) == [f"e{i:02}.pickle" for i in range(3, 17)]
    assert len(stats) == 1
    _cache.write("spec", "e17.pickle", b"x")                  # 15 <= 16: no pass at all
    _cache.write("spec", "e18.pickle", b"x")
    assert len(stats) == 1 and len(list((cache / "spec").iterdir())) == 16


def test_an_object_that_cannot_be_pickled_is_just_not_cached(cache, tmp_path, monkeypatch):
    path = copy_object("globals_test", tmp_path)
    original = ObjectSpec._parse

    def parse_with_a_lock(self, data):
        original(self, data)
        import threading
        self._lock = threading.Lock()       # cannot be pickled
    monkeypatch.setattr(ObjectSpec, "_parse", parse_with_a_lock)
    assert set(ObjectSpec.from_file(path).programs) == set(pybpf.open(program("globals_test")).programs)
    assert not (cache / "spec").exists()
