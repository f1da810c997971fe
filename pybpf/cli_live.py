"""``python -m pybpf prog|map|link|pin``: the kernel's live BPF objects from the command line.

    python -m pybpf prog list [--json] | prog show ID|PIN [--json] | prog dump ID|PIN [--linum]
    python -m pybpf map  list [--json] | map show ID|PIN [--json] | map dump ID|PIN [--json]
    python -m pybpf map  peek ID|PIN [--count N] [--json]
    python -m pybpf link list [--json] | link show ID|PIN [--json]
    python -m pybpf pin  OBJECT DIR

``ID|PIN``: a number is an id (opening by id needs CAP_SYS_ADMIN), anything else a path on
bpffs.  ``--json`` prints what ``bpftool -j`` prints for the same command, byte for byte
(compact JSON, one line); without it list/show print bpftool's plain layout.  ``map dump``
decodes keys and values through the map's BTF as bpftool's ``formatted`` member does;
``map peek`` shows a ring buffer's committed, unconsumed records without consuming them;
``pin`` loads an object and pins each map and program under DIR (``bpftool prog loadall
OBJECT DIR pinmaps DIR``), so it stays loaded after the command ends.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
import time

import pybpf
from pybpf import live
from pybpf.kernel.constants import MapType
from pybpf.spec.btf import INT_BOOL, INT_CHAR, INT_SIGNED, Kind

# -- arguments -------------------------------------------------------------------------------------


def add_parsers(sub) -> None:
    """Register the ``prog``, ``map``, ``link`` and ``pin`` subcommands on ``sub`` (argparse)."""
    for kind, extra in (("prog", ("dump",)), ("map", ("dump", "peek")), ("link", ())):
        p = sub.add_parser(kind, help=f"live BPF {kind}s: list, show" + "".join(f", {e}" for e in extra))
        ksub = p.add_subparsers(dest="live_command", metavar="SUBCOMMAND", required=True)
        for name in ("list", "show"):
            q = ksub.add_parser(name, help=f"{kind}s as bpftool {kind} {name} prints them")
            if name == "show":
                q.add_argument("target", metavar="ID|PIN", help="an id (needs CAP_SYS_ADMIN) or a pinned path")
            q.add_argument("--json", "-j", action="store_true", help="bpftool -j's JSON")
        if kind == "prog":
            q = ksub.add_parser("dump", help="the translated instructions with function names and source lines")
            q.add_argument("target", metavar="ID|PIN")
            q.add_argument("--linum", action="store_true", help="add [file:F line_num:N line_col:C]")
        if kind == "map":
            q = ksub.add_parser("dump", help="every key and value, typed through the map's BTF")
            q.add_argument("target", metavar="ID|PIN")
            q.add_argument("--json", "-j", action="store_true", help="bpftool -j map dump's JSON")
            q = ksub.add_parser("peek", help="a ring buffer's unconsumed records, without consuming them")
            q.add_argument("target", metavar="ID|PIN")
            q.add_argument("--count", type=int, metavar="N", help="show at most N records")
            q.add_argument("--json", "-j", action="store_true", help="one JSON object per record")
    p = sub.add_parser("pin", help="load OBJECT and pin every map and program under DIR",
                       description="Load OBJECT and pin each map at DIR/<map name> and each program at "
                                   "DIR/<program name> (as bpftool prog loadall OBJECT DIR pinmaps DIR); "
                                   "nothing is attached.  They stay loaded until the pins are removed.")
    p.add_argument("object")
    p.add_argument("dir")


def run(args) -> int:
    """Run a ``prog``/``map``/``link``/``pin`` command; returns the exit code."""
    if args.command == "pin":
        return cmd_pin(args)
    handler = _HANDLERS[(args.command, args.live_command)]
    return handler(args)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _json_line(value) -> str:
    # bpftool's json_writer: compact, no spaces, UTF-8 as is, one newline at the end
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n"


def _is_id(target: str) -> bool:
    return target.isdigit()


def _open(kind: str, target: str, **kwargs):
    """The Program/Map/Link for ``target`` (an id or a pinned path)."""
    cls = {"program": pybpf.Program, "map": pybpf.Map, "link": pybpf.Link}[kind]
    if _is_id(target):
        return cls.from_id(int(target), **kwargs)
    return cls.from_pinned(target, **kwargs)


def _open_fd(kind: str, target: str, flags: int = 0) -> int:
    """A raw fd (the caller closes it) for ``target``; signals deferred by the caller."""
    if _is_id(target):
        return live.open_id(kind, int(target), flags)
    return live.open_pinned(target, kind, flags)


# -- time as bpftool prints it -----------------------------------------------------------------------

def _boot_offset() -> int:
    """Nanoseconds from CLOCK_BOOTTIME to wall-clock time, as bpftool's print_boot_time reads
    them: (real.tv_sec - boot.tv_sec) + (real.tv_nsec - boot.tv_nsec + load_ns) / 1e9, which is
    the floor of the exact sum (load_ns is large, so the C division never truncates a negative)."""
    return live._boot_to_epoch()


def _loaded_at(p, offset: int) -> int:
    return (offset + p.load_time) // 1_000_000_000


# -- programs --------------------------------------------------------------------------------------

def _prog_json(p, offset: int) -> dict:
    out = live.to_bpftool(p)
    if "loaded_at" in out:
        out["loaded_at"] = _loaded_at(p, offset)
    return out


def _type_word(value) -> str:
    # bpftool: "%s  " with libbpf's name, "type %u  " for a type its libbpf does not know
    return f"{value.name.lower()}  " if hasattr(value, "name") else f"type {value}  "


def _dev_plain(info) -> str:
    # bpftool print_dev_plain: only for objects bound to a device (offload)
    if not info.ifindex:
        return ""
    try:
        name = __import__("socket").if_indextoname(info.ifindex)
    except OSError:
        name = f"ifindex {info.ifindex} ns_dev {info.netns_dev} ns_ino {info.netns_ino}"
    return f"  offloaded_to {name}"


def _prog_plain(p, offset: int) -> str:
    # bpftool prog.c print_prog_header_plain + print_prog_plain
    head = f"{p.id}: {_type_word(p.type)}"
    if p.name:
        head += f"name {p.name}  "
    head += f"tag {p.tag}" + _dev_plain(p) + ("  gpl" if p.gpl_compatible else "")
    if p.run_time_ns:
        head += f" run_time_ns {p.run_time_ns} run_cnt {p.run_cnt}"
    if p.recursion_misses:
        head += f" recursion_misses {p.recursion_misses}"
    text = head + "\n"
    if p.load_time:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(_loaded_at(p, offset)))
        text += f"\tloaded_at {stamp}  uid {p.uid}\n"
    text += f"\txlated {p.xlated_size}B"
    text += f"  jited {p.jited_size}B" if p.jited_size else "  not jited"
    if p.memlock is not None:
        text += f"  memlock {p.memlock}B"
    if p.map_ids:
        text += "  map_ids " + ",".join(map(str, p.map_ids))
    if p.btf_id:
        text += f"\n\tbtf_id {p.btf_id}"
    return text + "\n"


def _prog_info(target: str):
    with _open("program", target) as prog:
        return prog.info()


def cmd_prog_list(args) -> int:
    offset = _boot_offset()
    records = list(live.programs())
    if args.json:
        _write(_json_line([_prog_json(p, offset) for p in records]))
    else:
        _write("".join(_prog_plain(p, offset) for p in records))
    return 0


def cmd_prog_show(args) -> int:
    p = _prog_info(args.target)
    offset = _boot_offset()
    _write(_json_line(_prog_json(p, offset)) if args.json else _prog_plain(p, offset))
    return 0


def cmd_prog_dump(args) -> int:
    with _open("program", args.target) as prog:
        _write(str(prog.xlated(linum=args.linum)))
    return 0


# -- maps ------------------------------------------------------------------------------------------

def _map_plain(m) -> str:
    # bpftool map.c show_map_header_plain + show_map_close_plain
    text = f"{m.id}: {_type_word(m.type)}"
    if m.name:
        text += f"name {m.name}  "
    text += f"flags 0x{m.flags:x}" + _dev_plain(m) + "\n"
    text += f"\tkey {m.key_size}B  value {m.value_size}B  max_entries {m.max_entries}"
    if m.memlock is not None:
        text += f"  memlock {m.memlock}B"
    if m.type == MapType.PROG_ARRAY and (m.owner_prog_type is not None or m.owner_jited is not None):
        text += "\n\t"
        if m.owner_prog_type is not None:
            text += f"owner_prog_type {_type_word(m.owner_prog_type).rstrip()}  "
        if m.owner_jited is not None:
            text += "owner jited" if m.owner_jited else "owner not jited"
    text += "\n"
    if m.btf_id or m.frozen:
        text += "\t"
        if m.btf_id:
            text += f"btf_id {m.btf_id}"
        if m.frozen:
            text += "  frozen" if m.btf_id else "frozen"
        text += "\n"
    return text


def _map_info(target: str):
    with _open("map", target, readonly=True) as m:
        return m.info()


def cmd_map_list(args) -> int:
    records = list(live.maps())
    if args.json:
        _write(_json_line([live.to_bpftool(m) for m in records]))
    else:
        _write("".join(_map_plain(m) for m in records))
    return 0


def cmd_map_show(args) -> int:
    m = _map_info(args.target)
    _write(_json_line(live.to_bpftool(m)) if args.json else _map_plain(m))
    return 0


class _Dumper:
    """Values typed through BTF as bpftool's btf_dumper writes them in JSON: numbers for
    integers and pointers, true/false for bool, the enumerator's name (else the number),
    strings for printable NUL-terminated char arrays, objects for structs/unions, lists for
    arrays, ``{section: [{var: value}, ...]}`` for a DATASEC."""

    def __init__(self, btf):
        self.btf = btf

    def value(self, type_id: int, data: bytes, bit_offset: int = 0, bits: int = 0):
        btf = self.btf
        t = btf[type_id] if type_id else None
        while t is not None and (t.kind == Kind.TYPEDEF or t.kind in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT,
                                                                        Kind.TYPE_TAG, Kind.VAR)):
            t = btf[t.type_id] if t.type_id else None
        if t is None:
            return None
        k = t.kind
        if bits:                                  # a bitfield: bits from bit_offset (little endian)
            nbytes = (bit_offset + bits + 7) // 8
            raw = int.from_bytes(data[:max(nbytes, 1)].ljust(max(nbytes, 1), b"\0"), "little")
            value = (raw >> bit_offset) & ((1 << bits) - 1)
            if k == Kind.INT and t.encoding & INT_SIGNED and value >> (bits - 1):
                value -= 1 << bits
            return value if bits <= 64 else f"0x{value:x}"
        if k == Kind.INT:
            bits = t.bits or t.size * 8
            raw = int.from_bytes(data[:t.size], "little")
            if t.int_offset or bits != t.size * 8:
                raw = (raw >> t.int_offset) & ((1 << bits) - 1)
            if t.encoding & INT_BOOL:
                return bool(raw)
            if bits > 64:
                return f"0x{raw:x}"           # bpftool prints 128-bit integers in hex
            if t.encoding & INT_SIGNED and raw >> (bits - 1):
                raw -= 1 << bits
            return raw
        if k == Kind.PTR:
            return int.from_bytes(data[:8], "little")
        if k in (Kind.ENUM, Kind.ENUM64):
            raw = int.from_bytes(data[:t.size], "little")
            if t.signed and raw >> (t.size * 8 - 1):
                raw -= 1 << (t.size * 8)
            for v in t.values:
                if v.value == raw or v.value == raw - (1 << (t.size * 8)) or v.value & ((1 << t.size * 8) - 1) == raw:
                    return v.name
            return raw
        if k == Kind.FLOAT:
            fmt = {4: "<f", 8: "<d"}.get(t.size)
            return struct.unpack_from(fmt, data)[0] if fmt else data[:t.size].hex()
        if k == Kind.ARRAY:
            elem = btf.resolve(t.elem_type)
            if elem is not None and elem.kind == Kind.INT and elem.size == 1 and \
                    (elem.encoding & INT_CHAR or elem.name == "char"):
                text = self._string(data[:t.nelems])
                if text is not None:
                    return text
            step = btf.size_of(t.elem_type) if t.nelems else 0
            return [self.value(t.elem_type, data[i * step:(i + 1) * step]) for i in range(t.nelems)]
        if k in (Kind.STRUCT, Kind.UNION):
            out = {}
            for m in t.members:
                start = m.bit_offset // 8
                if m.bitfield_size:
                    out[m.name] = self.value(m.type_id, data[start:], m.bit_offset % 8, m.bitfield_size)
                else:
                    out[m.name] = self.value(m.type_id, data[start:])
            return out
        if k == Kind.DATASEC:
            items = []
            for s in t.secinfos:
                var = btf[s.type_id]
                items.append({var.name: self.value(s.type_id, data[s.offset:s.offset + s.size])})
            return {t.name: items}
        return data.hex()

    @staticmethod
    def _string(raw: bytes):
        # bpftool is_str_array: printable characters up to a NUL inside the array
        for i, c in enumerate(raw):
            if c == 0:
                return raw[:i].decode("latin-1")
            if c <= 0x1f or c >= 0x7f:
                return None
        return None


def _hex_list(raw: bytes) -> list:
    return [f"0x{b:02x}" for b in raw]


def _raw_entries(fd: int, info) -> list:
    """Every (key bytes, value bytes) of map ``fd`` (a per-CPU value: the whole per-CPU buffer)."""
    from pybpf.kernel import syscall as sc
    from pybpf.loader import possible_cpus
    percpu = info.type in _PERCPU
    stride = (info.value_size + 7) & ~7
    vsize = stride * possible_cpus() if percpu else info.value_size
    out, prev = [], None
    key = bytearray(info.key_size)
    while sc.map_get_next_key(fd, prev, key):
        value = bytearray(vsize)
        try:
            found = sc.map_lookup_elem(fd, bytearray(key), value)
        except pybpf.SyscallError as e:
            raise type(e)(e.command, e.errno, f"map {info.id}: cannot look up a key") from None
        if found is not False:
            out.append((bytes(key), bytes(value)))
        prev = bytearray(key)
    return out


_PERCPU = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH, MapType.PERCPU_CGROUP_STORAGE}
_NO_DUMP = {MapType.RINGBUF, MapType.USER_RINGBUF, MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER,
            MapType.STRUCT_OPS, MapType.ARENA}


def _map_btf(info):
    if not info.btf_id or not (info.btf_key_type_id or info.btf_value_type_id):
        return None
    try:
        return live.btf_by_id(info.btf_id)
    except pybpf.Error:
        return None


def _dump_entries(fd: int, info) -> list:
    """bpftool -j map dump's records (print_entry_json)."""
    from pybpf.loader import possible_cpus
    btf = _map_btf(info)
    dumper = _Dumper(btf) if btf is not None else None
    percpu = info.type in _PERCPU
    stride = (info.value_size + 7) & ~7
    records = []
    for key, value in _raw_entries(fd, info):
        rec: dict = {"key": _hex_list(key)}
        if percpu:
            cpus = [value[i * stride:i * stride + info.value_size] for i in range(possible_cpus())]
            rec["values"] = [{"cpu": i, "value": _hex_list(v)} for i, v in enumerate(cpus)]
        else:
            rec["value"] = _hex_list(value)
        if dumper is not None:
            formatted: dict = {}
            if info.btf_key_type_id:
                formatted["key"] = dumper.value(info.btf_key_type_id, key)
            if percpu:
                formatted["values"] = [{"cpu": i, "value": dumper.value(info.btf_value_type_id, v)}
                                       for i, v in enumerate(cpus)]
            else:
                formatted["value"] = dumper.value(info.btf_value_type_id, value)
            rec["formatted"] = formatted
        records.append(rec)
    return records


