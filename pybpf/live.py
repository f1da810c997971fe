"""Live kernel objects: what is loaded now, whoever loaded it.

- :func:`programs`, :func:`maps`, :func:`links`, :func:`btfs`: iterators over every BPF
  program, map, link and BTF object in the kernel, as :class:`ProgramInfo`,
  :class:`MapInfo`, :class:`~pybpf.links.base.LinkInfo` and :class:`BtfInfo` records
  (BPF_*_GET_NEXT_ID, BPF_*_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD);
- :func:`stats`: BPF_ENABLE_STATS, the kernel's per-program ``run_cnt`` and ``run_time_ns``;
- :func:`to_bpftool`: the dict ``bpftool -j prog/map/link/btf list`` prints for a record;
- the pieces behind ``Map/Program/Link.from_pinned()``, ``from_id()`` and ``pin()``: opening
  a pin or an id with a clear error, the kind of a BPF fd, bpffs checks, BTF by id, and the
  translated (``xlated()``) and JITed (``jited()``) instructions of a program.

Listing and opening by id need CAP_SYS_ADMIN (the kernel checks it, CAP_BPF is not enough);
without it they raise :class:`pybpf.PermissionError` saying so.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import time
from collections.abc import Iterator

from .errors import Error, NotSupportedError, PermissionError, SyscallError
from .kernel import syscall as sc
from .kernel.attrs import BtfInfo as _BtfInfoStruct
from .kernel.attrs import MapInfo as _MapInfoStruct
from .kernel.attrs import ProgInfo as _ProgInfoStruct
# the kind of a BPF fd, pins, fds by path or id: the kernel layer's (importable from here too)
from .kernel.bpffs import (  # noqa: F401
    _BY_ID, BPF_FS_MAGIC, fd_kind, make_pin_dir, on_bpffs, open_id, open_pinned, pin_fd, unpin_path,
)
from .kernel.constants import Cmd, MapType, ProgType
from .resource import Resource, deferred_signals

__all__ = ["ProgramInfo", "MapInfo", "BtfInfo", "LinkInfo", "programs", "maps", "links", "btfs", "stats",
           "to_bpftool", "btf_users", "Disassembly", "JitedCode"]


def __getattr__(name):
    if name == "LinkInfo":
        from .links.base import LinkInfo
        return LinkInfo
    raise AttributeError(f"module 'pybpf.live' has no attribute {name!r}")


def _enum(enum_type, value: int):
    try:
        return enum_type(value)
    except ValueError:
        return value


def _type_name(value) -> str:
    """``hash`` for MapType.HASH, ``sched_cls`` for ProgType.SCHED_CLS (libbpf's names)."""
    return value.name.lower() if hasattr(value, "name") else str(value)


# -- records ---------------------------------------------------------------------------------------

def _fdinfo(fd: int) -> dict[str, str]:
    """The ``key: value`` lines of /proc/self/fdinfo/<fd> (memlock, frozen, owner_prog_type...)."""
    out = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def _fdinfo_int(info: dict, key: str) -> int | None:
    try:
        return int(info[key])
    except (KeyError, ValueError):
        return None


def _boot_to_epoch() -> int:
    """Nanoseconds to add to a CLOCK_BOOTTIME time to get wall-clock (epoch) time."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class _Info:
    """The base of the info records: named attributes (``_fields``), alternative names
    (``_aliases``: bpftool's and the kernel's), ``as_dict()``, equality and a repr."""

    _fields: tuple = ()
    _aliases: dict = {}

    def __init__(self, **values):
        for name in self._fields:
            setattr(self, name, values.get(name))

    def __getattr__(self, name):
        target = type(self)._aliases.get(name)
        if target is not None:
            return getattr(self, target)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def as_dict(self) -> dict:
        """The fields as a plain dict."""
        return {name: getattr(self, name) for name in self._fields}

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(v, 'name', v) if k == 'type' else repr(v)}"
                          for k, v in self.as_dict().items() if k in self._repr_fields)
        return f"{type(self).__name__}({shown})"

    _repr_fields: tuple = ()


# ProgInfo.map_ids is read in one call when a program uses at most this many maps
_MAP_IDS_FIRST = 64


class ProgramInfo(_Info):
    """A loaded BPF program, as the kernel reports it (``struct bpf_prog_info`` and fdinfo).

    ``id``, ``name`` (whole: the kernel keeps 15 characters in ``kernel_name``, the rest comes
    from the program's BTF, as bpftool shows it), ``type`` (a
    :class:`~pybpf.kernel.constants.ProgType`), ``tag`` (hex, as bpftool prints it),
    ``gpl_compatible``, ``map_ids``, ``btf_id`` (0: none), ``uid`` (who loaded it; also
    ``created_by_uid``), ``load_time`` (ns since boot), ``loaded_at`` (wall-clock seconds since
    the epoch, computed as bpftool does), ``created`` (the same as a timezone-aware
    ``datetime``), ``xlated_size`` and ``jited_size`` in bytes (also ``bytes_xlated``,
    ``bytes_jited``), ``jited``, ``run_cnt``, ``run_time_ns`` and ``recursion_misses``
    (counted while :func:`stats` is on), ``verified_insns``, ``attach_btf_id``,
    ``attach_btf_obj_id``, ``nr_func_info``, ``nr_line_info``, ``ifindex``, ``netns_dev``,
    ``netns_ino``, ``memlock`` (bytes charged, also ``bytes_memlock``)."""

    _fields = ("id", "name", "kernel_name", "type", "tag", "gpl_compatible", "map_ids", "btf_id", "uid", "load_time",
               "loaded_at", "xlated_size", "jited_size", "jited", "run_cnt", "run_time_ns", "recursion_misses",
               "verified_insns", "attach_btf_id", "attach_btf_obj_id", "nr_func_info", "nr_line_info",
               "nr_jited_ksyms", "ifindex", "netns_dev", "netns_ino", "memlock")
    _aliases = {"bytes_xlated": "xlated_size", "xlated_prog_len": "xlated_size", "bytes_jited": "jited_size",
                "jited_prog_len": "jited_size", "created_by_uid": "uid", "bytes_memlock": "memlock",
                "nr_map_ids": "_nr_map_ids"}
    _repr_fields = ("id", "name", "type", "tag", "map_ids", "btf_id")

    @property
    def _nr_map_ids(self) -> int:
        return len(self.map_ids)

    @property
    def created(self):
        """When the program was loaded, as a timezone-aware ``datetime`` (UTC)."""
        import datetime
        return datetime.datetime.fromtimestamp(self.loaded_at, datetime.timezone.utc)

    @classmethod
    def from_struct(cls, info: _ProgInfoStruct, map_ids: list[int], fdinfo: dict | None = None,
                    boot_to_epoch: int | None = None, name: str | None = None) -> "ProgramInfo":
        """The record of a filled ``struct bpf_prog_info`` (``name``: the full name, when known)."""
        offset = _boot_to_epoch() if boot_to_epoch is None else boot_to_epoch
        fdinfo = fdinfo or {}
        kernel_name = info.name.decode(errors="replace")
        return cls(
            id=info.id, name=name or kernel_name, kernel_name=kernel_name, type=_enum(ProgType, info.type),
            tag=bytes(info.tag).hex(), gpl_compatible=bool(info.gpl_compatible), map_ids=list(map_ids),
            btf_id=info.btf_id, uid=info.created_by_uid, load_time=info.load_time,
            loaded_at=(offset + info.load_time) // 1_000_000_000 if info.load_time else 0,
            xlated_size=info.xlated_prog_len, jited_size=info.jited_prog_len, jited=info.jited_prog_len > 0,
            run_cnt=info.run_cnt, run_time_ns=info.run_time_ns, recursion_misses=info.recursion_misses,
            verified_insns=info.verified_insns, attach_btf_id=info.attach_btf_id,
            attach_btf_obj_id=info.attach_btf_obj_id, nr_func_info=info.nr_func_info,
            nr_line_info=info.nr_line_info, nr_jited_ksyms=info.nr_jited_ksyms, ifindex=info.ifindex,
            netns_dev=info.netns_dev, netns_ino=info.netns_ino, memlock=_fdinfo_int(fdinfo, "memlock"))

    @classmethod
    def from_fd(cls, fd: int, boot_to_epoch: int | None = None, btfs: dict | None = None) -> "ProgramInfo":
        """BPF_OBJ_GET_INFO_BY_FD of program fd ``fd`` (with its map ids) and its fdinfo.
        ``btfs``: a cache ``{btf_id: BTF}`` shared by a listing, for full names."""
        info, map_ids = _prog_info_with_maps(fd)
        return cls.from_struct(info, map_ids, _fdinfo(fd), boot_to_epoch, _full_name(fd, info, btfs))

    def to_bpftool(self) -> dict:
        """The dict ``bpftool -j prog show`` prints for this program."""
        return to_bpftool(self)


def _full_name(fd: int, info: _ProgInfoStruct, btfs: dict | None) -> str | None:
    """The program's whole name when the kernel cut it (it keeps BPF_OBJ_NAME_LEN - 1 = 15
    characters): the name of its first BTF function (func_info), as bpftool shows it."""
    if len(info.name) < 15 or not info.nr_func_info or not info.btf_id:
        return None
    record = (ctypes.c_uint32 * 2)()
    try:
        sc.obj_get_info_by_fd(fd, _ProgInfoStruct(nr_func_info=1, func_info_rec_size=8,
                                                  func_info=ctypes.addressof(record)))
        btf = btfs.get(info.btf_id) if btfs is not None else None
        if btf is None:
            btf = btf_by_id(info.btf_id)
            if btfs is not None:
                btfs[info.btf_id] = btf
        name = btf[record[1]].name
    except (Error, IndexError, AttributeError):
        return None
    return name if name and name.startswith(info.name.decode(errors="replace")) else None


def _prog_info_with_maps(fd: int) -> tuple[_ProgInfoStruct, list[int]]:
    ids = (ctypes.c_uint32 * _MAP_IDS_FIRST)()
    info = sc.obj_get_info_by_fd(fd, _ProgInfoStruct(nr_map_ids=_MAP_IDS_FIRST, map_ids=ctypes.addressof(ids)))
    if info.nr_map_ids > _MAP_IDS_FIRST:       # more maps than the first buffer holds: ask again
        n = info.nr_map_ids
        ids = (ctypes.c_uint32 * n)()
        info = sc.obj_get_info_by_fd(fd, _ProgInfoStruct(nr_map_ids=n, map_ids=ctypes.addressof(ids)))
    return info, list(ids[:min(info.nr_map_ids, len(ids))])


class MapInfo(_Info):
    """A BPF map, as the kernel reports it (``struct bpf_map_info`` and fdinfo).

    ``id``, ``name``, ``type`` (a :class:`~pybpf.kernel.constants.MapType`), ``key_size``,
    ``value_size``, ``max_entries``, ``flags`` (also ``map_flags``), ``map_extra``, ``btf_id``,
    ``btf_key_type_id``, ``btf_value_type_id``, ``btf_vmlinux_value_type_id``,
    ``btf_vmlinux_id``, ``ifindex``, ``netns_dev``, ``netns_ino``, and from fdinfo ``frozen``,
    ``memlock`` (bytes charged), ``owner_prog_type``/``owner_jited`` (prog arrays, once a
    program uses them).  bpftool's names work too: ``bytes_key``, ``bytes_value``,
    ``bytes_memlock``."""

    _fields = ("id", "name", "type", "key_size", "value_size", "max_entries", "flags", "map_extra", "btf_id",
               "btf_key_type_id", "btf_value_type_id", "btf_vmlinux_value_type_id", "btf_vmlinux_id",
               "ifindex", "netns_dev", "netns_ino", "frozen", "memlock", "owner_prog_type", "owner_jited")
    _aliases = {"map_flags": "flags", "bytes_key": "key_size", "bytes_value": "value_size",
                "bytes_memlock": "memlock"}
    _repr_fields = ("id", "name", "type", "key_size", "value_size", "max_entries", "flags", "btf_id")

    @classmethod
    def from_struct(cls, info: _MapInfoStruct, fdinfo: dict | None = None) -> "MapInfo":
        """The record of a filled ``struct bpf_map_info``."""
        fdinfo = fdinfo or {}
        frozen = _fdinfo_int(fdinfo, "frozen")
        owner = _fdinfo_int(fdinfo, "owner_prog_type")
        jited = _fdinfo_int(fdinfo, "owner_jited")
        return cls(
            id=info.id, name=info.name.decode(errors="replace"), type=_enum(MapType, info.type),
            key_size=info.key_size, value_size=info.value_size, max_entries=info.max_entries,
            flags=info.map_flags, map_extra=info.map_extra, btf_id=info.btf_id,
            btf_key_type_id=info.btf_key_type_id, btf_value_type_id=info.btf_value_type_id,
            btf_vmlinux_value_type_id=info.btf_vmlinux_value_type_id, btf_vmlinux_id=info.btf_vmlinux_id,
            ifindex=info.ifindex, netns_dev=info.netns_dev, netns_ino=info.netns_ino,
            frozen=None if frozen is None else bool(frozen), memlock=_fdinfo_int(fdinfo, "memlock"),
            owner_prog_type=None if owner is None else _enum(ProgType, owner),
            owner_jited=None if jited is None else bool(jited))

    @classmethod
    def from_fd(cls, fd: int) -> "MapInfo":
        """BPF_OBJ_GET_INFO_BY_FD of map fd ``fd`` and its fdinfo."""
        return cls.from_struct(sc.obj_get_info_by_fd(fd, _MapInfoStruct()), _fdinfo(fd))

    def to_bpftool(self) -> dict:
        """The dict ``bpftool -j map show`` prints for this map."""
        return to_bpftool(self)


class BtfInfo(_Info):
    """A BTF object in the kernel (``struct bpf_btf_info``): ``id``, ``name`` (``vmlinux`` and
    module names for kernel BTF, else empty), ``size`` in bytes (also ``btf_size``), ``kernel``
    (True for vmlinux and module BTF; also ``kernel_btf``)."""

    _fields = ("id", "name", "size", "kernel")
    _aliases = {"btf_size": "size", "kernel_btf": "kernel"}
    _repr_fields = _fields

    @classmethod
    def from_fd(cls, fd: int) -> "BtfInfo":
        """BPF_OBJ_GET_INFO_BY_FD of BTF fd ``fd``."""
        name = ctypes.create_string_buffer(64)     # module names are at most 56 bytes
        info = sc.obj_get_info_by_fd(fd, _BtfInfoStruct(name=ctypes.addressof(name), name_len=len(name)))
        return cls(id=info.id, name=name.value.decode(errors="replace"), size=info.btf_size,
                   kernel=bool(info.kernel_btf))

    def to_bpftool(self, prog_ids=(), map_ids=()) -> dict:
        """The dict ``bpftool -j btf show`` prints; bpftool adds the ids of the programs and maps
        that use this BTF (:func:`btf_users` gives them)."""
        return to_bpftool(self, prog_ids=prog_ids, map_ids=map_ids)


# -- listings --------------------------------------------------------------------------------------

_NEXT_ID = {"program": Cmd.PROG_GET_NEXT_ID, "map": Cmd.MAP_GET_NEXT_ID, "link": Cmd.LINK_GET_NEXT_ID,
            "btf": Cmd.BTF_GET_NEXT_ID}


def ids(kind: str) -> Iterator[int]:
    """The ids of every ``kind`` (``"program"``, ``"map"``, ``"link"``, ``"btf"``) in the kernel, in
    increasing order (BPF_*_GET_NEXT_ID; needs CAP_SYS_ADMIN)."""
    cmd = _NEXT_ID[kind]
    current = 0
    while True:
        current = sc.get_next_id(cmd, current)
        if current is None:
            return
        yield current


def _each(kind: str, read) -> Iterator:
    """``read(fd)`` for each live object of ``kind``; objects released between their id and their
    fd are skipped.  The fd is made, read and closed in one section, so nothing is held while
    the caller looks at a record."""
    for object_id in ids(kind):
        with deferred_signals():
            try:
                fd = sc.get_fd_by_id(_BY_ID[kind], object_id)
            except SyscallError as e:
                if e.errno == _errno.ENOENT:
                    continue
                raise
            try:
                record = read(fd)
            finally:
                os.close(fd)
        yield record


def programs() -> Iterator[ProgramInfo]:
    """Every BPF program loaded in the kernel now, as :class:`ProgramInfo` (by id).  Needs
    CAP_SYS_ADMIN."""
    offset = _boot_to_epoch()
    btfs: dict = {}
    return _each("program", lambda fd: ProgramInfo.from_fd(fd, offset, btfs))


def maps() -> Iterator[MapInfo]:
    """Every BPF map in the kernel now, as :class:`MapInfo` (by id).  Needs CAP_SYS_ADMIN."""
    return _each("map", MapInfo.from_fd)


def links() -> Iterator:
    """Every BPF link in the kernel now, as :class:`~pybpf.links.base.LinkInfo` (by id).  Needs
    CAP_SYS_ADMIN."""
    from .links.base import link_info
    return _each("link", link_info)


def btfs() -> Iterator[BtfInfo]:
    """Every BTF object in the kernel now (vmlinux, modules', programs'), as :class:`BtfInfo`.
    Needs CAP_SYS_ADMIN."""
    return _each("btf", BtfInfo.from_fd)


def btf_users(programs_list=None, maps_list=None) -> dict[int, tuple[list[int], list[int]]]:
    """``{btf_id: (program ids, map ids)}``: which programs and maps use each BTF object, as
    ``bpftool btf list`` shows them (from :func:`programs` and :func:`maps`, or the records
    given)."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for p in programs() if programs_list is None else programs_list:
        if p.btf_id:
            out.setdefault(p.btf_id, ([], []))[0].append(p.id)
    for m in maps() if maps_list is None else maps_list:
        if m.btf_id:
            out.setdefault(m.btf_id, ([], []))[1].append(m.id)
    return out


