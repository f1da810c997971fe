"""Layer 3: from an ObjectSpec to kernel objects.

``load_spec`` loads the object's BTF, creates its maps (filling and freezing
internal ones), links and relocates each program and loads it.  If anything
fails, every fd created so far is closed before the exception propagates: no
half-loaded object stays in the kernel.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os

from ..errors import BTFError, Error, NotSupportedError, ObjectError, SyscallError, VerifierError, errno_text
from ..kernel import syscall as sc
from ..kernel.attrs import BtfLoadAttr, MapCreateAttr, ProgLoadAttr
from ..kernel.attrs import MapInfo as _MapInfoStruct
from ..kernel.constants import BPF_F_RDONLY_PROG as _BPF_F_RDONLY_PROG
from ..kernel.constants import Cmd, MapType, ProgType
from ..kernel.cpus import possible_cpus   # in the kernel layer; importable from here too
from ..resource import deferred_signals, interrupt_pending
from ..spec import sections as S
from ..spec.object import MapSpec, ObjectSpec, ProgramSpec
from .relocate import LinkedProgram, link_program

PAGE_SIZE = mmap.PAGESIZE

# verifier log: start at 256 KiB, grow on ENOSPC up to 16 MiB, libbpf's cap (its
# BPF_LOG_BUF_SIZE): a long loop logs every instruction of every pass, hundreds of MB of
# text no one reads, and the kernel keeps the log's end (where the error is) in a rotating
# buffer (kernel/bpf/log.c, 6.4+), so a cut log still ends with the reason
_LOG_START = 256 * 1024
_LOG_MAX = 16 << 20


def _ringbuf_size(size: int) -> int:
    """libbpf's adjust_ringbuf_sz: round up to page_size * 2^k (the kernel requires a
    power-of-two multiple of the page size); 0 stays 0, for the user to see it refused."""
    if size == 0:
        return 0
    n = PAGE_SIZE
    while n < size:
        n <<= 1
    return n


def _kernel_name(name: str) -> bytes:
    """A name the kernel accepts (BPF_OBJ_NAME_LEN-1 chars of [A-Za-z0-9_.])."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_.") else "_" for c in name[:15]).encode()


def load_btf(raw: bytes) -> int:
    """BPF_BTF_LOAD; on failure reload with a log and raise BTFError carrying the kernel's words."""
    buf = ctypes.create_string_buffer(raw, len(raw))
    attr = BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(raw))
    try:
        return sc.bpf(Cmd.BTF_LOAD, attr)
    except SyscallError as first:
        if first.errno in (_errno.EPERM, _errno.EACCES):
            raise
        log = ctypes.create_string_buffer(1 << 20)
        attr = BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(raw), btf_log_buf=ctypes.addressof(log),
                           btf_log_size=len(log), btf_log_level=1)
        try:
            fd = sc.bpf(Cmd.BTF_LOAD, attr)
        except SyscallError:
            text = log.value.decode(errors="replace").strip()
            last = text.splitlines()[-1] if text else str(first)
            # the log dumps every type checked so far (can be megabytes): the message
            # keeps its last line, the exception's .log the whole of it
            err = BTFError(f"the kernel rejected the object's BTF: {last}"
                           + ("\n(the whole log is in the exception's .log)" if text else ""))
            err.log = text
            raise err from None
        return fd  # passed with a log: keep it


# map types created without BTF key/value types (libbpf bpf_object__create_map: the
# kernel has no BTF check for them, or refuses BTF)
_NO_BTF_MAP_TYPES = frozenset({
    MapType.PERF_EVENT_ARRAY, MapType.CGROUP_ARRAY, MapType.STACK_TRACE, MapType.ARRAY_OF_MAPS,
    MapType.HASH_OF_MAPS, MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP, MapType.XSKMAP,
    MapType.SOCKMAP, MapType.SOCKHASH, MapType.QUEUE, MapType.STACK, MapType.ARENA,
    MapType.PROG_ARRAY, MapType.REUSEPORT_SOCKARRAY,
})
# the kernel requires BPF_F_NO_PREALLOC for these (trie_alloc_check, bpf_local_storage_map_alloc_check)
_NO_PREALLOC_MAP_TYPES = frozenset({
    MapType.LPM_TRIE, MapType.SK_STORAGE, MapType.INODE_STORAGE, MapType.TASK_STORAGE, MapType.CGRP_STORAGE,
})
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_MMAPABLE = 1 << 10


