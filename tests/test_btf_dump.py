"""BTF dumps (pybpf.spec.btf_dump) are byte-identical to ``bpftool btf dump``.

bpftool is the oracle: the raw and C dumps of every committed programs/*.o, of
the running kernel's /sys/kernel/btf/vmlinux, of a hand-built blob with the
awkward cases (bitfields, anonymous members, enum64, function pointers, packed
structs, duplicate names) and of a hand-built split BTF.  The C dump of vmlinux
must also rebuild every committed object byte for byte when used as
programs/vmlinux.h.  Tests that need bpftool skip with a reason when it is not
installed (CI installs it).
"""

from __future__ import annotations

import difflib
import os
import pathlib
import shutil
import subprocess

import pytest

from pybpf.errors import BTFError, ObjectError
from pybpf.spec.btf import BTF
from pybpf.spec.btf_dump import btf_from_file, format_c, format_raw

from btf_builder import BTFBuilder

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "programs"
BUILD = ROOT / "tools" / "build_programs.sh"
VMLINUX = "/sys/kernel/btf/vmlinux"
OBJECTS = sorted(PROGRAMS.glob("*.o"))

BPFTOOL = shutil.which("bpftool")
needs_bpftool = pytest.mark.skipif(BPFTOOL is None, reason="bpftool not installed (apt-get install bpftool)")
needs_vmlinux = pytest.mark.skipif(not os.path.exists(VMLINUX), reason=f"kernel has no BTF at {VMLINUX}")


def bpftool_dump(path, fmt: str = "raw", base=None) -> str:
    cmd = [BPFTOOL]
    if base is not None:
        cmd += ["-B", str(base)]
    cmd += ["btf", "dump", "file", str(path), "format", fmt]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr}"
    return proc.stdout


def assert_same(ours: str, theirs: str, what: str) -> None:
    if ours == theirs:
        return
    diff = difflib.unified_diff(theirs.splitlines(), ours.splitlines(), "bpftool", "pybpf", lineterm="", n=2)
    pytest.fail(f"{what} differs from bpftool's:\n" + "\n".join(list(diff)[:80]))


# -- committed objects -------------------------------------------------------------------------


def test_objects_exist():
    assert OBJECTS, "no programs/*.o"


@needs_bpftool
@pytest.mark.parametrize("obj", OBJECTS, ids=lambda p: p.name)
def test_object_raw_dump_matches_bpftool(obj):
    assert_same(format_raw(btf_from_file(obj)), bpftool_dump(obj, "raw"), f"raw dump of {obj.name}")


@needs_bpftool
@pytest.mark.parametrize("obj", OBJECTS, ids=lambda p: p.name)
def test_object_c_dump_matches_bpftool(obj):
    assert_same(format_c(btf_from_file(obj)), bpftool_dump(obj, "c"), f"C dump of {obj.name}")


def test_object_datasecs_are_dumped_unfixed():
    # bpftool prints the .BTF section as clang wrote it: DATASEC sizes 0 (ObjectSpec fixes them)
    text = format_raw(btf_from_file(PROGRAMS / "globals_test.o"))
    datasecs = [line for line in text.splitlines() if " DATASEC " in line]
    assert datasecs and all(" size=0 " in line for line in datasecs), datasecs


# -- the running kernel --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vmlinux_dumps():
    """Our raw and C dumps of vmlinux, computed once (the slow part of this module)."""
    if not os.path.exists(VMLINUX):
        pytest.skip(f"kernel has no BTF at {VMLINUX}")
    btf = btf_from_file(VMLINUX)
    return {"raw": format_raw(btf), "c": format_c(btf)}


@needs_bpftool
def test_vmlinux_raw_dump_matches_bpftool(vmlinux_dumps):
    assert_same(vmlinux_dumps["raw"], bpftool_dump(VMLINUX, "raw"), "raw dump of vmlinux")


@needs_bpftool
def test_vmlinux_c_dump_matches_bpftool(vmlinux_dumps):
    assert_same(vmlinux_dumps["c"], bpftool_dump(VMLINUX, "c"), "C dump of vmlinux")


def _missing_toolchain() -> str | None:
    for tool in ("clang-19", "llvm-strip-19"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install clang-19 llvm-19)"
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        return "libbpf-dev headers not installed (apt-get install libbpf-dev)"
    return None