# -- bpftool's JSON --------------------------------------------------------------------------------

def to_bpftool(info, **extra) -> dict:
    """The dict bpftool prints with ``-j`` for a :class:`ProgramInfo` (``prog show``),
    :class:`MapInfo` (``map show``), :class:`~pybpf.links.base.LinkInfo` (``link show``) or
    :class:`BtfInfo` (``btf show``; ``prog_ids=``/``map_ids=`` from :func:`btf_users`): the same
    keys in the same order, printed only when bpftool prints them.  Type names are libbpf's
    (``sched_cls``, ``percpu_hash``); bpftool builds older than a type print its number."""
    from .links.base import LinkInfo
    if isinstance(info, ProgramInfo):
        return _prog_json(info)
    if isinstance(info, MapInfo):
        return _map_json(info)
    if isinstance(info, BtfInfo):
        out = {"id": info.id, "size": info.size, "prog_ids": list(extra.get("prog_ids", ())),
               "map_ids": list(extra.get("map_ids", ())), "kernel": info.kernel}
        if info.name:
            out["name"] = info.name
        return out
    if isinstance(info, LinkInfo):
        return _link_json(info)
    raise Error(f"to_bpftool() takes a ProgramInfo, MapInfo, LinkInfo or BtfInfo, not {type(info).__name__}")