def map_create_attr(spec: MapSpec, btf_fd: int = -1, inner_fd: int = -1, with_btf: bool = True) -> MapCreateAttr:
    """The BPF_MAP_CREATE attributes for ``spec`` (no kernel access): ring buffer sizes
    rounded to page * 2^k, perf event arrays sized to the possible CPUs, flags the kernel
    requires added (BPF_F_NO_PREALLOC for LPM tries and local storage, BPF_F_MMAPABLE for
    arenas), BTF types only for map types that take them."""
    max_entries = spec.max_entries
    key_size, value_size = spec.key_size, spec.value_size
    flags = spec.flags
    if spec.type in (MapType.RINGBUF, MapType.USER_RINGBUF):
        max_entries = _ringbuf_size(max_entries)
    elif spec.type == MapType.PERF_EVENT_ARRAY:
        key_size, value_size = key_size or 4, value_size or 4
        max_entries = max_entries or possible_cpus()
    elif spec.type in _NO_PREALLOC_MAP_TYPES:
        flags |= BPF_F_NO_PREALLOC
    elif spec.type == MapType.ARENA:
        flags |= BPF_F_MMAPABLE
    a = MapCreateAttr(map_type=spec.type, key_size=key_size, value_size=value_size,
                      max_entries=max_entries, map_flags=flags, numa_node=spec.numa_node,
                      map_extra=spec.map_extra, map_name=_kernel_name(spec.name))
    if inner_fd >= 0:
        a.inner_map_fd = inner_fd
    if with_btf and btf_fd >= 0 and (spec.key_type_id or spec.value_type_id) and spec.type not in _NO_BTF_MAP_TYPES:
        a.btf_fd = btf_fd
        a.btf_key_type_id = spec.key_type_id
        a.btf_value_type_id = spec.value_type_id
    return a


def create_map(spec: MapSpec, btf_fd: int = -1, inner_fd: int = -1) -> int:
    """BPF_MAP_CREATE for one MapSpec; returns the fd. BTF key/value types are passed when
    known, and dropped on a retry if the kernel refuses them (as libbpf does)."""
    max_entries = map_create_attr(spec).max_entries

    first = map_create_attr(spec, btf_fd, inner_fd, True)
    try:
        return sc.bpf(Cmd.MAP_CREATE, first)
    except SyscallError as e:
        if e.errno in (_errno.EPERM, _errno.EACCES) and sc.every_bpf_capability():
            raise NotSupportedError(_map_refused_by_kernel(spec, e)) from None
        if e.errno in (_errno.EPERM, _errno.EACCES) or not first.btf_fd:
            raise _map_error(spec, max_entries, e) from None
    try:
        return sc.bpf(Cmd.MAP_CREATE, map_create_attr(spec, btf_fd, inner_fd, False))
    except SyscallError as e:
        raise _map_error(spec, max_entries, e) from None


def _map_refused_by_kernel(spec: MapSpec, e: SyscallError) -> str:
    """The NotSupportedError text for BPF_MAP_CREATE refused with EPERM/EACCES although this
    process holds CAP_SYS_ADMIN: map_create's capability checks (kernel/bpf/syscall.c,
    through bpf_token_capable) all pass for such a process, so the refusal is this kernel's policy
    (an LSM, lockdown, a build that withholds the map type), not a missing privilege."""
    try:
        tname = MapType(spec.type).name
    except ValueError:
        tname = str(spec.type)
    name = errno_text(e.errno)[0]
    return (f"map {spec.name!r}: {tname} maps are not permitted by this kernel (BPF_MAP_CREATE failed with "
            f"{name} for a process with CAP_SYS_ADMIN, which passes every capability check of bpf()); an object that needs this map "
            f"cannot be loaded here")


def _map_error(spec: MapSpec, max_entries: int, e: SyscallError) -> SyscallError:
    try:
        tname = MapType(spec.type).name
    except ValueError:
        tname = str(spec.type)
    hint = ""
    if e.errno == _errno.EINVAL:
        hint = ("; check the map's type, sizes and flags (e.g. ring buffers need key/value size 0, "
                "hash maps a non-zero key size)")
    elif e.errno == _errno.E2BIG:
        hint = "; the map is too large for this kernel"
    elif e.errno == _errno.ENOMEM:
        hint = "; not enough memory (or memlock limit) for this map"
    err = type(e)(e.command, e.errno,
                  f"map {spec.name!r} (type {tname}, key_size {spec.key_size}, value_size {spec.value_size}, "
                  f"max_entries {max_entries}, flags 0x{spec.flags:x}) was refused{hint}")
    return err