def cmd_map_dump(args) -> int:
    from pybpf.kernel.constants import BPF_F_RDONLY
    from pybpf.resource import deferred_signals
    with deferred_signals():
        fd = _open_fd("map", args.target, BPF_F_RDONLY)
        try:
            info = live.MapInfo.from_fd(fd)
            if info.type in _NO_DUMP:
                hint = "; map peek shows a ring buffer's records" if info.type == MapType.RINGBUF else ""
                raise pybpf.Error(f"map {info.id} ({info.name}) is a {live._type_name(info.type)}: it has no "
                                  f"keys to dump{hint}")
            records = _dump_entries(fd, info)
        finally:
            os.close(fd)
    if args.json:
        _write(_json_line(records))
        return 0
    lines = []
    for r in records:
        f = r.get("formatted")
        key = f["key"] if f is not None and "key" in f else " ".join(b[2:] for b in r["key"])
        if f is not None:
            value = f.get("value", f.get("values"))
        elif "values" in r:
            value = [{"cpu": v["cpu"], "value": " ".join(b[2:] for b in v["value"])} for v in r["values"]]
        else:
            value = " ".join(b[2:] for b in r["value"])
        if f is not None and "key" not in f:
            lines.append(f"{_plain(value)}")
        else:
            lines.append(f"key: {_plain(key)}  value: {_plain(value)}")
    lines.append(f"Found {len(records)} element{'s' if len(records) != 1 else ''}")
    _write("\n".join(lines) + "\n")
    return 0


