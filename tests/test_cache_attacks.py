"""pybpf's disk caches under attack: another user who can write the cache's folders (sudo -E,
su without -, a HOME kept by sudo) must not be able to make root delete files, hang, or load
what the object does not hold; a damaged entry of root's own is never used.

Each test plants what an attacker would and checks the outcome a user would see (the programs,
the instructions, the CO-RE offsets, the files left), not pybpf's internals.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import pytest

import pybpf
from pybpf import _cache
from pybpf.loader import core
from pybpf.loader.facts import KernelFacts
from pybpf.spec.object import ObjectSpec

from conftest import ROOT, program

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of our own for one test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYBPF_CACHE", raising=False)
    monkeypatch.setattr(_cache, "_secrets", {})
    return tmp_path / "cache" / "pybpf"


def copy_object(name: str, where) -> str:
    dst = where / f"{name}.o"
    shutil.copyfile(program(name), dst)
    return str(dst)


def programs_of(name: str) -> set:
    return set(ObjectSpec(open(program(name), "rb").read()).programs)


def insns(spec: ObjectSpec) -> dict:
    return {n: bytes(p.function.insns) for n, p in spec.programs.items()}


def only_entry(folder):
    (entry,) = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entry


# -- the folders ------------------------------------------------------------------------------------

def test_a_symlinked_cache_folder_is_not_used_and_nothing_is_deleted_through_it(cache, tmp_path, monkeypatch):
    """btf/ (or spec/) made a symlink to a folder of the attacker's choosing: root's trimming
    would delete files there. The cache is not used; the victim's files stay."""
    victim = tmp_path / "victim"
    victim.mkdir()
    for i in range(5):
        (victim / f"precious{i}.pickle").write_bytes(b"data")
    cache.mkdir(parents=True)
    (cache / "spec").symlink_to(victim)
    monkeypatch.setitem(_cache.LIMITS, "spec", 1)
    path = copy_object("globals_test", tmp_path)
    for i in range(3):
        with open(path, "ab") as f:
            f.write(b"\0" * (i + 1))          # a new object each time: a new entry, a trim
        assert set(ObjectSpec.from_file(path).programs) == programs_of("globals_test")
    assert sorted(p.name for p in victim.iterdir()) == [f"precious{i}.pickle" for i in range(5)]


def test_a_symlink_above_the_cache_is_not_followed(cache, tmp_path, monkeypatch):
    """$XDG_CACHE_HOME itself a symlink into another place: not used, nothing written there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "linked-cache"
    link.symlink_to(elsewhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(link))
    path = copy_object("globals_test", tmp_path)
    ObjectSpec.from_file(path)
    assert list(elsewhere.iterdir()) == []


@needs_root
@pytest.mark.parametrize("owned_by_other", ["XDG_CACHE_HOME", "pybpf", "spec"])
def test_a_folder_owned_by_another_user_is_not_used(owned_by_other, cache, tmp_path):
    """sudo -E with the user's XDG_CACHE_HOME: the folders are the user's, so root neither reads
    the entries there (they could be anything) nor writes into them."""
    path = copy_object("globals_test", tmp_path)
    ObjectSpec.from_file(path)                       # root's own entry, valid
    entry = only_entry(cache / "spec")
    _cache.write("spec", entry.name, _planted(path))    # what an attacker would leave: another object
    folder = {"XDG_CACHE_HOME": cache.parent, "pybpf": cache, "spec": cache / "spec"}[owned_by_other]
    os.chown(folder, NOBODY, NOBODY)
    assert set(ObjectSpec.from_file(path).programs) == programs_of("globals_test")
    before = sorted(p.name for p in (cache / "spec").iterdir())
    ObjectSpec.from_file(copy_object("calls_test", tmp_path))
    assert sorted(p.name for p in (cache / "spec").iterdir()) == before    # nothing written there


def test_a_group_writable_cache_folder_is_not_used(cache, tmp_path):
    path = copy_object("globals_test", tmp_path)
    ObjectSpec.from_file(path)
    entry = only_entry(cache / "spec")
    _cache.write("spec", entry.name, _planted(path))
    os.chmod(cache / "spec", 0o770)
    assert set(ObjectSpec.from_file(path).programs) == programs_of("globals_test")


# -- the entries ------------------------------------------------------------------------------------

def _planted(path: str) -> bytes:
    """A well-formed entry for ``path`` holding another object (calls_test)."""
    return _cache.pickle.dumps(ObjectSpec(open(program("calls_test"), "rb").read(), path=path), protocol=-1)


def test_a_fifo_at_the_entry_name_does_not_hang(cache, tmp_path):
    path = copy_object("globals_test", tmp_path)
    ObjectSpec.from_file(path)
    entry = only_entry(cache / "spec")
    entry.unlink()
    os.mkfifo(entry, 0o600)
    result = []
    t = threading.Thread(target=lambda: result.append(ObjectSpec.from_file(path)), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():        # unblock the reader so the test run can go on, then fail
        fd = os.open(entry, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("reading the cache blocked on a FIFO")
    assert set(result[0].programs) == programs_of("globals_test")


def test_an_older_entry_renamed_to_the_new_name_is_not_used(cache, tmp_path):
    """The object at a path changed (a recompile): an attacker renames root's entry of the old
    content to the new content's name. The old programs must not come back."""
    path = str(tmp_path / "obj.o")
    shutil.copyfile(program("calls_test"), path)
    ObjectSpec.from_file(path)
    old = only_entry(cache / "spec")
    shutil.copyfile(program("globals_test"), path)
    ObjectSpec.from_file(path)
    (new,) = [p for p in (cache / "spec").iterdir() if p != old and not p.name.startswith(".")]
    os.replace(old, new)
    assert set(ObjectSpec.from_file(path).programs) == programs_of("globals_test")