def _verifier_summary(log: str, linked: LinkedProgram | None = None, btf=None) -> tuple[str, str]:
    """(one-line reason, detail lines) from a verifier log: the C source line of the failing
    instruction (from our line_info when we have it, else the log's own annotation), the
    instruction, and the error lines."""
    lines = [l for l in log.splitlines() if l.strip()]
    end = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("processed ") or lines[i].startswith("verification time"):
            end = i
    lines = lines[:end]
    import re       # (only here: 're' costs ~2 ms of every process start)
    insn_re = re.compile(r"^(\d+): \(")
    last_insn = max((i for i, l in enumerate(lines) if insn_re.match(l)), default=-1)
    errors = lines[last_insn + 1:] if last_insn >= 0 else lines[-3:]
    errors = [l for l in errors if not l.startswith(";")] or lines[-1:]
    details = []
    where = None
    if last_insn >= 0 and linked is not None and btf is not None and linked.line_info:
        idx = int(insn_re.match(lines[last_insn]).group(1))
        fn = linked.function_at(idx)
        recs = [r for r in linked.line_info if r[0] <= idx and (fn is None or r[0] >= fn[1])]
        if recs:
            insn, file_off, line_off, line_col = max(recs, key=lambda r: r[0])
            try:
                where = (f"  at {btf.string(file_off).lstrip('./')}:{line_col >> 10}"
                         f"{' (in ' + fn[0].name + ')' if fn else ''}: {btf.string(line_off).strip()}")
            except Exception:
                where = None
    if where is None and last_insn >= 0:
        src = next((l for l in reversed(lines[:last_insn + 1]) if l.startswith(";")), None)
        if src:
            text, _, at = src[1:].strip().rpartition(" @ ")
            where = f"  at {at}: {text.strip()}" if at else f"  at {src[1:].strip()}"
    if where:
        details.append(where)
    if last_insn >= 0:
        details.append(f"  instruction {lines[last_insn]}")
    reason = errors[0] if errors else "(no reason in the log)"
    details += [f"  {l}" for l in errors[1:5]]
    return reason, "\n".join(details)


class ProgLoadRequest:
    """The BPF_PROG_LOAD attributes for one program, with the buffers they point to kept alive.

    ``attr`` is exactly what the loader sends (without a verifier log); building it touches
    no kernel, so tests can check program type, expected attach type, attach_btf_id and
    flags offline.  ``attr_with_log(buf)`` is the same with a log buffer.
    """

    def __init__(self, prog: ProgramSpec, linked: LinkedProgram, insns: bytearray, btf_fd: int = -1,
                 attach_btf_id: int = 0, attach_btf_obj_fd: int = 0, expected_attach_type: int | None = None):
        sec = prog.sec_def
        self._insns = insns
        self._insn_buf = (ctypes.c_char * len(insns)).from_buffer(insns)
        self._license = ctypes.create_string_buffer((prog.license or "").encode())
        self._fi = (ctypes.c_uint32 * (2 * len(linked.func_info)))(*[v for rec in linked.func_info for v in rec])
        self._li = (ctypes.c_uint32 * (4 * len(linked.line_info)))(*[v for rec in linked.line_info for v in rec])
        flags = 0
        if sec.flags & S.SLEEPABLE:
            from ..kernel.constants import BPF_F_SLEEPABLE
            flags |= BPF_F_SLEEPABLE
        if sec.flags & S.XDP_FRAGS:
            from ..kernel.constants import BPF_F_XDP_HAS_FRAGS
            flags |= BPF_F_XDP_HAS_FRAGS
        a = ProgLoadAttr(prog_type=prog.prog_type, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(self._insn_buf), license=ctypes.addressof(self._license),
                         kern_version=prog.kern_version, prog_flags=flags, prog_name=_kernel_name(prog.name),
                         attach_btf_id=attach_btf_id)
        if expected_attach_type is not None:      # struct_ops: the member index
            a.expected_attach_type = expected_attach_type
        elif prog.expected_attach_type is not None:
            a.expected_attach_type = prog.expected_attach_type
        if attach_btf_obj_fd:
            a.attach_btf_obj_fd = attach_btf_obj_fd
        if btf_fd >= 0 and linked.func_info:
            a.prog_btf_fd = btf_fd
            a.func_info_rec_size = 8
            a.func_info = ctypes.addressof(self._fi)
            a.func_info_cnt = len(linked.func_info)
            a.line_info_rec_size = 16
            a.line_info = ctypes.addressof(self._li)
            a.line_info_cnt = len(linked.line_info)
        self.attr = a

    def attr_with_log(self, log_buf) -> ProgLoadAttr:
        a = ProgLoadAttr.from_buffer_copy(self.attr)
        a.log_level = 1
        a.log_buf = ctypes.addressof(log_buf)
        a.log_size = len(log_buf)
        return a