def _plain(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(", ", ": "), ensure_ascii=False)


# -- ring buffer peek -------------------------------------------------------------------------------

# kernel/bpf/ringbuf.c: record header u32 len (bit 31 BUSY, bit 30 DISCARD), u32 pg_off
_BUSY, _DISCARD, _HDR = 1 << 31, 1 << 30, 8


def _record_type(info):
    """(BTF, struct type) of a ring buffer's records: the ``pybpf:record=`` decl tag on the map's
    variable in the BTF of the map or, since the kernel keeps no BTF for a ring buffer, of a
    program that uses it (the kernel keeps the object's .maps section and decl tags there)."""
    from pybpf.spec.object import RECORD_TAG
    btf_ids = [info.btf_id] if info.btf_id else []
    try:
        btf_ids += [p.btf_id for p in live.programs() if info.id in p.map_ids and p.btf_id]
    except pybpf.PermissionError:
        pass
    for btf_id in dict.fromkeys(btf_ids):
        try:
            btf = live.btf_by_id(btf_id)
        except pybpf.Error:
            continue
        for var in btf.by_name(info.name, Kind.VAR):
            for t in btf.by_kind(Kind.DECL_TAG):
                if t.type_id == var.id and t.component_idx == -1 and t.name.startswith(RECORD_TAG):
                    try:
                        return btf, btf.find(t.name[len(RECORD_TAG):])
                    except pybpf.Error:
                        return None
    return None