def _type_json(value):
    return value.name.lower() if hasattr(value, "name") else value


def _dev_json(out: dict, info) -> None:
    # bpftool print_dev_info_json: only for programs/maps bound to a device (offload)
    if info.ifindex:
        out["dev"] = {"ifindex": info.ifindex, "ns_dev": info.netns_dev, "ns_inode": info.netns_ino}


def _prog_json(p: ProgramInfo) -> dict:
    # bpftool prog.c print_prog_header_json + print_prog_json
    out: dict = {"id": p.id, "type": _type_json(p.type)}
    if p.name:
        out["name"] = p.name
    out["tag"] = p.tag
    out["gpl_compatible"] = p.gpl_compatible
    if p.run_time_ns:
        out["run_time_ns"] = p.run_time_ns
        out["run_cnt"] = p.run_cnt
    if p.recursion_misses:
        out["recursion_misses"] = p.recursion_misses
    _dev_json(out, p)
    if p.load_time:
        out["loaded_at"] = p.loaded_at
        out["uid"] = p.uid
    out["bytes_xlated"] = p.xlated_size
    out["jited"] = p.jited
    if p.jited:
        out["bytes_jited"] = p.jited_size
    if p.memlock is not None:
        out["bytes_memlock"] = p.memlock
    if p.map_ids:
        out["map_ids"] = list(p.map_ids)
    if p.btf_id:
        out["btf_id"] = p.btf_id
    return out


