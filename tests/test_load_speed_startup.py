"""What a process pays before and around a load (issue 15, part 4).

- ``import pybpf`` imports only ``pybpf.errors``: the runtime classes and the spec classes
  are lazy attributes, and every public name still works (``from pybpf import X``,
  ``dir(pybpf)``, ``pybpf.maps()``), as does ``ObjectSpec.load()`` on a spec made before
  ``pybpf.collection`` was imported;
- a load whose object is in the spec cache imports no pyelftools, nor enum, signal or threading,
  nor the CO-RE matching engine, nor the layouts of attaching and links;
- BTF feature probes are kept for the boot in the authenticated ``core`` cache, and an entry
  that is not exactly what pybpf writes is never used;
- ``BTF.validate`` (now read from the record words) raises what decoding every type did.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

import pybpf
from pybpf import _cache
from pybpf.errors import BTFError
from pybpf.loader import sanitize as S
from pybpf.spec.btf import BTF, Kind

from conftest import PROGRAMS, ROOT, program


def run_python(code: str, env: dict | None = None) -> str:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_pybpf_imports_only_errors():
    out = run_python("import sys, pybpf\n"
                     "print(' '.join(sorted(m for m in sys.modules if m.startswith('pybpf'))))\n"
                     "print('ctypes' in sys.modules, 'elftools' in sys.modules)")
    mods, flags = out.splitlines()
    assert mods.split() == ["pybpf", "pybpf.errors"]
    assert flags == "False False"


def test_public_names_resolve():
    out = run_python(
        "import pybpf\n"
        "names = list(pybpf.__all__)\n"
        "assert set(names) <= set(dir(pybpf)), set(names) - set(dir(pybpf))\n"
        "values = {n: getattr(pybpf, n) for n in names}\n"
        "from pybpf import *\n"
        "import pybpf.collection, pybpf.maps, pybpf.programs, pybpf.spec.object as so\n"
        "assert pybpf.Object is pybpf.collection.Object and pybpf.Map is pybpf.maps.Map\n"
        "assert pybpf.Program is pybpf.programs.Program and pybpf.ObjectSpec is so.ObjectSpec\n"
        "assert callable(pybpf.maps) and callable(pybpf.programs) and callable(pybpf.links)\n"
        "assert pybpf.kernel.syscall.bpf and pybpf.loader.load_spec\n"
        "try:\n"
        "    pybpf.no_such_name\n"
        "except AttributeError as e:\n"
        "    print(e)\n")
    assert out.strip() == "module 'pybpf' has no attribute 'no_such_name'"


@pytest.mark.kernel
def test_spec_made_before_the_runtime_loads():
    """pybpf.spec.object imported first (no pybpf.collection yet): its ObjectSpec.load() still
    makes a pybpf.Object."""
    out = run_python(
        "import sys\n"
        "from pybpf.spec.object import ObjectSpec\n"
        f"spec = ObjectSpec.from_file({program('tools_runqlat')!r})\n"
        "assert 'pybpf.collection' not in sys.modules\n"
        "with spec.load() as obj:\n"
        "    import pybpf\n"
        "    print(type(obj) is pybpf.Object, sorted(obj.programs)[0])\n")
    assert out.split() == ["True", "sched_switch"]


@pytest.mark.kernel
def test_cached_object_loads_without_pyelftools(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import sys, pybpf\n"
            f"pybpf.load({program('tools_runqlat')!r}).close()\n"
            "print('elftools' in sys.modules)\n"
            "print(sorted(m for m in ('enum', 'signal', 'threading', 'pybpf.loader.core', 'pybpf.kernel.link_attrs') if m in sys.modules))")
    assert run_python(code, env).splitlines()[0] == "True"          # parsed: pyelftools
    # from the spec cache: no pyelftools, none of the stdlib modules whose import cost ~5 ms
    # (pybpf's enums are pybpf._enum's; signal deferral uses _signal and _thread), and not the
    # CO-RE matching engine (the resolutions are cached: pybpf.loader.core_relo applies them),
    # nor the ctypes layouts of attaching and links
    assert run_python(code, env).splitlines() == ["False", "[]"]


# -- BTF feature probes, per boot -------------------------------------------------------------

@pytest.fixture
def probes(tmp_path, monkeypatch):
    """An empty cache, no features known in this process, and the BPF_BTF_LOADs counted."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYBPF_CACHE", raising=False)
    monkeypatch.setattr(S, "_probed", None)
    calls = []
    real = S.kernel_accepts
    monkeypatch.setattr(S, "kernel_accepts", lambda blob: calls.append(blob) or real(blob))
    return calls


