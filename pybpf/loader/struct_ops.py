"""struct_ops maps: the kernel value of a ``.struct_ops`` / ``.struct_ops.link`` variable.

The kernel describes what user space writes into a STRUCT_OPS map by a wrapper type of
its own BTF, ``struct bpf_struct_ops_<name>`` (kernel/bpf/bpf_struct_ops.c, made by the
BPF_STRUCT_OPS_TYPE macros): a common header (refcnt, state) and the struct itself in
member ``data``.  As in libbpf (find_struct_ops_kern_types, bpf_map__init_kern_struct_ops):

- the map is created with ``btf_vmlinux_value_type_id`` = the id of that wrapper,
  ``value_size`` = its size, key 4 bytes, one entry, the object's BTF fd and no BTF
  key/value type (map_create refuses both together);
- each member of the kernel's ``struct <name>`` is filled by name from the object's
  struct: data members are copied (their sizes must match), function pointers get the fd of
  the program the object's relocation points at (at registration, when the fds exist);
  members the kernel's struct lacks must be zero in the object;
- each program gets ``attach_btf_id`` = the kernel's ``struct <name>`` id and
  ``expected_attach_type`` = the index of its member there (bpf_struct_ops_prepare_trampoline
  / check_struct_ops_btf_id look the member up by that index).
"""

from __future__ import annotations

from ..errors import Error, NotSupportedError
from ..spec.btf import Kind

WRAPPER_PREFIX = "bpf_struct_ops_"


class StructOpsLayout:
    """The kernel value of one struct_ops map, without the program fds.

    ``value_type_id``/``value_size``: the kernel's ``bpf_struct_ops_<name>``;
    ``type_id``: the kernel's ``struct <name>``; ``data_offset``: where the struct starts in
    the value; ``template``: the value with every data member copied; ``funcs``: member
    name -> (offset of the pointer in the value, member index, program name)."""

    def __init__(self, map_name: str, type_name: str, value_type_id: int, value_size: int, type_id: int,
                 data_offset: int, template: bytes, funcs: dict):
        self.map_name = map_name
        self.type_name = type_name
        self.value_type_id = value_type_id
        self.value_size = value_size
        self.type_id = type_id
        self.data_offset = data_offset
        self.template = template
        self.funcs = funcs

    def value(self, prog_fds: dict) -> bytearray:
        """The bytes for BPF_MAP_UPDATE_ELEM: the template with each program's fd in its
        function pointer (the kernel reads a u64 there: bpf_struct_ops_map_update_elem)."""
        buf = bytearray(self.template)
        for member, (off, _, prog) in self.funcs.items():
            buf[off:off + 8] = prog_fds[prog].to_bytes(8, "little")
        return buf


def _is_func_ptr(btf, type_id: int) -> bool:
    t = btf.resolve(type_id)
    if t is None or t.kind != Kind.PTR:
        return False
    target = btf.resolve(t.size_or_type)
    return target is not None and target.kind == Kind.FUNC_PROTO


def kernel_types(kbtf, type_name: str, what: str):
    """(``bpf_struct_ops_<name>``, its ``data`` member, the kernel's ``struct <name>``) from
    the kernel's BTF; NotSupportedError when this kernel does not offer ``type_name``."""
    if kbtf is None:
        raise NotSupportedError(f"{what}: struct_ops needs the kernel's BTF (/sys/kernel/btf/vmlinux, "
                                f"CONFIG_DEBUG_INFO_BTF), which this kernel does not have")
    wrappers = kbtf.by_name(WRAPPER_PREFIX + type_name, Kind.STRUCT)
    if not wrappers:
        raise NotSupportedError(f"{what}: this kernel does not offer struct {type_name} to BPF: its BTF has no "
                                f"{WRAPPER_PREFIX}{type_name} (the struct_ops type is missing or built as a "
                                f"module, whose struct_ops pybpf does not register)")
    wrapper = wrappers[0]
    data = next((m for m in wrapper.members if m.name == "data"), None)
    kern = kbtf.resolve(data.type_id) if data is not None else None
    if kern is None or kern.kind != Kind.STRUCT or kern.name != type_name:
        raise Error(f"{what}: the kernel's {WRAPPER_PREFIX}{type_name} has no member data of type "
                    f"struct {type_name}")
    return wrapper, data, kern


