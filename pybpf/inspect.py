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


def _record_type(spec: ObjectSpec, m) -> tuple[str | None, bool]:
    """(the record type of ring buffer ``m``, declared?): the ``pybpf:record=`` tag's type, else the
    type ``python -m pybpf load`` would decode its records with (a guess), else None."""
    btf = spec.btf
    if btf is None:
        return None, False
    if m.record_type_id:
        return btf.type_name(m.record_type_id), True
    from .cli import guess_record_type
    t = guess_record_type(spec, m.name, m.type == MapType.USER_RINGBUF)
    return (btf.type_name(t.id), False) if t is not None else (None, False)


def describe_data(spec: ObjectSpec, only: str | None = None) -> dict:
    """What :func:`describe` prints, as plain data (what ``inspect --json`` prints); ``only``: that
    program's entry alone."""
    if only is not None:
        _check_program(spec, only)
    out = {"object": spec.name, "path": str(spec.path), "license": spec.license or None,
           "kernel_version": spec.kern_version or None, "programs": [], "maps": [], "variables": []}
    for name, p in spec.programs.items():
        if only is not None and name != only:
            continue
        sec = p.sec_def
        prog = {"name": name, "section": p.section, "type": str(sec.prog_type),
                "attach_type": str(sec.attach_type) if sec.attach_type else None,
                "attach": str(sec.attach) if sec.attach else None, "attach_target": p.attach_target or None,
                "autoload": bool(p.autoload)}
        out["programs"].append(prog)
        try:
            linked = link_program(spec, p)
        except Error as e:
            prog["error"] = f"cannot link: {e}"
            continue
        # each function's own instructions, in the order the linker placed them: they sum to the total
        parts = [{"function": fn.name, "start": start, "insns": fn.insn_cnt} for fn, start in linked.layout]
        placed = sum(part["insns"] for part in parts)
        prog["insn_cnt"] = linked.insn_cnt
        prog["own_insns"] = parts[0]["insns"] if parts else linked.insn_cnt
        prog["subprograms"] = parts[1:]
        if placed != linked.insn_cnt:       # never seen; shown rather than hidden
            prog["other_insns"] = linked.insn_cnt - placed
        refs = []
        for r in linked.map_refs:
            m = spec.maps.get(r.map_name)
            if r.offset is None:
                refs.append(f"map {r.map_name}")
            else:
                var = next((v.name for v in spec.variables.values()
                            if v.map is m and v.offset <= r.offset < v.offset + max(v.size, 1)), None)
                refs.append(f"global {var or r.map_name + '+' + str(r.offset)}")
        prog["relocations"] = list(dict.fromkeys(refs))
        prog["func_info"] = len(linked.func_info)
        prog["line_info"] = len(linked.line_info)
    if only is not None:
        return out["programs"][0]
    btf = spec.btf
    for name, m in spec.maps.items():
        kt = btf.type_name(m.key_type_id) if btf and m.key_type_id else None
        vt = btf.type_name(m.value_type_id) if btf and m.value_type_id else None
        entry = {"name": name, "type": _map_type_name(m.type), "key_size": m.key_size, "value_size": m.value_size,
                 "max_entries": m.max_entries, "flags": _flags_text(m.flags), "key_type": kt, "value_type": vt}
        if m.internal:
            entry["key_type"], entry["value_type"] = None, None
            entry["section"] = m.section
        if m.type in (MapType.RINGBUF, MapType.USER_RINGBUF):
            rt, declared = _record_type(spec, m)
            entry["record_type"] = rt
            entry["record_type_declared"] = declared
        out["maps"].append(entry)
    for name, v in spec.variables.items():
        if v.size > MAX_SHOWN_VALUE:
            value, shown = None, False
        else:
            raw = v.map.data[v.offset:v.offset + v.size] if v.map.data is not None else b""
            value = decode_value(raw, btf, v.type_id)
            value = value.to_python() if hasattr(value, "to_python") else value
            if isinstance(value, bytes):
                value = value.hex()
            shown = True
        out["variables"].append({"name": name, "section": v.section, "offset": v.offset, "size": v.size,
                                 "type": v.type_name, "value": value, "value_shown": shown})
    return out


def _insn_text(p: dict) -> str:
    subs = p["subprograms"]
    text = f"{p['insn_cnt']} instructions"
    if subs or "other_insns" in p:
        text += f" = {p['own_insns']} own"
        if subs:
            text += " + subprograms: " + " + ".join(f"{s['function']} {s['insns']}" for s in subs)
        if "other_insns" in p:
            text += f" + {p['other_insns']} other"
    return text