def program_load_request(spec: ObjectSpec, name: str, facts=None) -> ProgLoadRequest:
    """What the loader would send to load program ``name`` of ``spec``, built without the
    kernel: linked instructions (map fds left 0), attach_btf_id resolved from ``facts``'
    BTF for tp_btf/fentry/fexit/fmod_ret/lsm/iter.  No object BTF fd (there is none yet)."""
    pspec = spec.programs[name]
    linked = link_program(spec, pspec, facts)
    attach_btf_id = 0
    expected = None
    if pspec.sec_def.flags & S.ATTACH_BTF:
        from .attach_btf import resolve_attach_btf
        attach_btf_id = resolve_attach_btf(pspec, facts).btf_id
    elif pspec.prog_type == ProgType.STRUCT_OPS:
        from ..kernel.btf import running_btf
        from .struct_ops import plan
        _, st_progs = plan(spec, running_btf(facts))
        attach_btf_id, expected = st_progs.get(name, (0, None))
    insns = linked.with_map_fds({ref.map_name: 0 for ref in linked.map_refs})
    return ProgLoadRequest(pspec, linked, insns, -1, attach_btf_id, expected_attach_type=expected)


# attach types whose programs need a BPF trampoline in the kernel
_TRAMPOLINE_ATTACH = frozenset({"TRACE_FENTRY", "TRACE_FEXIT", "MODIFY_RETURN", "LSM_MAC", "LSM_CGROUP"})


def _needs_trampoline(prog: ProgramSpec) -> bool:
    return prog.sec_def.attach_type in _TRAMPOLINE_ATTACH or prog.sec_def.prog_type == "EXT"


def _log_is_empty(log: str) -> bool:
    """True when the verifier never looked at the program: no log, or only the final
    statistics line with "processed 0 insns" (the kernel prints it even when a check before
    verification, such as bpf_prog_load's capability and attach checks, refused the load)."""
    lines = [line for line in log.splitlines() if line.strip()]
    return not lines or (len(lines) == 1 and lines[0].startswith("processed 0 insns"))


def _refused_by_kernel(prog: ProgramSpec, where: str) -> str:
    """The NotSupportedError text for EPERM as root with an empty verifier log: the kernel
    refused this program type / attach type before verifying a single instruction."""
    attach = prog.sec_def.attach_type
    kind = f"{ProgType(prog.prog_type).name} programs" + (f" with attach type {attach}" if attach else "")
    why = " (no BPF trampolines)" if _needs_trampoline(prog) else ""
    text = (f"{where}: not permitted by this kernel{why}: it refuses {kind} "
            f"(BPF_PROG_LOAD failed with EPERM as root and the verifier looked at no instruction)")
    if why:
        text += "; fentry, fexit, fmod_ret, lsm and freplace programs all need BPF trampolines"
    return text + ". Leave the program out with spec.programs[NAME].autoload = False to load the rest"


