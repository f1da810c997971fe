"""Kernel BTF handling: probing which BTF kinds the kernel accepts, and rewriting a copy
of the object's BTF for a kernel that lacks some (libbpf bpf_object__sanitize_btf).

6.18 accepts everything, so the rewriting is exercised by turning features off;
the kernel then checks that what we produce is BTF it accepts, for every kernel
generation (features are dropped newest first, as on older kernels).
"""

from __future__ import annotations

import os
import struct

import pytest

import pybpf
from pybpf.loader import sanitize as S
from pybpf.spec.btf import BTF, LINKAGE_GLOBAL, LINKAGE_STATIC, Kind

from conftest import PROGRAMS, program
from test_externs import Writer

# newest first: a kernel without one of them lacks every later one too
GENERATIONS = ["qmark_datasec", "enum64", "type_tag", "decl_tag", "float", "global_func", "datasec", "func"]
OLDER_KERNELS = [S.ALL_FEATURES.without(*GENERATIONS[:i]) for i in range(1, len(GENERATIONS) + 1)]
OBJECTS = sorted(p.stem for p in PROGRAMS.glob("*.o"))


def every_kind() -> tuple[BTF, dict]:
    """A BTF with every kind, the way clang writes them."""
    w = Writer()
    t = {}
    t["int"] = w.int("int")
    t["ptr"] = w.ptr(t["int"])
    t["array"] = w.add("", Kind.ARRAY, 0, 0, t["int"], t["int"], 4)
    t["struct"] = w.add("s", Kind.STRUCT, 1, 4, w.s("a"), t["int"], 0)
    t["union"] = w.add("u", Kind.UNION, 1, 4, w.s("a"), t["int"], 0)
    t["enum"] = w.add("e", Kind.ENUM, 1, 4, w.s("A"), 0xFFFFFFFF, kflag=True)      # signed
    t["fwd"] = w.add("f", Kind.FWD, 0, 0)
    t["typedef"] = w.typedef("t", t["int"])
    t["volatile"] = w.add("", Kind.VOLATILE, 0, t["int"])
    t["const"] = w.add("", Kind.CONST, 0, t["int"])
    t["restrict"] = w.add("", Kind.RESTRICT, 0, t["ptr"])
    t["proto"] = w.proto(t["int"], ("x", t["int"]))
    t["main"] = w.add("main", Kind.FUNC, LINKAGE_GLOBAL, t["proto"])
    t["helper"] = w.add("helper", Kind.FUNC, LINKAGE_STATIC, t["proto"])
    t["cb_proto"] = w.proto(t["int"], ("", t["int"]))                                 # int (*)(int)
    t["cb_ptr"] = w.ptr(t["cb_proto"])
    t["var"] = w.add("v", Kind.VAR, 0, t["int"], LINKAGE_GLOBAL)
    t["data"] = w.add(".data", Kind.DATASEC, 1, 4, t["var"], 0, 4)
    t["float"] = w.add("double", Kind.FLOAT, 0, 8)
    t["decl_tag"] = w.add("tag", Kind.DECL_TAG, 0, t["struct"], 0xFFFFFFFF)
    t["type_tag"] = w.add("user", Kind.TYPE_TAG, 0, t["int"])
    t["tagged_ptr"] = w.ptr(t["type_tag"])
    t["enum64"] = w.add("e64", Kind.ENUM64, 1, 8, w.s("BIG"), 5000000000 & 0xFFFFFFFF, 5000000000 >> 32)
    t["svar"] = w.add("w", Kind.VAR, 0, t["int"], LINKAGE_STATIC)
    t["qdata"] = w.add("?.data.opt", Kind.DATASEC, 1, 4, t["svar"], 0, 4)
    return w.btf("every kind"), t


def sanitized(btf: BTF, features: S.BTFFeatures) -> BTF:
    return BTF(S.sanitize(btf, features), source="sanitized")


# -- the rewriting, offline ----------------------------------------------------------------------

