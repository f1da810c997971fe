"""``python -m pybpf``: the command-line front end, built on the public API only.

    python -m pybpf load programs/user_ringbuf.o

``load`` loads an object, attaches every program whose section says where
(and with ``--iface``/``--cgroup`` its XDP and tc programs to an interface, its
cgroup programs to a cgroup), and streams the records of its ring buffers
and perf buffers (PERF_EVENT_ARRAY maps, bpf_perf_event_output; lost samples
counted on stderr), decoded by BTF type when the type is known, hex otherwise, until Ctrl-C, which
detaches and unloads everything.  Programs it cannot attach are named on stderr
with what they need; when nothing could be attached it stops with an error.
``--cgroup`` also follows libbpf-tools' ``-c`` convention: an object with a
``filter_cg`` global and a ``cgroup_map`` cgroup array counts only the tasks of
that cgroup (the flag is set before load, the cgroup stored in the map after).
When the object has a user ring buffer, it is fed one sample at start and one
more after each record, as the user ring buffer tutorial does; ``--feed``
chooses what is written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

import pybpf
from pybpf.kernel.constants import MapType, ProgType
from pybpf.spec.btf import BTF, Kind
from pybpf.kernel.syscall import bpf_capable

# json, selectors, socket and pybpf.spec.typed are imported where they are used: a command
# that needs none of them starts sooner

PRIVILEGE_MESSAGE = ("pybpf: loading BPF programs needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): "
                     "run it with sudo")

# syscalls that send a signal: their events are labelled SIGN, as in the tutorial
_SIGNAL_SYSCALLS = {"kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal"}

def has_bpf_privileges() -> bool:
    """True if this process may load BPF programs (CAP_BPF or CAP_SYS_ADMIN in effect)."""
    return bpf_capable()


# -- record types ------------------------------------------------------------------------------

def _visible_structs(spec: pybpf.ObjectSpec) -> list:
    """Structs the object keeps visible for user space: pointed to by a global
    (``struct event *unused_event``, the libbpf-bootstrap convention) or named ``event``."""
    btf = spec.btf
    if btf is None:
        return []
    found = {}
    for v in spec.variables.values():
        t = btf.resolve(v.type_id)
        if t is not None and t.kind == Kind.PTR:
            target = btf.resolve(t.type_id)
            if target is not None and target.kind == Kind.STRUCT and target.name:
                found[target.id] = target
    for t in btf.by_name("event", Kind.STRUCT):
        found[t.id] = t
    return list(found.values())


def guess_record_type(spec: pybpf.ObjectSpec, map_name: str, user_ring: bool):
    """The BTF struct a ring buffer's records most likely are, or None."""
    candidates = _visible_structs(spec)
    if not candidates:
        return None
    for t in candidates:
        if t.name == map_name:
            return t
    if user_ring:
        preferred = [t for t in candidates if "sample" in t.name]
    else:
        preferred = [t for t in candidates if t.name == "event"] or \
                    [t for t in candidates if "event" in t.name] or \
                    [t for t in candidates if "sample" not in t.name]
    return preferred[0] if len(preferred) == 1 else None


# links whose target is a place, not an event: their records are labelled by the kind
_PLACE_KINDS = {"xdp", "tcx", "tc", "netkit", "socket", "cgroup", "sockmap", "netns", "netfilter"}