def load_program(prog: ProgramSpec, linked: LinkedProgram, insns: bytearray, btf_fd: int,
                 attach_btf_id: int = 0, attach_btf_obj_fd: int = 0, btf=None, fd_array=None,
                 expected_attach_type: int | None = None) -> int:
    """BPF_PROG_LOAD; on rejection reload with a verifier log and raise VerifierError.
    ``fd_array``: BTF fds that kfunc calls into module BTF index (insn.off), slot 0 unused.
    ``expected_attach_type`` replaces the section's (struct_ops: the member index)."""
    fd_buf = (ctypes.c_int32 * len(fd_array))(*fd_array) if fd_array else None
    request = ProgLoadRequest(prog, linked, insns, btf_fd, attach_btf_id, attach_btf_obj_fd,
                              expected_attach_type=expected_attach_type)
    if fd_buf is not None:
        request.attr.fd_array = ctypes.addressof(fd_buf)

    def attr(log_buf=None) -> ProgLoadAttr:
        return request.attr_with_log(log_buf) if log_buf is not None else request.attr

    try:
        return sc.bpf(Cmd.PROG_LOAD, attr())
    except SyscallError as first:
        if interrupt_pending():     # the verifier gave up for a Ctrl-C: no second run, no log
            raise
        failure = first
    size = _LOG_START
    log = ""
    cut_at = 0          # the log was cut at this size (0: the kernel's log is whole)
    while True:
        buf = ctypes.create_string_buffer(size)
        a = attr(buf)
        try:
            return sc.bpf(Cmd.PROG_LOAD, a)   # a transient first failure: keep the program
        except SyscallError as e:
            if interrupt_pending():
                raise
            log = buf.value.decode(errors="replace")
            del buf
            if e.errno == _errno.ENOSPC and size < _LOG_MAX:
                size = min(_LOG_MAX, max(size * 4, a.log_true_size or 0))
                continue
            if e.errno == _errno.ENOSPC:
                # the kernel reports a full log as ENOSPC instead of the verifier's own error
                cut_at = size
            failure = e
            break
    where = f"program {prog.name!r} (section {prog.section!r}, {ProgType(prog.prog_type).name})"
    cut = ""
    if cut_at:
        whole = f" of {a.log_true_size} bytes" if a.log_true_size > cut_at else ""
        cut = (f"\n(the verifier log{whole} was cut at {cut_at >> 20} MiB, libbpf's limit too: the kernel "
               f"reports a full log as ENOSPC, so the verifier's own error code is lost; what is kept is "
               f"the log's end)")
    from .refusals import lockdown_refusal
    lockdown = lockdown_refusal(log, prog, where)
    if lockdown is not None:
        raise lockdown from None
    if _log_is_empty(log):
        if failure.errno == _errno.EPERM and sc.every_bpf_capability():
            raise NotSupportedError(_refused_by_kernel(prog, where)) from None
        if not log.strip():
            raise failure
    reason, details = _verifier_summary(log, linked, btf)
    from .core_relo import failure_in_log
    core = failure_in_log(log, linked)
    if core is not None:
        # the verifier reached an instruction CO-RE poisoned: name the relocation, not "unknown#195896080"
        reason = (f"{core}; its instruction {core.insn} (in {core.function}) was poisoned and is reachable "
                  f"(verifier: {reason})")
    raise VerifierError(failure.command, failure.errno,
                        f"{where} was rejected by the verifier: {reason}\n{details}\n"
                        f"(the {'kept' if cut_at else 'whole'} log is in the exception's .log){cut}",
                        log) from None


