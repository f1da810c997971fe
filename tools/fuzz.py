#!/usr/bin/env python3
"""Structure-aware fuzzing of pybpf's object parsing: ``open``, ``inspect`` and ``btf dump``.

Each mutant is one of the objects under ``programs/`` with 1-3 fields changed in
one target: the ``.BTF`` header or its type records (kind, vlen, size/type ids,
name offsets, member and array words), the ``.BTF.ext`` header and records
(record sizes, counts, instruction offsets), ``.maps``, the ``.rel*`` sections,
the ``.symtab`` entries or the section headers.  Every mutant then goes through

- ``open``: :class:`pybpf.spec.object.ObjectSpec` (parsing only, no kernel, no cache);
- ``inspect``: what ``python -m pybpf inspect`` prints (programs linked, maps,
  variables decoded by BTF), a pahole-like layout of some structs and the typed
  value (ctypes) of every map key, map value and variable;
- ``dump``: ``btf dump`` of the mutant's ``.BTF``, raw and C formats.

The only accepted outcomes are success and a :class:`pybpf.Error`.  Any other
exception, a mutant that takes longer than ``--timeout`` seconds (SIGALRM) or a
RecursionError is a defect, printed with the command that replays it::

    python tools/fuzz.py --count 20000 --seed 1      # or --minutes 10
    python tools/fuzz.py --seed 1 --replay 4711      # one mutant, with its traceback

Mutant ``i`` of seed ``s`` depends on nothing else (its own ``random.Random``),
so a run is deterministic and any mutant replays alone.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import struct
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pybpf  # noqa: E402
from pybpf import inspect as _inspect  # noqa: E402
from pybpf.spec import btf_dump  # noqa: E402
from pybpf.spec.btf import BTF, Kind  # noqa: E402
from pybpf.spec.elf import ELF  # noqa: E402
from pybpf.spec.object import ObjectSpec  # noqa: E402
from pybpf.spec.typed import TypeFactory  # noqa: E402

TARGETS = ("btf_header", "btf_types", "btf_ext", "maps", "relocations", "symtab", "section_headers")
PATHS = ("open", "inspect", "dump")


class Timeout(Exception):
    """A mutant ran past --timeout (raised from SIGALRM)."""


# -- where the fields are ------------------------------------------------------------------------


class Fields:
    """The mutable fields of one object, per target: lists of (offset, size in bytes, hint,
    type id), hint naming what the field holds (``"type_id"``, ``"name_off"``, ``"kind_info"``,
    ...) and type id the BTF type the field is part of (0 outside BTF)."""

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(path)
        with open(path, "rb") as f:
            self.data = f.read()
        elf = ELF(self.data)
        self.sections = {name: (sh["sh_offset"], sh["sh_size"], sh["sh_type"]) for name, sh, _ in elf.sections()}
        self.targets: dict[str, list] = {t: [] for t in TARGETS}
        self.n_types = 1
        self._shdrs(elf)
        if ".BTF" in self.sections:
            self._btf()
        if ".BTF.ext" in self.sections:
            self._btf_ext()
        if ".maps" in self.sections:
            off, size, _ = self.sections[".maps"]
            self.targets["maps"] += [(off + i, 4, "word", 0) for i in range(0, size - 3, 4)]
        for name, (off, size, sh_type) in self.sections.items():
            if sh_type == "SHT_REL":
                for r in range(off, off + size - 15, 16):
                    self.targets["relocations"] += [(r, 8, "r_offset"), (r + 8, 4, "r_type"), (r + 12, 4, "sym")]
        if ".symtab" in self.sections:
            off, size, _ = self.sections[".symtab"]
            for s in range(off, off + size - 23, 24):   # Elf64_Sym
                self.targets["symtab"] += [(s, 4, "name_off"), (s + 4, 1, "st_info"), (s + 5, 1, "st_other"),
                                           (s + 6, 2, "shndx"), (s + 8, 8, "st_value"), (s + 16, 8, "st_size")]
        # (offset, size, hint, the type id a BTF field belongs to or 0)
        self.targets = {t: [f if len(f) == 4 else f + (0,) for f in fs] for t, fs in self.targets.items() if fs}

    def _shdrs(self, elf) -> None:
        shoff, entsize = elf["e_shoff"], elf["e_shentsize"]
        for i in range(len(elf.section_headers())):
            h = shoff + i * entsize          # Elf64_Shdr
            self.targets["section_headers"] += [(h + 4, 4, "sh_type"), (h + 8, 8, "sh_flags"),
                                                (h + 24, 8, "sh_offset"), (h + 32, 8, "sh_size"),
                                                (h + 40, 4, "sh_link"), (h + 44, 4, "sh_info"),
                                                (h + 56, 8, "sh_entsize")]

    def _btf(self) -> None:
        base, size, _ = self.sections[".BTF"]
        raw = self.data[base:base + size]
        btf = BTF(raw)
        self.n_types = len(btf.types)
        self.targets["btf_header"] = [(base + 4, 4, "len")] + [(base + o, 4, "len") for o in range(8, 24, 4)] + \
            [(base + 2, 1, "byte"), (base + 3, 1, "byte")]
        per_type = {}
        for t in btf:
            fields = per_type[t.id] = []
            rec = base + btf.type_off + t.record_offset
            fields += [(rec, 4, "name_off"), (rec + 4, 4, "kind_info"), (rec + 8, 4, "type_id")]
            words = {Kind.INT: 1, Kind.ARRAY: 3, Kind.VAR: 1, Kind.DECL_TAG: 1}.get(t.kind, 0)
            per = {Kind.STRUCT: 3, Kind.UNION: 3, Kind.ENUM: 2, Kind.ENUM64: 3, Kind.FUNC_PROTO: 2,
                   Kind.DATASEC: 3}.get(t.kind, 0)
            extra = rec + 12
            hint = {Kind.ARRAY: "type_id", Kind.INT: "int_enc"}.get(t.kind, "word")
            fields += [(extra + 4 * i, 4, hint) for i in range(words)]
            for i in range(min(t.vlen, 16) if per else 0):
                item = extra + 4 * words + 4 * per * i
                if t.kind in (Kind.STRUCT, Kind.UNION):
                    fields += [(item, 4, "name_off"), (item + 4, 4, "type_id"), (item + 8, 4, "bit_offset")]
                elif t.kind == Kind.DATASEC:
                    fields += [(item, 4, "type_id"), (item + 4, 4, "len"), (item + 8, 4, "len")]
                else:
                    fields += [(item, 4, "name_off")] + [(item + 4 * j, 4, "type_id") for j in range(1, per)]
        # a field's own type id goes with it (for self-references)
        self.targets["btf_types"] = [f + (tid,) for tid, fs in per_type.items() for f in fs]
        # the map definitions: the .maps DATASEC, its VARs, their structs and what their members point to
        seen, todo = set(), [t.id for t in btf.by_name(".maps", Kind.DATASEC)]
        while todo:
            tid = todo.pop()
            if tid in seen or not 0 < tid < len(btf.types):
                continue
            seen.add(tid)
            t = btf[tid]
            todo += [si.type_id for si in t.secinfos] + [m.type_id for m in t.members]
            if t.kind in (Kind.VAR, Kind.PTR, Kind.TYPEDEF, Kind.CONST, Kind.VOLATILE):
                todo.append(t.type_id)
            elif t.kind == Kind.ARRAY:
                todo.append(t.elem_type)
        self.targets["maps"] += [f + (tid,) for tid in sorted(seen) for f in per_type[tid]]

    def _btf_ext(self) -> None:
        base, size, _ = self.sections[".BTF.ext"]
        raw = self.data[base:base + size]
        fields = self.targets["btf_ext"]
        fields += [(base + o, 4, "len") for o in range(4, 32, 4) if o + 4 <= size]
        hdr_len = struct.unpack_from("<I", raw, 4)[0]
        for k in range(3):
            if 8 + 8 * k + 8 > hdr_len:
                break
            off, length = struct.unpack_from("<II", raw, 8 + 8 * k)
            start, end = hdr_len + off, hdr_len + off + length
            if not length or end > size:
                continue
            rec_size = struct.unpack_from("<I", raw, start)[0]
            fields.append((base + start, 4, "rec_size"))
            pos = start + 4
            while pos + 8 <= end and rec_size:
                _, num = struct.unpack_from("<II", raw, pos)
                fields += [(base + pos, 4, "name_off"), (base + pos + 4, 4, "count")]
                pos += 8
                for r in range(min(num, 8)):
                    rec = pos + r * rec_size
                    fields += [(base + rec + 4 * j, 4, "insn_off" if j == 0 else "type_id")
                               for j in range(rec_size // 4)]
                pos += num * rec_size


# -- mutations ------------------------------------------------------------------------------------


def _value(rng: random.Random, old: int, size: int, hint: str, n_types: int, here: int) -> int:
    top = (1 << (8 * size)) - 1
    choices = [0, 1, top, top >> 1, (top >> 1) + 1, old + 1, old - 1, old ^ (1 << rng.randrange(8 * size)),
               rng.randrange(top + 1), old * 2, old + rng.choice((4, 8, 16, 4096, 1 << 20, 1 << 30))]
    if hint == "type_id":
        choices += [here, here, here - 1, here + 1, rng.randrange(max(n_types, 1)), n_types]
    elif hint == "kind_info":
        kind = rng.randrange(32)
        choices += [(old & ~(0x1F << 24)) | (kind << 24), (old & ~0xFFFF) | rng.choice((0, 1, 2, 0xFFFF)),
                    old ^ (1 << 31)]
    elif hint in ("len", "count", "rec_size", "sh_size", "st_size", "r_offset", "sh_offset", "st_value"):
        choices += [old + 4, old - 4, old + 8, old * 16, 0x40000000, 0x7FFFFFFF]
    elif hint == "bit_offset":
        choices += [old + 1, old + 8 * 64, (rng.randrange(1, 129) << 24) | (old & 0xFFFFFF)]
    return choices[rng.randrange(len(choices))] & top


def mutate(fields: Fields, rng: random.Random, target: str) -> tuple[bytes, list]:
    """A mutant of ``fields``' object with 1-3 fields of ``target`` changed; returns
    (bytes, [(offset, size, hint, old, new)])."""
    data = bytearray(fields.data)
    done = []
    candidates = fields.targets[target]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        off, size, hint, here = candidates[rng.randrange(len(candidates))]
        fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[size]
        old = struct.unpack_from(fmt, data, off)[0]
        new = _value(rng, old, size, hint, fields.n_types, here)
        struct.pack_into(fmt, data, off, new)
        done.append((off, size, hint, old, new))
    return bytes(data), done


# -- the paths under test ------------------------------------------------------------------------


def run_open(data: bytes, name: str):
    return ObjectSpec(data, path=name)


def run_inspect(spec) -> None:
    _inspect.describe(spec)
    btf = spec.btf
    if btf is None:
        return
    structs = btf.by_kind(Kind.STRUCT)[:10]
    for t in structs:
        _inspect.layout(btf, t)
    factory = TypeFactory(btf)
    ids = [m.key_type_id for m in spec.maps.values()] + [m.value_type_id for m in spec.maps.values()] + \
        [v.type_id for v in spec.variables.values()] + [t.id for t in structs]
    for tid in ids:
        if tid:
            factory.ctype(tid)


def run_dump(data: bytes, name: str) -> None:
    btf = BTF(btf_dump._elf_btf_section(data, name), source=name)
    btf_dump.format_raw(btf)
    btf_dump.format_c(btf)


def _on_alarm(signum, frame):
    raise Timeout()


def one(fields: Fields, data: bytes, timeout: float) -> dict:
    """Run the three paths on one mutant: {path: "ok" | "error" | (defect text)}."""
    out = {}
    spec = None
    for path in PATHS:
        if path == "inspect" and spec is None:
            continue
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if path == "open":
                spec = run_open(data, fields.name)
            elif path == "inspect":
                run_inspect(spec)
            else:
                run_dump(data, fields.name)
            out[path] = "ok"
        except pybpf.Error:
            out[path] = "error"
        except Timeout:
            out[path] = f"hang: more than {timeout} s"
        except BaseException as e:   # RecursionError, MemoryError, any foreign exception
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.extract_tb(e.__traceback__)[-1]
            out[path] = f"{type(e).__name__}: {str(e)[:120]} at {os.path.basename(tb.filename)}:{tb.lineno}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return out


def objects(only: list | None = None) -> list:
    paths = sorted(glob.glob(os.path.join(ROOT, "programs", "*.o")))
    if only:
        paths = [p for p in paths if os.path.basename(p)[:-2] in only]
    return [Fields(p) for p in paths]


def mutant(all_fields: list, seed: int, i: int):
    """Mutant ``i`` of ``seed``: (fields, target, bytes, changes)."""
    rng = random.Random(f"{seed}:{i}")
    fields = all_fields[rng.randrange(len(all_fields))]
    target = rng.choice(sorted(fields.targets))
    data, changes = mutate(fields, rng, target)
    return fields, target, data, changes


def campaign(seed: int, count: int | None, minutes: float | None, timeout: float = 5.0,
             only: list | None = None, report=None) -> dict:
    """Run mutants 0, 1, ... of ``seed`` until ``count`` or ``minutes``; returns the figures:
    per target and path, tried/ok/error/defects, the defects (with how to replay them) and
    the peak RSS in MB."""
    all_fields = objects(only)
    signal.signal(signal.SIGALRM, _on_alarm)
    figures = {t: {p: {"tried": 0, "ok": 0, "error": 0, "defects": 0} for p in PATHS} for t in TARGETS}
    defects = []
    start = time.monotonic()
    i = 0
    while (count is None or i < count) and (minutes is None or time.monotonic() - start < 60 * minutes):
        fields, target, data, changes = mutant(all_fields, seed, i)
        for path, result in one(fields, data, timeout).items():
            f = figures[target][path]
            f["tried"] += 1
            if result in ("ok", "error"):
                f[result] += 1
            else:
                f["defects"] += 1
                d = {"mutant": i, "seed": seed, "object": fields.name, "target": target, "path": path,
                     "result": result, "changes": changes,
                     "replay": f"python tools/fuzz.py --seed {seed} --replay {i}"}
                defects.append(d)
                if report:
                    report(d)
        i += 1
    return {"seed": seed, "mutants": i, "seconds": round(time.monotonic() - start, 1),
            "figures": {t: v for t, v in figures.items() if any(p["tried"] for p in v.values())},
            "defects": defects, "max_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> int:
    """This process's peak RSS in MB: VmHWM of its own address space.

    Not ru_maxrss: execve() folds the parent's high-water mark into the child's
    (setmax_mm_hiwater_rss in fs/exec.c), and subprocess spawns with vfork, so
    a child of a large pytest process would report pytest's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def replay(seed: int, i: int, only: list | None = None) -> None:
    fields, target, data, changes = mutant(objects(only), seed, i)
    print(f"mutant {i} of seed {seed}: {fields.name}, target {target}, changes (offset, size, field, old, new):")
    for c in changes:
        print(f"  {c}")
    spec = None
    for path in PATHS:
        try:
            if path == "open":
                spec = run_open(data, fields.name)
            elif path == "inspect":
                if spec is None:
                    continue
                run_inspect(spec)
            else:
                run_dump(data, fields.name)
            print(f"{path}: ok")
        except pybpf.Error as e:
            print(f"{path}: pybpf.Error: {e}")
        except Exception:
            print(f"{path}: DEFECT")
            traceback.print_exc()


