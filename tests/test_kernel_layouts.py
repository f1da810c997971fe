"""Every ctypes layout and UAPI number in pybpf.kernel, checked against the kernel.

Two independent sources give the expected values; nothing is hard-coded here:

* the running kernel's BTF (``bpftool btf dump file /sys/kernel/btf/vmlinux``),
  the truth for the 6.18 layouts: every field and every enum value must match;
* the installed UAPI headers (``<linux/bpf.h>``, ``<linux/perf_event.h>``,
  Debian's 6.1 linux-libc-dev), compiled with gcc: ``offsetof``/``sizeof`` of
  every field the headers know.  Fields newer than the headers fail to compile;
  those lines are dropped and covered by the BTF check alone.
"""

from __future__ import annotations

import ctypes
import enum
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

from pybpf.kernel import attrs, constants, perf

VMLINUX = "/sys/kernel/btf/vmlinux"

# --- which C object each ctypes structure is ---------------------------------


@dataclass(frozen=True)
class Layout:
    cls: type
    c_type: str                 # "union bpf_attr", "struct bpf_prog_info"
    member: str | None = None   # named member of c_type ("test"), None: the type itself
    anonymous: bool = False     # an anonymous struct of union bpf_attr
    prefix: bool = False        # models only the leading fields of the C struct


def _attr(cls, member=None, prefix=False):
    return Layout(cls, "union bpf_attr", member, anonymous=member is None, prefix=prefix)


LAYOUTS = [
    _attr(attrs.MapCreateAttr),
    _attr(attrs.MapElemAttr),
    _attr(attrs.MapFdAttr, prefix=True),  # map_fd of the map element struct
    _attr(attrs.MapBatchAttr, "batch"),
    _attr(attrs.ProgLoadAttr),
    _attr(attrs.ObjPinAttr),
    _attr(attrs.ProgAttachAttr),
    _attr(attrs.TestRunAttr, "test"),
    _attr(attrs.GetIdAttr),
    _attr(attrs.InfoByFdAttr, "info"),
    _attr(attrs.ProgQueryAttr, "query"),
    _attr(attrs.RawTracepointOpenAttr, "raw_tracepoint"),
    _attr(attrs.BtfLoadAttr),
    _attr(attrs.TaskFdQueryAttr, "task_fd_query"),
    _attr(attrs.LinkCreateAttr, "link_create"),
    _attr(attrs.LinkUpdateAttr, "link_update"),
    _attr(attrs.LinkDetachAttr, "link_detach"),
    _attr(attrs.EnableStatsAttr, "enable_stats"),
    _attr(attrs.IterCreateAttr, "iter_create"),
    _attr(attrs.ProgBindMapAttr, "prog_bind_map"),
    _attr(attrs.TokenCreateAttr, "token_create"),
    _attr(attrs.ProgStreamReadAttr, "prog_stream_read"),
    Layout(attrs.ProgInfo, "struct bpf_prog_info"),
    Layout(attrs.MapInfo, "struct bpf_map_info"),
    Layout(attrs.BtfInfo, "struct bpf_btf_info"),
    Layout(attrs.LinkInfo, "struct bpf_link_info"),
    Layout(perf.PerfEventAttr, "struct perf_event_attr"),
]

# The bitfield word of perf_event_attr: one u64 in pybpf, bitfields in C.
PERF_FLAGS_FIELD = (perf.PerfEventAttr, ("flags",))

# Kernel fields deliberately not modelled as fields of their own.
NOT_MODELLED = {
    attrs.LinkInfo: [r"iter\..*"],  # iterator link info: read raw_bytes
    perf.PerfEventAttr: [rf"{name}" for name in perf.FLAG_BITS]  # in ``flags``
    + [r"aux_start_paused", r"aux_pause", r"aux_resume"],  # bits of ``aux_action``
}


# --- the ctypes side ----------------------------------------------------------


@dataclass
class Leaf:
    path: tuple[str, ...]
    bit_offset: int
    size: int                    # bytes, or bits for a bitfield
    ctype: type
    bitfield: bool = False


def _bitfield_position(descriptor) -> tuple[int, int]:
    """(bit offset in its storage unit, width) of a ctypes bitfield."""
    if hasattr(descriptor, "bit_size"):  # Python 3.13+
        return descriptor.bit_offset, descriptor.bit_size
    return descriptor.size & 0xFFFF, descriptor.size >> 16  # (width << 16) | offset


