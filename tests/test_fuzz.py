"""A seeded fuzz of ``open``, ``inspect`` and ``btf dump`` (the engine is tools/fuzz.py).

Structure-aware mutants of the objects under programs/ (fields of .BTF, .BTF.ext,
the map definitions, relocations, the symbol table, section headers) must give
success or a pybpf.Error: any other exception, a RecursionError or a mutant
slower than the per-mutant timeout fails the test, with the command replaying
it.  The run is a subprocess, so its memory is measured alone (its VmHWM) and
a runaway allocation cannot take pytest down.  The long run is
``python tools/fuzz.py --minutes 10``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

SEED = 20240601
COUNT = 3000
TIMEOUT = 5        # seconds per mutant and path
RSS_LIMIT_MB = 256


def _engine():
    spec = importlib.util.spec_from_file_location("pybpf_fuzz", ROOT / "tools" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def campaign():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz.py"), "--seed", str(SEED), "--count", str(COUNT),
                        "--timeout", str(TIMEOUT), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def test_mutants_give_success_or_a_pybpf_error(campaign):
    defects = "\n".join(f"{d['object']} {d['target']} {d['path']}: {d['result']}\n    changes {d['changes']}\n"
                        f"    replay: {d['replay']}" for d in campaign["defects"])
    assert not campaign["defects"], f"{len(campaign['defects'])} defects:\n{defects}"
    assert campaign["mutants"] == COUNT


def test_memory_stays_bounded(campaign):
    assert campaign["max_rss_mb"] < RSS_LIMIT_MB


def test_every_target_reaches_every_path(campaign):
    """The mutants are not all refused at the door: each target gets objects through open
    (so inspect runs on them) and some refused, and btf dump sees both outcomes overall."""
    figures = campaign["figures"]
    assert set(figures) == set(_engine().TARGETS)
    for target, paths in figures.items():
        assert paths["open"]["tried"] > 100, target
        assert paths["open"]["ok"] and paths["inspect"]["tried"], target
    for target in ("btf_header", "btf_types", "maps", "symtab", "relocations", "section_headers", "btf_ext"):
        assert figures[target]["open"]["error"], target
    assert sum(p["dump"]["error"] for p in figures.values()) and sum(p["dump"]["ok"] for p in figures.values())


def test_mutants_are_deterministic():
    fuzz = _engine()
    objs = fuzz.objects(["globals_test", "maps_test"])
    a = [fuzz.mutant(objs, SEED, i)[2:] for i in range(20)]
    b = [fuzz.mutant(objs, SEED, i)[2:] for i in range(20)]
    assert a == b
    assert len({m[0] for m in a}) >= 15        # distinct mutants (a field may get its old value back)


def test_a_foreign_exception_or_a_hang_is_a_defect(monkeypatch):
    """What the campaign counts: a ValueError, a RecursionError or a timeout, not a pybpf.Error."""
    fuzz = _engine()
    fields = fuzz.objects(["globals_test"])[0]
    assert fuzz.one(fields, fields.data, TIMEOUT) == {"open": "ok", "inspect": "ok", "dump": "ok"}

    def recurse(data, name):
        return recurse(data, name)

    def spin(data, name):
        while True:
            pass

    import signal
    signal.signal(signal.SIGALRM, fuzz._on_alarm)
    for bad, text in ((lambda d, n: int("x"), "ValueError"), (recurse, "RecursionError"), (spin, "hang")):
        monkeypatch.setattr(fuzz, "run_dump", bad)
        assert fuzz.one(fields, fields.data, 0.5)["dump"].startswith(text)
    monkeypatch.setattr(fuzz, "run_dump", lambda d, n: fuzz.BTF(b"\0" * 8))
    assert fuzz.one(fields, fields.data, TIMEOUT)["dump"] == "error"


def test_defects_found_by_the_long_run_stay_fixed():
    """Mutants the long run (tools/fuzz.py --minutes 12 --seed 20261203) found, as the field
    changes it printed (offset, size, field, old, new): a .kconfig extern whose char-array
    type loops back into itself (RecursionError in open)."""
    import signal
    import struct
    fuzz = _engine()
    signal.signal(signal.SIGALRM, fuzz._on_alarm)
    (fields,) = fuzz.objects(["extern_kconfig"])
    found = [[(1448, 4, "type_id", 5, 16), (1876, 4, "type_id", 0, 34), (1208, 4, "int_enc", 32, 31)],
             [(1064, 4, "name_off", 0, 0), (1448, 4, "type_id", 5, 16), (1788, 4, "len", 0, 4)]]
    for changes in found:
        data = bytearray(fields.data)
        for off, size, _, old, new in changes:
            fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[size]
            assert struct.unpack_from(fmt, data, off)[0] == old, "extern_kconfig.o changed: update the offsets"
            struct.pack_into(fmt, data, off, new)
        assert fuzz.one(fields, bytes(data), TIMEOUT)["open"] == "error", changes