def peek_records(fd: int, count: int | None = None) -> tuple[int, int, list]:
    """(consumer_pos, producer_pos, records) of ring buffer map ``fd``, read through a
    read-only mapping: ``records`` are ``(position, state, bytes)`` with state ``"committed"``,
    ``"busy"`` (reserved, not submitted yet: its bytes are not final) or ``"discarded"``.
    consumer_pos is not moved: a consumer afterwards still gets every record."""
    info = live.MapInfo.from_fd(fd)
    if info.type != MapType.RINGBUF:
        raise pybpf.Error(f"map {info.id} ({info.name}) is a {live._type_name(info.type)}, not a ringbuf: "
                          f"peek reads ring buffers (map dump shows other maps)")
    page = mmap.PAGESIZE
    size = info.max_entries
    # kernel/bpf/ringbuf.c ringbuf_map_mmap_kern: a writable mapping may cover the consumer page
    # only; a read-only one may cover consumer page, producer page and the data mapped twice
    length = 2 * page + 2 * size
    try:
        mem = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
    except OSError as e:
        raise pybpf.Error(f"map {info.id}: cannot map the ring buffer read-only: {e.strerror}") from None
    try:
        view = memoryview(mem)
        cons = struct.unpack_from("<Q", view, 0)[0]
        prod = struct.unpack_from("<Q", view, page)[0]      # x86-64: loads are ordered (acquire)
        data = 2 * page
        records, pos = [], cons
        while pos < prod and (count is None or len(records) < count):
            off = pos & (size - 1)
            (length_word,) = struct.unpack_from("<I", view, data + off)
            n = length_word & ~(_BUSY | _DISCARD)
            if n > size:
                break                                          # torn read: the producer moved on
            state = "busy" if length_word & _BUSY else "discarded" if length_word & _DISCARD else "committed"
            records.append((pos, state, bytes(view[data + off + _HDR:data + off + _HDR + n])))
            pos += (n + _HDR + 7) & ~7
        view.release()
        return cons, prod, records
    finally:
        mem.close()