def ctypes_leaves(cls, base: int = 0, path: tuple[str, ...] = ()) -> list[Leaf]:
    """The fields of a ctypes structure, anonymous unions flattened, nested
    named structures as dotted paths (like C member designators)."""
    leaves = []
    anonymous = getattr(cls, "_anonymous_", ())
    for entry in cls._fields_:
        name, ctype = entry[0], entry[1]
        descriptor = getattr(cls, name)
        offset = base + descriptor.offset
        if len(entry) == 3:
            bit, width = _bitfield_position(descriptor)
            if not name.startswith("_"):
                leaves.append(Leaf(path + (name,), offset * 8 + bit, width, ctype, bitfield=True))
        elif name in anonymous:
            leaves += ctypes_leaves(ctype, offset, path)
        elif name.startswith("_"):
            continue  # padding / reserved
        elif isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union)):
            leaves += ctypes_leaves(ctype, offset, path + (name,))
        else:
            leaves.append(Leaf(path + (name,), offset * 8, ctypes.sizeof(ctype), ctype))
    return leaves


def _is_signed(ctype) -> bool | None:
    """True/False for an integer ctype, None for arrays and others."""
    if not hasattr(ctype, "_type_") or not isinstance(ctype._type_, str):
        return None
    if ctype._type_ not in "bBhHiIlLqQ":
        return None
    return ctype(-1).value < 0


# --- the kernel BTF side ------------------------------------------------------


@dataclass
class BtfType:
    kind: str
    name: str
    attrs: dict
    members: list = field(default_factory=list)


_TYPE_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_ATTR = re.compile(r"(\w+)=(\S+)")


def parse_bpftool_raw(text: str) -> dict[int, BtfType]:
    """Parses ``bpftool btf dump file ... `` (raw format) into id -> type."""
    types: dict[int, BtfType] = {}
    current = None
    for line in text.splitlines():
        match = _TYPE_LINE.match(line)
        if match:
            current = BtfType(match[2], match[3], dict(_ATTR.findall(match[4])))
            types[int(match[1])] = current
        elif line.startswith("\t") and current is not None:
            member = re.match(r"\t'([^']*)'(.*)$", line)
            if member:
                current.members.append((member[1], dict(_ATTR.findall(member[2]))))
    return types


class Btf:
    def __init__(self, types: dict[int, BtfType]):
        self.types = types
        self.by_name = {}
        for tid, t in types.items():
            if t.kind in ("STRUCT", "UNION") and t.name != "(anon)":
                self.by_name.setdefault(f"{t.kind.lower()} {t.name}", tid)
        self.enums: dict[str, dict[str, int]] = {}
        self.enumerators: dict[str, set[int]] = {}
        for t in types.values():
            if t.kind in ("ENUM", "ENUM64"):
                values = {n: int(a["val"].rstrip("ULL")) for n, a in t.members}
                if t.name != "(anon)":
                    self.enums.setdefault(t.name, values)
                for n, v in values.items():
                    self.enumerators.setdefault(n, set()).add(v)

    def resolve(self, tid: int) -> int:
        """Skips typedefs and qualifiers."""
        while self.types[tid].kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = int(self.types[tid].attrs["type_id"])
        return tid

    def size(self, tid: int) -> int:
        t = self.types[self.resolve(tid)]
        if t.kind == "ARRAY":
            return int(t.attrs["nr_elems"]) * self.size(int(t.attrs["type_id"]))
        if t.kind == "PTR":
            return 8
        return int(t.attrs["size"])

    def signed(self, tid: int) -> bool | None:
        t = self.types[self.resolve(tid)]
        if t.kind == "INT":
            return "SIGNED" in t.attrs.get("encoding", "")
        if t.kind in ("ENUM", "ENUM64"):
            return t.attrs.get("encoding") == "SIGNED"
        return None

    def member(self, tid: int, name: str):
        """(bit offset, type id, bitfield size) of *name* in *tid*, looking
        through anonymous members like C does; None if absent."""
        t = self.types[self.resolve(tid)]
        for mname, a in t.members:
            if mname == name:
                return int(a["bits_offset"]), int(a["type_id"]), int(a.get("bitfield_size", 0))
        for mname, a in t.members:
            if mname == "(anon)":
                found = self.member(int(a["type_id"]), name)
                if found:
                    return int(a["bits_offset"]) + found[0], found[1], found[2]
        return None

    def path(self, tid: int, path: tuple[str, ...]):
        bits, bitfield = 0, 0
        for name in path:
            found = self.member(tid, name)
            if found is None:
                return None
            offset, tid, bitfield = found
            bits += offset
        return bits, tid, bitfield

    def anonymous_container(self, tid: int, name: str) -> int:
        """The anonymous member of *tid* (e.g. of union bpf_attr) that holds *name*."""
        for mname, a in self.types[self.resolve(tid)].members:
            if mname == "(anon)" and self.member(int(a["type_id"]), name):
                return int(a["type_id"])
        raise KeyError(name)

    def leaves(self, tid: int, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        """All member paths under *tid*, anonymous members flattened."""
        out = []
        for mname, a in self.types[self.resolve(tid)].members:
            sub = self.types[self.resolve(int(a["type_id"]))]
            if mname == "(anon)":
                out += self.leaves(int(a["type_id"]), path)
            elif sub.kind in ("STRUCT", "UNION"):
                out += self.leaves(int(a["type_id"]), path + (mname,))
            else:
                out.append(path + (mname,))
        return out


@pytest.fixture(scope="module")
def btf() -> Btf:
    bpftool = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if shutil.os.path.exists(p)), None)
    if bpftool is None:
        pytest.skip("bpftool is not installed: cannot read the kernel BTF")
    if not shutil.os.path.exists(VMLINUX):
        pytest.skip(f"kernel has no BTF at {VMLINUX}")
    out = subprocess.run([bpftool, "btf", "dump", "file", VMLINUX], check=True,
                         capture_output=True, text=True).stdout
    return Btf(parse_bpftool_raw(out))