def _map_json(m: MapInfo) -> dict:
    # bpftool map.c show_map_header_json + show_map_close_json
    out: dict = {"id": m.id, "type": _type_json(m.type)}
    if m.name:
        out["name"] = m.name
    out["flags"] = m.flags
    _dev_json(out, m)
    out["bytes_key"] = m.key_size
    out["bytes_value"] = m.value_size
    out["max_entries"] = m.max_entries
    if m.memlock is not None:
        out["bytes_memlock"] = m.memlock
    if m.type == MapType.PROG_ARRAY and m.owner_prog_type is not None:
        out["owner_prog_type"] = _type_json(m.owner_prog_type)
        out["owner_jited"] = bool(m.owner_jited)
    if m.frozen is not None:
        out["frozen"] = int(m.frozen)
    if m.btf_id:
        out["btf_id"] = m.btf_id
    if m.btf_vmlinux_value_type_id:
        out["btf_vmlinux_value_type_id"] = m.btf_vmlinux_value_type_id
    return out


# bpftool link.c: the fields printed per link type, in its order
_LINK_JSON_FIELDS = {
    "raw_tracepoint": ("tp_name",),
    "tracing": ("attach_type", "target_obj_id", "target_btf_id"),
    "cgroup": ("cgroup_id", "attach_type"),
    "netns": ("netns_ino", "attach_type"),
    "xdp": ("ifindex",),
    "tcx": ("ifindex", "attach_type"),
    "netkit": ("ifindex", "attach_type"),
    "netfilter": ("pf", "hooknum", "priority", "flags"),
    "sockmap": ("map_id", "attach_type"),
    "struct_ops": ("map_id",),
}