@pytest.mark.kernel
def test_features_are_probed_once_per_boot(probes, monkeypatch):
    first = S.running_features()
    assert first == S.ALL_FEATURES and len(probes) == len(S._PROBES)
    assert S.running_features() is first and len(probes) == len(S._PROBES)    # this process
    monkeypatch.setattr(S, "_probed", None)                                     # a later process
    assert S.running_features() == first and len(probes) == len(S._PROBES)
    assert S.kernel_btf(pybpf.open(program("tools_runqlat")).btf) is not None


@pytest.mark.kernel
def test_features_entry_is_verified(probes, monkeypatch):
    S.running_features()
    name = S._features_entry()
    path = os.path.join(_cache.folder("core"), name)
    raw = bytearray(open(path, "rb").read())
    raw[-2] ^= 1                                       # "1" -> "0": the MAC no longer matches
    with open(path, "wb") as f:
        f.write(raw)
    monkeypatch.setattr(S, "_probed", None)
    assert S.running_features() == S.ALL_FEATURES and len(probes) == 2 * len(S._PROBES)
    # an authenticated entry that is not what pybpf writes: probed again, never half-read
    for body in (b"", b"btf 1\n", b"btf 2\n" * len(S._FEATURES),
                 "".join(f"{n} 0\n" for n in reversed(S._FEATURES)).encode(),
                 "".join(f"{n} 1\n" for n in S._FEATURES).encode() + b"extra 1\n"):
        _cache.write("core", name, body)
        monkeypatch.setattr(S, "_probed", None)
        before = len(probes)
        assert S.running_features() == S.ALL_FEATURES and len(probes) == before + len(S._PROBES)


def test_features_not_cached_when_off(probes, monkeypatch):
    monkeypatch.setenv("PYBPF_CACHE", "0")
    assert S._features_entry() is None


def test_decode_features():
    every = "".join(f"{n} 1\n" for n in S._FEATURES).encode()
    assert S._decode_features(every) == S.ALL_FEATURES
    none = "".join(f"{n} {int(n == 'btf')}\n" for n in S._FEATURES).encode()
    assert S._decode_features(none) == S.NO_FEATURES
    for bad in (every[:-1], every + b"\n", every.replace(b" 1", b" 01", 1), every.replace(b"btf", b"BTF", 1),
                b"\xff" + every, every.replace(b"\n", b"\r\n")):
        assert S._decode_features(bad) is None, bad


# -- BTF.validate from the words --------------------------------------------------------------

def _decode_all_validate(btf: BTF) -> None:
    """The validation that decoded every type (before issue 15 part 4)."""
    n = len(btf.types)
    for t in btf:
        refs = []
        if t.kind in (Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.FUNC,
                      Kind.VAR, Kind.DECL_TAG, Kind.TYPE_TAG, Kind.FUNC_PROTO):
            refs.append(t.size_or_type)
        elif t.kind == Kind.ARRAY:
            refs += [t.elem_type, t.index_type]
        refs += [m.type_id for m in t.members] + [p.type_id for p in t.params] + [s.type_id for s in t.secinfos]
        for r in refs:
            if r >= n:
                raise btf._fail(f"type [{t.id}] {t.kind.name} '{t.name}' refers to type id {r}, "
                                f"but there are only {n - 1} types")


def _outcome(raw: bytes, check) -> str | None:
    try:
        check(BTF(raw, source="x"))
    except BTFError as e:
        return str(e)
    return None


def test_validate_finds_what_decoding_found():
    blobs = []
    for p in sorted(PROGRAMS.glob("*.o")):
        try:
            btf = pybpf.open(str(p)).btf
        except pybpf.Error:         # objects made to be refused
            continue
        if btf is not None:
            blobs.append(bytes(btf.raw))
    assert len(blobs) > 20
    rng = random.Random(15)
    errors = 0
    for raw in blobs:
        assert _outcome(raw, BTF.validate) is None
        for _ in range(40):
            m = bytearray(raw)
            for _ in range(rng.randint(1, 3)):
                m[rng.randrange(24, len(m))] = rng.randrange(256) if rng.random() < 0.7 else 0xFF
            got, want = _outcome(bytes(m), BTF.validate), _outcome(bytes(m), _decode_all_validate)
            assert got == want
            errors += got is not None
    assert errors > 100         # the mutations reach the checks