def _build_with_header(workdir: pathlib.Path, header: str, out: pathlib.Path) -> pathlib.Path:
    """Build programs/*.bpf.c with `header` as vmlinux.h into ``out``.  Builds that are
    compared run in the same ``workdir`` one after the other: clang-19 orders some forward
    declarations by the build path, so two folders could give two objects."""
    if not (workdir / "programs").exists():
        shutil.copytree(PROGRAMS, workdir / "programs")
        # only what has a committed object (a source being written in the checkout is not ours)
        for src in (workdir / "programs").glob("*.bpf.c"):
            if not src.with_name(src.name[: -len(".bpf.c")] + ".o").exists():
                src.unlink()
        (workdir / "tools").mkdir()
        shutil.copy2(BUILD, workdir / "tools" / BUILD.name)
    (workdir / "programs" / "vmlinux.h").write_text(header)
    proc = subprocess.run([str(workdir / "tools" / BUILD.name), "--no-vmlinux", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"build_programs.sh failed:\n{proc.stdout}{proc.stderr}"
    return out


@needs_bpftool
@needs_vmlinux
def test_our_vmlinux_h_of_the_running_kernel_builds_what_bpftools_builds(vmlinux_dumps, tmp_path):
    """pybpf's C dump of the running kernel's BTF, used as vmlinux.h, builds every program into
    the same bytes as bpftool's dump of the same BTF.  (That the committed programs/vmlinux.h
    builds the committed objects is tests/test_programs_build.py's.)"""
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "work"
    ours = _build_with_header(work, vmlinux_dumps["c"], tmp_path / "out-ours")
    theirs = _build_with_header(work, bpftool_dump(VMLINUX, "c"), tmp_path / "out-bpft")
    objects = [p.name for p in OBJECTS if p.with_name(p.name[: -len(".o")] + ".bpf.c").exists()]
    assert objects
    for name in objects:
        assert (ours / name).exists() and (theirs / name).exists(), f"build_programs.sh did not produce {name}"
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), \
            f"{name} built with pybpf's vmlinux.h differs from {name} built with bpftool's"


# -- hand-built BTF --------------------------------------------------------------------------------


def tiny_btf() -> bytes:
    """Every kind, and the C dump's awkward cases."""
    b = BTFBuilder()
    INT = b.int_("int", 4, enc=1)
    UINT = b.int_("unsigned int", 4)
    CHAR = b.int_("char", 1, enc=2)
    LONG = b.int_("long", 8, enc=1)  # also sets the pointer size
    BOOL = b.int_("_Bool", 1, enc=4)
    b.int_("odd", 4, enc=3, bits=12, bit_off=4)  # raw: encoding=UNKN
    VOIDP = b.ptr(0)
    # bitfields with gaps: padding fields `int: 17;`, `long: 31;`...
    BITS = b.struct("bits", 16, [("a", UINT, 0, 3), ("b", UINT, 3, 5), ("c", INT, 8, 7), ("flag", BOOL, 32, 1),
                                 ("wide", LONG, 64, 40), ("last", UINT, 120, 2)], kflag=1)
    ANON_S = b.struct("", 8, [("x", INT, 0), ("y", INT, 32)])
    ANON_U = b.union("", 8, [("l", LONG, 0), ("c", CHAR, 0)])
    PTR_ARR = b.array(VOIDP, 4)  # void *ptrs[4]
    CHARP = b.ptr(CHAR)
    PROTO = b.func_proto(INT, [("a", INT), ("b", CHARP)])
    FNPTR = b.ptr(PROTO)
    FN_ARR = b.array(FNPTR, 2)  # int (*fns[2])(int a, char *b)
    FNPTR_VOID = b.ptr(b.func_proto(0, []))  # void (*done)(void)
    CB_T = b.typedef("cb_t", b.ptr(b.func_proto(INT, [("fmt", CHARP), ("", 0)])))  # varargs
    CONST_CHAR = b.const(CHAR)
    CV_INT = b.volatile(b.const(INT))
    RESTRICT_P = b.restrict(b.ptr(CONST_CHAR))
    E64S = b.enum64("big_signed", [("NEG_BIG", -5000000000), ("SMALL", 1)], signed=True)
    E64U = b.enum64("big_unsigned", [("HUGE", (1 << 64) - 32), ("ONE", 1)])
    ES = b.enum("signed_e", [("MINUS", -1), ("PLUS", 1)], signed=True)
    EU = b.enum("unsigned_e", [("U_BIG", 0xFFFFFFFF), ("PLUS", 2)])  # PLUS again: PLUS___2
    E8 = b.enum("", [("ANON_ONE", 1)], size=1)  # anonymous and referenced: inlined
    FWD = b.fwd("opaque")
    FWDU = b.fwd("opaque_u", union=True)
    b.struct("outer", 96, [("bits", BITS, 0), ("", ANON_S, 128), ("", ANON_U, 192), ("ptrs", PTR_ARR, 256),
                           ("fn", FNPTR, 512), ("fns", FN_ARR, 576), ("done", FNPTR_VOID, 704),
                           ("cb", CB_T, 768)])
    b.struct("pk", 5, [("a", CHAR, 0), ("b", INT, 8)])  # packed
    NODE = b.struct("node", 24, [("next", 0, 0), ("o", b.ptr(FWD), 64), ("u", b.ptr(FWDU), 128)])
    b.set_member_type(NODE, 0, b.ptr(NODE))
    b.struct("mixed", 48, [("cs", CONST_CHAR, 0), ("cv", CV_INT, 32), ("rp", RESTRICT_P, 64), ("e", E8, 128),
                           ("es", ES, 160), ("eu", EU, 192), ("e64", E64S, 256), ("u64", E64U, 320)])
    # the same names twice: dup___2, dup_t___2
    b.typedef("dup_t", b.struct("dup", 4, [("a", INT, 0)]))
    b.typedef("dup_t", b.struct("dup", 8, [("a", LONG, 0)]))
    b.enum("", [("TOP_A", 0), ("TOP_B", 1)])  # unreferenced anonymous enum: a declaration of its own
    b.enum("fwd_enum", [])  # `enum fwd_enum;`
    b.struct("floats", 24, [("d", b.float_("double", 8), 0), ("tagged", b.ptr(b.type_tag("user", INT)), 64),
                            ("empty", b.struct("", 0, []), 128), ("tail", CHAR, 128)])
    b.struct("empty", 0, [])
    # a typedef needed through a pointer inside the struct it names: forward declaration first
    LIST = b.struct("list", 16, [("next", 0, 0), ("val", INT, 64)])
    b.set_member_type(LIST, 0, b.ptr(b.typedef("list_t", LIST)))
    b.typedef("__builtin_va_list", CHARP)  # never printed
    b.typedef("__gnuc_va_list", 0)
    b.struct("arrs", 24, [("as_ptr", b.ptr(b.type_tag("address_space(1)", INT, kflag=1)), 0),
                          ("m", b.array(b.array(CHAR, 3), 2), 64), ("p", b.ptr(b.array(INT, 4)), 128)])
    b.struct("nokflag", 8, [("x", INT, 0), ("y", INT, 32)])
    b.struct("polys", 1, [("p", b.int_("__Poly8_t", 1), 0)])  # GCC ARM type: aliased
    # an emitted INT's name takes the struct tag: `struct foo` becomes foo___2
    FOO = b.int_("foo", 4, enc=1)
    b.struct("uses_foo", 4, [("f", FOO, 0)])
    b.struct("foo", 4, [("f", FOO, 0)])
    MAIN = b.func("main_fn", PROTO)
    b.decl_tag("my_tag", MAIN, 0)
    V1 = b.var("counter", INT, 1)
    V2 = b.var("s_counter", LONG, 0)
    b.datasec(".bss", 0, [(V1, 0, 4), (V2, 8, 8), (MAIN, 16, 0)])
    return b.to_bytes()


def test_tiny_blob_c_dump():
    text = format_c(BTF(tiny_btf(), source="tiny"))
    assert text.startswith("#ifndef __VMLINUX_H__\n#define __VMLINUX_H__\n\n")
    assert text.endswith("#pragma clang attribute pop\n#endif\n\n#endif /* __VMLINUX_H__ */\n")
    for snippet in [
        # bitfields and the padding between them
        "struct bits {\n\tunsigned int a: 3;\n\tunsigned int b: 5;\n\tint c: 7;\n\tint: 17;\n\t_Bool flag: 1;\n"
        "\tlong: 31;\n\tlong wide: 40;\n\tshort: 8;\n\tchar: 8;\n\tunsigned int last: 2;\n};\n\n",
        # anonymous members inlined, arrays of pointers, function pointers
        "\tstruct {\n\t\tint x;\n\t\tint y;\n\t};\n\tunion {\n\t\tlong l;\n\t\tchar c;\n\t};\n"
        "\tvoid *ptrs[4];\n\tint (*fn)(int a, char *b);\n\tint (*fns[2])(int a, char *b);\n"
        "\tvoid (*done)(void);\n\tcb_t cb;\n};\n",
        "typedef int (*cb_t)(char *fmt, ...);\n\n",
        "struct pk {\n\tchar a;\n\tint b;\n} __attribute__((packed));\n\n",
        "enum big_signed {\n\tNEG_BIG = -5000000000LL,\n\tSMALL = 1LL,\n};\n\n",
        "enum big_unsigned {\n\tHUGE = 18446744073709551584ULL,\n\tONE = 1ULL,\n};\n\n",
        "enum unsigned_e {\n\tU_BIG = 4294967295,\n\tPLUS___2 = 2,\n};\n\n",
        "struct opaque;\n\nunion opaque_u;\n\n",
        "\tconst char cs;\n\tconst volatile int cv;\n\tconst char * restrict rp;\n"
        "\tenum {\n\t\tANON_ONE = 1,\n\t} e;\n",
        "struct dup {\n\tint a;\n};\n\ntypedef struct dup dup_t;\n\n"
        "struct dup___2 {\n\tlong a;\n};\n\ntypedef struct dup___2 dup_t___2;\n\n",
        "enum {\n\tTOP_A = 0,\n\tTOP_B = 1,\n};\n\nenum fwd_enum;\n\n",
        '\tint __attribute__((btf_type_tag("user"))) *tagged;\n\tstruct {} empty;\n',
        "struct empty {};\n\n",
        "struct list;\n\ntypedef struct list list_t;\n\nstruct list {\n\tlist_t *next;\n\tint val;\n};\n\n",
        "typedef __builtin_va_list __gnuc_va_list;\n\n",
        # this libbpf prints type tags with kind_flag set (attributes) as btf_type_tag too
        '\tint __attribute__((btf_type_tag("address_space(1)"))) *as_ptr;\n\tchar m[2][3];\n\tint (*p)[4];\n',
        "typedef unsigned char __Poly8_t;\n\nstruct polys {\n\t__Poly8_t p;\n};\n\n",
        "struct foo___2 {\n\tfoo f;\n};\n\n",
    ]:
        assert snippet in text, snippet
    assert "typedef char *__builtin_va_list" not in text
    assert "mode(byte)" not in text


def test_tiny_blob_raw_dump():
    lines = format_raw(BTF(tiny_btf(), source="tiny")).splitlines()
    for line in [
        "[1] INT 'int' size=4 bits_offset=0 nr_bits=32 encoding=SIGNED",
        "[3] INT 'char' size=1 bits_offset=0 nr_bits=8 encoding=CHAR",
        "[5] INT '_Bool' size=1 bits_offset=0 nr_bits=8 encoding=BOOL",
        "[6] INT 'odd' size=4 bits_offset=4 nr_bits=12 encoding=UNKN",
        "[8] STRUCT 'bits' size=16 vlen=6",
        "\t'wide' type_id=4 bits_offset=64 bitfield_size=40",
        "[9] STRUCT '(anon)' size=8 vlen=2",
        "\t'(anon)' type_id=0",
        "\t'NEG_BIG' val=-5000000000LL",
        "\t'HUGE' val=18446744073709551584ULL",
        "\t'MINUS' val=-1",
        "\t'U_BIG' val=4294967295",
        "[32] FWD 'opaque_u' fwd_kind=union",
        "[70] FUNC 'main_fn' type_id=13 linkage=global",
        "\ttype_id=70 offset=16 size=0 (FUNC 'main_fn')",
    ]:
        assert line in lines, line
    assert any(line.startswith("[") and " VAR 'counter' type_id=1, linkage=global" in line for line in lines)
    assert any(" DECL_TAG 'my_tag' type_id=" in line and line.endswith(" component_idx=0") for line in lines)
    assert any(" TYPE_TAG 'address_space(1)' type_id=1" in line for line in lines)


@needs_bpftool
def test_tiny_blob_matches_bpftool(tmp_path):
    path = tmp_path / "tiny.btf"
    path.write_bytes(tiny_btf())
    btf = btf_from_file(path)
    assert_same(format_raw(btf), bpftool_dump(path, "raw"), "raw dump of the hand-built blob")
    assert_same(format_c(btf), bpftool_dump(path, "c"), "C dump of the hand-built blob")


def split_btf() -> tuple[bytes, bytes]:
    """A base and a split BTF on top of it (a kernel module's layout)."""
    base = BTFBuilder()
    INT = base.int_("int", 4, enc=1)
    LONG = base.int_("long", 8, enc=1)
    S = base.struct("base_s", 8, [("a", INT, 0), ("b", INT, 32)])
    base.typedef("base_t", S)
    split = BTFBuilder(first_id=len(base.records) + 1, base_strings=base.str_offs, str_base=len(base.strings))
    M = split.struct("mod_s", 16, [("p", split.ptr(S), 0), ("l", LONG, 64)])
    split.struct("base_s", 4, [("x", INT, 0)])  # the base's name again: base_s___2
    V = split.var("mod_var", M)
    split.func("mod_fn", split.func_proto(INT, [("m", split.ptr(M))]))
    split.datasec(".data", 16, [(V, 0, 16)])
    return base.to_bytes(), split.to_bytes()


def test_split_btf_dumps(tmp_path):
    base_raw, split_raw = split_btf()
    base = BTF(base_raw, source="base")
    split = BTF(split_raw, source="split", base=base)
    raw = format_raw(split)
    # only the split's own types, numbered after the base's
    assert raw.startswith("[5] PTR '(anon)' type_id=3\n[6] STRUCT 'mod_s' size=16 vlen=2\n")
    assert "\ttype_id=8 offset=0 size=16 (VAR 'mod_var')\n" in raw
    c = format_c(split)
    # bpftool 7.1 dumps from id 1: the base's types too
    assert "struct base_s {\n\tint a;\n\tint b;\n};\n\ntypedef struct base_s base_t;\n\n" in c
    assert "struct mod_s {\n\tstruct base_s *p;\n\tlong l;\n};\n\nstruct base_s___2 {\n\tint x;\n};\n\n" in c
    if BPFTOOL is None:
        return
    (tmp_path / "base.btf").write_bytes(base_raw)
    (tmp_path / "split.btf").write_bytes(split_raw)
    from_files = btf_from_file(tmp_path / "split.btf", base=btf_from_file(tmp_path / "base.btf"))
    assert_same(format_raw(from_files), bpftool_dump(tmp_path / "split.btf", "raw", base=tmp_path / "base.btf"),
                "raw dump of split BTF")
    assert_same(format_c(from_files), bpftool_dump(tmp_path / "split.btf", "c", base=tmp_path / "base.btf"),
                "C dump of split BTF")


def test_invalid_name_offsets_print_invalid_in_raw_dump():
    b = BTFBuilder()
    INT = b.int_("int", 4, enc=1)
    b.add("", 8, 0, INT, name_off=9999)  # a typedef whose name is past the string section
    text = format_raw(BTF(b.to_bytes(), source="bad names"))
    assert text.splitlines()[1] == "[2] TYPEDEF '(invalid)' type_id=1"


def test_unsatisfiable_type_cycle_raises():
    # typedef T -> anonymous struct { T *p; }: the struct cannot be forward-declared
    b = BTFBuilder()
    b.int_("int", 4, enc=1)
    ANON = b.struct("", 8, [("p", 0, 0)])
    T = b.typedef("T", ANON)
    b.set_member_type(ANON, 0, b.ptr(T))
    with pytest.raises(BTFError, match=r"unsatisfiable type cycle, id:\[2\]"):
        format_c(BTF(b.to_bytes(), source="cycle"))


def test_absurd_padding_hole_raises():
    # a 256 MiB array in an 8-byte struct: libbpf's int offsets wrap and bpftool prints 33 M
    # `long: 64;` lines; we refuse
    b = BTFBuilder()
    INT = b.int_("int", 4, enc=1)
    b.struct("broken", 8, [("a", INT, 0), ("b", b.array(INT, 1 << 26), 32)])
    with pytest.raises(BTFError, match=r"type \[3\] STRUCT 'broken': a 2147483648-bit hole"):
        format_c(BTF(b.to_bytes(), source="hole"))


# -- opening files ----------------------------------------------------------------------------------


def test_btf_from_file_raw_and_elf(tmp_path):
    path = tmp_path / "tiny.btf"
    path.write_bytes(tiny_btf())
    assert btf_from_file(path)[1].name == "int"
    obj = btf_from_file(PROGRAMS / "maps_test.o")
    assert any(t.name == ".maps" for t in obj)


def test_btf_from_file_errors(tmp_path):
    with pytest.raises(ObjectError, match="cannot read"):
        btf_from_file(tmp_path / "missing")
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello, not BTF")
    with pytest.raises(ObjectError, match="neither a raw BTF file"):
        btf_from_file(junk)
    # an ELF object without .BTF (strip it)
    stripped = tmp_path / "nobtf.o"
    data = bytearray((PROGRAMS / "maps_test.o").read_bytes())
    data[data.index(b".BTF\0")] = ord("X")  # rename .BTF in the section name table
    stripped.write_bytes(bytes(data))
    with pytest.raises(BTFError, match="no .BTF section"):
        btf_from_file(stripped)
    truncated = tmp_path / "truncated.o"
    truncated.write_bytes((PROGRAMS / "maps_test.o").read_bytes()[:100])
    with pytest.raises(ObjectError):
        btf_from_file(truncated)
    corrupt = tmp_path / "corrupt.btf"
    corrupt.write_bytes(tiny_btf()[:40])
    with pytest.raises(BTFError, match="corrupt BTF"):
        btf_from_file(corrupt)