def test_all_features_change_nothing():
    btf, _ = every_kind()
    assert S.sanitize(btf, S.ALL_FEATURES) == btf.to_bytes()
    assert S.kernel_btf(btf, S.ALL_FEATURES) == btf.to_bytes()
    assert S.kernel_btf(btf, S.BTFFeatures(btf=False)) is None        # no BTF in the kernel at all


def test_ids_and_unaffected_types_are_preserved():
    btf, t = every_kind()
    for features in OLDER_KERNELS:
        out = sanitized(btf, features)
        extra = 1 if not features.enum64 else 0           # the enum64 placeholder, appended
        assert len(out) == len(btf) + extra
        for name in ("int", "ptr", "array", "struct", "union", "fwd", "typedef", "volatile", "const",
                     "restrict", "cb_ptr", "tagged_ptr"):
            a, b = btf[t[name]], out[t[name]]
            assert (a.kind, a.name, a.size_or_type, a.vlen) == (b.kind, b.name, b.size_or_type, b.vlen), name
    assert btf.to_bytes() == every_kind()[0].to_bytes()    # the original is untouched


def test_without_datasec():
    btf, t = every_kind()
    out = sanitized(btf, S.ALL_FEATURES.without("datasec"))
    for var in ("var", "svar"):                           # VAR -> 1-byte INT, name kept
        v = out[t[var]]
        assert (v.kind, v.size, v.bits, v.encoding) == (Kind.INT, 1, 8, 0)
        assert v.name == btf[t[var]].name
    d = out[t["data"]]                                    # DATASEC -> STRUCT of the variables
    assert (d.kind, d.name, d.size) == (Kind.STRUCT, "_data", 4)
    assert [(m.name, m.type_id, m.bit_offset) for m in d.members] == [("v", t["var"], 0)]
    assert out[t["qdata"]].name == "__data_opt"
    assert out[t["decl_tag"]].kind == Kind.DECL_TAG       # only what is missing changes


def test_without_func():
    btf, t = every_kind()
    out = sanitized(btf, S.ALL_FEATURES.without("func"))
    p = out[t["proto"]]                                   # FUNC_PROTO -> 4-byte ENUM, params as values
    assert (p.kind, p.size, [(v.name, v.value) for v in p.values]) == (Kind.ENUM, 4, [("x", t["int"])])
    # an unnamed parameter is named "_": the kernel refuses unnamed enumerators
    assert [v.name for v in out[t["cb_proto"]].values] == ["_"]
    for f in ("main", "helper"):                          # FUNC -> TYPEDEF of it
        assert (out[t[f]].kind, out[t[f]].type_id, out[t[f]].name) == (Kind.TYPEDEF, t["proto"], f)


def test_without_global_func():
    btf, t = every_kind()
    out = sanitized(btf, S.ALL_FEATURES.without("global_func"))
    assert (out[t["main"]].kind, out[t["main"]].linkage) == (Kind.FUNC, LINKAGE_STATIC)
    assert out[t["helper"]].linkage == LINKAGE_STATIC


def test_without_float_decl_tag_type_tag():
    btf, t = every_kind()
    out = sanitized(btf, S.ALL_FEATURES.without("float"))
    f = out[t["float"]]                                   # an anonymous empty struct of the same size
    assert (f.kind, f.name, f.size, f.vlen) == (Kind.STRUCT, "", 8, 0)
    out = sanitized(btf, S.ALL_FEATURES.without("decl_tag"))
    d = out[t["decl_tag"]]
    assert (d.kind, d.size, d.bits) == (Kind.INT, 1, 8)
    out = sanitized(btf, S.ALL_FEATURES.without("type_tag"))
    tt = out[t["type_tag"]]
    assert (tt.kind, tt.name, tt.type_id) == (Kind.CONST, "", t["int"])


def test_without_enum64():
    btf, t = every_kind()
    out = sanitized(btf, S.ALL_FEATURES.without("enum64"))
    assert out[t["enum"]].kind == Kind.ENUM and not out[t["enum"]].kind_flag     # no signed enums
    placeholder = out[len(out)]
    assert (placeholder.kind, placeholder.name, placeholder.size) == (Kind.INT, "enum64_placeholder", 1)
    u = out[t["enum64"]]                                  # ENUM64 -> UNION of 1-byte members
    assert (u.kind, u.name, u.size) == (Kind.UNION, "e64", 8)
    assert [(m.name, m.type_id, m.bit_offset) for m in u.members] == [("BIG", placeholder.id, 0)]


