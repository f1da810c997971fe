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

Finding a name costs no index of vmlinux: :meth:`~pybpf.spec.btf.BTF.first_own`
finds it in the string section, then its offset among the type records (~2 ms).
For the running kernel, what was found in vmlinux is also kept on disk for the
boot (pybpf/_cache.py's ``core`` cache, keyed like the CO-RE resolutions: the
kernel's BTF cannot change within a boot), so a later process, even loading
another object, neither reads nor searches vmlinux BTF for names it has seen.
"""

from __future__ import annotations

from collections import namedtuple

from .. import _cache
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


def resolve_attach_btf(prog: ProgramSpec, facts, *, write_later: bool = False) -> AttachBTF:
    """The kernel BTF type ``prog`` attaches to, from ``prog.attach_target`` and the
    kernel's BTF in ``facts`` (vmlinux first, then modules).  Raises :class:`pybpf.Error`
    naming the section and the type looked for when there is none.

    A vmlinux type found for the running kernel goes to the boot's disk cache now, or
    with ``write_later`` at the next :func:`write_cache` (one write for a whole object)."""
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

    if module in (None, "vmlinux"):
        cache = _boot_cache(facts)
        key = f"{kind.name} {name}"
        if cache is not None and key in cache.ids:
            return AttachBTF(cache.ids[key], name, kind)
        vmlinux = facts.btf
        if vmlinux is None:
            raise Error(f"{_where(prog)}: needs the kernel's BTF to find {what}, and there is none "
                        f"(/sys/kernel/btf/vmlinux missing: kernel built without CONFIG_DEBUG_INFO_BTF?)")
        found = vmlinux.first_own(name, kind)
        if found is not None:
            if cache is not None:
                cache.ids[key] = found.id
                cache.dirty = True
                if not write_later:
                    cache.write()
            return AttachBTF(found.id, name, kind)
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
            own = mod_btf.first_own(name, kind)
            if own is not None:
                return AttachBTF(own.id, name, kind, mod_name)
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


# -- the boot's cache of vmlinux attach targets ----------------------------------------------------

class _BootCache:
    """``"KIND name"`` -> vmlinux type id, for the running kernel in this boot: read from the
    disk cache once per process, written back when new names were found."""

    __slots__ = ("name", "ids", "dirty")

    def __init__(self, name: str):
        self.name = name
        self.ids: dict = {}
        self.dirty = False
        raw = _cache.read("core", name)
        if raw is None:
            return
        # one "KIND name id" a line (not json: importing json and re costs ~7 ms of a load)
        try:
            for line in raw.decode("ascii").splitlines():
                key, _, num = line.rpartition(" ")
                if key and num.isdigit() and int(num) > 0:
                    self.ids[key] = int(num)
        except UnicodeDecodeError:
            self.ids = {}

    def write(self) -> None:
        if self.dirty:
            self.dirty = False
            text = "".join(f"{k} {v}\n" for k, v in self.ids.items() if k.isascii() and "\n" not in k)
            _cache.write("core", self.name, text.encode("ascii"))


_boot_caches: dict = {}


def _boot_cache(facts) -> _BootCache | None:
    """The cache for ``facts``' kernel: only the running kernel's own BTF (not a BTF given
    for another kernel), only with caches enabled and a boot id."""
    if not _cache.enabled() or not hasattr(facts, "kernel_btf_identity"):
        return None
    ident = facts.kernel_btf_identity()
    if ident is None:
        return None
    # vmlinux's part of the identity (boot id and file size): names found in vmlinux do not
    # depend on which modules are loaded
    vmlinux = " ".join(p for p in ident.split(" ") if ":" not in p or p.startswith("vmlinux:"))
    name = f"attach-{_cache.digest(vmlinux.encode())}.names"
    cache = _boot_caches.get(name)
    if cache is None:
        cache = _boot_caches[name] = _BootCache(name)
    return cache


def write_cache() -> None:
    """Write the attach targets found since the last write (``write_later``) to disk."""
    for cache in _boot_caches.values():
        cache.write()


def module_btf_fd(module: str) -> int:
    """A new fd for the kernel BTF object of ``module``, for ``attach_btf_obj_fd`` (the caller closes it)."""
    from ..kernel.btf import module_btf_fd as open_fd
    return open_fd(module)