def load_spec(spec: ObjectSpec, *, btf: bool = True, facts=None, target_btf=None, pin_root=None,
              new_object=None):
    """Load everything in ``spec`` into the kernel and return a :class:`pybpf.Object`.

    ``new_object(spec)`` makes the empty runtime object the maps and programs are handed to
    (:func:`pybpf.collection.load_object` passes :class:`pybpf.Object`: the loader does not
    import the layer above it); without it this is ``spec.load(...)``, which comes back
    here with it.

    ``target_btf`` (a BTF file path or :class:`~pybpf.spec.btf.BTF`) replaces the
    running kernel's BTF as the CO-RE target; ``facts`` (a
    :class:`~pybpf.loader.facts.KernelFacts`) replaces every kernel fact.

    ``pin_root`` (a directory on bpffs, e.g. ``/sys/fs/bpf``): maps declared with
    ``__uint(pinning, LIBBPF_PIN_BY_NAME)`` follow libbpf's rules there: the map pinned at
    ``pin_root/<map name>`` is reused when it is compatible (same type, key and value size,
    max_entries, flags and map_extra; it is not filled again with the object's initial
    values), else the load fails naming the field that differs; a map not pinned yet is
    created and pinned.  If the load fails, the maps it pinned are unpinned again; closing
    the object leaves the pins (they outlive the process, as with libbpf).  Without
    ``pin_root`` nothing is pinned (libbpf would use /sys/fs/bpf).
    """
    if new_object is None:
        return spec.load(btf=btf, facts=facts, target_btf=target_btf, pin_root=pin_root)
    from .facts import KernelFacts
    if facts is None:
        if isinstance(target_btf, (str, os.PathLike)):
            from ..spec.btf import BTF as _BTF
            target_btf = _BTF.load(os.fspath(target_btf))
        facts = KernelFacts.running(btf=target_btf)
    from .refusals import check_object
    check_object(spec, facts)       # struct_ops, kinds this kernel lacks, max_entries 0: before the kernel
    struct_ops = None
    if any(m.struct_ops is not None for m in spec.maps.values()):
        # the kernel values, laid out by the kernel's BTF, and each program's member
        from ..kernel.btf import running_btf
        from .struct_ops import plan
        try:
            struct_ops = plan(spec, running_btf(facts))
        except Error as e:
            raise type(e)(f"{spec.path}: {e}") from None
    if spec.externs:
        from . import externs as _externs
    # Every fd is made and handed to its owner inside a deferred_signals() section: a Ctrl-C
    # between a syscall's return and the assignment would leave the fd open with no owner.
    # If anything fails or is interrupted, ``obj.close()`` releases all that was made, and
    # the externs' module BTF fds are released in every case.
    if pin_root is not None:
        pin_root = os.fspath(pin_root)
    pins = _Pins(pin_root)
    obj = None
    try:
        try:
            if spec.externs:
                try:
                    with deferred_signals():
                        _externs.resolve(spec, facts)
                except ObjectError as e:
                    raise type(e)(f"{spec.path}: {e}") from None
            # link first: it is pure, so an object pybpf cannot handle (externs, CO-RE, bad
            # relocations) fails with its own message before anything is put in the kernel
            linked = {}
            attach_btf = {}
            for name, pspec in spec.programs.items():
                if not pspec.autoload:
                    continue
                if pspec.prog_type == ProgType.STRUCT_OPS and (struct_ops is None or name not in struct_ops[1]):
                    continue        # no struct_ops map points at it: not loaded (as in libbpf)
                if pspec.sec_def.flags & S.ATTACH_BTF:
                    from .attach_btf import resolve_attach_btf
                    attach_btf[name] = resolve_attach_btf(pspec, facts, write_later=True)
                try:
                    linked[name] = link_program(spec, pspec, facts)
                except ObjectError as e:
                    raise type(e)(f"{spec.path}: {e}") from None
            if attach_btf:
                from .attach_btf import write_cache
                write_cache()           # the names found: one cache write for the object
            _check_map_values(spec)
            obj = new_object(spec)
            _load_into(obj, spec, btf, facts, linked, attach_btf, pins, struct_ops)
        finally:
            if spec.externs:
                with deferred_signals():
                    _externs.release(spec, facts)
    except VerifierError as e:
        pins.undo()
        if obj is not None:
            obj.close()
        if spec.externs:
            _externs.explain(e, spec)
        raise
    except BaseException:
        pins.undo()
        if obj is not None:
            obj.close()
        raise
    return obj


class _Pins:
    """The maps of one load pinned by name under ``pin_root`` (libbpf's LIBBPF_PIN_BY_NAME rules,
    bpf_object__reuse_map / map_is_reuse_compat / bpf_map__pin): ``reuse()`` opens a compatible
    pinned map, ``pin()`` pins a new one, ``undo()`` unpins what this load pinned."""

    def __init__(self, root: str | None):
        self.root = root
        self.pinned: list[str] = []
        self.made_root = False

    def path(self, mspec: MapSpec) -> str | None:
        if self.root is None or mspec.pinning != "by_name":
            return None
        return os.path.join(self.root, mspec.name)       # libbpf: "<pin_root>/<map name>"

    def reuse(self, mspec: MapSpec, path: str) -> int:
        """The fd of the map pinned at ``path`` (-1 when nothing is), after the compatibility
        check; call it inside a deferred-signals section (the caller owns the fd)."""
        from ..kernel.bpffs import fd_kind
        try:
            fd = sc.obj_get(path)
        except SyscallError as e:
            if e.errno == _errno.ENOENT:
                return -1
            raise type(e)(e.command, e.errno, f"map {mspec.name!r}: cannot open the map pinned at {path} "
                                              f"to reuse it") from None
        try:
            if fd_kind(fd) != "map":
                raise Error(f"map {mspec.name!r}: {path} is not a pinned map (it holds a BPF "
                            f"{fd_kind(fd) or 'object'}): remove it, or load with another pin_root")
            _check_reuse(mspec, path, sc.obj_get_info_by_fd(fd, _MapInfoStruct()))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def pin(self, mspec: MapSpec, fd: int, path: str) -> None:
        """Pin a map this load created (in the section that made it, so that undo() knows it)."""
        from ..kernel.bpffs import make_pin_dir, pin_fd
        if not self.pinned and not self.made_root:
            self.made_root = make_pin_dir(path)
        pin_fd(fd, path, f"map {mspec.name!r}")
        self.pinned.append(path)

    def undo(self) -> None:
        """Unpin every map this load pinned (and remove pin_root if this load made it)."""
        with deferred_signals():
            while self.pinned:
                try:
                    os.unlink(self.pinned.pop())
                except OSError:
                    pass
            if self.made_root:
                self.made_root = False
                try:
                    os.rmdir(self.root)
                except OSError:
                    pass