def cmd_map_peek(args) -> int:
    from pybpf.resource import deferred_signals
    if args.count is not None and args.count < 0:
        raise pybpf.Error(f"--count takes a number of records (0 or more), not {args.count}")
    with deferred_signals():
        # a plain fd, mapped PROT_READ only (the kernel then also clears VM_MAYWRITE: the
        # mapping can never become writable); on 6.18 mmap of a BPF_F_RDONLY map fd is EINVAL
        fd = _open_fd("map", args.target)
        try:
            info = live.MapInfo.from_fd(fd)
            cons, prod, records = peek_records(fd, args.count)
        finally:
            os.close(fd)
    typed = _record_type(info)
    if not args.json:
        _write(f"map {info.id} ({info.name}): consumer_pos {cons}  producer_pos {prod}  "
               f"{prod - cons} bytes unconsumed\n")
    for pos, state, raw in records:
        value = None
        if typed is not None and state == "committed" and len(raw) >= typed[1].size:
            value = _Dumper(typed[0]).value(typed[1].id, raw)
        if args.json:
            rec = {"pos": pos, "state": state, "len": len(raw)}
            if value is not None:
                rec["value"] = value
            else:
                rec["hex"] = raw.hex()
            _write(_json_line(rec))
        else:
            shown = _plain(value) if value is not None else raw.hex()
            tag = "" if state == "committed" else f"{state.upper()} "
            _write(f"{pos}: {tag}{len(raw)} bytes: {shown}\n")
    return 0