def _link_json(link) -> dict:
    kind = _type_json(link.type)
    out: dict = {"id": link.id, "type": kind, "prog_id": link.prog_id}
    for name in _LINK_JSON_FIELDS.get(kind, ()):
        if name in link.fields:
            value = link.fields[name]
            out[name] = _type_json(value) if name == "attach_type" else value
    return out


# -- run-time statistics ---------------------------------------------------------------------------

BPF_STATS_RUN_TIME = 0


class stats(Resource):  # noqa: N801 - used as a function: ``with pybpf.stats(): ...``
    """BPF_ENABLE_STATS: while this is open (a ``with`` block, or until :meth:`close`), the kernel
    counts every program's runs and their time: :class:`ProgramInfo` ``run_cnt`` and
    ``run_time_ns``.  It costs a little on every program run, so keep it to when you measure.
    Needs CAP_SYS_ADMIN; several may be open at once (the kernel counts them)."""

    def __init__(self):
        self._fd = -1
        with deferred_signals():
            try:
                self._fd = sc.enable_stats(BPF_STATS_RUN_TIME)
            except SyscallError as e:
                if e.errno == _errno.EINVAL and _kernel_lacks("bpf_cmd", "BPF_ENABLE_STATS"):
                    raise NotSupportedError("this kernel has no BPF_ENABLE_STATS (its enum bpf_cmd lacks it; "
                                            "run-time statistics came with Linux 5.8)") from None
                if isinstance(e, PermissionError):
                    raise
                raise type(e)(e.command, e.errno, "cannot turn run-time statistics on") from None

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Stop counting (for this holder; the kernel counts while any holder is open). Idempotent."""
        with deferred_signals():
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def __repr__(self) -> str:
        return f"<pybpf.stats {'closed' if self.closed else 'on'}>"


def _kernel_lacks(enum: str, member: str) -> bool:
    from .kernel.btf import enum_names, running_btf
    names = enum_names(running_btf(None), enum)
    return names is not None and member not in names


# -- BTF by id -------------------------------------------------------------------------------------

def btf_by_id(btf_id: int):
    """The :class:`~pybpf.spec.btf.BTF` the kernel knows as ``btf_id`` (a program's or map's);
    vmlinux from /sys/kernel/btf/vmlinux, module BTF split on top of it."""
    from .kernel.btf import btf_from_fd, vmlinux_btf
    with deferred_signals():
        fd = open_id("btf", btf_id)
        try:
            info = BtfInfo.from_fd(fd)
            if info.kernel and info.name == "vmlinux":
                return vmlinux_btf()
            return btf_from_fd(fd)
        finally:
            os.close(fd)


# -- instructions of a loaded program --------------------------------------------------------------

class Disassembly(str):
    """A program's translated instructions as ``bpftool prog dump xlated`` prints them: the text
    (a ``str``), ``lines`` (the same as a list), ``insns`` and ``bytes(d)`` (the raw
    instructions, as ``bpftool prog dump xlated ... file F`` writes them).

    ``==`` also takes a list of lines or raw bytes; against text, trailing newlines do not count
    (bpftool ends its output with one)."""

    insns: bytes = b""

    def __new__(cls, lines: list[str], insns: bytes):
        self = super().__new__(cls, "".join(line + "\n" for line in lines))
        self.insns = bytes(insns)
        self._lines = list(lines)
        return self

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def __bytes__(self) -> bytes:
        return self.insns

    def __eq__(self, other):
        if isinstance(other, str):
            return str.rstrip(self, "\n") == other.rstrip("\n")
        if isinstance(other, (list, tuple)):
            return self.lines == list(other)
        if isinstance(other, (bytes, bytearray, memoryview)):
            return self.insns == bytes(other)
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        return hash(str.rstrip(self, "\n"))


class JitedCode(bytes):
    """A program's JITed machine code (``bytes``, as ``bpftool prog dump jited ... file F``
    writes it), with ``functions``: ``(kernel symbol, address, size)`` of the program and each
    of its subprograms, in order."""

    functions: list = []

    def __new__(cls, code: bytes, functions: list):
        self = super().__new__(cls, code)
        self.functions = functions
        return self


class _Kallsyms:
    """/proc/kallsyms, read once (~5 MB) and searched for the few addresses a dump needs: how
    bpftool names helper calls and JITed subprograms (the first symbol at an address)."""

    def __init__(self):
        with open("/proc/kallsyms", "rb") as f:
            self._data = f.read()

    def address_of(self, name: str) -> int:
        at = self._data.find(f" {name}\n".encode())
        if at < 0:
            return 0
        line = self._data[self._data.rfind(b"\n", 0, at) + 1:at]
        try:
            return int(line.split()[0], 16)
        except (IndexError, ValueError):
            return 0

    def name_at(self, address: int) -> str:
        key = f"{address:016x} ".encode()
        at = 0 if self._data.startswith(key) else self._data.find(b"\n" + key) + 1
        if at <= 0 and not self._data.startswith(key):
            return f"0x{address:x}"
        parts = self._data[at:self._data.find(b"\n", at)].split()
        return parts[2].decode(errors="replace") if len(parts) >= 3 else f"0x{address:x}"


def xlated_raw(fd: int) -> tuple[_ProgInfoStruct, bytes, list, list, list]:
    """(info, translated instructions, func_info ``[(insn, type_id)]``, line_info
    ``[(insn, file_name_off, line_off, line_col)]``, jited_ksyms ``[address]``) of program
    ``fd``: one BPF_OBJ_GET_INFO_BY_FD for the sizes, one with buffers."""
    info = sc.obj_get_info_by_fd(fd, _ProgInfoStruct())
    insns = ctypes.create_string_buffer(max(info.xlated_prog_len, 1))
    finfo = (ctypes.c_uint32 * (2 * info.nr_func_info))()
    linfo = (ctypes.c_uint32 * (4 * info.nr_line_info))()
    ksyms = (ctypes.c_uint64 * info.nr_jited_ksyms)()
    full = sc.obj_get_info_by_fd(fd, _ProgInfoStruct(
        xlated_prog_len=info.xlated_prog_len, xlated_prog_insns=ctypes.addressof(insns),
        nr_func_info=info.nr_func_info, func_info_rec_size=8, func_info=ctypes.addressof(finfo),
        nr_line_info=info.nr_line_info, line_info_rec_size=16, line_info=ctypes.addressof(linfo),
        nr_jited_ksyms=info.nr_jited_ksyms, jited_ksyms=ctypes.addressof(ksyms)))
    n_func = min(full.nr_func_info, info.nr_func_info)
    n_line = min(full.nr_line_info, info.nr_line_info)
    func_info = [(finfo[2 * i], finfo[2 * i + 1]) for i in range(n_func)]
    line_info = [tuple(linfo[4 * i:4 * i + 4]) for i in range(n_line)]
    size = min(full.xlated_prog_len, info.xlated_prog_len)
    return full, insns.raw[:size], func_info, line_info, list(ksyms[:min(full.nr_jited_ksyms, len(ksyms))])


def xlated(fd: int, *, linum: bool = False, what: str = "program") -> Disassembly:
    """Program ``fd``'s translated instructions, disassembled as ``bpftool prog dump xlated``
    prints them: BTF prototypes (func_info) and C source lines (line_info) where the kernel
    keeps them, helper calls and subprograms by their kernel symbols, maps as ``map[id:N]``;
    ``linum=True`` adds bpftool's ``[file:F line_num:N line_col:C]``."""
    from .spec.disasm import disassemble, func_signature
    info, insns, func_info, line_info, ksyms = xlated_raw(fd)
    if not insns and info.xlated_prog_len == 0:
        raise Error(f"{what}: the kernel reports no translated instructions (they are shown only to "
                    f"processes with CAP_BPF/CAP_SYS_ADMIN, and not for offloaded programs)")
    protos, func_names, source = {}, {}, None
    if info.btf_id and (func_info or line_info):
        btf = btf_by_id(info.btf_id)
        source = btf.string
        protos = {insn: func_signature(btf, type_id) for insn, type_id in func_info}
    kallsyms = _Kallsyms()
    call_base = kallsyms.address_of("__bpf_call_base")
    if ksyms and func_info:
        # bpftool names a call by the kernel symbol of jited_ksyms[subprogram], and func_info
        # gives each subprogram's first instruction in the same order
        func_names = {insn: kallsyms.name_at(addr) for (insn, _), addr in zip(func_info, ksyms)}

    def helper(insn):
        # in xlated programs a helper/kfunc call holds its address relative to __bpf_call_base
        return kallsyms.name_at((call_base + insn.imm) & 0xFFFFFFFFFFFFFFFF)

    lines = disassemble(insns, helper_names=helper, func_names=func_names, func_protos=protos,
                        line_info=line_info if source else None, source=source, linum=linum)
    if func_names:
        import re
        # bpftool names no callback (ld_imm64 BPF_PSEUDO_FUNC): subprog[+5], not subprog[+5#name]
        callback = re.compile(r"subprog\[([+-]\d+)#[^\]]*\]")
        lines = [callback.sub(r"subprog[\1]", line) for line in lines]
    return Disassembly(lines, insns)


