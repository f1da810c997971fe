"""Offline inspection of a BPF object (no kernel, no root): what ``python -m pybpf inspect`` prints.

Programs (section → program type and attach target, instruction counts,
subprograms, relocations), maps (type, sizes, flags, key/value types), global
variables with their initial values, and a pahole-like layout of any struct.
"""

from __future__ import annotations


from .errors import Error
from .kernel.constants import MapType
from .loader.relocate import link_program
from .spec.btf import BTF, MAX_RESOLVE_DEPTH, Kind
from .spec.object import ObjectSpec, decode_value

CACHELINE = 64
#: variables larger than this are shown by size, not decoded (a 1 GiB .bss array would be read whole)
MAX_SHOWN_VALUE = 4096


def _map_type_name(t: int) -> str:
    try:
        return MapType(t).name
    except ValueError:
        return str(t)


def _flags_text(flags: int) -> str:
    from .kernel import constants as C
    names = [n for n in dir(C) if n.startswith("BPF_F_") and isinstance(getattr(C, n), int)]
    out, rest = [], flags
    # map_create flags only; several UAPI flag families reuse the same bits
    for n in ("BPF_F_NO_PREALLOC", "BPF_F_NO_COMMON_LRU", "BPF_F_NUMA_NODE", "BPF_F_RDONLY", "BPF_F_WRONLY",
              "BPF_F_STACK_BUILD_ID", "BPF_F_ZERO_SEED", "BPF_F_RDONLY_PROG", "BPF_F_WRONLY_PROG", "BPF_F_CLONE",
              "BPF_F_MMAPABLE", "BPF_F_PRESERVE_ELEMS", "BPF_F_INNER_MAP", "BPF_F_LINK", "BPF_F_PATH_FD",
              "BPF_F_VTYPE_BTF_OBJ_FD", "BPF_F_TOKEN_FD", "BPF_F_SEGV_ON_FAULT", "BPF_F_NO_USER_CONV"):
        if n in names and getattr(C, n) & rest:
            out.append(n[6:])
            rest &= ~getattr(C, n)
    if rest:
        out.append(hex(rest))
    return "|".join(out) or "0"


def _table(rows: list, header: list) -> list:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*header).rstrip()] + ["  " + fmt.format(*map(str, r)).rstrip() for r in rows]


def describe(spec: ObjectSpec) -> str:
    """The whole object: programs, maps, variables."""
    out = [f"object {spec.name} ({spec.path}): license {spec.license or '(none)'!r}"
           + (f", kernel version {spec.kern_version:#x}" if spec.kern_version else "")]
    out.append("")
    out.append(f"programs ({len(spec.programs)}):")
    for name, p in spec.programs.items():
        sec = p.sec_def
        target = f" -> {sec.attach} {p.attach_target}" if sec.attach and p.attach_target else ""
        extra = "" if p.autoload else " (not autoloaded)"
        out.append(f"  {name}: section {p.section!r}, {sec.prog_type}"
                   f"{' / ' + sec.attach_type if sec.attach_type else ''}{target}{extra}")
        try:
            linked = link_program(spec, p)
        except Error as e:
            out.append(f"    cannot link: {e}")
            continue
        subs = [f"{fn.name} (+{start})" for fn, start in linked.layout[1:]]
        out.append(f"    {linked.insn_cnt} instructions ({p.function.insn_cnt} own"
                   + (f"; subprograms: {', '.join(subs)}" if subs else "") + ")")
        refs = []
        for r in linked.map_refs:
            m = spec.maps.get(r.map_name)
            if r.offset is None:
                refs.append(f"map {r.map_name}")
            else:
                var = next((v.name for v in spec.variables.values()
                            if v.map is m and v.offset <= r.offset < v.offset + max(v.size, 1)), None)
                refs.append(f"global {var or r.map_name + '+' + str(r.offset)}")
        if refs:
            seen = list(dict.fromkeys(refs))
            out.append(f"    relocations: {', '.join(seen)}")
        if linked.line_info:
            out.append(f"    BTF: {len(linked.func_info)} func_info, {len(linked.line_info)} line_info records")
    out.append("")
    out.append(f"maps ({len(spec.maps)}):")
    rows = []
    btf = spec.btf
    for name, m in spec.maps.items():
        kt = btf.type_name(m.key_type_id) if btf and m.key_type_id else "-"
        vt = btf.type_name(m.value_type_id) if btf and m.value_type_id else "-"
        if m.internal:
            kt, vt = "-", f"section {m.section}"
        rows.append([name, _map_type_name(m.type), m.key_size, m.value_size, m.max_entries, _flags_text(m.flags),
                     kt, vt])
    if rows:
        out += _table(rows, ["NAME", "TYPE", "KEY", "VALUE", "MAX_ENTRIES", "FLAGS", "KEY TYPE", "VALUE TYPE"])
    out.append("")
    out.append(f"global variables ({len(spec.variables)}):")
    rows = []
    for name, v in spec.variables.items():
        if v.size > MAX_SHOWN_VALUE:
            text = f"({v.size} bytes)"
        else:
            raw = v.map.data[v.offset:v.offset + v.size] if v.map.data is not None else b""
            value = decode_value(raw, btf, v.type_id)
            value = value.to_python() if hasattr(value, "to_python") else value
            if isinstance(value, bytes):
                value = value.hex()
            text = repr(value) if isinstance(value, str) else str(value)
        if len(text) > 40:
            text = text[:37] + "..."
        rows.append([v.section, v.offset, v.size, v.type_name, name, text])
    if rows:
        out += _table(rows, ["SECTION", "OFFSET", "SIZE", "TYPE", "NAME", "INITIAL VALUE"])
    return "\n".join(out) + "\n"