def _event_label(links: list, fallback: str) -> str:
    targets = [l.target for l in links]
    if len(targets) != 1:
        return fallback[:5].upper()
    if links[0].kind in _PLACE_KINDS:
        return links[0].kind[:5].upper()
    name = targets[0].rsplit("/", 1)[-1]
    for prefix in ("sys_enter_", "sys_exit_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return "SIGN" if name in _SIGNAL_SYSCALLS else name[:5].upper()


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    import json
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


class RecordPrinter:
    """Prints one line per ring buffer record: a tutorial-style table row when the
    record has ``comm`` and ``pid`` fields, ``field=value`` pairs for other
    structs, hex for unknown records."""

    def __init__(self, btf: BTF | None, rtype, map_name: str, label: str, out=sys.stdout):
        self.btf = btf
        self.rtype = rtype
        self.map_name = map_name
        self.label = label
        self.out = out
        names = [m.name for m in rtype.members] if rtype is not None else []
        self.table = "comm" in names and "pid" in names

    def header(self) -> str | None:
        if self.table:
            return f"{'TIME':<8} {'EVENT':<5} {'COMM':<16} {'PID':<7}".rstrip()
        return None

    def decode(self, record):
        """The record's fields as a dict (strings for char arrays, enum names), or None when
        it has no known type or is shorter than it."""
        if self.rtype is not None and len(record) >= self.rtype.size:
            from pybpf.spec.typed import factory_for
            typed = factory_for(self.btf).from_bytes(self.rtype.id, record)
            value = typed.to_python() if hasattr(typed, "to_python") else {"value": typed}
            return value if isinstance(value, dict) else {"value": value}
        return None

    def json_line(self, record, value=None) -> str:
        """--json: the decoded fields as one JSON object; undecoded records as map, size and hex."""
        if value is None:
            value = self.decode(record)
        if value is None:
            value = {"map": self.map_name, "size": len(record), "hex": bytes(record).hex()}
        import json
        return json.dumps(value, separators=(",", ":"), default=str)

    def line(self, record, value=None) -> str:
        ts = time.strftime("%H:%M:%S")
        if value is None:
            value = self.decode(record)
        if isinstance(value, dict):
            if self.table:
                rest = " ".join(f"{k}={_fmt(v)}" for k, v in value.items() if k not in ("comm", "pid"))
                return f"{ts:<8} {self.label:<5} {_fmt(value['comm']):<16} {value['pid']:<7} {rest}".rstrip()
            fields = " ".join(f"{k}={_fmt(v)}" for k, v in value.items())
            return f"{ts:<8} {self.label:<5} {fields}"
        return f"{ts:<8} {self.label:<5} {self.map_name} {len(record)} bytes: {bytes(record).hex()}"


# -- user ring samples -----------------------------------------------------------------------------

def parse_feed(text: str, btf: BTF | None, stype) -> bytes:
    """A sample from the command line: ``hex:0a0b..``, ``@file`` (its bytes), or a JSON
    value encoded by the sample's BTF type (``'{"i": 1, "comm": "hi"}'``)."""
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise pybpf.Error(f"--feed: {text[4:]!r} is not hex") from None
    if text.startswith("@"):
        try:
            with open(text[1:], "rb") as f:
                return f.read()
        except OSError as e:
            raise pybpf.Error(f"--feed: cannot read {text[1:]}: {e.strerror}") from None
    if stype is None or btf is None:
        raise pybpf.Error("--feed: the sample type of this user ring buffer is unknown; give hex:... or @file, "
                          "or name the type with --type MAP='struct NAME'")
    import json
    from pybpf.spec.typed import factory_for
    try:
        value = json.loads(text)
    except ValueError:
        raise pybpf.Error(f"--feed: {text!r} is neither hex:..., @file nor JSON") from None
    return factory_for(btf).encode(stype.id, value)


def default_sample(btf: BTF | None, stype, n: int) -> bytes | None:
    """The tutorial's sample: integer fields = our pid, char arrays = the sample number."""
    if stype is None or btf is None:
        return None
    value = {}
    for m in stype.members:
        t = btf.resolve(m.type_id)
        if t is None or m.bitfield_size:
            continue
        if t.kind == Kind.INT and t.size >= 4:
            value[m.name] = os.getpid()
        elif t.kind == Kind.ARRAY and btf.size_of(t.elem_type) == 1:
            value[m.name] = str(n)[:t.nelems - 1]
    from pybpf.spec.typed import factory_for
    return factory_for(btf).encode(stype.id, value)


# -- the load command --------------------------------------------------------------------------------

def _type_overrides(spec, items: list) -> dict:
    out = {}
    for item in items:
        name, sep, tname = item.partition("=")
        if not sep:
            raise pybpf.Error(f"--type takes MAP=TYPE (e.g. kernel_ringbuf='struct event'), not {item!r}")
        if spec.btf is None:
            raise pybpf.Error("--type: the object has no BTF")
        out[name] = spec.btf.find(tname)
    return out


def _set_variables(spec, items: list) -> None:
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise pybpf.Error(f"--set takes VARIABLE=VALUE, not {item!r}")
        try:
            var = spec.variables[name]
        except KeyError:
            raise pybpf.Error(f"--set: no global variable {name!r} "
                              f"(this object has: {', '.join(spec.variables) or 'none'})") from None
        if value.startswith("hex:"):
            var.set(bytes.fromhex(value[4:]))
        else:
            try:
                var.set(int(value, 0))
            except ValueError:
                var.set(value)


def _set_max_entries(spec, items: list) -> None:
    """--max-entries MAP=N (MAP.inner=N for a map-in-map's inner map)."""
    for item in items:
        name, sep, value = item.partition("=")
        try:
            n = int(value, 0) if sep else -1
        except ValueError:
            n = -1
        if n <= 0 or n >= 1 << 32:
            raise pybpf.Error(f"--max-entries takes MAP=N with N from 1 to 2**32-1 (e.g. stacks=10240), "
                              f"not {item!r}")
        m = spec.maps.get(name)
        if m is None and name.endswith(".inner") and name[:-len(".inner")] in spec.maps:
            m = spec.maps[name[:-len(".inner")]].inner
        if m is None:
            raise pybpf.Error(f"--max-entries: no map {name!r} (this object has: "
                              f"{', '.join(k for k, v in spec.maps.items() if not v.internal) or 'none'})")
        m.max_entries = n


def _set_value_size(spec, items: list) -> None:
    """--value-size MAP=N: a value size the object leaves for user space (a STACK_TRACE map's,
    which bcc's libbpf-tools set to perf_max_stack_depth * 8 before load)."""
    for item in items:
        name, sep, value = item.partition("=")
        try:
            n = int(value, 0) if sep else -1
        except ValueError:
            n = -1
        if n <= 0 or n >= 1 << 32:
            raise pybpf.Error(f"--value-size takes MAP=N with N from 1 to 2**32-1 (e.g. stackmap=1016), "
                              f"not {item!r}")
        if name not in spec.maps:
            raise pybpf.Error(f"--value-size: no map {name!r} (this object has: "
                              f"{', '.join(k for k, v in spec.maps.items() if not v.internal) or 'none'})")
        spec.maps[name].value_size = n
    for name, m in spec.maps.items():
        # the kernel refuses a stack map whose value holds no frame (stack_map_alloc: value_size
        # a multiple of 8, at least one u64 ip); libbpf-tools leave it to their user code
        if m.type == MapType.STACK_TRACE and m.value_size == 0:
            raise pybpf.Error(f"map {name!r} (STACK_TRACE) has value_size 0: the object leaves the stack depth "
                              f"for user space to set before loading; give --value-size {name}=N, N = 8 x the "
                              f"deepest stack to keep (e.g. {name}=1016: 127 frames, bcc's profile's default)")


def cmd_load(args) -> int:
    spec = pybpf.open(args.object)
    types = _type_overrides(spec, args.type)
    _set_variables(spec, args.set)
    _set_max_entries(spec, args.max_entries)
    _set_value_size(spec, args.value_size)
    feeds: dict[str, list] = {}
    for item in args.feed:
        name, sep, value = item.partition("=")
        if not sep:
            raise pybpf.Error(f"--feed takes MAP=VALUE, not {item!r}")
        feeds.setdefault(name, []).append(value)
    filters = _parse_filters(args)
    if not has_bpf_privileges():
        print(PRIVILEGE_MESSAGE, file=sys.stderr)
        return 1

    if args.no_attach and (args.iface is not None or args.cgroup is not None):
        raise pybpf.Error("--no-attach attaches nothing: leave out --iface/--cgroup, or --no-attach")
    if args.cgroup is not None and not os.path.isdir(args.cgroup):
        raise pybpf.Error(f"--cgroup {args.cgroup}: no such directory (give a cgroup v2 directory, e.g. "
                          f"{_cgroup_mount_hint()}/NAME)")
    iface = _parse_iface(args.iface)

    cg_filter = _cgroup_filter_before_load(spec, args) if args.cgroup is not None else None

    stop_after = time.monotonic() + args.duration if args.duration else None
    with spec.load() as obj:
        if cg_filter is not None:
            _cgroup_filter_after_load(obj, args.cgroup, cg_filter)
        links = [] if args.no_attach else _attach_all(args, obj, iface, filtering=cg_filter is not None)
        if args.verbose:
            for prog in obj.programs.values():
                print(f"pybpf: program {prog.name} id {prog.id} ({prog.section})", file=sys.stderr)
            for m in obj.maps.values():
                print(f"pybpf: map {m.name} id {m.id} ({m.type.name})", file=sys.stderr)
        for name in feeds:
            if name not in obj.maps or obj.maps[name].type != MapType.USER_RINGBUF:
                raise pybpf.Error(f"--feed: {name!r} is not a user ring buffer of this object")
        rings, users = [], []
        try:
            for m in obj.maps.values():
                if m.type == MapType.USER_RINGBUF:
                    stype = types.get(m.name) or m.record_type or guess_record_type(spec, m.name, True)
                    samples = [parse_feed(f, spec.btf, stype) for f in feeds.get(m.name, [])]
                    users.append((pybpf.UserRingBuffer(m), stype, samples))
            label_fallback = "EVENT"
            printers = {}
            counter = {"records": 0, "samples": 0, "full": False}

            def emit(printer, record) -> bool:
                """Print one record (a line, or a JSON object with --json) unless --filter/--pid
                leaves it out; True when printed (it then counts for --count)."""
                value = printer.decode(record)
                if filters and not _record_matches(value, filters):
                    return False
                print(printer.json_line(record, value) if args.json else printer.line(record, value), flush=True)
                counter["records"] += 1
                return True

            def feed() -> None:
                for ring, stype, samples in users:
                    batch = samples or [default_sample(spec.btf, stype, counter["samples"])]
                    for data in batch:
                        if data is None:
                            continue
                        try:
                            ring.write(data)
                            counter["samples"] += 1
                        except pybpf.RingBufferFullError as e:
                            if not counter["full"]:
                                print(f"pybpf: {e}; samples are dropped until the program drains it",
                                      file=sys.stderr)
                                counter["full"] = True
                print("Draining current samples...", flush=True)

            for m in obj.maps.values():
                if m.type != MapType.RINGBUF:
                    continue
                rtype = types.get(m.name) or m.record_type or guess_record_type(spec, m.name, False)
                printer = RecordPrinter(spec.btf, rtype, m.name, _event_label(links, m.name or label_fallback))
                printers[m.name] = printer

                def on_record(record, printer=printer):
                    if args.count is not None and counter["records"] >= args.count:
                        return -1       # --count reached: stop consume(), print nothing more
                    if emit(printer, record) and users:
                        feed()

                # raw records: the printer decodes them, and shows short or unknown ones in hex
                rings.append(pybpf.RingBuffer(m, on_record, type=memoryview))
            for m in obj.maps.values():
                if m.type == MapType.PERF_EVENT_ARRAY and not m.spec.internal:
                    rings.append(_stream_perf_buffer(spec, m, types, links, printers, counter, args, emit))
            if users:
                feed()
            _check_filters(filters, printers)
            headers = {p.header() for p in printers.values()}
            if len(headers) == 1 and None not in headers and not args.json:
                print(headers.pop(), flush=True)
            if not rings:
                print(f"pybpf: {args.object} loaded; it has no ring or perf buffer to stream. Ctrl-C to unload.",
                      file=sys.stderr, flush=True)
            import selectors
            sel = selectors.DefaultSelector()
            for r in rings:
                sel.register(r.fileno(), selectors.EVENT_READ, r)
            next_maps = time.monotonic() + args.interval if args.show_maps and args.interval else None
            meter = None
            if args.rate:
                from pybpf.ringbuf import RateMeter
                meter = RateMeter(*rings, *(u for u, _, _ in users))
                next_rate = time.monotonic() + 1.0
            while True:
                _interrupts.check()
                timeout = 0.5
                if stop_after is not None:
                    timeout = max(0.0, min(timeout, stop_after - time.monotonic()))
                for key, _ in sel.select(timeout):
                    key.data.consume()
                if meter is not None and time.monotonic() >= next_rate:
                    print(f"pybpf: {meter.line()}", file=sys.stderr, flush=True)
                    next_rate += 1.0
                if next_maps is not None and time.monotonic() >= next_maps:
                    _show_maps(obj)
                    next_maps += args.interval
                if args.count is not None and counter["records"] >= args.count:
                    break
                if stop_after is not None and time.monotonic() >= stop_after:
                    break
            sel.close()
            if args.show_maps:
                _show_maps(obj)
        except KeyboardInterrupt:
            if args.show_maps:      # Ctrl-C ends a session: the maps as they are then
                _show_maps(obj)
            raise
        finally:
            for r in rings:
                r.close()
            for r in rings:
                if isinstance(r, pybpf.PerfBuffer) and r.lost:
                    print(f"pybpf: perf buffer {r.name}: {r.lost} sample{'s' if r.lost != 1 else ''} lost in all "
                          f"(the CPUs' rings were full)", file=sys.stderr, flush=True)
            for u, _, _ in users:
                u.close()
    return 0


def _stream_perf_buffer(spec, m, types: dict, links: list, printers: dict, counter: dict, args, emit):
    """A PerfBuffer on PERF_EVENT_ARRAY map ``m`` (bpf_perf_event_output's records, as bcc's
    and libbpf-tools' perf_buffer__poll loops read them), printed as ring records are:
    decoded by --type, the map's pybpf:record= tag or the guessed struct, hex otherwise;
    samples the kernel dropped (ring full) are counted on stderr as libbpf-tools report them."""
    rtype = types.get(m.name) or m.record_type or guess_record_type(spec, m.name, False)
    printer = RecordPrinter(spec.btf, rtype, m.name, _event_label(links, m.name or "EVENT"))
    printers[m.name] = printer

    def on_sample(cpu, record):
        if args.count is not None and counter["records"] >= args.count:
            return -1           # --count reached: stop consume(), print nothing more
        # the kernel pads a sample to 8 bytes (size + 4): the printer decodes the struct's size
        emit(printer, record)

    def on_lost(cpu, lost):
        print(f"pybpf: perf buffer {m.name}: {lost} sample{'s' if lost != 1 else ''} lost on CPU {cpu} "
              f"(its ring was full)", file=sys.stderr, flush=True)

    return pybpf.PerfBuffer(m, on_sample, on_lost, type=memoryview)


def _parse_filters(args) -> list:
    """--filter FIELD=VALUE items (and --pid N, which filters records that have a ``pid``
    field) as (field, value, required) triples; ``required``: a record without the field is
    left out (--filter), or kept (--pid)."""
    out = []
    for item in args.filter:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise pybpf.Error(f"--filter takes FIELD=VALUE (e.g. --filter comm=bash), not {item!r}")
        out.append((name, value, True))
    if args.pid is not None:
        out.append(("pid", str(args.pid), False))
    return out


def _field_equals(v, want: str) -> bool:
    """A decoded field against a --filter value: ints by value (decimal or 0x...), strings
    (char arrays, enum names) exactly."""
    if isinstance(v, bool):
        return want.lower() in (str(v).lower(), str(int(v)))
    if isinstance(v, int):
        try:
            return v == int(want, 0)
        except ValueError:
            return False
    return _fmt(v) == want


def _record_matches(value, filters: list) -> bool:
    """Whether a decoded record (a dict, or None when undecoded) passes every filter."""
    for name, want, required in filters:
        if not isinstance(value, dict) or name not in value:
            if required:
                return False
            continue
        if not _field_equals(value[name], want):
            return False
    return True


def _check_filters(filters: list, printers: dict) -> None:
    """A --filter naming a field no stream's record has would print nothing: one error instead."""
    fields = {m.name for p in printers.values() if p.rtype is not None for m in p.rtype.members}
    for name, _, required in filters:
        if required and name not in fields:
            have = ", ".join(sorted(fields)) or "none: no ring or perf buffer has a known record type"
            raise pybpf.Error(f"--filter {name}=...: no record streamed here has a field {name!r} "
                              f"(fields: {have})")


def _show_maps(obj) -> None:
    """--show-maps: every map but the ring/perf buffers and the object's .data/.bss/.rodata,
    log2 histograms drawn as bcc/libbpf-tools' print_log2_hist, others as key: value tables."""
    from pybpf import display
    skip = (MapType.RINGBUF, MapType.USER_RINGBUF, MapType.PERF_EVENT_ARRAY)
    out = [time.strftime("%H:%M:%S")]
    for m in obj.maps.values():
        if m.type in skip or m.spec.internal:
            continue
        if display._map_hist_kind(m) is not None:
            hists = display.histograms(m)
            out.append(f"map {m.name}: {len(hists)} histogram{'s' if len(hists) != 1 else ''}")
            out.extend(str(h) for _, h in hists)
        else:
            out.append(display.map_text(m))
    print("\n".join(out), flush=True)


def _parse_iface(text):
    """--iface: an interface name, or an ifindex given as a number."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _cgroup_mount_hint() -> str:
    try:
        from pybpf.links.cgroup import cgroup2_mount
        return cgroup2_mount()
    except pybpf.Error:
        return "/sys/fs/cgroup"


# libbpf-tools' -c/--cgroup convention: a one-slot cgroup array holding the cgroup's fd,
# and a read-only flag that turns on bpf_current_task_under_cgroup() checks
CGROUP_FILTER_MAP = "cgroup_map"
CGROUP_FILTER_VAR = "filter_cg"


def _cgroup_filter_before_load(spec, args) -> dict | None:
    """libbpf-tools' cgroup filter, before load: when the object has their ``filter_cg``
    global, set it to true (unless ``--set filter_cg=...`` chose a value).  Returns what
    the object uses of the convention (``{"var": bool, "map": bool}``), or None when it
    has neither the variable nor a CGROUP_ARRAY named ``cgroup_map``."""
    var = spec.variables.get(CGROUP_FILTER_VAR)
    m = spec.maps.get(CGROUP_FILTER_MAP)
    has_map = m is not None and m.type == MapType.CGROUP_ARRAY
    if var is None and not has_map:
        return None
    explicit = any(item.partition("=")[0] == CGROUP_FILTER_VAR for item in args.set)
    if var is not None and not explicit:
        var.set(1)
    return {"var": var is not None, "set": var is not None and not explicit, "map": has_map}


def _cgroup_filter_after_load(obj, path: str, used: dict) -> None:
    """libbpf-tools' cgroup filter, after load: the cgroup's fd at key 0 of ``cgroup_map``.
    It runs before anything is attached: with the slot still empty
    bpf_current_task_under_cgroup() returns -EAGAIN, which their ``!...`` test lets
    through, so every task would be counted until the slot is filled."""
    if used["map"]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise pybpf.Error(f"--cgroup {path}: cannot open it: {e.strerror}") from None
        try:
            # the kernel takes its own reference to the cgroup (cgroup_get_from_fd): the fd can go
            obj.maps[CGROUP_FILTER_MAP].update(0, fd)
        except pybpf.Error as e:
            raise pybpf.Error(f"--cgroup {path}: cannot store it in {CGROUP_FILTER_MAP}[0] ({e}); "
                              f"give a cgroup v2 directory, e.g. {_cgroup_mount_hint()}/NAME") from None
        finally:
            os.close(fd)
    done = []
    if used["var"]:
        done.append(f"{CGROUP_FILTER_VAR}=true" if used["set"] else f"{CGROUP_FILTER_VAR} as --set gives it")
    if used["map"]:
        done.append(f"{CGROUP_FILTER_MAP}[0]={path}")
    print(f"pybpf: --cgroup {path}: cgroup filter (libbpf-tools' -c convention): {', '.join(done)}: only tasks "
          f"in that cgroup are counted", file=sys.stderr, flush=True)


# AF_PACKET sockets (linux/if_ether.h): every protocol
ETH_P_ALL = 0x0003


def _attach_packet_socket(prog, iface):
    """A socket filter with --iface, as the packet-watching socket filter lessons do: an
    AF_PACKET raw socket for every protocol bound to the interface, with the program on it
    (SO_ATTACH_BPF).  The link holds its own duplicate of the socket, so closing the link
    detaches the program and closes the socket."""
    import socket
    try:
        name = socket.if_indextoname(iface) if isinstance(iface, int) else iface
        socket.if_nametoindex(name)
    except OSError:
        raise pybpf.Error(f"--iface {iface}: no such interface here (ip link lists them)") from None
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.htons(ETH_P_ALL))
    except OSError as e:
        raise pybpf.Error(f"--iface {iface}: cannot open a packet socket for {prog.name}: {e.strerror}") from None
    try:
        try:
            sock.bind((name, ETH_P_ALL))
        except OSError as e:
            raise pybpf.Error(f"--iface {iface}: cannot bind a packet socket to it: {e.strerror}") from None
        return prog.attach_socket(sock)
    finally:
        sock.close()


# what each kind of need asks of the command line
_CLI_NEEDS = {"iface": "--iface IFACE", "cgroup": "--cgroup PATH"}


def _usdt_requests(args, obj) -> dict:
    """--usdt PROG=[PATH:]PROVIDER:NAME (repeatable): program -> the probe targets to attach it to."""
    from pybpf.links.usdt import parse_usdt_target
    out: dict[str, list] = {}
    for item in getattr(args, "usdt", None) or []:
        name, sep, target = item.partition("=")
        if not sep:
            raise pybpf.Error(f"--usdt takes PROG=[PATH:]PROVIDER:NAME (e.g. handle_gc_start=hotspot:gc__begin), "
                              f"not {item!r}")
        prog = obj.programs.get(name)
        if prog is None or prog.spec.sec_def.attach != "usdt":
            usdt = [p.name for p in obj.programs.values() if p.spec.sec_def.attach == "usdt"]
            raise pybpf.Error(f"--usdt: {name!r} is not a usdt program of this object "
                              f"(its usdt programs: {', '.join(usdt) or 'none'})")
        out.setdefault(name, []).append(parse_usdt_target(target))
    return out


def _attach_usdt(prog, target: tuple, args):
    """A usdt program on probe ``target`` = (path or None, provider, name): the path, else
    --usdt-binary, else the executable of --pid's process (/proc/PID/exe); only that process
    with --pid, every process running the binary without."""
    path, provider, name = target
    pid = args.pid if getattr(args, "pid", None) is not None else -1
    if path is None:
        path = getattr(args, "usdt_binary", None)
    if path is None:
        if pid < 0:
            raise pybpf.Error(f"{prog.name} ({prog.section}): probe {provider}:{name} names no binary: give "
                              f"--usdt-binary PATH, or --pid PID (its executable)")
        try:
            path = os.readlink(f"/proc/{pid}/exe")
        except OSError as e:
            raise pybpf.Error(f"--pid {pid}: cannot read /proc/{pid}/exe: {e.strerror}") from None
    link = prog.attach_usdt(path, provider, name, pid=pid)
    where = f"in process {pid}" if pid >= 0 else "in every process"
    print(f"pybpf: attached {prog.name} ({prog.section}) to {link.target} {where} "
          f"({len(link.sites)} site{'s' if len(link.sites) != 1 else ''})", file=sys.stderr)
    return link


def _names_own_exe(prog) -> bool:
    """A usdt program whose section names /proc/self/exe: the loading process's own binary."""
    target = prog.spec.attach_target or ""
    return prog.spec.sec_def.attach == "usdt" and target.startswith("/proc/self/exe:")


_DEFAULT_SAMPLE_FREQ = 99      # Hz, as bcc's and the eunomia tutorial's profilers: off the timer tick


def _attach_all(args, obj, iface, filtering: bool = False) -> list:
    """Attach what the sections say, XDP/tc programs to --iface (socket filters to a packet
    socket bound to it) and cgroup programs to --cgroup; say on stderr what was attached where and what the other programs need
    (``filtering``: --cgroup already served as the object's cgroup filter).
    Raises pybpf.Error when nothing could be attached although the object has programs to
    attach: such a session would stream nothing while looking as if it worked."""
    from pybpf.collection import _attach_with, attach_needs
    links, runnable = [], []
    unattached: dict[str, list] = {}       # what is missing -> programs
    used = {"iface": False, "cgroup": filtering}
    usdt = _usdt_requests(args, obj)
    for prog in obj.programs.values():
        kind, how = attach_needs(prog)
        if kind == "struct_ops":
            continue                        # runs through its struct_ops map, registered below
        packet_socket = kind == "socket" and prog.type == ProgType.SOCKET_FILTER
        if prog.name in usdt:
            # --usdt: the probes the command line names (libbpf-tools' javagc attaches its
            # SEC("usdt") programs to hotspot's probes from its C code), one link each
            links.extend(_attach_usdt(prog, target, args) for target in usdt[prog.name])
            continue
        target = None
        if prog.spec.sec_def.attach == "usdt" and prog.spec.attach_target and not _names_own_exe(prog):
            from pybpf.links.usdt import parse_usdt_target
            target = parse_usdt_target(prog.spec.attach_target)
            if getattr(args, "pid", None) is None and (target[0] is not None or getattr(args, "usdt_binary", None) is None):
                target = None               # the section says all (or needs --pid/--usdt-binary)
        try:
            if target is not None:
                link = _attach_usdt(prog, target, args)
            elif packet_socket and iface is not None:
                link = _attach_packet_socket(prog, iface)
            elif prog.spec.sec_def.prog_type == "PERF_EVENT":
                # libbpf attaches no perf_event program by itself: a profile, sampled on every
                # online CPU, is what a session wants of one
                freq = args.sample_freq or _DEFAULT_SAMPLE_FREQ
                link = prog.attach_sampling(frequency=freq)
                print(f"pybpf: attached {prog.name} ({prog.section}) to a {freq} Hz cpu-clock sampling event on "
                      f"CPUs {','.join(map(str, link.cpus))}", file=sys.stderr)
                links.append(link)
                continue
            else:
                link = prog.attach() if kind == "none" else _attach_with(prog, iface, args.cgroup)
        except pybpf.NotSupportedError as e:
            unattached.setdefault(str(e), []).append(prog.name)
            continue
        except pybpf.Error as e:
            if not _names_own_exe(prog):
                raise
            # bcc's profile: SEC("usdt//proc/self/exe:bpfprofiler:...") is a probe its own C front
            # end fires; here /proc/self/exe is this Python, which has no such probe
            unattached.setdefault(f"its section names the loader's own executable (/proc/self/exe, here "
                                  f"{os.path.realpath('/proc/self/exe')}), which has no such probe ({e}); "
                                  f"give --usdt {prog.name}=PATH:PROVIDER:NAME for a program that has it",
                                  []).append(prog.name)
            continue
        if link is not None:
            links.append(link)
            if packet_socket:
                used["iface"] = True
                print(f"pybpf: attached {prog.name} ({prog.section}) to {iface} (an AF_PACKET socket bound to it)",
                      file=sys.stderr)
            elif kind in used:
                used[kind] = True
                print(f"pybpf: attached {prog.name} ({prog.section}) to {link.target}", file=sys.stderr)
        elif kind == "run":
            runnable.append(prog.name)
        else:
            flag = _CLI_NEEDS.get(kind)
            if packet_socket:
                need = "give --iface IFACE (a packet socket on it), or attach it to a socket: prog.attach_socket(sock)"
            elif prog.spec.sec_def.attach == "usdt":
                need = ("give --usdt-binary PATH or --pid PID (its section names no binary)" if prog.spec.attach_target
                        else "its section names no probe: give --usdt PROG=[PATH:]PROVIDER:NAME")
            elif flag and not (kind == "cgroup" and prog.spec.expected_attach_type is None):
                need = f"give {flag}"
            else:
                need = f"needs {how}"
            unattached.setdefault(need, []).append(prog.name)
    for m in obj.maps.values():
        if getattr(m.spec, "struct_ops", None) is not None:
            try:
                links.append(m.attach_struct_ops())
            except pybpf.SyscallError as e:
                unattached.setdefault(f"not registered: {e}", []).append(m.name)
                continue
            print(f"pybpf: registered struct_ops map {m.name} (struct {m.spec.struct_ops.type_name})",
                  file=sys.stderr)
    for need, names in unattached.items():
        print(f"pybpf: not attached: {', '.join(names)}: {need}", file=sys.stderr)
    for kind, given in (("iface", iface), ("cgroup", args.cgroup)):
        if given is not None and not used[kind]:
            what = "XDP or tc program (nor socket filter)" if kind == "iface" else "cgroup program"
            print(f"pybpf: --{kind} {given}: {args.object} has no {what} to attach there", file=sys.stderr)
    if runnable:
        print(f"pybpf: {', '.join(runnable)}: syscall program{'s' if len(runnable) > 1 else ''}, run with "
              f"BPF_PROG_TEST_RUN, never attached", file=sys.stderr)
    if not links and unattached:
        raise pybpf.Error("nothing attached (what each program needs is said above): not starting a session "
                          "that would show nothing")
    return links


def cmd_inspect(args) -> int:
    import json
    from pybpf import inspect as insp
    spec = pybpf.open(args.object)
    if args.kernel and not args.core:
        raise pybpf.Error("--kernel goes with --core (it resolves the CO-RE relocations on this kernel)")
    if args.type:
        if spec.btf is None:
            raise pybpf.Error(f"{args.object} has no BTF: build it with -g")
        if args.json:
            print(json.dumps([insp.layout_data(spec.btf, t) for t in args.type], indent=1))
        else:
            for t in args.type:
                sys.stdout.write(insp.layout(spec.btf, t))
        return 0
    if args.core:
        if args.json:
            print(json.dumps(insp.core_data(spec, args.program, args.kernel), indent=1))
        else:
            sys.stdout.write(insp.core_listing(spec, args.program, args.kernel))
        return 0
    if args.disasm:
        if args.json:
            print(json.dumps(insp.disassembly_data(spec, args.program), indent=1))
        else:
            sys.stdout.write(insp.disassembly(spec, args.program))
        return 0
    if args.json:
        print(json.dumps(insp.describe_data(spec, args.program), indent=1))
    else:
        sys.stdout.write(insp.describe(spec, args.program))
    return 0


def cmd_btf_dump(args) -> int:
    from pybpf.spec.btf_dump import btf_from_file, format_c, format_raw
    from pybpf.kernel.btf import VMLINUX
    path = VMLINUX if args.kernel or not args.file else args.file
    base = btf_from_file(args.base) if args.base else None
    if base is None and path != VMLINUX and path.startswith("/sys/kernel/btf/"):
        base = btf_from_file(VMLINUX)   # module BTF is split on top of vmlinux
    btf = btf_from_file(path, base=base)
    sys.stdout.write(format_c(btf) if args.format == "c" else format_raw(btf))
    return 0


class _Interrupts:
    """SIGINT and SIGTERM while the CLI runs: the first raises KeyboardInterrupt (the ``with``
    blocks then unload everything, and main() exits with 128 + the signal's number: 130 for
    Ctrl-C), a second one exits at once (the kernel releases the fds of an exiting process,
    so nothing stays loaded either way).  ``signum`` stays set, so that a KeyboardInterrupt
    swallowed on its way (CPython ignores exceptions raised in ``__del__`` methods) is raised
    again by the streaming loop."""

    def __init__(self):
        self.signum = 0

    def __call__(self, signum, frame):
        if self.signum:
            os._exit(128 + self.signum)
        self.signum = signum
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.signum:
            raise KeyboardInterrupt


_interrupts = _Interrupts()


def main(argv: list | None = None) -> int:
    """Run the CLI; returns its exit code (130 after Ctrl-C, 143 after SIGTERM)."""
    global _interrupts
    _interrupts = _Interrupts()
    old = {}
    if threading.current_thread() is threading.main_thread():   # signal.signal works there only
        # a signal the command was started with ignored (SIGINT in a shell script's background
        # job, nohup) stays ignored, as CPython leaves it (it installs its SIGINT handler only
        # over the default action)
        old = {s: signal.signal(s, _interrupts) for s in (signal.SIGINT, signal.SIGTERM)
               if signal.getsignal(s) != signal.SIG_IGN}
    # CPython reports an exception it has to drop (raised in a __del__ or a weak reference
    # callback, e.g. importlib's module-lock callback) as "Exception ignored ... Traceback": a
    # Ctrl-C landing there is not dropped here (the handler keeps its signum, and the command
    # raises it again: _Interrupts.check), so it is not reported either
    default_unraisable = sys.unraisablehook

    def unraisable(info):
        if not isinstance(info.exc_value, KeyboardInterrupt):
            default_unraisable(info)
    sys.unraisablehook = unraisable
    try:
        try:
            code = _main(argv)
            # a Ctrl-C that CPython dropped on its way (see above) still ends the command as one
            return 128 + _interrupts.signum if _interrupts.signum else code
        except KeyboardInterrupt:
            return 128 + (_interrupts.signum or signal.SIGINT)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            sys.unraisablehook = default_unraisable
    except KeyboardInterrupt:      # a signal while the handlers were put back
        return 128 + (_interrupts.signum or signal.SIGINT)


def _prog_name() -> str:
    """argparse's prog: ``pybpf`` for the console script, ``python -m pybpf`` otherwise."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "pybpf":
        return "pybpf"
    return "python -m pybpf"


def _main(argv: list | None) -> int:
    parser = argparse.ArgumentParser(prog=_prog_name(), description="A pure-Python eBPF loader.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {pybpf.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("load", help="load a BPF object, attach its programs, stream its ring buffers",
                       description="Load OBJECT, attach the programs whose section names a target (XDP and tc "
                                   "programs to --iface, cgroup programs to --cgroup), and print ring and perf buffer "
                                   "records until Ctrl-C (or --duration/--count), which detaches everything. "
                                   "User ring buffers get one sample at start and one after each record.")
    p.add_argument("object", help="the BPF object file (.o) to load")
    p.add_argument("--type", action="append", default=[], metavar="MAP=TYPE",
                   help="decode MAP's records (or encode its samples) as TYPE, e.g. kernel_ringbuf='struct event'")
    p.add_argument("--feed", action="append", default=[], metavar="MAP=VALUE",
                   help="sample written to user ring buffer MAP: hex:..., @file, or JSON by the sample type "
                        "(repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                   help="set a global variable before loading (int, or hex:...; .rodata parameters too)")
    p.add_argument("--max-entries", action="append", default=[], metavar="MAP=N",
                   help="set MAP's max_entries before loading (maps the object leaves for user space to size; "
                        "a ring buffer's size in bytes)")
    p.add_argument("--value-size", action="append", default=[], metavar="MAP=N",
                   help="set MAP's value_size before loading (a STACK_TRACE map's: 8 x its stack depth)")
    p.add_argument("--no-attach", action="store_true", help="load only; attach nothing")
    p.add_argument("--iface", metavar="IFACE",
                   help="attach the XDP and tc programs to this interface (a name or an ifindex), and the socket "
                        "filters to an AF_PACKET socket bound to it; detached on exit")
    p.add_argument("--cgroup", metavar="PATH",
                   help="attach the cgroup programs (cgroup_skb/..., cgroup/..., sockops) to this cgroup v2 "
                        "directory; detached on exit.  For an object following libbpf-tools' -c convention it "
                        "is also the filter: a 'filter_cg' global is set to true before load and the "
                        "directory's fd is stored at key 0 of a CGROUP_ARRAY map 'cgroup_map' after load, "
                        "so its programs count only tasks in that cgroup")
    p.add_argument("--pid", type=int, metavar="PID",
                   help="two meanings: attach the usdt programs to this process only (a usdt/PROVIDER:NAME "
                        "section without a binary, and --usdt without PATH, probe its executable unless "
                        "--usdt-binary says); and print only the records whose 'pid' field is PID (records "
                        "without a pid field are kept): the short form of --filter pid=PID")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="print only the decoded records whose FIELD equals VALUE (an int, the string of a char "
                        "array, an enum name); repeatable, all must match; records without FIELD are left out")
    p.add_argument("--json", action="store_true",
                   help="print each ring/perf buffer record as one JSON object (its decoded fields; map, size "
                        "and hex for records of unknown type), one per line")
    p.add_argument("--show-maps", action="store_true",
                   help="print the maps (but ring/perf buffers and .data/.bss/.rodata) at exit, or every "
                        "--interval seconds: log2 histograms as bcc draws them, other maps as key: value tables")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="with --show-maps: print them this often")
    p.add_argument("-v", "--verbose", action="store_true", help="print the loaded programs' and maps' ids")
    p.add_argument("--usdt", action="append", default=[], metavar="PROG=[PATH:]PROVIDER:NAME",
                   help="attach usdt program PROG to this probe (repeatable; for SEC(\"usdt\") programs that "
                        "name none, as libbpf-tools' javagc); without PATH: --usdt-binary, else --pid's executable")
    p.add_argument("--usdt-binary", metavar="PATH",
                   help="the binary (or library) of the usdt probes whose section or --usdt names no path "
                        "(usdt/PROVIDER:NAME); every process running it, or only --pid's")
    p.add_argument("--sample-freq", type=int, metavar="HZ",
                   help=f"run the perf_event programs from a sampling cpu-clock event on every online CPU at "
                        f"HZ samples/s (default {_DEFAULT_SAMPLE_FREQ})")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.add_argument("--count", type=int, metavar="N", help="stop after N records")
    p.add_argument("--log", action="store_true", help="on a verifier rejection, print the whole verifier log")
    p.add_argument("--rate", action="store_true",
                   help="print each ring buffer's records/s and bytes/s to stderr every second")
    p = sub.add_parser("inspect", help="show an object's programs, maps, globals and types (no root needed)",
                       description="Describe OBJECT offline: programs (section, type, attach target, instruction "
                                   "counts, subprograms, relocations), maps, global variables.")
    p.add_argument("object")
    p.add_argument("--type", action="append", default=[], metavar="TYPE",
                   help="print the layout of TYPE (e.g. 'struct event'): offsets, sizes, holes, padding")
    p.add_argument("--disasm", action="store_true", help="disassemble each program with its C source lines")
    p.add_argument("--program", metavar="NAME", help="only this program (its description, disassembly or CO-RE)")
    p.add_argument("--core", action="store_true", help="list each function's CO-RE relocations (libbpf's notation)")
    p.add_argument("--kernel", action="store_true", help="with --core: what each resolves to on this kernel")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("btf", help="BTF tools: 'btf dump'")
    bsub = p.add_subparsers(dest="btf_command", metavar="SUBCOMMAND", required=True)
    p = bsub.add_parser("dump", help="dump BTF as bpftool does (raw) or as a C header (vmlinux.h)")
    p.add_argument("file", nargs="?", help="an ELF object or raw BTF file (default: the kernel's vmlinux BTF)")
    p.add_argument("--kernel", action="store_true", help="dump /sys/kernel/btf/vmlinux")
    p.add_argument("--base", metavar="FILE", help="base BTF for a split BTF file (module BTF)")
    p.add_argument("--format", choices=("raw", "c"), default="raw")
    from pybpf import cli_live
    cli_live.add_parsers(sub)       # prog, map, link, pin: live objects (pybpf/cli_live.py)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "btf":
            return cmd_btf_dump(args)
        if args.command in ("prog", "map", "link", "pin"):
            return cli_live.run(args)
        return cmd_load(args)
    except pybpf.VerifierError as e:
        print(f"pybpf: error: {e}", file=sys.stderr)
        if getattr(args, "log", False):
            print(e.log, file=sys.stderr)
        elif args.command == "load":
            print("pybpf: rerun with --log for the whole verifier log", file=sys.stderr)
        return 1
    except pybpf.NotSupportedError as e:
        print(f"pybpf: error: {e}", file=sys.stderr)
        if getattr(args, "log", False) and getattr(e, "log", None):
            print(e.log, file=sys.stderr)
        return 1
    except pybpf.PermissionError as e:
        print(f"{PRIVILEGE_MESSAGE} ({e})" if not bpf_capable() else f"pybpf: error: {e}", file=sys.stderr)
        return 1
    except pybpf.Error as e:
        print(f"pybpf: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
