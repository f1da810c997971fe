"""The object's BTF as the running kernel accepts it.

Each BTF kind came with some kernel version (btf.md section 3).  Like libbpf
(bpf_object__sanitize_btf), pybpf probes which kinds the kernel accepts, by
loading tiny BTF blobs with BPF_BTF_LOAD (once per boot: the answer is kept in
pybpf's authenticated disk cache, see :func:`running_features`), and rewrites a
*copy* of the object's BTF for what it lacks.  Type ids never change: a kind is
rewritten into one with a record of the same size, and the only added type (the
``enum64_placeholder`` INT) goes at the end.  Kernel 6.18 needs none of it.

The small BTF writer this needs, :class:`~pybpf.spec.btf_patch.BTFPatcher`,
is pure and lives in the spec layer (the ``.ksyms`` fix-ups of
:mod:`pybpf.spec.object` use it too).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
from collections import namedtuple

from .. import _cache
from ..errors import SyscallError
from ..spec.btf import BTF, BTF_MAGIC, LINKAGE_STATIC, Kind

from ..spec.btf_patch import _HDR, BTFPatcher, _info  # noqa: F401,E402  (BTFPatcher was defined here)


# -- what the kernel accepts --------------------------------------------------------------

_FEATURES = (
    "btf",            # BPF_BTF_LOAD at all (4.18)
    "func",           # FUNC and FUNC_PROTO (5.0)
    "global_func",    # FUNC with global linkage (5.6)
    "datasec",        # VAR and DATASEC (5.2)
    "float",          # FLOAT (5.13)
    "decl_tag",       # DECL_TAG (5.16)
    "type_tag",       # TYPE_TAG (5.17)
    "enum64",         # ENUM64 and signed ENUM (6.0)
    "qmark_datasec",  # DATASEC names starting with '?' (6.10)
)


class BTFFeatures(namedtuple("BTFFeatures", _FEATURES, defaults=(True,) * len(_FEATURES))):
    """Which BTF the kernel accepts (libbpf's FEAT_BTF_* probes), one bool per feature,
    all True by default (and on 6.18).  Immutable."""

    __slots__ = ()

    @property
    def missing(self) -> list:
        """Names of the features the kernel lacks."""
        return [n for n in self._fields if not getattr(self, n)]

    def without(self, *names: str) -> BTFFeatures:
        """The same features with ``names`` turned off (to exercise the rewriting offline)."""
        return self._replace(**{n: False for n in names})


ALL_FEATURES = BTFFeatures()
NO_FEATURES = BTFFeatures(**{n: False for n in _FEATURES if n != "btf"})


def _enc(name_off: int, kind: int, vlen: int, size_or_type: int, *extra: int) -> list:
    return [name_off, _info(kind, vlen), size_or_type, *extra]


def _int32(name_off: int = 0) -> list:
    return _enc(name_off, Kind.INT, 0, 4, (1 << 24) | 32)       # signed 32-bit int


# One tiny blob per feature: (types as u32 words, strings), as libbpf's probes.
_PROBES = {
    "btf": (_int32(1), b"\0int\0"),
    # void x(int a) {}
    "func": (_int32(1) + _enc(0, Kind.FUNC_PROTO, 1, 0, 7, 1) + _enc(5, Kind.FUNC, 0, 2), b"\0int\0x\0a\0"),
    "global_func": (_int32(1) + _enc(0, Kind.FUNC_PROTO, 1, 0, 7, 1) + _enc(5, Kind.FUNC, 1, 2),
                    b"\0int\0x\0a\0"),
    # static int x; in .data
    "datasec": (_int32() + _enc(1, Kind.VAR, 0, 1, 0) + _enc(3, Kind.DATASEC, 1, 4, 2, 0, 4), b"\0x\0.data\0"),
    "float": (_enc(1, Kind.FLOAT, 0, 4), b"\0float\0"),
    "decl_tag": (_int32() + _enc(1, Kind.VAR, 0, 1, 0) + _enc(1, Kind.DECL_TAG, 0, 2, 0xFFFFFFFF), b"\0tag\0"),
    "type_tag": (_int32() + _enc(1, Kind.TYPE_TAG, 0, 1) + _enc(0, Kind.PTR, 0, 2), b"\0tag\0"),
    "enum64": (_enc(1, Kind.ENUM64, 0, 8), b"\0enum64\0"),
    "qmark_datasec": (_int32() + _enc(1, Kind.VAR, 0, 1, 0) + _enc(3, Kind.DATASEC, 1, 4, 2, 0, 4),
                      b"\0x\0?.data\0"),
}


def probe_blob(feature: str) -> bytes:
    """The BTF blob that probes ``feature``."""
    words, strings = _PROBES[feature]
    types = struct.pack(f"<{len(words)}I", *words)
    return _HDR.pack(BTF_MAGIC, 1, 0, _HDR.size, 0, len(types), len(types), len(strings)) + types + strings


def kernel_accepts(blob: bytes) -> bool:
    """True if BPF_BTF_LOAD accepts ``blob`` (the fd is closed again).

    EPERM/EACCES propagate: without privileges nothing can be learned."""
    from ..kernel import syscall as sc
    from ..kernel.attrs import BtfLoadAttr
    from ..kernel.constants import Cmd
    from ..resource import deferred_signals
    buf = ctypes.create_string_buffer(blob, len(blob))
    with deferred_signals():    # a Ctrl-C between the load and the close would orphan the fd
        try:
            fd = sc.bpf(Cmd.BTF_LOAD, BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(blob)))
        except SyscallError as e:
            if e.errno in (_errno.EPERM, _errno.EACCES):
                raise
            return False
        os.close(fd)
    return True


_probed: BTFFeatures | None = None


def probe_features() -> BTFFeatures:
    """What the running kernel's BPF_BTF_LOAD accepts, probed once per process.

    Without the privilege to load BTF nothing can be probed: every feature is
    assumed (and not cached), and loading the object's BTF reports the EPERM."""
    global _probed
    if _probed is None:
        try:
            if not kernel_accepts(probe_blob("btf")):
                _probed = BTFFeatures(btf=False, **{n: False for n in NO_FEATURES.missing})
            else:
                _probed = BTFFeatures(**{n: kernel_accepts(probe_blob(n)) for n in _FEATURES if n != "btf"})
        except SyscallError:
            return ALL_FEATURES
    return _probed


def _features_entry() -> str | None:
    """The name of this boot's probe answers in the ``core`` cache: the boot id (the kernel
    cannot change without a reboot, which draws a new one) and the probes themselves (other
    probes, other answers).  None without a boot id or with the cache off."""
    if not _cache.enabled():
        return None
    from ..kernel.btf import boot_id
    boot = boot_id()
    if boot is None:
        return None
    key = b"\0".join([b"btf-features", boot.encode()]
                     + [n.encode() + b"=" + probe_blob(n) for n in _FEATURES])
    return f"btf-features-{_cache.digest(key)}.names"


def _decode_features(raw: bytes) -> BTFFeatures | None:
    """An entry's answers, one ``feature 0|1`` a line in :data:`_FEATURES` order; None for
    anything else (an entry of other code: probe again)."""
    try:
        lines = raw.decode("ascii").split("\n")
    except UnicodeDecodeError:
        return None
    if len(lines) != len(_FEATURES) + 1 or lines[-1]:
        return None
    values = []
    for name, line in zip(_FEATURES, lines):
        got, _, bit = line.partition(" ")
        if got != name or bit not in ("0", "1"):
            return None
        values.append(bit == "1")
    return BTFFeatures(*values)


def running_features() -> BTFFeatures:
    """:func:`probe_features`, answered from pybpf's disk cache (``core/``, authenticated
    like every entry: see :mod:`pybpf._cache`) when a process of this boot probed before:
    nine BPF_BTF_LOADs fewer in each later process.  Features set for this process (the
    ``_probed`` memo) come first."""
    global _probed
    if _probed is not None:
        return _probed
    name = _features_entry()
    if name is not None:
        raw = _cache.read("core", name)
        found = _decode_features(raw) if raw is not None else None
        if found is not None:
            _probed = found
            return found
    features = probe_features()
    if name is not None and features is _probed:     # probed (without privileges: assumed, not kept)
        _cache.write("core", name, "".join(f"{n} {int(getattr(features, n))}\n" for n in _FEATURES).encode())
    return features


# -- the rewriting ------------------------------------------------------------------------

def sanitize(btf: BTF, features: BTFFeatures) -> bytes:
    """A copy of ``btf`` rewritten for a kernel with ``features`` (libbpf's
    bpf_object__sanitize_btf rules, btf.md section 3); ids are preserved."""
    p = BTFPatcher(btf)
    f = features
    placeholder = 0
    for tid in range(1, p.type_count + 1):
        kind = p.kind(tid)
        vlen = p.vlen(tid)
        if (not f.datasec and kind == Kind.VAR) or (not f.decl_tag and kind == Kind.DECL_TAG):
            # a 1-byte INT: 4 would be too big for a smaller variable
            p.set_info(tid, Kind.INT)
            p.set_word(tid, 2, 1)
            p.set_word(tid, 3, 8)
        elif not f.datasec and kind == Kind.DATASEC:
            # a STRUCT of the variables; section names like .data are not C identifiers
            name_off = p.word(tid, 0)
            name = p.string(name_off)
            p.rename_in_place(name_off, name, name.replace(".", "_").replace("?", "_"))
            p.set_info(tid, Kind.STRUCT, vlen)
            for i in range(vlen):
                var_id, offset = p.word(tid, 3 + 3 * i), p.word(tid, 4 + 3 * i)
                p.set_word(tid, 3 + 3 * i, p.word(var_id, 0))      # member name = the variable's
                p.set_word(tid, 4 + 3 * i, var_id)
                p.set_word(tid, 5 + 3 * i, offset * 8)
        elif not f.func and kind == Kind.FUNC_PROTO:
            p.set_info(tid, Kind.ENUM, vlen)
            p.set_word(tid, 2, 4)           # the kernel wants 4-byte enums
            # parameters become enumerators, which must be named (libbpf leaves them
            # empty, and the kernel refuses the enum): unnamed ones are called "_"
            for i in range(vlen):
                if not p.word(tid, 3 + 2 * i):
                    p.set_word(tid, 3 + 2 * i, p.add_string("_"))
        elif not f.func and kind == Kind.FUNC:
            p.set_info(tid, Kind.TYPEDEF)
        elif not f.global_func and kind == Kind.FUNC:
            p.set_info(tid, Kind.FUNC, LINKAGE_STATIC)
        elif not f.float and kind == Kind.FLOAT:
            # an anonymous empty STRUCT of the same size ("float" is no struct name)
            p.set_word(tid, 0, 0)
            p.set_info(tid, Kind.STRUCT)
        elif not f.type_tag and kind == Kind.TYPE_TAG:
            p.set_word(tid, 0, 0)
            p.set_info(tid, Kind.CONST)
        elif not f.enum64 and kind == Kind.ENUM:
            p.set_info(tid, Kind.ENUM, vlen)    # no signed enums either: clear kind_flag
        elif not f.enum64 and kind == Kind.ENUM64:
            # a UNION of 1-byte members, one per enumerator (12-byte records either way)
            if not placeholder:
                placeholder = p.add_int("enum64_placeholder", 1)
            p.set_info(tid, Kind.UNION, vlen)
            for i in range(vlen):
                p.set_word(tid, 4 + 3 * i, placeholder)
                p.set_word(tid, 5 + 3 * i, 0)
        elif not f.qmark_datasec and kind == Kind.DATASEC:
            name_off = p.word(tid, 0)
            name = p.string(name_off)
            if name.startswith("?"):
                p.rename_in_place(name_off, name, "_" + name[1:])
    return p.to_bytes()


def kernel_btf(btf: BTF, features: BTFFeatures | None = None) -> bytes | None:
    """The blob to give BPF_BTF_LOAD for ``btf``: unchanged when the kernel accepts
    everything, a sanitized copy otherwise, None when the kernel has no BTF at all.
    ``features`` defaults to the running kernel's (probed once per boot: :func:`running_features`)."""
    if features is None:
        features = running_features()
    if not features.btf:
        return None
    if not features.missing:
        return btf.to_bytes()
    return sanitize(btf, features)