def _decl(btf: BTF, type_id: int, name: str) -> tuple[str, str]:
    """(type text, declarator) for a member: arrays keep their dimensions after the name."""
    dims = ""
    t = btf[type_id] if type_id else None
    depth = 0
    while t is not None and t.kind == Kind.ARRAY:
        depth += 1
        if depth > MAX_RESOLVE_DEPTH:    # an array of itself
            raise btf.too_deep(type_id, "array dimensions")
        dims += f"[{t.nelems}]"
        t = btf[t.elem_type] if t.elem_type else None
    base = btf.type_name(t.id) if t is not None else "void"
    if t is not None and t.kind in (Kind.STRUCT, Kind.UNION) and not t.name:
        base = "struct {...}" if t.kind == Kind.STRUCT else "union {...}"
    return base, f"{name}{dims}"


def layout(btf: BTF, type_spec) -> str:
    """A pahole-like view of a struct or union (a C spelling, a type id or a Type): member offsets
    and sizes, holes, bitfields, padding."""
    if isinstance(type_spec, str):
        t = btf.find(type_spec)
    else:
        t = btf[type_spec] if isinstance(type_spec, int) else type_spec
    t = btf.resolve(t.id)
    if t is None or t.kind not in (Kind.STRUCT, Kind.UNION):
        what = btf.type_name(t.id) if t is not None else "void"
        raise Error(f"{type_spec!r} is not a struct or union (it is {what})")
    word = "struct" if t.kind == Kind.STRUCT else "union"
    lines = [f"{word} {t.name or '(anon)'} {{"]
    end = 0          # end of the previous member, in bits
    holes = hole_bytes = 0
    for m in t.members:
        size = btf.size_of(m.type_id) if m.type_id else 0
        if t.kind == Kind.STRUCT and m.bit_offset > end and not m.bitfield_size:
            gap_bits = m.bit_offset - end
            if gap_bits >= 8:
                gap = gap_bits // 8
                holes += 1
                hole_bytes += gap
                lines.append(f"\n\t/* XXX {gap} byte{'s' if gap != 1 else ''} hole, try to pack */\n")
            elif gap_bits:
                lines.append(f"\t/* XXX {gap_bits} bit{'s' if gap_bits != 1 else ''} hole */")
        tname, decl = _decl(btf, m.type_id, m.name or "")
        if m.bitfield_size:
            decl += f":{m.bitfield_size}"
            where = f"/* {m.bit_offset // 8:5d}:{m.bit_offset % 8:2d} {size:4d} */"
            end = max(end, m.bit_offset + m.bitfield_size)
        else:
            where = f"/* {m.bit_offset // 8:5d} {size:5d} */"
            end = max(end, m.bit_offset + 8 * size)
        lines.append(f"\t{tname:<26} {decl + ';':<21} {where}")
    total = t.size
    padding = total - (end + 7) // 8 if t.kind == Kind.STRUCT else 0
    lines.append("")
    summary = f"\t/* size: {total}, cachelines: {(total + CACHELINE - 1) // CACHELINE}, members: {len(t.members)}"
    if holes:
        summary += f", holes: {holes}, sum holes: {hole_bytes}"
    if padding > 0:
        summary += f", padding: {padding}"
    lines.append(summary + " */")
    if total % CACHELINE:
        lines.append(f"\t/* last cacheline: {total % CACHELINE} bytes */")
    lines.append("};")
    return "\n".join(lines) + "\n"


def disassembly(spec: ObjectSpec, only: str | None = None, linum: bool = False) -> str:
    """Each program's linked instructions in the kernel's notation, with its C source lines
    (from line_info), function prototypes (from func_info), and maps and call targets named."""
    from .spec.disasm import disassemble, func_signature
    out = []
    btf = spec.btf
    if only and only not in spec.programs:
        raise Error(f"no program {only!r} (this object has: {', '.join(spec.programs)})")
    for name, p in spec.programs.items():
        if only and name != only:
            continue
        linked = link_program(spec, p)
        # any fds will do: with_map_fds sets src_reg and value offsets so maps can be named
        insns = linked.with_map_fds({m: 0 for m in spec.maps})
        funcs = {start: fn.name for fn, start in linked.layout}
        protos = {}
        if btf is not None:
            for insn, type_id in linked.func_info:
                try:
                    protos[insn] = func_signature(btf, type_id)
                except Error:
                    pass
        out.append(f"{name}: section {p.section!r}, {linked.insn_cnt} instructions")
        out += disassemble(bytes(insns), map_names={r.insn: r.map_name for r in linked.map_refs},
                           func_names=funcs, line_info=linked.line_info if btf is not None else None,
                           source=btf.string if btf is not None else None, func_protos=protos, linum=linum)
        out.append("")
    return "\n".join(out)
