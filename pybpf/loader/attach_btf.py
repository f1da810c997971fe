"""attach_btf_id: the kernel BTF type a BTF-attached program hooks.

tp_btf, fentry/fexit/fmod_ret, lsm and iter programs are verified against a
kernel function or tracepoint, named at load time by ``attach_btf_id`` (plus
``attach_btf_obj_fd`` when the type lives in a module's BTF).  The names
follow libbpf (``btf_get_kernel_prefix_kind``, ``find_kernel_btf_id``):

==============================  ===========================  =========
section                         kernel BTF type               kind
==============================  ===========================  =========
``tp_btf/X``                    ``btf_trace_X``               TYPEDEF
``fentry|fexit|fmod_ret/X``     ``X``                         FUNC
``lsm/X``, ``lsm_cgroup/X``     ``bpf_lsm_X``                 FUNC
``iter/X``                      ``bpf_iter_X``                FUNC
==============================  ===========================  =========

``X`` may be ``module:name`` to look in one module only (``vmlinux:name`` for
the kernel itself); otherwise vmlinux is searched first, then each module.
Resolution is pure: it reads the BTF in :class:`~pybpf.loader.facts.KernelFacts`,
so it is testable offline; only the module BTF's fd is looked up in the kernel.
"""

from __future__ import annotations

from collections import namedtuple

from ..errors import Error, NotSupportedError
from ..kernel.constants import AttachType, ProgType
from ..spec.btf import Kind
from ..spec.object import ProgramSpec

BTF_TRACE_PREFIX = "btf_trace_"
BTF_LSM_PREFIX = "bpf_lsm_"
BTF_ITER_PREFIX = "bpf_iter_"


class AttachBTF(namedtuple("AttachBTF", "btf_id type_name kind module", defaults=("vmlinux",))):
    """Where a program attaches: type ``btf_id`` called ``type_name`` (a ``kind``) in
    ``module``'s BTF (``"vmlinux"`` for the kernel itself).  Immutable."""

    __slots__ = ()

    @property
    def in_module(self) -> bool:
        return self.module != "vmlinux"


def target_type(attach_type: AttachType | None, target: str) -> tuple[str, Kind]:
    """(BTF type name, kind) that ``target`` names for a program of ``attach_type``."""
    if attach_type == AttachType.TRACE_RAW_TP:
        return BTF_TRACE_PREFIX + target, Kind.TYPEDEF
    if attach_type in (AttachType.LSM_MAC, AttachType.LSM_CGROUP):
        return BTF_LSM_PREFIX + target, Kind.FUNC
    if attach_type == AttachType.TRACE_ITER:
        return BTF_ITER_PREFIX + target, Kind.FUNC
    return target, Kind.FUNC


def _where(prog: ProgramSpec) -> str:
    return f"program {prog.name!r} (section {prog.section!r})"


def resolve_attach_btf(prog: ProgramSpec, facts) -> AttachBTF:
    """The kernel BTF type ``prog`` attaches to, from ``prog.attach_target`` and the
    kernel's BTF in ``facts`` (vmlinux first, then modules).  Raises :class:`pybpf.Error`
    naming the section and the type looked for when there is none."""
    if prog.prog_type == ProgType.EXT:
        raise NotSupportedError(f"{_where(prog)}: freplace programs attach to another BPF program's "
                                f"function, which pybpf does not support yet")
    target = prog.attach_target
    if not target:
        raise Error(f"{_where(prog)}: no attach target: name it in the section "
                    f"(e.g. SEC(\"{prog.sec_def.stem}/<name>\")) or set spec.programs[{prog.name!r}].attach_target")
    module = None
    if ":" in target:
        module, _, target = target.partition(":")
    name, kind = target_type(prog.expected_attach_type, target)
    what = f"{kind.name} {name}"

    vmlinux = facts.btf
    if module in (None, "vmlinux"):
        if vmlinux is None:
            raise Error(f"{_where(prog)}: needs the kernel's BTF to find {what}, and there is none "
                        f"(/sys/kernel/btf/vmlinux missing: kernel built without CONFIG_DEBUG_INFO_BTF?)")
        found = vmlinux.by_name(name, kind)
        if found:
            return AttachBTF(found[0].id, name, kind)
    searched = ["vmlinux"] if module in (None, "vmlinux") else []
    if module != "vmlinux":
        modules = facts.module_btfs
        if module is not None and module not in modules:
            raise Error(f"{_where(prog)}: kernel module {module!r} is not loaded or has no BTF "
                        f"(looked for {what} in it)")
        for mod_name, mod_btf in modules.items():
            if module is not None and mod_name != module:
                continue
            searched.append(mod_name)
            # a module's split BTF: only its own types (vmlinux was searched already)
            own = [t for t in mod_btf.by_name(name, kind) if t.id >= mod_btf.first_id]
            if own:
                return AttachBTF(own[0].id, name, kind, mod_name)
    hint = {
        Kind.TYPEDEF: "tp_btf/<name> must name a raw tracepoint of this kernel (see "
                      "/sys/kernel/tracing/available_events)",
    }.get(kind, "")
    if prog.expected_attach_type == AttachType.TRACE_ITER:
        hint = "iter/<name> must name a BPF iterator of this kernel (task, task_file, bpf_map, tcp, ...)"
    elif prog.expected_attach_type in (AttachType.LSM_MAC, AttachType.LSM_CGROUP):
        hint = "lsm/<hook> must name an LSM hook (e.g. file_open, bprm_check_security)"
    elif kind == Kind.FUNC:
        hint = "the function must exist in the kernel's BTF (static and inlined functions often do not)"
    raise Error(f"{_where(prog)}: no {what} in the kernel's BTF (searched {', '.join(searched) or 'nothing'})"
                + (f"; {hint}" if hint else ""))


def module_btf_fd(module: str) -> int:
    """A new fd for the kernel BTF object of ``module``, for ``attach_btf_obj_fd`` (the caller closes it)."""
    from ..kernel.btf import module_btf_fd as open_fd
    return open_fd(module)