def test_without_qmark_datasec():
    btf, t = every_kind()
    out = sanitized(btf, S.ALL_FEATURES.without("qmark_datasec"))
    assert (out[t["qdata"]].kind, out[t["qdata"]].name) == (Kind.DATASEC, "_.data.opt")
    assert out[t["data"]].name == ".data"


def test_btf_patcher_appends():
    btf, t = every_kind()
    p = S.BTFPatcher(btf)
    size = len(p.strings)
    assert p.string(p.add_string("int")) == "int" and len(p.strings) == size       # reused, not added
    new = p.add_var("extra", t["int"], LINKAGE_GLOBAL)
    out = p.to_btf()
    assert new == len(btf) + 1 and (out[new].name, out[new].type_id) == ("extra", t["int"])
    assert out[t["enum64"]].values[0].value == 5000000000


# -- probing and the kernel's verdict --------------------------------------------------------------

@pytest.mark.kernel
def test_probe_blobs_are_accepted_here():
    # 6.18 has every feature: each probe blob is valid BTF (so a refusal elsewhere means the kind)
    for name in S._PROBES:
        assert S.kernel_accepts(S.probe_blob(name)), name
    bad = bytearray(S.probe_blob("float"))
    struct.pack_into("<I", bad, 24 + 4, 31 << 24)          # an unknown kind
    assert not S.kernel_accepts(bytes(bad))


@pytest.mark.kernel
def test_probe_features_once(monkeypatch):
    calls = []
    real = S.kernel_accepts
    monkeypatch.setattr(S, "_probed", None)
    monkeypatch.setattr(S, "kernel_accepts", lambda blob: calls.append(blob) or real(blob))
    first = S.probe_features()
    assert first == S.ALL_FEATURES and first.missing == []        # 6.18
    assert len(calls) == len(S._PROBES)
    assert S.probe_features() is first and len(calls) == len(S._PROBES)


@pytest.mark.kernel
@pytest.mark.parametrize("features", [S.ALL_FEATURES] + OLDER_KERNELS,
                         ids=lambda f: "without-" + "-".join(f.missing) if f.missing else "all")
def test_kernel_accepts_sanitized_btf(features, no_fd_leak):
    from pybpf.loader import load_btf
    blobs = [("every kind", every_kind()[0])] + [(n, pybpf.open(program(n)).btf) for n in OBJECTS]
    for name, btf in blobs:
        fd = load_btf(S.sanitize(btf, features))
        os.close(fd)


@pytest.mark.kernel
@pytest.mark.parametrize("features", [OLDER_KERNELS[4], OLDER_KERNELS[6]],
                         ids=["like-5.12", "like-5.1"])
def test_objects_load_with_sanitized_btf(features, monkeypatch, no_fd_leak):
    """load_spec gives the kernel the sanitized copy; the programs still load and run."""
    from pybpf.kernel.btf import btf_from_fd
    monkeypatch.setattr(S, "_probed", features)
    spec = pybpf.open(program("globals_test"))
    with spec.load() as obj:
        kernel_copy = btf_from_fd(obj._btf_fd)
        assert bytes(kernel_copy.raw) == S.sanitize(spec.btf, features)
        assert not kernel_copy.by_kind(Kind.DECL_TAG) and not kernel_copy.by_kind(Kind.FLOAT)
        if not features.datasec:
            assert not kernel_copy.by_kind(Kind.DATASEC) and not kernel_copy.by_kind(Kind.VAR)
        assert obj.programs["read_globals"].test_run().retval == 7 * 1000 + 42
        assert obj.variables["data_counter"].get() == 8
    assert spec.btf.by_kind(Kind.DATASEC)                 # the spec's BTF is untouched
    with pybpf.load(program("extern_ksyms")) as obj:
        obj.programs["ksyms_read"].test_run(ctx=struct.pack("<i", os.getpid()))
        assert obj.variables["out"].get().task_found == 1