def _btf_root(btf: Btf, layout: Layout) -> int:
    """BTF type id of the C object *layout* describes."""
    tid = btf.by_name[layout.c_type]
    if layout.member:
        return btf.member(tid, layout.member)[1]
    if layout.anonymous:
        first = ctypes_leaves(layout.cls)[0].path[0]
        return btf.anonymous_container(tid, first)
    return tid


def _ids(layouts):
    return [layout.cls.__name__ for layout in layouts]


@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids(LAYOUTS))
def test_layout_matches_kernel_btf(btf, layout):
    root = _btf_root(btf, layout)
    problems = []
    expected_size = btf.size(root)
    if layout.prefix:
        expected_size = min(expected_size, ctypes.sizeof(layout.cls))
    if ctypes.sizeof(layout.cls) != expected_size:
        problems.append(f"sizeof = {ctypes.sizeof(layout.cls)}, kernel says {expected_size}")
    for leaf in ctypes_leaves(layout.cls):
        if (layout.cls, leaf.path) == PERF_FLAGS_FIELD:
            continue  # test_perf_flag_bits_match_kernel_btf
        name = ".".join(leaf.path)
        found = btf.path(root, leaf.path)
        if found is None:
            problems.append(f"{name}: not in the kernel's {layout.c_type}")
            continue
        bits, tid, bitfield = found
        if bits != leaf.bit_offset:
            problems.append(f"{name}: bit offset {leaf.bit_offset}, kernel {bits}")
        if leaf.bitfield:
            if bitfield != leaf.size:
                problems.append(f"{name}: {leaf.size} bits, kernel {bitfield}")
            continue
        if btf.size(tid) != leaf.size:
            problems.append(f"{name}: size {leaf.size}, kernel {btf.size(tid)}")
        ours, theirs = _is_signed(leaf.ctype), btf.signed(tid)
        if ours is not None and theirs is not None and ours != theirs:
            problems.append(f"{name}: signed={ours}, kernel signed={theirs}")
    assert not problems, f"{layout.cls.__name__} vs kernel BTF:\n" + "\n".join(problems)


WHOLE_LAYOUTS = [layout for layout in LAYOUTS if not layout.prefix]


@pytest.mark.parametrize("layout", WHOLE_LAYOUTS, ids=_ids(WHOLE_LAYOUTS))
def test_every_kernel_field_is_modelled(btf, layout):
    ours = {leaf.path for leaf in ctypes_leaves(layout.cls)}
    skip = [re.compile(p) for p in NOT_MODELLED.get(layout.cls, [])]
    missing = [
        ".".join(path) for path in btf.leaves(_btf_root(btf, layout))
        if path not in ours and not path[-1].startswith("__")
        and not any(p.fullmatch(".".join(path)) for p in skip)
    ]
    assert not missing, f"{layout.cls.__name__} lacks kernel fields {missing}"