# -- links -----------------------------------------------------------------------------------------

def _link_plain(link) -> str:
    # bpftool link.c show_link_header_plain + show_link_close_plain
    kind = live._type_name(link.type)
    text = f"{link.id}: {_type_word(link.type)}prog {link.prog_id}  "
    f = link.fields

    def attach_type():
        a = f.get("attach_type")
        return f"attach_type {a.name.lower() if hasattr(a, 'name') else a}  " if a is not None else ""

    if kind == "raw_tracepoint":
        text += f"\n\ttp '{f.get('tp_name', '')}'  "
    elif kind == "cgroup":
        text += f"\n\tcgroup_id {f.get('cgroup_id')}  " + attach_type()
    elif kind == "netns":
        text += f"\n\tnetns_ino {f.get('netns_ino')}  " + attach_type()
    elif kind in ("xdp", "tcx", "netkit"):
        ifindex = f.get("ifindex", 0)
        try:
            name = __import__("socket").if_indextoname(ifindex)
        except OSError:
            name = ""
        text += f"\n\tifindex {name}({ifindex})  " + ("" if kind == "xdp" else attach_type())
    elif kind == "tracing":
        text += "\n\t" + attach_type()
        if f.get("target_obj_id") or f.get("target_btf_id"):
            text += f"\n\ttarget_obj_id {f.get('target_obj_id')}  target_btf_id {f.get('target_btf_id')}  "
    elif kind in ("sockmap", "struct_ops"):
        text += f"\n\tmap_id {f.get('map_id')}  " + (attach_type() if kind == "sockmap" else "")
    return text + "\n"