def jited(fd: int, *, what: str = "program") -> JitedCode:
    """Program ``fd``'s JITed machine code, with the symbol, address and size of each function."""
    info = sc.obj_get_info_by_fd(fd, _ProgInfoStruct())
    if not info.jited_prog_len:
        raise Error(f"{what}: the kernel reports no JITed code (the JIT is off, the program is "
                    f"interpreted or offloaded, or this process lacks CAP_BPF/CAP_SYS_ADMIN)")
    code = ctypes.create_string_buffer(info.jited_prog_len)
    ksyms = (ctypes.c_uint64 * info.nr_jited_ksyms)()
    lens = (ctypes.c_uint32 * info.nr_jited_func_lens)()
    full = sc.obj_get_info_by_fd(fd, _ProgInfoStruct(
        jited_prog_len=info.jited_prog_len, jited_prog_insns=ctypes.addressof(code),
        nr_jited_ksyms=info.nr_jited_ksyms, jited_ksyms=ctypes.addressof(ksyms),
        nr_jited_func_lens=info.nr_jited_func_lens, jited_func_lens=ctypes.addressof(lens)))
    functions = []
    if info.nr_jited_ksyms:
        kallsyms = _Kallsyms()
        for addr, size in zip(ksyms, lens):
            functions.append((kallsyms.name_at(addr), addr, size))
    return JitedCode(code.raw[:min(full.jited_prog_len, info.jited_prog_len)], functions)