def describe(spec: ObjectSpec, only: str | None = None) -> str:
    """The whole object: programs, maps, variables (``only``: just that program)."""
    if only is not None:
        return "\n".join(_program_lines(describe_data(spec, only))) + "\n"
    d = describe_data(spec)
    out = [f"object {d['object']} ({d['path']}): license {d['license'] or '(none)'!r}"
           + (f", kernel version {d['kernel_version']:#x}" if d["kernel_version"] else "")]
    out.append("")
    out.append(f"programs ({len(d['programs'])}):")
    for p in d["programs"]:
        out += _program_lines(p)
    out.append("")
    out.append(f"maps ({len(d['maps'])}):")
    rows = []
    for m in d["maps"]:
        vt = m["value_type"] or "-"
        if "section" in m:
            vt = f"section {m['section']}"
        elif "record_type" in m:
            rt = m["record_type"]
            vt = "record " + (rt if m["record_type_declared"] else f"{rt} (guessed)") if rt else "record unknown"
        rows.append([m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"],
                     m["key_type"] or "-", vt])
    if rows:
        out += _table(rows, ["NAME", "TYPE", "KEY", "VALUE", "MAX_ENTRIES", "FLAGS", "KEY TYPE", "VALUE TYPE"])
    out.append("")
    out.append(f"global variables ({len(d['variables'])}):")
    rows = []
    for v in d["variables"]:
        value = v["value"]
        if not v["value_shown"]:
            text = f"({v['size']} bytes)"
        else:
            text = repr(value) if isinstance(value, str) else str(value)
        if len(text) > 40:
            text = text[:37] + "..."
        rows.append([v["section"], v["offset"], v["size"], v["type"], v["name"], text])
    if rows:
        out += _table(rows, ["SECTION", "OFFSET", "SIZE", "TYPE", "NAME", "INITIAL VALUE"])
    return "\n".join(out) + "\n"


def _check_program(spec: ObjectSpec, only: str) -> str:
    if only not in spec.programs:
        raise Error(f"no program {only!r} (this object has: {', '.join(spec.programs)})")
    return only


def _program_lines(p: dict) -> list:
    target = f" -> {p['attach']} {p['attach_target']}" if p["attach"] and p["attach_target"] else ""
    extra = "" if p["autoload"] else " (not autoloaded)"
    out = [f"  {p['name']}: section {p['section']!r}, {p['type']}"
           f"{' / ' + p['attach_type'] if p['attach_type'] else ''}{target}{extra}"]
    if "error" in p:
        return out + [f"    {p['error']}"]
    out.append(f"    {_insn_text(p)}")
    if p["relocations"]:
        out.append(f"    relocations: {', '.join(p['relocations'])}")
    if p["line_info"]:
        out.append(f"    BTF: {p['func_info']} func_info, {p['line_info']} line_info records")
    return out


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