def _link_info(target: str):
    with _open("link", target) as link:
        return link.info()


def cmd_link_list(args) -> int:
    records = list(live.links())
    if args.json:
        _write(_json_line([live.to_bpftool(link) for link in records]))
    else:
        _write("".join(_link_plain(link) for link in records))
    return 0


def cmd_link_show(args) -> int:
    link = _link_info(args.target)
    _write(_json_line(live.to_bpftool(link)) if args.json else _link_plain(link))
    return 0


# -- pin -------------------------------------------------------------------------------------------

def _pin_name(name: str) -> str:
    # bpffs refuses names with a dot (kernel/bpf/inode.c bpf_lookup: EPERM); libbpf's
    # sanitize_pin_path turns them into '_' (pin_test.bss -> pin_test_bss), and so do we
    return name.replace(".", "_")


def cmd_pin(args) -> int:
    """Load OBJECT, pin its maps and programs under DIR (made if missing, one level, on bpffs);
    on any failure remove what this command pinned."""
    spec = pybpf.open(args.object)
    names = [_pin_name(m) for m in spec.maps] + [_pin_name(p) for p in spec.programs]
    clash = {n for n in names if names.count(n) > 1}
    if clash:
        raise pybpf.Error(f"{args.object}: a map and a program share the name(s) {', '.join(sorted(clash))}: "
                          f"their pins would be the same file")
    # what this command pinned is what says so (pin() records its pin in the step that makes
    # it, pybpf.resource); the clean-up runs in one deferred-signals section
    from pybpf.resource import deferred_signals
    made_dir = False
    if not os.path.isdir(args.dir):
        with deferred_signals():
            made_dir = live.make_pin_dir(os.path.join(args.dir, "x"))
    elif not live.on_bpffs(args.dir):
        raise pybpf.Error(f"{args.dir} is not on a BPF filesystem: pins live on a bpffs mount such as /sys/fs/bpf")
    things = []
    try:
        with spec.load() as obj:
            things = [*obj.maps.items(), *obj.programs.items()]
            for name, thing in things:
                thing.pin(os.path.join(args.dir, _pin_name(name)))
            lines = [f"pinned map {name} (id {m.id}) at {os.path.join(args.dir, _pin_name(name))}"
                     for name, m in obj.maps.items()]
            lines += [f"pinned program {name} (id {p.id}) at {os.path.join(args.dir, _pin_name(name))}"
                      for name, p in obj.programs.items()]
    except BaseException:
        with deferred_signals():
            for _, thing in things:
                if thing.pin_path is not None:
                    try:
                        os.unlink(thing.pin_path)
                    except OSError:
                        pass
            if made_dir:
                try:
                    os.rmdir(args.dir)
                except OSError:
                    pass
        raise
    _write("".join(line + "\n" for line in lines))
    return 0


_HANDLERS = {
    ("prog", "list"): cmd_prog_list, ("prog", "show"): cmd_prog_show, ("prog", "dump"): cmd_prog_dump,
    ("map", "list"): cmd_map_list, ("map", "show"): cmd_map_show, ("map", "dump"): cmd_map_dump,
    ("map", "peek"): cmd_map_peek,
    ("link", "list"): cmd_link_list, ("link", "show"): cmd_link_show,
}