def layout(mspec, obj_btf, kbtf) -> StructOpsLayout:
    """Lay out the kernel value of struct_ops map ``mspec`` (its ``struct_ops`` from the
    object) by the kernel's BTF ``kbtf``."""
    st = mspec.struct_ops
    what = f"struct_ops map {mspec.name!r} (struct {st.type_name})"
    wrapper, data_member, kern = kernel_types(kbtf, st.type_name, what)
    obj_type = obj_btf[st.type_id]
    base = data_member.offset
    buf = bytearray(wrapper.size)
    funcs = {}
    kern_members = {m.name: (i, m) for i, m in enumerate(kern.members)}
    for om in obj_type.members:
        osize = obj_btf.size_of(om.type_id)
        oraw = st.data[om.offset:om.offset + osize]
        if om.name not in kern_members:
            if om.name in st.funcs or any(oraw):
                raise Error(f"{what}: member {om.name!r} is set in the object but this kernel's struct "
                            f"{st.type_name} has no such member")
            continue
        idx, km = kern_members[om.name]
        if km.bitfield_size or om.bitfield_size:
            if any(oraw):
                raise Error(f"{what}: member {om.name!r} is a bitfield, which pybpf does not copy into "
                            f"struct_ops values")
            continue
        kfunc = _is_func_ptr(kbtf, km.type_id)
        if om.name in st.funcs:
            if not kfunc:
                raise Error(f"{what}: member {om.name!r} points at program {st.funcs[om.name]!r} but is not a "
                            f"function pointer in this kernel's struct {st.type_name}")
            funcs[om.name] = (base + km.offset, idx, st.funcs[om.name])
            continue
        if kfunc or _is_func_ptr(obj_btf, om.type_id):
            continue          # a callback the object leaves unset (NULL)
        ksize = kbtf.size_of(km.type_id)
        if ksize != osize:
            raise Error(f"{what}: member {om.name!r} is {osize} bytes in the object but {ksize} in this "
                        f"kernel's struct {st.type_name}")
        buf[base + km.offset:base + km.offset + ksize] = oraw
    return StructOpsLayout(mspec.name, st.type_name, wrapper.id, wrapper.size, kern.id, base, bytes(buf), funcs)


def plan(spec, kbtf) -> tuple[dict, dict]:
    """The layouts of every struct_ops map of ``spec`` and, for each struct_ops program a
    map points at, its (attach_btf_id, expected_attach_type).  A program used by two members
    of different index or struct is refused (it is loaded for one member: libbpf too)."""
    layouts, progs = {}, {}
    for name, mspec in spec.maps.items():
        if mspec.struct_ops is None:
            continue
        lay = layout(mspec, spec.btf, kbtf)
        layouts[name] = lay
        for member, (_, idx, prog) in lay.funcs.items():
            want = (lay.type_id, idx)
            if progs.setdefault(prog, want) != want:
                raise Error(f"program {prog!r} is used by struct_ops map {name!r} as {lay.type_name}.{member} "
                            f"and by another member too: a struct_ops program is loaded for one member; "
                            f"write one program per member")
    return layouts, progs


__all__ = ["StructOpsLayout", "kernel_types", "layout", "plan"]


def create_attr(mspec, lay: StructOpsLayout, btf_fd: int):
    """The BPF_MAP_CREATE attributes of a struct_ops map (libbpf bpf_object__create_map):
    the object's BTF fd, no BTF key/value type, ``btf_vmlinux_value_type_id`` the kernel's
    ``bpf_struct_ops_<name>`` and ``value_size`` its size."""
    from . import map_create_attr
    a = map_create_attr(mspec.replace(value_size=lay.value_size, key_type_id=0, value_type_id=0))
    a.btf_fd = max(btf_fd, 0)
    a.btf_key_type_id = a.btf_value_type_id = 0
    a.btf_vmlinux_value_type_id = lay.value_type_id
    return a


def create_map(mspec, lay: StructOpsLayout, btf_fd: int) -> int:
    """BPF_MAP_CREATE for a struct_ops map; returns the fd (the caller owns it at once)."""
    from ..errors import SyscallError
    from ..kernel import syscall as sc
    from ..kernel.constants import Cmd
    if btf_fd < 0:
        raise Error(f"struct_ops map {mspec.name!r}: needs the object's BTF loaded in the kernel "
                    f"(load with btf=True)")
    try:
        return sc.bpf(Cmd.MAP_CREATE, create_attr(mspec, lay, btf_fd))
    except SyscallError as e:
        if e.errno in (95, 524):      # EOPNOTSUPP / ENOTSUPP: no struct_ops in this kernel
            raise NotSupportedError(f"struct_ops map {mspec.name!r}: this kernel cannot create STRUCT_OPS maps "
                                    f"({e.strerror if hasattr(e, 'strerror') else e})") from None
        raise type(e)(e.command, e.errno, f"struct_ops map {mspec.name!r} (struct {lay.type_name}): cannot "
                                          f"create it") from None


__all__ += ["create_attr", "create_map"]