def layout_data(btf: BTF, type_spec) -> dict:
    """What :func:`layout` prints, as plain data: members (offsets and sizes in bytes, bitfields in
    bits), holes before members, and the trailing padding."""
    if isinstance(type_spec, str):
        t = btf.find(type_spec)
    else:
        t = btf[type_spec] if isinstance(type_spec, int) else type_spec
    t = btf.resolve(t.id)
    if t is None or t.kind not in (Kind.STRUCT, Kind.UNION):
        what = btf.type_name(t.id) if t is not None else "void"
        raise Error(f"{type_spec!r} is not a struct or union (it is {what})")
    members = []
    end = 0          # end of the previous member, in bits
    holes = hole_bytes = 0
    for m in t.members:
        size = btf.size_of(m.type_id) if m.type_id else 0
        entry = {"name": m.name or "", "offset": m.bit_offset // 8, "size": size}
        if t.kind == Kind.STRUCT and m.bit_offset > end and not m.bitfield_size:
            gap_bits = m.bit_offset - end
            if gap_bits >= 8:
                holes += 1
                hole_bytes += gap_bits // 8
                entry["hole_before"] = gap_bits // 8
            elif gap_bits:
                entry["hole_bits_before"] = gap_bits
        entry["type"], entry["decl"] = _decl(btf, m.type_id, m.name or "")
        if m.bitfield_size:
            entry["bit_offset"] = m.bit_offset
            entry["bitfield_size"] = m.bitfield_size
            end = max(end, m.bit_offset + m.bitfield_size)
        else:
            end = max(end, m.bit_offset + 8 * size)
        members.append(entry)
    padding = t.size - (end + 7) // 8 if t.kind == Kind.STRUCT else 0
    return {"kind": "struct" if t.kind == Kind.STRUCT else "union", "name": t.name or None, "type_id": t.id,
            "size": t.size, "cachelines": (t.size + CACHELINE - 1) // CACHELINE, "members": members,
            "holes": holes, "sum_holes": hole_bytes, "padding": max(padding, 0)}


def layout(btf: BTF, type_spec) -> str:
    """A pahole-like view of a struct or union (a C spelling, a type id or a Type): member offsets
    and sizes, holes, bitfields, padding."""
    d = layout_data(btf, type_spec)
    lines = [f"{d['kind']} {d['name'] or '(anon)'} {{"]
    for m in d["members"]:
        if "hole_before" in m:
            gap = m["hole_before"]
            lines.append(f"\n\t/* XXX {gap} byte{'s' if gap != 1 else ''} hole, try to pack */\n")
        elif "hole_bits_before" in m:
            gap_bits = m["hole_bits_before"]
            lines.append(f"\t/* XXX {gap_bits} bit{'s' if gap_bits != 1 else ''} hole */")
        decl = m["decl"]
        if "bitfield_size" in m:
            decl += f":{m['bitfield_size']}"
            where = f"/* {m['bit_offset'] // 8:5d}:{m['bit_offset'] % 8:2d} {m['size']:4d} */"
        else:
            where = f"/* {m['offset']:5d} {m['size']:5d} */"
        lines.append(f"\t{m['type']:<26} {decl + ';':<21} {where}")
    total = d["size"]
    lines.append("")
    summary = f"\t/* size: {total}, cachelines: {d['cachelines']}, members: {len(d['members'])}"
    if d["holes"]:
        summary += f", holes: {d['holes']}, sum holes: {d['sum_holes']}"
    if d["padding"] > 0:
        summary += f", padding: {d['padding']}"
    lines.append(summary + " */")
    if total % CACHELINE:
        lines.append(f"\t/* last cacheline: {total % CACHELINE} bytes */")
    lines.append("};")
    return "\n".join(lines) + "\n"


def disassembly_data(spec: ObjectSpec, only: str | None = None, linum: bool = False) -> list:
    """Each program's disassembly as data: [{program, section, insn_cnt, lines}] (the lines of
    :func:`disassembly`)."""
    from .spec.disasm import disassemble, func_signature
    out = []
    btf = spec.btf
    if only is not None:
        _check_program(spec, only)
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
        lines = disassemble(bytes(insns), map_names={r.insn: r.map_name for r in linked.map_refs},
                            func_names=funcs, line_info=linked.line_info if btf is not None else None,
                            source=btf.string if btf is not None else None, func_protos=protos, linum=linum)
        out.append({"program": name, "section": p.section, "insn_cnt": linked.insn_cnt, "lines": lines})
    return out


def disassembly(spec: ObjectSpec, only: str | None = None, linum: bool = False) -> str:
    """Each program's linked instructions in the kernel's notation, with its C source lines
    (from line_info), function prototypes (from func_info), and maps and call targets named."""
    out = []
    for d in disassembly_data(spec, only, linum):
        out.append(f"{d['program']}: section {d['section']!r}, {d['insn_cnt']} instructions")
        out += d["lines"]
        out.append("")
    return "\n".join(out)


def _compiled_imm(insns: bytes, n: int) -> int:
    """The value instruction ``n`` holds as compiled: an ld_imm64's 64-bit constant, else imm (unsigned, as
    libbpf logs it).  Bitfield and size relocations are not validated against it (it may differ from
    the local value)."""
    import struct
    code, _, _, imm = struct.unpack_from("<BBhi", insns, n * 8)
    if code == 0x18 and len(insns) >= (n + 2) * 8:       # BPF_LD | BPF_IMM | BPF_DW: two slots
        hi = struct.unpack_from("<i", insns, (n + 1) * 8 + 4)[0]
        return (imm & 0xFFFFFFFF) | ((hi & 0xFFFFFFFF) << 32)
    return imm & 0xFFFFFFFF


def core_data(spec: ObjectSpec, only: str | None = None, kernel: bool = False) -> list:
    """Each function's CO-RE relocations (from .BTF.ext), as libbpf numbers them (``relo #N`` in
    its section): kind, local type, access string and path; with ``kernel``, what each resolves
    to against the running kernel's BTF (as loading does: same candidates, same values)."""
    from .loader.core import CoreError, CoreKind, parse_spec
    from .loader.core import _functions, _resolve_object
    from .spec.btf import BTFError
    ext = spec.btf_ext
    if only is not None:
        _check_program(spec, only)
    progs = {id(p.function): name for name, p in spec.programs.items()}
    wanted = None
    if only is not None:
        # the program's own function and the subprograms linked into it
        wanted = {id(fn) for fn, _ in link_program(spec, spec.programs[only]).layout}
    resolved = {}
    if kernel and ext is not None and ext.core_relos:
        from .loader.facts import KernelFacts
        loaded = {n for n, p in spec.programs.items() if p.autoload} | ({only} if only else set())
        resolved = _resolve_object(spec, KernelFacts.running(), loaded)
    out = []
    for fn in _functions(spec):
        if wanted is not None and id(fn) not in wanted:
            continue
        recs = ext.core_relos.get(fn.section, ()) if ext is not None else ()
        lo, hi = fn.sec_insn_off * 8, (fn.sec_insn_off + fn.insn_cnt) * 8
        relos = []
        for i, rec in enumerate(recs):
            if not lo <= rec.insn_off < hi:
                continue
            n = rec.insn_off // 8 - fn.sec_insn_off
            entry = {"index": i, "insn": n, "type_id": rec.type_id, "imm": _compiled_imm(fn.insns, n)}
            try:
                kind = CoreKind(rec.kind)
                entry["kind"] = kind.log_name
                local = parse_spec(spec.btf, rec.type_id, spec.btf.string(rec.access_str_off), kind)
            except (ValueError, CoreError, BTFError) as e:
                entry.setdefault("kind", str(rec.kind))
                entry["error"] = str(e) if not isinstance(e, ValueError) else f"unknown kind {rec.kind}"
            else:
                path = local.path()
                entry.update(type=spec.btf.type_name(rec.type_id), path=path,
                             access=":".join(map(str, local.raw)) or "0", spec=local.format())
                if kind not in (6, 7, 8, 9, 12) and kind not in (10, 11):
                    entry["bit_offset"] = local.bit_offset
            if kernel:
                res = resolved.get((fn.section, rec.insn_off))
                if res is not None:
                    k = {"orig": res.orig, "new": res.new, "poison": res.poison,
                         "target": res.target.format() if res.target is not None else None}
                    if res.target is not None and res.target.kind not in (6, 7, 8, 9, 12, 10, 11):
                        k["target_bit_offset"] = res.target.bit_offset
                    if res.reason:
                        k["reason"] = res.reason
                    if res.error:
                        k["error"] = res.error
                    entry["kernel"] = k
            relos.append(entry)
        if relos or fn is (spec.programs[only].function if only else None):
            out.append({"function": fn.name, "section": fn.section,
                        "program": id(fn) in progs, "relocations": relos})
    return out


def core_listing(spec: ObjectSpec, only: str | None = None, kernel: bool = False) -> str:
    """:func:`core_data` as text: one line per relocation in libbpf's debug-log notation
    (``<byte_off> [5] struct task_struct.pid (0:92 @ offset 1264)``), and with ``kernel`` the
    matching target spec and the value patched in (``1264 -> 1264``) or why it is poisoned."""
    data = core_data(spec, only, kernel)
    total = sum(len(f["relocations"]) for f in data)
    out = [f"CO-RE relocations ({total}):"]
    if not total:
        out.append("  (none)")
    for f in data:
        what = "program" if f["program"] else "subprogram"
        out.append(f"  {what} {f['function']} (section {f['section']!r}): {len(f['relocations'])}")
        for r in f["relocations"]:
            text = r.get("spec") or f"<{r['kind']}> [{r['type_id']}]"
            line = f"    relo #{r['index']}: insn #{r['insn']}: {text}"
            if "error" in r:
                line += f": {r['error']}"
            out.append(line)
            k = r.get("kernel")
            if k is None:
                continue
            if k.get("error"):
                out.append(f"      kernel: cannot be applied: {k['error']}")
            elif k["poison"]:
                out.append(f"      kernel: no match, poisoned: {k.get('reason', '')}")
            else:
                # the instruction's compiled value -> the patched one (libbpf's "patched insn" line)
                out.append(f"      kernel: {k['target'] or '(local)'}: {r['imm']} -> {k['new']}")
    return "\n".join(out) + "\n"