def test_perf_flag_bits_match_kernel_btf(btf):
    root = btf.by_name["struct perf_event_attr"]
    word = perf.PerfEventAttr.flags.offset * 8
    problems = []
    for name, (bit, width) in perf.FLAG_BITS.items():
        bits, _, bitfield = btf.member(root, name)
        if (bits - word, bitfield) != (bit, width):
            problems.append(f"{name}: ({bit}, {width}), kernel ({bits - word}, {bitfield})")
    # everything after the named bits up to the end of the word is reserved
    assert btf.member(root, "__reserved_1")[0] - word == max(b + w for b, w in perf.FLAG_BITS.values())
    assert not problems, "\n".join(problems)


def test_perf_flag_masks_agree_with_bits():
    for name in dir(perf):
        if name.startswith("PERF_ATTR_") and not name.startswith("PERF_ATTR_SIZE"):
            bit, width = perf.FLAG_BITS[name[len("PERF_ATTR_"):].lower()]
            assert getattr(perf, name) == ((1 << width) - 1) << bit, name


def test_perf_flag_properties():
    attr = perf.PerfEventAttr()
    attr.disabled = 1
    attr.precise_ip = 2
    attr.sigtrap = True
    assert attr.flags == 1 | (2 << 15) | (1 << 37)
    assert (attr.disabled, attr.precise_ip, attr.inherit) == (1, 2, 0)
    attr.precise_ip = 0
    assert attr.flags == 1 | (1 << 37)
    assert attr.size == ctypes.sizeof(perf.PerfEventAttr)


# --- enums and flags ------------------------------------------------------------

ENUMS = [
    (constants.Cmd, "bpf_cmd", "BPF_"),
    (constants.MapType, "bpf_map_type", "BPF_MAP_TYPE_"),
    (constants.ProgType, "bpf_prog_type", "BPF_PROG_TYPE_"),
    (constants.AttachType, "bpf_attach_type", "BPF_"),
    (constants.LinkType, "bpf_link_type", "BPF_LINK_TYPE_"),
    (constants.Helper, "bpf_func_id", "BPF_FUNC_"),
]


@pytest.mark.parametrize("py_enum, c_enum, prefix", ENUMS, ids=[e[1] for e in ENUMS])
def test_enum_matches_kernel_btf(btf, py_enum, c_enum, prefix):
    kernel = {name[len(prefix):]: value for name, value in btf.enums[c_enum].items()
              if not name.startswith("__")}
    ours = {name: member.value for name, member in py_enum.__members__.items()}
    # every value this kernel has, the same; ours may go on past its last one (newer UAPI,
    # e.g. BPF_TRACE_FSESSION for libbpf's fsession/ sections)
    newer = {name: value for name, value in ours.items() if value > max(kernel.values())}
    assert {name: value for name, value in ours.items() if name not in newer} == kernel
    assert all(name not in kernel for name in newer)


def _py_constants() -> dict[str, int]:
    """Module-level UAPI numbers of constants.py and perf.py that C also names."""
    found = {}
    for module in (constants, perf):
        for name, value in vars(module).items():
            if not isinstance(value, int) or isinstance(value, enum.Enum):
                continue
            if name.startswith("BPF_") or (
                    name.startswith("PERF_")
                    and not name.startswith(("PERF_ATTR_", "PERF_MMAP_PAGE_"))
                    and name != "PERF_EVENT_HEADER_SIZE"):
                found[name] = value
    return found


# #defines added after the 6.1 headers: no BTF enum carries them, so they can
# only be checked against a newer bpf.h.  Keep this list short and exact.
NEWER_THAN_HEADERS = {
    "BPF_F_XDP_DEV_BOUND_ONLY", "BPF_F_BEFORE", "BPF_F_AFTER", "BPF_F_ID",
    "BPF_F_TEST_REG_INVARIANTS",
}


def test_flags_match_kernel_btf(btf):
    ours = _py_constants()
    wrong = {name: (value, btf.enumerators[name]) for name, value in ours.items()
             if name in btf.enumerators and value not in btf.enumerators[name]}
    assert not wrong, f"(ours, kernel BTF): {wrong}"