def test_a_bit_flipped_entry_is_not_used(cache, tmp_path):
    """One instruction byte changed inside root's own entry (a disk error, a stray write): the
    pickle still loads, so only the MAC tells."""
    path = copy_object("globals_test", tmp_path)
    fresh = insns(ObjectSpec.from_file(path))
    entry = only_entry(cache / "spec")
    raw = bytearray(entry.read_bytes())
    code = next(iter(fresh.values()))
    at = raw.find(code[:16])
    assert at > 0, "the instructions are stored as they are"
    raw[at + 4] ^= 0x01                       # an immediate of the first instruction
    entry.write_bytes(bytes(raw))
    assert insns(ObjectSpec.from_file(path)) == fresh


def test_a_truncated_entry_is_not_used(cache, tmp_path):
    path = copy_object("globals_test", tmp_path)
    fresh = insns(ObjectSpec.from_file(path))
    entry = only_entry(cache / "spec")
    entry.write_bytes(entry.read_bytes()[:-1])
    assert insns(ObjectSpec.from_file(path)) == fresh


@pytest.mark.kernel
def test_swapped_core_entries_give_each_object_its_own_offsets(cache, tmp_path):
    """Two objects resolved for the running kernel, their two resolution entries swapped: each
    object must still get its own CO-RE offsets (the verifier cannot tell wrong ones)."""
    def fresh(path):
        spec = pybpf.open(path)
        programs = {p.name for p in spec.programs.values() if p.autoload}
        return spec, programs

    a = copy_object("core_read", tmp_path)
    spec_a, progs = fresh(a)
    want = {k: r.new for k, r in core.resolve_object(spec_a, KernelFacts.running(), progs).items()}
    c = copy_object("core_heavy", tmp_path)
    spec_c, progs_c = fresh(c)
    core.resolve_object(spec_c, KernelFacts.running(), progs_c)
    entries = sorted((cache / "core").glob("*.pickle"))
    assert len(entries) == 2
    x, y = entries
    tmp = x.with_name("swap")
    os.replace(x, tmp)
    os.replace(y, x)
    os.replace(tmp, y)
    spec_a2, _ = fresh(a)
    got = {k: r.new for k, r in core.resolve_object(spec_a2, KernelFacts.running(), progs).items()}
    assert got == want


@pytest.mark.kernel
def test_a_damaged_vmlinux_index_is_not_used(cache, tmp_path):
    """The record index of vmlinux BTF, one offset changed in the middle: types must still come
    out right (a check of the last record alone does not see it)."""
    script = ("import hashlib\n"
              "from pybpf.kernel.btf import vmlinux_btf\n"
              "b = vmlinux_btf()\n"
              "types = repr([(b[i].kind, b[i].name, b[i].size_or_type) for i in range(1, len(b))])\n"
              "print(len(b), hashlib.sha256(types.encode()).hexdigest())\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))

    def run():
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    first = run()
    (entry,) = (cache / "btf").glob("*.idx")
    raw = bytearray(entry.read_bytes())
    middle = len(raw) // 2 // 4 * 4
    raw[middle:middle + 4] = (int.from_bytes(raw[middle:middle + 4], "little") + 4).to_bytes(4, "little")
    entry.write_bytes(bytes(raw))
    assert run() == first


def test_trimming_removes_only_what_pybpf_wrote(cache, tmp_path, monkeypatch):
    """A file that is not a pybpf entry, in pybpf's own folder, survives the trimming."""
    monkeypatch.setitem(_cache.LIMITS, "spec", 1)
    path = copy_object("globals_test", tmp_path)
    ObjectSpec.from_file(path)
    (cache / "spec" / "notes.txt").write_text("mine")
    for i in range(3):
        with open(path, "ab") as f:
            f.write(b"\0")
        ObjectSpec.from_file(path)
    assert (cache / "spec" / "notes.txt").read_text() == "mine"
    assert len([p for p in (cache / "spec").iterdir() if p.name.endswith(".pickle")]) == 1


class _Plant:
    """A pickle that runs code when loaded: REDUCE of a global (here: write a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_an_entry_with_a_valid_mac_still_runs_no_code(cache, tmp_path):
    """Second line behind the MAC: an entry that got past it (a leaked secret, a bug) can name
    only pybpf's own data classes, so a pickle calling exec() is refused and the object parsed
    again, and the code never runs."""
    from pybpf._cache import pickle
    path = copy_object("globals_test", tmp_path)
    fresh = insns(ObjectSpec.from_file(path))
    entry = only_entry(cache / "spec")
    marker = tmp_path / "ran"
    _cache.write("spec", entry.name, pickle.dumps(_Plant(str(marker)), protocol=-1))
    assert _cache.read("spec", entry.name) is not None, "the planted entry passes the MAC"
    assert insns(ObjectSpec.from_file(path)) == fresh
    assert not marker.exists()


@pytest.mark.kernel
def test_a_core_entry_with_a_valid_mac_still_runs_no_code(cache, tmp_path):
    from pybpf._cache import pickle
    path = copy_object("core_read", tmp_path)
    spec = pybpf.open(path)
    progs = {p.name for p in spec.programs.values() if p.autoload}
    want = {k: r.new for k, r in core.resolve_object(spec, KernelFacts.running(), progs).items()}
    (entry,) = (cache / "core").glob("*.pickle")
    marker = tmp_path / "ran"
    _cache.write("core", entry.name, pickle.dumps(_Plant(str(marker)), protocol=-1))
    got = {k: r.new for k, r in core.resolve_object(pybpf.open(path), KernelFacts.running(), progs).items()}
    assert got == want
    assert not marker.exists()