# (spec field, bpf_map_info field) that must be equal for a pinned map to be reused
_REUSE_FIELDS = (("type", "type"), ("key_size", "key_size"), ("value_size", "value_size"),
                 ("max_entries", "max_entries"), ("map_flags", "map_flags"), ("map_extra", "map_extra"))


def _check_reuse(mspec: MapSpec, path: str, info) -> None:
    """libbpf's map_is_reuse_compat: the pinned map and the object's must agree on type, key and
    value size, max_entries, flags and map_extra (as the object would create it: ring buffer
    sizes rounded, perf event arrays sized to the CPUs); an Error names the first that differs."""
    want = map_create_attr(mspec)
    for name, info_name in _REUSE_FIELDS:
        ours = getattr(want, "map_type" if name == "type" else name)
        theirs = getattr(info, info_name)
        if name == "map_flags" and mspec.type in (MapType.DEVMAP, MapType.DEVMAP_HASH):
            # the kernel reports devmaps with BPF_F_RDONLY_PROG, which cannot be asked for (libbpf)
            ours |= _BPF_F_RDONLY_PROG
        if ours != theirs:
            if name == "type":
                shown = f"{_map_type_name(theirs)} there, {_map_type_name(ours)} in the object"
            elif name in ("map_flags", "map_extra"):
                shown = f"0x{theirs:x} there, 0x{ours:x} in the object"
            else:
                shown = f"{theirs} there, {ours} in the object"
            raise Error(f"map {mspec.name!r}: the map pinned at {path} is incompatible: its {name} differs "
                        f"({shown}); remove the pin (unlink {path}) to have a new map made, or load "
                        f"with another pin_root")


def _map_type_name(t: int) -> str:
    try:
        return MapType(t).name
    except ValueError:
        return str(t)