# --- the UAPI headers through gcc ---------------------------------------------------


@dataclass
class HeaderFacts:
    fields: dict            # (class name, path) -> (offset, size, signed or None)
    sizes: dict             # class name -> sizeof
    constants: dict         # name -> value
    flag_bits: dict         # perf bitfield name -> mask within the flags word
    extra: dict             # name -> value (mmap page offsets, header size)
    dropped: list           # C lines that did not compile


def _c_lines() -> list[str]:
    lines = []
    for layout in LAYOUTS:
        cls = layout.cls.__name__
        prefix = f"{layout.member}." if layout.member else ""
        base = f"offsetof({layout.c_type}, {layout.member})" if layout.member else "0"
        obj = f"(({layout.c_type} *)0)"
        if not layout.anonymous:
            target = f"{obj}->{layout.member}" if layout.member else f"*{obj}"
            lines.append(f'printf("S {cls} %ld\\n", (long)sizeof({target}));')
        for leaf in ctypes_leaves(layout.cls):
            if leaf.bitfield or (layout.cls, leaf.path) == PERF_FLAGS_FIELD:
                continue
            cpath = prefix + ".".join(leaf.path)
            signed = "-1" if _is_signed(leaf.ctype) is None else \
                f"((__typeof__({obj}->{cpath}))-1 < 0)"
            lines.append(
                f'printf("F {cls} {".".join(leaf.path)} %ld %ld %d\\n", '
                f"(long)(offsetof({layout.c_type}, {cpath}) - {base}), "
                f"(long)sizeof({obj}->{cpath}), (int){signed});")
    for name in _py_constants():
        lines.append(f'printf("C {name} %llu\\n", (unsigned long long)({name}));')
    for py_enum, _, prefix in ENUMS:
        for name in py_enum.__members__:
            lines.append(f'printf("C {prefix}{name} %llu\\n", (unsigned long long)({prefix}{name}));')
    for name in perf.FLAG_BITS:
        # set the bitfield to all ones and see which bits of the word change
        lines.append(
            f'{{ struct perf_event_attr a; memset(&a, 0, sizeof a); a.{name} = -1; '
            f'unsigned long long w; memcpy(&w, (char *)&a + offsetof(struct perf_event_attr, read_format) + 8, 8); '
            f'printf("B {name} %llu\\n", w); }}')
    for name, member in (("PERF_MMAP_PAGE_DATA_HEAD", "data_head"), ("PERF_MMAP_PAGE_DATA_TAIL", "data_tail"),
                         ("PERF_MMAP_PAGE_DATA_OFFSET", "data_offset"), ("PERF_MMAP_PAGE_DATA_SIZE", "data_size")):
        lines.append(f'printf("X {name} %ld\\n", (long)offsetof(struct perf_event_mmap_page, {member}));')
    lines.append('printf("X PERF_EVENT_HEADER_SIZE %ld\\n", (long)sizeof(struct perf_event_header));')
    return lines


_PROLOGUE = """\
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
int main(void) {
"""


