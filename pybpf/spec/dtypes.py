"""numpy dtypes for BTF types: records and map values as numpy structured arrays.

:func:`dtype_of` turns a BTF type into the numpy dtype with the same layout
(C's, as BTF gives it): structs and unions become structured dtypes with
explicit offsets and the type's full ``itemsize`` (padding kept), arrays
become sub-array fields, char arrays ``S<n>`` bytes, enums the integer of
their size and sign, pointers ``u8``.  Members of anonymous structs and unions
are lifted into the enclosing dtype at their offsets, as C names them.

numpy is optional (``pip install pybpf[numpy]``): :func:`numpy` imports it on
first use, and nothing else in pybpf imports this module until an array is
asked for.  The conversion is pure (no kernel).
"""

from __future__ import annotations

from ..errors import Error
from .btf import BTF, INT_BOOL, INT_CHAR, MAX_RESOLVE_DEPTH, Kind

__all__ = ["numpy", "dtype_of", "resolve_dtype", "c_strings"]

_np = None


def numpy():
    """The numpy module, imported on first use; :class:`pybpf.Error` saying how to
    install it when it is missing."""
    global _np
    if _np is None:
        try:
            import numpy as np
        except ImportError as exc:
            raise Error("numpy is not installed: arrays of records need it "
                        "(pip install 'pybpf[numpy]', or pip install numpy)") from exc
        _np = np
    return _np


def _is_char(btf: BTF, type_id: int) -> bool:
    # as TypeFactory reads them: text, not u8 data (numpy's S type drops trailing NULs)
    t = btf.resolve(type_id)
    return (t is not None and t.kind == Kind.INT and t.size == 1
            and (bool(t.encoding & INT_CHAR) or t.name in ("char", "signed char")))


def _int_format(size: int, signed: bool) -> str:
    if size in (1, 2, 4, 8):
        return f"={'i' if signed else 'u'}{size}"
    return f"V{size}"  # __int128 and other widths: raw bytes of the right size


def c_strings(a):
    """The C strings of an ``S<n>`` array (a char array field): a copy in which every byte
    after each element's first NUL is zero, so that numpy, which drops trailing NULs only,
    gives the string a C reader sees.  A char array holds its whole size: after the string
    comes whatever the memory held before (``bpf_probe_read_user_str`` stops at the NUL)."""
    np = numpy()
    a = np.asarray(a)
    if a.dtype.kind != "S":
        raise Error(f"c_strings() takes an array of bytes strings (dtype S<n>), not {a.dtype}")
    width = a.dtype.itemsize
    out = np.array(a, order="C")  # a copy, contiguous
    if not width or not out.size:
        return out
    raw = out.view(np.uint8).reshape(out.size, width)
    raw[np.cumsum(raw == 0, axis=1, dtype=np.uint32) > 0] = 0
    return out


def dtype_of(btf: BTF, type_id: int):
    """The numpy dtype with the layout of BTF type ``type_id`` of ``btf``.

    Raises :class:`pybpf.Error` for what numpy cannot represent (a bitfield,
    a function, void, an incomplete type), naming the field, and for loops
    or nesting deeper than BTF resolution allows.
    """
    np = numpy()
    return np.dtype(_format(btf, type_id, btf.type_name(type_id) if type_id else "void", 0))


def _format(btf: BTF, type_id: int, where: str, depth: int):
    """A numpy dtype spec (str, tuple or dict) for ``type_id``; ``where`` names it in errors."""
    if depth > MAX_RESOLVE_DEPTH:
        raise btf.too_deep(type_id, "its nested fields")
    tid = btf.skip_mods(type_id)
    if not tid:
        raise Error(f"{where}: void has no array representation")
    t = btf[tid]
    k = t.kind
    if k == Kind.INT:
        if t.encoding & INT_BOOL and t.size == 1:
            return "?"
        return _int_format(t.size, t.signed)
    if k in (Kind.ENUM, Kind.ENUM64):
        return _int_format(t.size, t.signed)
    if k == Kind.PTR:
        return _int_format(btf.pointer_size, False)
    if k == Kind.FLOAT:
        return {4: "=f4", 8: "=f8"}.get(t.size, f"V{t.size}")  # long double: its bytes
    if k == Kind.ARRAY:
        if _is_char(btf, t.elem_type):
            return f"S{t.nelems}" if t.nelems else "V0"
        elem = _format(btf, t.elem_type, f"{where}[]", depth + 1)
        if isinstance(elem, tuple):  # an array of arrays: one field of shape (n, m...), as C indexes it
            return (elem[0], (t.nelems,) + elem[1])
        return (elem, (t.nelems,))
    if k in (Kind.STRUCT, Kind.UNION):
        names, formats, offsets = [], [], []
        _fields(btf, t, 0, where, depth, names, formats, offsets)
        return {"names": names, "formats": formats, "offsets": offsets, "itemsize": t.size}
    if k == Kind.VAR:
        return _format(btf, t.type_id, where, depth + 1)
    raise Error(f"{where}: BTF type [{tid}] {k.name} {t.name!r} has no array representation")


def _fields(btf: BTF, t, base: int, where: str, depth: int, names, formats, offsets) -> None:
    """Appends the members of struct/union ``t`` at byte offset ``base``."""
    if depth > MAX_RESOLVE_DEPTH:
        raise btf.too_deep(t.id, "its nested fields")
    for m in t.members:
        label = f"{where}.{m.name or '(anonymous)'}"
        if m.bitfield_size or m.bit_offset % 8:
            raise Error(f"{label} is a bitfield, which numpy cannot represent: pass dtype= with "
                        "the field's storage unit (a bit mask then reads it)")
        off = base + m.bit_offset // 8
        if not m.name:
            inner = btf.resolve(m.type_id)
            if inner is not None and inner.kind in (Kind.STRUCT, Kind.UNION):
                _fields(btf, inner, off, where, depth + 1, names, formats, offsets)  # C names them here
                continue
            continue  # an unnamed non-record member takes no name: padding
        fmt = _format(btf, m.type_id, label, depth + 1)
        if fmt == "V0":
            continue  # a flexible array member: no bytes in the record
        if m.name in names:
            raise Error(f"{label}: two fields named {m.name!r} (anonymous members lifted): "
                        "pass dtype= to name them")
        names.append(m.name)
        formats.append(fmt)
        offsets.append(off)


def resolve_dtype(btf: BTF | None, type_spec, what: str):
    """The numpy dtype for ``type_spec``: a numpy dtype (or anything ``numpy.dtype()``
    takes, a ctypes type included) as it is, or a BTF type spelling
    (``"struct event"``), id or Type of ``btf``; ``what`` names the caller in errors."""
    np = numpy()
    if isinstance(type_spec, np.dtype):
        return type_spec
    if isinstance(type_spec, (str, int)) or hasattr(type_spec, "kind") and hasattr(type_spec, "id"):
        if isinstance(type_spec, str) and btf is None:
            try:
                return np.dtype(type_spec)   # a numpy spelling such as "<u8"
            except TypeError:
                pass
        from .typed import record_type_id
        if isinstance(type_spec, str) and btf is not None:
            try:
                tid = record_type_id(btf, type_spec, what)
            except Error:
                try:
                    return np.dtype(type_spec)
                except TypeError:
                    raise Error(f"{what}: {type_spec!r} is neither a type of the map's BTF "
                                "nor a numpy dtype") from None
        else:
            tid = record_type_id(btf, type_spec, what)
        return dtype_of(btf, tid)
    try:
        return np.dtype(type_spec)
    except TypeError as exc:
        raise Error(f"{what}: {type_spec!r} is not a dtype ({exc})") from None
