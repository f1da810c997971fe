"""Attach targets (tp_btf, iter, fentry...) found without indexing all of vmlinux.

- :meth:`BTF.first_own` finds a type by name and kind straight from the string
  and type sections: the same answer as the by-name index (libbpf's
  ``btf__find_by_name_kind_own``: the first own type), for vmlinux and split BTF;
- a load resolves its attach targets without building vmlinux's name index;
- the targets found are kept for the boot in the authenticated ``core`` cache, so
  a later process loading a known object reads no vmlinux BTF at all.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pybpf
from pybpf.kernel import btf as kbtf
from pybpf.loader import attach_btf
from pybpf.loader.facts import KernelFacts
from pybpf.spec.btf import BTF, Kind

from btf_builder import BTFBuilder
from conftest import ROOT, program

#: attach-style names of every kind the loader asks for, and names that are not there
NAMES = [("btf_trace_sched_switch", Kind.TYPEDEF), ("btf_trace_block_rq_issue", Kind.TYPEDEF),
         ("btf_trace_sys_enter", Kind.TYPEDEF), ("bpf_iter_task", Kind.FUNC), ("bpf_iter_bpf_map_elem", Kind.FUNC),
         ("bpf_lsm_file_open", Kind.FUNC), ("do_sys_openat2", Kind.FUNC), ("schedule", Kind.FUNC),
         ("task_struct", Kind.STRUCT), ("bpf_iter_task", Kind.STRUCT), ("sched_switch", Kind.TYPEDEF),
         ("no_such_function_pybpf", Kind.FUNC), ("btf_trace_sched_switch", Kind.FUNC), ("x", Kind.FUNC)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYBPF_CACHE", raising=False)
    return tmp_path / "cache" / "pybpf"


@pytest.fixture(scope="module")
def indexed():
    """vmlinux BTF with its by-name index (built once: ~0.3 s)."""
    return BTF(open(kbtf.VMLINUX, "rb").read(), source="indexed")


def indexed_first(btf: BTF, name: str, kind: Kind):
    own = [t for t in btf.by_name(name, kind) if t.id >= btf.first_id]
    return own[0].id if own else None


@pytest.mark.kernel
def test_first_own_is_the_indexed_answer_on_vmlinux(indexed):
    direct = BTF(open(kbtf.VMLINUX, "rb").read(), source="direct")
    for name, kind in NAMES:
        t = direct.first_own(name, kind)
        assert (t.id if t else None) == indexed_first(indexed, name, kind), (name, kind)
        if t is not None:
            assert (t.name, t.kind) == (name, kind)
    assert direct._by_name is None                  # answered without the by-name index
    assert direct.first_own("bpf_iter_task", Kind.FUNC) is not None


def test_first_own_in_split_btf_names_in_base_strings_and_tails():
    """A module's types may name strings of the base; a name offset may point into the tail of
    a longer string; records of the same name and other kinds come first; only own types count."""
    b = BTFBuilder()
    i = b.int_("int", 4)
    b.func_proto(0, [])
    b.func("shared_fn", 2)
    base = b.btf()
    m = BTFBuilder(first_id=len(base.types), base_strings=base_strings(base), str_base=len(base._strings))
    m.struct("shared_fn", 4, [("a", i, 0)])                     # same name, another kind
    fn = m.func("shared_fn", 2)                                 # name in the base's strings
    long = m.s("prefix_tail_fn")
    tail = m.add("", 12, 1, 2, name_off=long + len("prefix_"))   # FUNC "tail_fn": a string's tail
    m.func("shared_fn", 2)                                      # a second one: the first is the answer
    mod = m.btf(base=base)
    assert base.first_own("shared_fn", Kind.FUNC).id == 3
    assert mod.first_own("shared_fn", Kind.FUNC).id == fn       # own only: not the base's 3
    assert mod.first_own("tail_fn", Kind.FUNC).id == tail
    assert mod.first_own("prefix_tail_fn", Kind.FUNC) is None   # a string, but no type names it
    assert mod.first_own("shared_fn", Kind.TYPEDEF) is None
    for name, kind in (("shared_fn", Kind.FUNC), ("tail_fn", Kind.FUNC), ("shared_fn", Kind.STRUCT)):
        assert mod.first_own(name, kind).id == indexed_first(m.btf(base=base), name, kind)


def base_strings(btf: BTF) -> dict:
    out, pos = {}, 0
    for s in btf._strings.split(b"\0")[:-1]:
        out.setdefault(s.decode(), pos)
        pos += len(s) + 1
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["tools_runqlat", "tools_biolatency", "tools_exitsnoop"])
def test_a_load_builds_no_name_index_of_vmlinux(name, cache, indexed, no_fd_leak):
    kbtf.forget()
    facts = KernelFacts.running()
    spec = pybpf.open(program(name))
    with spec.load(facts=facts) as obj:
        vmlinux = facts.btf
        assert vmlinux._by_name is None
        ids = {n: attach_btf.resolve_attach_btf(p.spec, facts).btf_id for n, p in obj.programs.items()
               if p.spec.section.startswith(("tp_btf/", "iter/"))}
        assert ids
    for n, btf_id in ids.items():
        p = spec.programs[n]
        type_name, kind = attach_btf.target_type(p.expected_attach_type, p.attach_target)
        assert btf_id == indexed_first(indexed, type_name, kind), n


SCRIPT = """\
import sys, pybpf
from pybpf.kernel import btf
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import ProgInfo
ids = []
with pybpf.load(sys.argv[1]) as obj:
    for name, p in sorted(obj.programs.items()):
        info = ProgInfo()
        sc.obj_get_info_by_fd(p.fd, info)
        ids.append(f"{name}={info.attach_btf_id}")
print(" ".join(ids))
print(bool(btf._by_path))
"""


@pytest.mark.kernel
def test_later_processes_take_attach_targets_from_the_boot_cache(cache, tmp_path):
    """First process: vmlinux read and searched.  A later one loading the same object reads
    no vmlinux BTF, and a new object (another build) with the same targets finds them in the
    boot's cache too; the kernel got the same attach_btf_id every time."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))
    env.pop("PYBPF_CACHE", None)

    def run(path):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, path], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split("\n")[:2]

    first = run(program("tools_runqlat"))
    assert first[1] == "True"
    entries = [p.name for p in (cache / "core").iterdir() if p.name.startswith("attach-")]
    assert len(entries) == 1
    text = (cache / "core" / entries[0]).read_bytes()
    assert b"TYPEDEF btf_trace_sched_switch " in text
    again = run(program("tools_runqlat"))
    assert again == [first[0], "False"]                 # no vmlinux BTF read at all
    # the object as another build: parsed and relocated again, attach targets from the cache
    rebuilt = tmp_path / "rebuilt.o"
    rebuilt.write_bytes(open(program("tools_runqlat"), "rb").read() + b"\0" * 8)
    assert run(str(rebuilt))[0] == first[0]
    ids = dict(kv.split("=") for kv in first[0].split())
    assert all(int(v) > 0 for k, v in ids.items() if not k.endswith("_raw"))


@pytest.mark.kernel
def test_no_attach_cache_with_pybpf_cache_0(cache, monkeypatch, no_fd_leak):
    monkeypatch.setenv("PYBPF_CACHE", "0")
    attach_btf._boot_caches.clear()
    with pybpf.load(program("tools_runqlat")) as obj:
        assert obj.programs["sched_switch"].fd >= 0
    assert not cache.exists()