def _table(result: dict) -> str:
    lines = [f"{'TARGET':16} {'PATH':8} {'TRIED':>7} {'OK':>7} {'ERROR':>7} {'DEFECTS':>7}"]
    totals = {p: {"tried": 0, "ok": 0, "error": 0, "defects": 0} for p in PATHS}
    for target, paths in result["figures"].items():
        for path, f in paths.items():
            if f["tried"]:
                lines.append(f"{target:16} {path:8} {f['tried']:7} {f['ok']:7} {f['error']:7} {f['defects']:7}")
                for k in f:
                    totals[path][k] += f[k]
    for path, f in totals.items():
        lines.append(f"{'all':16} {path:8} {f['tried']:7} {f['ok']:7} {f['error']:7} {f['defects']:7}")
    lines.append(f"{result['mutants']} mutants of seed {result['seed']} in {result['seconds']} s, "
                 f"{len(result['defects'])} defects, peak RSS {result['max_rss_mb']} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, help="mutants to try (default: 1000 unless --minutes)")
    ap.add_argument("--minutes", type=float, help="stop after this long")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds a mutant may take per path")
    ap.add_argument("--objects", nargs="*", help="object names under programs/ (default: all)")
    ap.add_argument("--replay", type=int, metavar="I", help="run mutant I of --seed alone, with tracebacks")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    if args.replay is not None:
        replay(args.seed, args.replay, args.objects)
        return 0
    count = args.count if args.count is not None or args.minutes else 1000
    report = None if args.json else (lambda d: print(f"DEFECT {d['object']} {d['target']} {d['path']}: "
                                                     f"{d['result']}\n  {d['changes']}\n  {d['replay']}",
                                                     flush=True))
    result = campaign(args.seed, count, args.minutes, args.timeout, args.objects, report)
    print(json.dumps(result) if args.json else _table(result))
    return 1 if result["defects"] else 0


if __name__ == "__main__":
    sys.exit(main())