def _load_into(obj, spec: ObjectSpec, btf: bool, facts, linked: dict, attach_btf: dict, pins=None,
               struct_ops=None) -> None:
    from ..spec.object import ZeroImage, zero_image
    if spec.externs:
        from . import externs as _externs
    if btf and spec.btf is not None:
        from .sanitize import kernel_btf
        raw = kernel_btf(spec.btf)
        if raw is not None:          # None: a kernel without BTF
            with deferred_signals():
                obj._btf_fd = load_btf(raw)
    pins = pins if pins is not None else _Pins(None)
    reused = set()
    for name, mspec in spec.maps.items():
        pin_path = pins.path(mspec)
        with deferred_signals():
            fd = pins.reuse(mspec, pin_path) if pin_path else -1
            if fd >= 0:
                # a compatible pinned map: its fd is used as it is, never filled again
                m = obj._add_map(mspec, fd)
                m._pin_path = pin_path
                reused.add(name)
                continue
            if mspec.struct_ops is not None:
                from .struct_ops import create_map as create_struct_ops_map
                lay = struct_ops[0][name]
                m = obj._add_map(mspec, create_struct_ops_map(mspec, lay, obj._btf_fd))
                m._struct_ops = lay
                m._owner = obj
                continue
            inner_fd = -1
            try:
                if mspec.inner is not None:
                    inner_fd = create_map(mspec.inner, obj._btf_fd)
                fd = create_map(mspec, obj._btf_fd, inner_fd)
            finally:
                if inner_fd >= 0:
                    os.close(inner_fd)
            m = obj._add_map(mspec, fd)
            if pin_path:
                pins.pin(mspec, fd, pin_path)
                m._pin_path = pin_path
        if mspec.type == MapType.ARENA:
            # mapped before any program loads (libbpf bpf_object__create_maps): the kernel fixes
            # the arena's user address at the first mmap and resolves __arena globals against it
            view = m.mmap()
            if mspec.data and not zero_image(mspec.data):
                off = m.data_offset
                view[off:off + len(mspec.data)] = bytes(mspec.data)
        elif mspec.data is not None:
            data = mspec.data
            if mspec.section == ".kconfig":
                data = _externs.resolution_for(spec, facts).kconfig
            # a new array map's value is zero-filled by the kernel (kernel/bpf/arraymap.c
            # array_map_alloc: bpf_map_area_alloc zeroes): of a .bss only the pages written
            # before load are copied in, each through a mapping of its own page (mapping
            # the whole value would make all of it resident: array_map_mmap maps every page)
            if isinstance(data, ZeroImage):
                if not zero_image(data):
                    for off, chunk in data.written():
                        with mmap.mmap(fd, len(chunk), mmap.MAP_SHARED, offset=off) as page:
                            page[:] = chunk
            else:
                m._write_initial(bytes(data))
            if mspec.readonly:
                sc.map_freeze(fd)
    fds = {name: m.fd for name, m in obj.maps.items()}
    fd_array = _externs.resolution_for(spec, facts).fd_array() if spec.externs else None
    # map-in-map slots once every map exists (libbpf init_map_in_map_slots)
    for name, mspec in spec.maps.items():
        if mspec.inner is not None and name not in reused:
            _fill_slots(mspec, obj.maps[name].fd, fds, "map")
    for name, lp in linked.items():
        pspec = spec.programs[name]
        target = attach_btf.get(name)
        insns = lp.with_map_fds(fds)
        # the verifier runs in the section: a Ctrl-C makes it give up (EAGAIN), which
        # load_program turns into an error at once, and the section's end raises the interrupt
        with deferred_signals():
            obj_fd = module_fd = 0
            try:
                if target is not None and target.in_module:
                    from .attach_btf import module_btf_fd
                    obj_fd = module_fd = module_btf_fd(target.module)
                st = struct_ops[1].get(name) if struct_ops is not None else None
                fd = load_program(pspec, lp, insns, obj._btf_fd,
                                  attach_btf_id=st[0] if st else target.btf_id if target else 0,
                                  attach_btf_obj_fd=obj_fd, btf=spec.btf, fd_array=fd_array,
                                  expected_attach_type=st[1] if st else None)
            finally:
                if module_fd:
                    os.close(module_fd)
            obj._add_program(pspec, fd, lp)
    # prog array slots once the programs are loaded (libbpf init_prog_array_slots)
    prog_fds = {name: p.fd for name, p in obj.programs.items()}
    for name, mspec in spec.maps.items():
        if mspec.type == MapType.PROG_ARRAY and mspec.values:
            _fill_slots(mspec, obj.maps[name].fd, prog_fds, "program")


def _check_map_values(spec: ObjectSpec) -> None:
    """Before anything is created: every initial slot names something that will exist."""
    for name, mspec in spec.maps.items():
        for slot, target in sorted(mspec.values.items()):
            if slot >= mspec.max_entries and mspec.type != MapType.HASH_OF_MAPS:
                raise Error(f"map {name!r}: values[{slot}] is outside its {mspec.max_entries} entries")
            if mspec.type == MapType.PROG_ARRAY:
                p = spec.programs.get(target)
                if p is None:
                    raise Error(f"map {name!r}: values[{slot}] names program {target!r}, which is not in the object")
                if not p.autoload:
                    raise Error(f"map {name!r}: values[{slot}] is program {target!r}, which is not loaded "
                                f"(autoload is off)")
            elif target not in spec.maps:
                raise Error(f"map {name!r}: values[{slot}] names map {target!r}, which is not in the object")


def _fill_slots(mspec: MapSpec, fd: int, fds: dict, what: str) -> None:
    for slot, target in sorted(mspec.values.items()):
        try:
            sc.map_update_elem(fd, bytearray(slot.to_bytes(4, "little")),
                               bytearray(fds[target].to_bytes(4, "little")))
        except SyscallError as e:
            raise type(e)(e.command, e.errno, f"map {mspec.name!r}: cannot put {what} {target!r} in "
                                              f"values[{slot}]") from None