@pytest.fixture(scope="module")
def header(tmp_path_factory) -> HeaderFacts:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compile the UAPI headers")
    tmp = tmp_path_factory.mktemp("uapi")
    source, binary = tmp / "uapi_offsets.c", tmp / "uapi_offsets"
    lines = _c_lines()
    first = _PROLOGUE.count("\n") + 1
    dropped = []
    for _ in range(20):
        source.write_text(_PROLOGUE + "\n".join(lines) + "\nreturn 0;\n}\n")
        result = subprocess.run([gcc, "-w", "-fmax-errors=0", "-o", str(binary), str(source)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            break
        bad = {int(n) - first for n in re.findall(rf"^{re.escape(str(source))}:(\d+):\d+: error",
                                                  result.stderr, re.M)}
        bad = {n for n in bad if 0 <= n < len(lines)}
        if not bad:
            pytest.fail(f"UAPI probe does not compile:\n{result.stderr[:3000]}")
        dropped += [lines[n] for n in sorted(bad)]
        lines = [line for n, line in enumerate(lines) if n not in bad]
    else:
        pytest.fail("UAPI probe still does not compile after dropping unknown names")
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    facts = HeaderFacts({}, {}, {}, {}, {}, dropped)
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "F":
            cls, path, offset, size, signed = rest
            facts.fields[(cls, path)] = (int(offset), int(size), None if signed == "-1" else signed == "1")
        elif kind == "S":
            facts.sizes[rest[0]] = int(rest[1])
        elif kind == "C":
            facts.constants[rest[0]] = int(rest[1])
        elif kind == "B":
            facts.flag_bits[rest[0]] = int(rest[1])
        elif kind == "X":
            facts.extra[rest[0]] = int(rest[1])
    return facts


def test_header_probe_is_mostly_compiled(header):
    """Dropping lines must stay the exception (fields newer than the headers)."""
    dropped_fields = [line for line in header.dropped if line.startswith('printf("F ')]
    assert len(header.fields) >= 200
    assert len(dropped_fields) < len(header.fields) // 2, dropped_fields


@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids(LAYOUTS))
def test_layout_matches_uapi_header(header, layout):
    cls = layout.cls.__name__
    problems = []
    complete = True
    for leaf in ctypes_leaves(layout.cls):
        if leaf.bitfield or (layout.cls, leaf.path) == PERF_FLAGS_FIELD:
            continue
        name = ".".join(leaf.path)
        if (cls, name) not in header.fields:
            complete = False  # newer than the headers: covered by the BTF test
            continue
        offset, size, signed = header.fields[(cls, name)]
        ours_signed = _is_signed(leaf.ctype)
        if (offset * 8, size) != (leaf.bit_offset, leaf.size):
            problems.append(f"{name}: offset/size {leaf.bit_offset // 8}/{leaf.size}, header {offset}/{size}")
        if signed is not None and ours_signed is not None and signed != ours_signed:
            problems.append(f"{name}: signed={ours_signed}, header signed={signed}")
    if complete and cls in header.sizes and header.sizes[cls] != ctypes.sizeof(layout.cls):
        problems.append(f"sizeof = {ctypes.sizeof(layout.cls)}, header {header.sizes[cls]}")
    assert not problems, f"{cls} vs UAPI header:\n" + "\n".join(problems)


@pytest.mark.parametrize("py_enum, c_enum, prefix", ENUMS, ids=[e[1] for e in ENUMS])
def test_enum_matches_uapi_header(header, py_enum, c_enum, prefix):
    wrong = {name: (member.value, header.constants[prefix + name])
             for name, member in py_enum.__members__.items()
             if prefix + name in header.constants and header.constants[prefix + name] != member.value}
    assert not wrong
    assert sum(prefix + name in header.constants for name in py_enum.__members__) > 0


def test_flags_match_uapi_header(header):
    ours = _py_constants()
    wrong = {name: (value, header.constants[name]) for name, value in ours.items()
             if name in header.constants and header.constants[name] != value}
    assert not wrong, f"(ours, header): {wrong}"


def test_every_flag_is_verified(btf, header):
    """Each number is checked by the kernel BTF or by the headers, except the
    few #defines newer than the 6.1 headers."""
    unverified = {name for name in _py_constants()
                  if name not in btf.enumerators and name not in header.constants}
    assert unverified == NEWER_THAN_HEADERS


def test_perf_flag_bits_match_uapi_header(header):
    for name, (bit, width) in perf.FLAG_BITS.items():
        if name in header.flag_bits:
            assert header.flag_bits[name] == ((1 << width) - 1) << bit, name
    assert header.flag_bits  # the 6.1 header knows most of them


def test_perf_offsets_match_uapi_header(header):
    assert header.extra == {name: getattr(perf, name) for name in header.extra}
    assert set(header.extra) == {"PERF_MMAP_PAGE_DATA_HEAD", "PERF_MMAP_PAGE_DATA_TAIL",
                                 "PERF_MMAP_PAGE_DATA_OFFSET", "PERF_MMAP_PAGE_DATA_SIZE",
                                 "PERF_EVENT_HEADER_SIZE"}


def test_ioctl_numbers_match_uapi_header(header):
    for name in ("PERF_EVENT_IOC_ENABLE", "PERF_EVENT_IOC_DISABLE", "PERF_EVENT_IOC_SET_BPF",
                 "PERF_EVENT_IOC_RESET", "PERF_EVENT_IOC_ID", "PERF_EVENT_IOC_PAUSE_OUTPUT"):
        assert header.constants[name] == getattr(perf, name), name
